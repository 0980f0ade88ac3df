"""Split a model's parameters into the named groups that mirror PEFT methods.

A *category* is what a PEFT method would train: ``lora_A`` and ``lora_B`` (LoRA),
``head`` (linear probing: the LM head or classifier), ``norm`` (LayerNorm tuning),
``bias`` (BitFit), ``embed`` (embedding tuning) and ``others`` (everything else).
Each parameter lands in exactly one group; a tied weight (GPT-2's ``lm_head`` is
``wte``) is counted once, under the module that owns it first (``embed``).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

CATEGORIES = ("lora_A", "lora_B", "head", "norm", "bias", "embed", "others")
HEAD_NAMES = frozenset({"lm_head", "classifier", "score", "head", "qa_outputs", "cls"})
_LAYER_INDEX = re.compile(r"\.(\d+)(?:\.|$)")

Grouper = Callable[[str, nn.Parameter], str]


def real_numel(param: torch.Tensor) -> int:
    """The number of real entries of ``param``: a complex entry counts twice, as its real view
    (torch's optimizers treat it so); masks and APPI count parameters this way."""
    return param.numel() * (2 if torch.is_complex(param) else 1)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)) or (
        "norm" in type(module).__name__.lower()
    )


def _is_embedding(module_name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Embedding) or any("embed" in part.lower() for part in module_name.split("."))


def _output_layer(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    return get() if callable(get) else None


def _category(module_name: str, module: nn.Module, param_name: str, is_output: bool) -> str:
    full = f"{module_name}.{param_name}"
    if "lora_A" in full or "lora_embedding_A" in full:
        return "lora_A"
    if "lora_B" in full or "lora_embedding_B" in full:
        return "lora_B"
    if is_output or HEAD_NAMES.intersection(module_name.split(".")):
        return "head"
    if _is_norm(module):
        return "norm"
    if _is_embedding(module_name, module):
        return "embed"
    if param_name == "bias":
        return "bias"
    return "others"


def categorize(model: nn.Module, trainable_only: bool = True) -> list[tuple[str, str, nn.Parameter]]:
    """``(parameter name, category, parameter)`` for every parameter of ``model``, tied ones once."""
    output = _output_layer(model)
    seen: set[int] = set()
    rows = []
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen or (trainable_only and not param.requires_grad):
                continue
            seen.add(id(param))
            name = f"{module_name}.{param_name}" if module_name else param_name
            rows.append((name, _category(module_name, module, param_name, module is output), param))
    return rows


def _by_layer(name: str, category: str) -> str:
    match = _LAYER_INDEX.search(name)
    return f"layer{match.group(1)}.{category}" if match else category


def _order(group_name: str) -> tuple[int, int]:
    layer, _, category = group_name.rpartition(".")
    index = int(layer[5:]) if layer.startswith("layer") and layer[5:].isdigit() else -1
    return (index, CATEGORIES.index(category) if category in CATEGORIES else len(CATEGORIES))


def named_groups(
    model: nn.Module, by: str | Grouper = "category", trainable_only: bool = True
) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """``{group name: [(parameter name, parameter), ...]}`` in group order (see ``group_parameters``)."""
    if not (by in ("category", "layer") or callable(by)):
        raise ValueError(f"by must be 'category', 'layer' or a callable (name, param) -> str, got {by!r}")
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for name, category, param in categorize(model, trainable_only):
        if callable(by):
            group = by(name, param)
            if not isinstance(group, str) or not group:
                raise ValueError(f"the grouping callable returned {group!r} for {name!r}; it must return a non-empty str")
        else:
            group = _by_layer(name, category) if by == "layer" else category
        groups.setdefault(group, []).append((name, param))
    order = list(groups) if callable(by) else sorted(groups, key=_order)
    return {group: groups[group] for group in order}


def group_parameters(
    model: nn.Module, by: str | Grouper = "category", trainable_only: bool = True
) -> list[dict[str, Any]]:
    """Named param groups for ``GeNAdamW`` (or any ``torch.optim`` optimizer).

    ``by="category"`` gives the groups of ``CATEGORIES``; ``by="layer"`` splits each
    category by transformer block (``layer3.norm``; parameters outside any block keep the
    bare category); a callable ``by(name, param) -> group name`` groups any other way.
    Empty groups are omitted. Returns ``[{"name": ..., "params": [...], "grouping": by}, ...]``
    (``grouping`` is ``"custom"`` for a callable; a ``Mask`` records it to regroup other models).
    """
    grouping = by if isinstance(by, str) else "custom"
    return [{"name": name, "params": [p for _, p in members], "grouping": grouping}
            for name, members in named_groups(model, by, trainable_only).items()]
