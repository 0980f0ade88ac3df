"""save_subset / load_subset: ship only the trained groups, load them onto a fresh base model."""
import pytest
import torch

from conftest import mask_of
from hf_models import bert, gpt2
from gen_optim import equip_lora
from gen_optim.subset import MASK_FILE, WEIGHTS_FILE, load_subset, save_subset


def train(model, mask, classify=False, steps=3):
    mask.apply(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(0, 100, (4, 16), generator=g)
        opt.zero_grad()
        model(input_ids=ids, labels=ids[:, 0] % 2 if classify else ids).loss.backward()
        opt.step()


@pytest.mark.parametrize("make,active", [(bert, ("bias", "head")), (gpt2, ("norm", "bias"))])
def test_round_trip_onto_a_fresh_base_model(tmp_path, make, active):
    model = make()
    mask = mask_of(model, active)
    train(model, mask, classify=make is bert)
    path = save_subset(model, mask, tmp_path)
    assert path.name == WEIGHTS_FILE and (tmp_path / MASK_FILE).exists()

    base = make()  # the same initialisation: the pretrained base in real use
    assert any(not torch.equal(a, b) for a, b in zip(base.state_dict().values(), model.state_dict().values()))
    loaded = load_subset(base, tmp_path)
    assert loaded.active == active
    for (name, a), b in zip(model.state_dict().items(), base.state_dict().values()):
        assert torch.equal(a, b), name
    assert [p.requires_grad for p in base.parameters()] == [p.requires_grad for p in model.parameters()]

    full = tmp_path / "full.safetensors"
    from safetensors.torch import save_model
    save_model(model, str(full))
    assert path.stat().st_size < 0.2 * full.stat().st_size


def test_lora_groups_need_the_same_lora(tmp_path):
    model = equip_lora(gpt2(), r=4, target_modules=["c_attn"], fan_in_fan_out=True)
    mask = mask_of(model, ("lora_A", "lora_B"))
    train(model, mask)
    save_subset(model, mask, tmp_path)
    with pytest.raises(ValueError, match="equip_lora"):
        load_subset(gpt2(), tmp_path)
    base = equip_lora(gpt2(), r=4, target_modules=["c_attn"], fan_in_fan_out=True)
    load_subset(base, tmp_path)
    for a, b in zip(model.state_dict().values(), base.state_dict().values()):
        assert torch.equal(a, b)


def test_shape_mismatch_and_missing_groups_are_errors(tmp_path):
    model = gpt2()
    mask = mask_of(model, ("norm",))
    save_subset(model, mask, tmp_path)
    with pytest.raises(ValueError, match="shape"):
        load_subset(gpt2(n_embd=64), tmp_path)
    with pytest.raises(ValueError, match="lacks"):
        save_subset(model, mask_of(equip_lora(gpt2(), r=2, target_modules=["c_attn"], fan_in_fan_out=True),
                                   ("lora_A",)), tmp_path / "x")
