import pytest
from peft import LoraConfig, get_peft_model

from hf_models import bert, gpt2, llama, roberta, vit
from gen_optim import group_parameters


def by_name(model, **kw):
    named = {id(p): n for n, p in model.named_parameters()}  # a tied weight under its first name
    return {g["name"]: sorted(named[id(p)] for p in g["params"]) for g in group_parameters(model, **kw)}


def assert_partition(model, groups, trainable_only=True):
    every = [p for g in groups for p in g["params"]]
    expected = {id(p) for p in model.parameters() if p.requires_grad or not trainable_only}
    assert len(every) == len({id(p) for p in every}) == len(expected)
    assert {id(p) for p in every} == expected


def test_gpt2_conv1d_and_tied_head():
    model = gpt2()
    groups = by_name(model)
    assert list(groups) == ["norm", "bias", "embed", "others"]
    assert groups["embed"] == ["transformer.wpe.weight", "transformer.wte.weight"]  # lm_head is wte: once
    assert "transformer.h.0.attn.c_attn.weight" in groups["others"]
    assert "transformer.h.0.attn.c_attn.bias" in groups["bias"]
    assert groups["norm"][0].startswith("transformer.h.0.ln_1") and "transformer.ln_f.bias" in groups["norm"]
    assert_partition(model, group_parameters(model))


@pytest.mark.parametrize("make", [roberta, bert])
def test_encoder_classifiers(make):
    model = make()
    groups = by_name(model)
    assert all(n.startswith("classifier.") for n in groups["head"]) and groups["head"]
    assert all("LayerNorm" in n for n in groups["norm"])
    assert any("word_embeddings" in n for n in groups["embed"]) and all("embeddings" in n for n in groups["embed"])
    assert all(n.endswith(".bias") for n in groups["bias"]) and not any("LayerNorm" in n for n in groups["bias"])
    assert all(n.endswith(".weight") for n in groups["others"])
    assert_partition(model, group_parameters(model))


@pytest.mark.parametrize("tie", [True, False])
def test_llama_rmsnorm_no_bias(tie):
    model = llama(tie)
    groups = by_name(model)
    assert "bias" not in groups
    assert groups["norm"] and all("norm" in n for n in groups["norm"])
    assert groups["embed"] == ["model.embed_tokens.weight"]
    assert ("head" in groups) is (not tie)
    assert_partition(model, group_parameters(model))


def test_vit_patch_and_position_embeddings():
    groups = by_name(vit())
    assert {"vit.embeddings.cls_token", "vit.embeddings.position_embeddings",
            "vit.embeddings.patch_embeddings.projection.weight"} <= set(groups["embed"])
    assert groups["head"] == ["classifier.bias", "classifier.weight"]


def test_peft_lora_and_modules_to_save():
    model = get_peft_model(roberta(), LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS"))
    groups = by_name(model)
    assert set(groups) == {"lora_A", "lora_B", "head"}
    assert all("modules_to_save" in n for n in groups["head"])
    everything = by_name(model, trainable_only=False)
    assert any("base_layer.weight" in n for n in everything["others"])
    assert any("base_layer.bias" in n for n in everything["bias"])
    assert any("original_module" in n for n in everything["head"])
    assert_partition(model, group_parameters(model, trainable_only=False), trainable_only=False)


def test_by_layer_and_callable():
    model = gpt2(n_layer=3)
    groups = by_name(model, by="layer")
    assert "layer2.norm" in groups and "layer0.others" in groups and "embed" in groups and "norm" in groups
    assert groups["norm"] == ["transformer.ln_f.bias", "transformer.ln_f.weight"]
    assert all(".h.1." in n for n in groups["layer1.bias"])
    assert_partition(model, group_parameters(model, by="layer"))
    custom = by_name(model, by=lambda name, p: "matrices" if p.ndim == 2 else "vectors")
    assert set(custom) == {"matrices", "vectors"}
    with pytest.raises(ValueError, match="non-empty str"):
        group_parameters(model, by=lambda name, p: None)
    with pytest.raises(ValueError, match="by must be"):
        group_parameters(model, by="module")


def test_trainable_only_and_empty_groups_omitted():
    model = gpt2()
    for n, p in model.named_parameters():
        p.requires_grad_("ln" in n)
    assert list(by_name(model)) == ["norm"]
