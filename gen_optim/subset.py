"""Ship what was trained: the weights of a mask's groups in one safetensors file, beside mask.json.

Like a peft adapter, an AdaPEFT result is the base model plus the few tensors its mask
trained. ``save_subset`` writes ``subset.safetensors`` (those tensors, by parameter name) and
``mask.json``; ``load_subset`` puts them back onto the same architecture (with LoRA groups:
equip it with the same ``equip_lora`` first) and trains the mask's groups again.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .grouping import Grouper
from .mask import Mask

WEIGHTS_FILE = "subset.safetensors"
MASK_FILE = "mask.json"


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as err:
        raise ImportError("saving a trained subset needs safetensors: pip install safetensors") from err
    return safetensors.torch


def save_subset(model: nn.Module, mask: Mask, directory: str | Path, by: str | Grouper | None = None) -> Path:
    """Write the weights of ``mask``'s groups of ``model`` and the mask to ``directory``.

    ``by`` groups the model (default: the mask's grouping). Returns the weights file's path.
    """
    groups = mask.groups_of(model, by)
    missing = sorted(set(mask.active) - set(groups))
    if missing:
        raise ValueError(f"the mask names groups the model lacks: {missing} (model groups: {sorted(groups)})")
    tensors = {name: p.detach().to("cpu").contiguous() for group in mask.active for name, p in groups[group]}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / WEIGHTS_FILE
    _safetensors().save_file(tensors, str(path), metadata={"format": "pt", "groups": ",".join(mask.active)})
    mask.save(directory / MASK_FILE)
    return path


def load_subset(model: nn.Module, directory: str | Path, by: str | Grouper | None = None, train: bool = True) -> Mask:
    """Copy the weights saved by ``save_subset`` into ``model``; returns the mask.

    Every saved tensor must name a parameter of ``model`` of the same shape (else a
    ``ValueError`` that lists them). With ``train=True`` the mask is applied: its groups train,
    the rest is frozen, as when it was saved.
    """
    directory = Path(directory)
    mask = Mask.load(directory / MASK_FILE)
    tensors = _safetensors().load_file(str(directory / WEIGHTS_FILE))
    params = {name: p for members in mask.groups_of(model, by).values() for name, p in members}
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise ValueError(
            f"{len(unknown)} saved tensors name no parameter of this model, e.g. {unknown[:3]}: load onto the "
            "architecture they were trained in (equip_lora it first if the mask trains LoRA groups)"
        )
    shapes = sorted(name for name, t in tensors.items() if t.shape != params[name].shape)
    if shapes:
        raise ValueError(f"saved tensors whose shape differs from the model's: {shapes[:3]}")
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)
    if train:
        mask.apply(model, by)
    return mask
