"""Export a mask to a peft config, where peft can express it.

peft trains LoRA adapters (``LoraConfig``: ``target_modules``, plus ``bias`` and
``modules_to_save``) or LayerNorm modules (``LNTuningConfig``: ``target_modules``, plus
``modules_to_save``). ``to_peft_config`` builds the config whose trainable parameters are
exactly the mask's, checks that by applying it to a copy of the model, and otherwise raises
a ``ValueError`` that names the groups peft cannot express (LoRA's B without A, BitFit without
an adapter, part of a module's weights, ...).
"""
from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .mask import Mask

LORA_GROUPS = ("lora_A", "lora_B")
PEFT_PREFIX = "base_model.model."
PEFT_INFIXES = (".base_layer", ".modules_to_save.default", ".ln_tuning_layers.default")


def _peft():
    try:
        import peft
    except ImportError as err:
        raise ImportError("exporting a mask to peft needs peft: pip install 'genadamw[peft]'") from err
    return peft


def _base_name(name: str) -> str:
    """A parameter's name in the bare base model, whichever peft wrapper holds it."""
    name = name.removeprefix(PEFT_PREFIX)
    for infix in PEFT_INFIXES:
        name = name.replace(infix, "")
    return name


def _trained_names(model: nn.Module) -> set[str]:
    return {_base_name(n) for n, p in model.named_parameters() if p.requires_grad and ".original_module." not in n}


def _bare_copy(model: nn.Module, peft: Any) -> nn.Module:
    """A copy of the base model without LoRA layers (each replaced by the layer it wraps)."""
    bare = copy.deepcopy(model.get_base_model() if isinstance(model, peft.PeftModel) else model)
    for name, module in list(bare.named_modules()):
        if hasattr(module, "base_layer") and hasattr(module, "lora_A"):
            parent, _, child = name.rpartition(".")
            setattr(bare.get_submodule(parent) if parent else bare, child, module.base_layer)
    return bare


def _own(bare: nn.Module, module_name: str) -> set[str]:
    """The full names of a module's own parameters."""
    module = bare.get_submodule(module_name)
    return {f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters(recurse=False)}


def _owners(bare: nn.Module, names: set[str]) -> list[str]:
    """Modules all of whose own parameters are in ``names`` (those peft can train whole)."""
    return [m for m, _ in bare.named_modules() if (own := _own(bare, m)) and own <= names]


def to_peft_config(mask: Mask, model: nn.Module, by: Any = None) -> Any:
    """The peft config that trains exactly ``mask``'s groups of ``model``.

    ``model`` is the model the mask applies to: the ``PeftModel`` from ``equip_lora`` when the
    mask trains LoRA groups (its LoRA settings are kept), else the base model. Returns a
    ``LoraConfig`` (LoRA groups, with ``bias`` and ``modules_to_save`` for the rest) or an
    ``LNTuningConfig`` (norm, with ``modules_to_save``); raises ``ValueError`` naming the groups
    peft cannot express.
    """
    peft = _peft()
    groups = mask.groups_of(model, by)
    missing = sorted(set(mask.active) - set(groups))
    if missing:
        raise ValueError(f"the mask names groups the model lacks: {missing}")
    wanted = {_base_name(name) for group in mask.active for name, _ in groups[group]}
    lora = [g for g in LORA_GROUPS if g in mask.active]
    if len(lora) == 1:
        raise ValueError(f"peft cannot express {lora}: it trains lora_A and lora_B together (no LoRA-FA)")
    bare = _bare_copy(model, peft)
    rest = {n for n in wanted if ".lora_" not in n}
    biases = {n for n, _ in bare.named_parameters() if n.endswith(".bias")}
    if lora:
        if not isinstance(model, peft.PeftModel):
            raise ValueError("the mask trains LoRA groups: pass the PeftModel that equip_lora made")
        bias = "all" if biases <= rest else "none"
        covered = biases if bias == "all" else set()
        modules = [m for m in _owners(bare, rest) if any(not n.endswith(".bias") or n not in covered
                                                            for n in _own(bare, m))]
        config = copy.deepcopy(model.peft_config["default"])
        config.bias, config.modules_to_save = bias, modules or None
    elif "norm" in mask.active:
        norm_modules = {_base_name(name).rpartition(".")[0] for name, _ in groups["norm"]}
        owners = _owners(bare, rest)
        config = peft.LNTuningConfig(target_modules=[m for m in owners if m in norm_modules],
                                     modules_to_save=[m for m in owners if m not in norm_modules] or None)
    else:
        raise ValueError(
            f"peft has no config that trains {sorted(mask.active)} without an adapter (LoRA, or LayerNorm "
            "tuning for norm): ship the mask with save_subset instead"
        )
    trained = _trained_names(peft.get_peft_model(bare, config))
    if trained != wanted:
        wrong = sorted({group for group, members in groups.items() for name, _ in members
                        if (_base_name(name) in wanted) != (_base_name(name) in trained)})
        raise ValueError(f"peft cannot express this mask: its config would train {wrong} differently "
                         "(peft trains whole modules, or all biases at once); ship it with save_subset instead")
    return config
