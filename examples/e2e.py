"""E2E NLG data for GPT-2: read CSVs, train an offline tokenizer, batch with the loss on the reference.

Each example is ``"{mr} || {ref}<eos>"``; the labels of the ``"{mr} || "`` prefix and of the
padding are -100, so the loss (and perplexity) is measured on the reference tokens only.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

DATA = Path(__file__).parent / "data"
SEPARATOR = " || "


def read_csv(path: str | Path) -> list[tuple[str, str]]:
    """``(mr, ref)`` rows of an E2E CSV with ``mr`` and ``ref`` columns."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [(row["mr"], row["ref"]) for row in csv.DictReader(f)]
    if not rows:
        raise ValueError(f"{path} holds no rows with 'mr' and 'ref' columns")
    return rows


def train_tokenizer(rows: list[tuple[str, str]], vocab_size: int = 1500) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``rows`` (for offline runs with no GPT-2 tokenizer)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator((mr + SEPARATOR + ref for mr, ref in rows), vocab_size=vocab_size,
                            min_frequency=2, special_tokens=["<|endoftext|>"], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def encode(rows: list[tuple[str, str]], tokenizer, max_length: int = 128) -> list[tuple[list[int], int]]:
    """Token ids of each example and the length of its prompt, truncated to ``max_length``."""
    examples = []
    for mr, ref in rows:
        prompt = tokenizer(mr + SEPARATOR)["input_ids"]
        target = tokenizer(ref)["input_ids"] + [tokenizer.eos_token_id]
        examples.append(((prompt + target)[:max_length], min(len(prompt), max_length - 1)))
    return examples


def collate(examples: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 off the reference)."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), -100)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (ids, prompt) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, prompt : len(ids)] = torch.tensor(ids[prompt:])
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
