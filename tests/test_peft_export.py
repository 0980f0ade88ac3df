"""to_peft_config: a mask as a peft config where peft can express it, a clear error elsewhere."""
import warnings

import peft
import pytest

from conftest import mask_of
from hf_models import bert, gpt2
from gen_optim import equip_lora
from gen_optim.peft_export import to_peft_config


def lora_gpt2():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return equip_lora(gpt2(), r=4, target_modules=["c_attn"], fan_in_fan_out=True)


def trained(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


EXPRESSIBLE = {
    "LoRA": (lora_gpt2, ("lora_A", "lora_B"), peft.LoraConfig, dict(bias="none", modules_to_save=None)),
    "LoRA + norm": (lora_gpt2, ("lora_A", "lora_B", "norm"), peft.LoraConfig, dict(bias="none")),
    "LoRA + bias + norm": (lora_gpt2, ("lora_A", "lora_B", "bias", "norm"), peft.LoraConfig, dict(bias="all")),
    "LoRA + embed": (lora_gpt2, ("lora_A", "lora_B", "embed"), peft.LoraConfig,
                     dict(modules_to_save=["transformer.wte", "transformer.wpe"])),
    "LayerNorm tuning": (bert, ("norm",), peft.LNTuningConfig, dict(modules_to_save=None)),
    "LayerNorm tuning + head": (bert, ("norm", "head"), peft.LNTuningConfig, dict(modules_to_save=["classifier"])),
}


@pytest.mark.parametrize("name", EXPRESSIBLE)
def test_expressible_masks_train_exactly_the_mask(name):
    make, active, kind, fields = EXPRESSIBLE[name]
    model = make()
    mask = mask_of(model, active)
    config = to_peft_config(mask, model)
    assert isinstance(config, kind)
    for key, value in fields.items():
        assert getattr(config, key) == value
    # the same mask applied by gen_optim and the config applied by peft train the same weights
    mask.apply(model)
    ours = {n.removeprefix("base_model.model.").replace(".base_layer", "") for n in trained(model)}
    fresh = peft.get_peft_model(gpt2() if make is lora_gpt2 else bert(), config)
    theirs = {n.removeprefix("base_model.model.").replace(".base_layer", "").replace(".modules_to_save.default", "")
              .replace(".ln_tuning_layers.default", "") for n in trained(fresh)}
    assert ours == theirs and ours


INEXPRESSIBLE = {
    "LoRA-FA": (lora_gpt2, ("lora_B",), "lora_A and lora_B together"),
    "BitFit": (bert, ("bias", "head"), "without an adapter"),
    "linear probing": (bert, ("head",), "without an adapter"),
    "LoRA + part of the linear layers": (lora_gpt2, ("lora_A", "lora_B", "others"), r"\['others'\]"),
    "LoRA groups on a model without LoRA": (gpt2, ("norm", "embed", "lora_A", "lora_B"), "lacks"),
}


@pytest.mark.parametrize("name", INEXPRESSIBLE)
def test_inexpressible_masks_name_the_groups(name):
    make, active, message = INEXPRESSIBLE[name]
    model = make()
    sizes_model = lora_gpt2() if "lacks" in message else model
    with pytest.raises(ValueError, match=message):
        to_peft_config(mask_of(sizes_model, active), model)
