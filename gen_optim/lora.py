"""Equip a model with LoRA components beside its own weights (AdaPEFT Algorithm 2, line 1)."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def equip_lora(
    model: nn.Module, r: int = 8, alpha: int = 16, target_modules: Sequence[str] | str | None = None,
    dropout: float = 0.0, **lora_kwargs,
) -> nn.Module:
    """Inject LoRA modules with ``peft`` and keep *every* parameter trainable.

    The result trains the base weights and ``lora_A``/``lora_B`` together, so that
    ``group_parameters`` sees both and the probes can weigh them against each other.
    ``target_modules=None`` takes peft's default for the model type (GPT-2: ``c_attn``;
    BERT/RoBERTa: ``query``, ``value``; Llama: ``q_proj``, ``v_proj``). Returns the
    ``peft.PeftModel``.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ImportError("equip_lora needs peft: pip install 'genadamw[peft]'") from err
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=target_modules, lora_dropout=dropout, **lora_kwargs)
    model = get_peft_model(model, config)
    for p in model.parameters():
        p.requires_grad_(True)
    return model
