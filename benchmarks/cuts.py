"""Is a pretrained checkpoint cut to some of its blocks still a language model? SmolLM2-135M's
test perplexity on E2E reference tokens (zero-shot, no training) with all 30 blocks and with
``n`` of them for each ``n`` of ``--blocks``, kept three ways: the first ``n`` (what the
benchmarks' ``cut`` does), the first ``n - 2`` and the last 2, and ``n`` spread evenly.

The paper's Algorithm 2 selects on "a smaller model of the same family"; this measures whether
the only family here (one checkpoint) has one. ``--quick``: a tiny random Llama (mechanics).

    python -m benchmarks.cuts [--blocks 4 6 12] [--test_rows 500]
"""
from __future__ import annotations

import argparse
import copy
import time

from .table4_e2e import E2E, SHARED, e2e_inputs
from examples.pretrained import keep


def layouts(n: int, total: int) -> dict[str, list[int]]:
    """The kept blocks of each layout for ``n`` of ``total`` blocks."""
    return {"first": list(range(n)),
            "first + last 2": list(range(n - 2)) + [total - 2, total - 1],
            "evenly spread": sorted({round(k * (total - 1) / (n - 1)) for k in range(n)})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=SHARED)
    parser.add_argument("--blocks", type=int, nargs="+", default=[4, 6, 12])
    parser.add_argument("--test_rows", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="a tiny random Llama: mechanics only")
    args = parser.parse_args()
    quick, files = e2e_inputs(args.data, args.quick)
    blocks = [3] if quick else args.blocks
    task = E2E(*files, quick, 64 if quick else args.test_rows, gen_mrs=1)
    whole = task.model(None, 0)
    total = whole.config.num_hidden_layers
    started = time.time()
    print(f"{'tiny random Llama (--quick: mechanics only)' if quick else 'SmolLM2-135M'}: test perplexity on the "
          f"reference tokens of {len(task.test)} E2E test rows, no training\n")
    print("| blocks kept | which | test perplexity |")
    print("|---|---|---|")
    print(f"| {total} | all | {task.evaluate(whole)[0]:.4g} |")
    for n in blocks:
        for name, indices in layouts(n, total).items():
            model = keep(copy.deepcopy(whole), indices)
            print(f"| {n} | {name}: {indices} | {task.evaluate(model)[0]:.4g} |", flush=True)
    print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
