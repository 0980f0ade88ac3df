"""What the probe budget costs and what it keeps: whole runs, side by side.

The stability task (``benchmarks.stability``: a 2-layer GPT-2 with LoRA on E2E, six groups,
batch 16) for ``--steps`` steps, warm-up and the first round's search included, one config
after the other for each seed (interleaved, so the machine's load falls on all alike):
- AdamW 1e-3 (the time reference), 3e-4 and 3e-3 (the stable-rates goal: within 2% of the best);
- GeNAdamW at its defaults (``probe_budget=0.05``) from each ``--lrs`` start;
- the same rule with no budget (``probe_budget=1e9``: every round its schedule wants);
- the old fixed interval (``probe_every=8``) from 1e-3;
- with ``--warmup_ablation``, the budget with the earlier default warm-up (``warmup=10``: the moments'
  transient and 10 more rounds of every group at every step) from each start;
- with ``--count_ablation``, the budget as a training step was counted before
  (``common.STEP_FORWARDS_BEFORE`` forwards: the credit of ``common.COUNT_BEFORE``) from each start;
- with ``--budget_ablation``, the earlier default budget (``common.BUDGET_BEFORE``) from each start;
- with ``--gift_ablation``, the budget with each group's starting credit a gift, as before 2026-12-07
  (``common.forgive_debts``), from each start.
Prints per config: wall time / AdamW's, probe forwards per training step and the compute
fraction they stand for (``/ STEP_FORWARDS``), the forwards spent until every group's warm-up
was over (a fixed cost: the rest grows with the run at ``probe_budget``), held-out loss (mean over seeds) against the
unlimited rule's, and the Kendall tau of the APPI ranking against the unlimited rule's, at the
step where Part I selects (``select_step``: 10% of the horizon, Algorithm 2) and at the end,
and, as the ranking's noise floor, the same tau between two seeds of the unlimited rule.
``--sst2`` adds the ranking check on all-MiniLM-L6-v2 cut to 2 blocks (LoRA equipped, all
trainable; SST-2 from ``benchmarks.table3_sst2``), budget against unlimited, at both steps.

``--sst2_quality`` adds the quality check on a real fine-tuning benchmark: full fine-tuning of
all-MiniLM-L6-v2 on SST-2 (``lr_free.py``'s task: 200 steps, batch 16), GeNAdamW at its
defaults against the unlimited rule from each of ``lr_free.STARTS``, seeds 0 and 1, dev
accuracy and wall time side by side (kept in ``--sst2_out``; a rerun resumes).

``--all_tokens`` puts the loss on every token (where warm-up once collapsed rates).

``--no-grid`` runs only AdamW 1e-3 and the budget (the cost of a long run).

    python -m benchmarks.budget [--steps 600] [--seeds 0 1 2] [--lrs 1e-4 1e-3 1e-2] [--all_tokens] [--warmup_ablation] [--count_ablation] [--budget_ablation] [--gift_ablation] [--sst2]
        [--sst2_quality [--sst2_out runs/budget_sst2.jsonl]] [--no-grid] [--no-stability] [--quick]
"""
from __future__ import annotations

import argparse
import functools
import itertools
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from examples.e2e import collate
from gen_optim import GeNAdamW, group_parameters, replay_closure
from gen_optim.gen_adamw import GEN_SETTINGS
from gen_optim.rule import STEP_FORWARDS

from .common import BUDGET_BEFORE, COUNT_BEFORE, STEP_FORWARDS_BEFORE, WARMUP_BEFORE, ProbeForwards, forgive_debts
from .harness import kendall_tau, select_step
from .stability import held_out_loss, load, model_for

UNLIMITED = 1e9
BUDGET = f"budget {GEN_SETTINGS['probe_budget']:g}"  # the defaults' rows


def configs(lrs: list[float], unlimited: bool, grid: bool = True, warmup_ablation: bool = False,
            count_ablation: bool = False, budget_ablation: bool = False, gift_ablation: bool = False) -> dict[str, dict]:
    """The runs: AdamW 1e-3 (the time reference), the budget from each start, and with ``grid``
    AdamW 3e-4 and 3e-3 and the fixed ``probe_every=8``; with ``unlimited`` the rule without a
    budget; with ``warmup_ablation`` the budget with ``WARMUP_BEFORE`` warm-up rounds; with
    ``count_ablation`` the budget's credit as a step counted ``STEP_FORWARDS_BEFORE`` forwards; with
    ``budget_ablation`` the budget ``BUDGET_BEFORE``; with ``gift_ablation`` the budget whose
    groups owe nothing for their starting credit (``gift``: ``forgive_debts``)."""
    out = {"adamw 1e-3": dict(lr=1e-3)}
    if grid:
        out |= {"adamw 3e-4": dict(lr=3e-4), "adamw 3e-3": dict(lr=3e-3)}
    for lr in lrs:
        out[f"{BUDGET} from {lr:g}"] = dict(lr=lr, gen={})
        if unlimited:
            out[f"unlimited from {lr:g}"] = dict(lr=lr, gen=dict(probe_budget=UNLIMITED))
        if warmup_ablation:
            out[f"warmup {WARMUP_BEFORE} from {lr:g}"] = dict(lr=lr, gen=dict(warmup=WARMUP_BEFORE))
        if count_ablation:
            out[f"step as {STEP_FORWARDS_BEFORE:g} forwards from {lr:g}"] = dict(lr=lr, gen=COUNT_BEFORE)
        if budget_ablation:
            out[f"budget {BUDGET_BEFORE['probe_budget']:g} (before) from {lr:g}"] = dict(lr=lr, gen=BUDGET_BEFORE)
        if gift_ablation:
            out[f"credit a gift (before) from {lr:g}"] = dict(lr=lr, gen={}, gift=True)
    if grid:
        out["probe_every 8 from 0.001"] = dict(lr=1e-3, gen=dict(probe_every=8))
    return out


def batch_of(examples, pad_id: int, all_tokens: bool) -> dict[str, torch.Tensor]:
    """A batch with the loss on the reference tokens, or on every token (``all_tokens``)."""
    b = collate(examples, pad_id)
    if all_tokens:
        b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    return b


def run(config: dict, seed: int, data, steps: int, all_tokens: bool, batch: int = 16) -> dict:
    train, held_out_rows, tokenizer = data
    model = model_for(tokenizer, seed)
    groups = group_parameters(model)
    if "gen" in config:
        opt = GeNAdamW(groups, replay_closure(model), lr=config["lr"], **config["gen"])
        if config.get("gift"):
            forgive_debts(opt)
    else:
        opt = torch.optim.AdamW(groups, lr=config["lr"])
    probes = ProbeForwards(model)
    order = random.Random(seed)
    started = time.perf_counter()
    warmup = None  # probe forwards until every group's warm-up is over
    select_at, at_select = select_step(steps), {}  # APPI where Part I would select
    for step in range(1, steps + 1):
        b = batch_of(order.sample(train, batch), tokenizer.pad_token_id, all_tokens)
        opt.zero_grad()
        model(**b).loss.backward()
        opt.step()
        if warmup is None and "gen" in config and all(g["gen_settled"] for g in opt.param_groups):
            warmup = probes.count
        if step == select_at and "gen" in config:
            at_select = dict(opt.state["appi"])
    seconds = time.perf_counter() - started
    probes.remove()
    loss = held_out_loss(model, held_out_rows, tokenizer.pad_token_id,
                         collate_fn=functools.partial(batch_of, all_tokens=all_tokens))
    appi = dict(opt.state["appi"]) if "gen" in config else {}
    rounds = opt.state["gen"]["rounds"] if "gen" in config else 0
    return dict(seconds=seconds, probes=probes.count, loss=loss if math.isfinite(loss) else math.inf, appi=appi,
                appi_select=at_select, rounds=rounds, warmup=warmup)


def sst2_taus(steps: int, seeds: list[int], quick: bool) -> None:
    from .harness import select
    from .table3_sst2 import DATA, SHARED, SST2

    files = [SHARED / "train.tsv", SHARED / "dev.tsv"]
    if quick or not all(f.exists() for f in files):
        files = [DATA / "sst2_train.tsv", DATA / "sst2_dev.tsv"]
    task = SST2(*files, quick)
    print(f"\nSST-2, {'tiny random BERT' if quick else 'all-MiniLM-L6-v2 cut to 2 blocks'}, LoRA + everything, "
          f"GeNAdamW from 1e-4, {steps} steps: APPI ranking, {BUDGET} against unlimited")
    at = select_step(steps)
    unlimited_runs = []
    for seed in seeds:
        budget = select(task, 2, seed, steps, at, 1e-4)
        unlimited = select(task, 2, seed, steps, at, 1e-4, gen=dict(probe_budget=UNLIMITED))
        unlimited_runs.append(unlimited)
        print(f"- seed {seed}: Kendall tau at step {at} (Part I's selection) {kendall_tau(budget.appi, unlimited.appi):.3f}, "
              f"at step {steps} {kendall_tau(budget.appi_end, unlimited.appi_end):.3f}; wall time "
              f"{budget.seconds:.0f} s against {unlimited.seconds:.0f} s", flush=True)
    for a, b in itertools.combinations(unlimited_runs, 2):  # the noise floor
        print(f"- unlimited, seed against seed: Kendall tau at step {at} {kendall_tau(a.appi, b.appi):.3f}, "
              f"at step {steps} {kendall_tau(a.appi_end, b.appi_end):.3f}")


def sst2_quality(out: Path, seeds: list[int], quick: bool) -> None:
    """Dev accuracy of MiniLM full fine-tuning on SST-2: the budget against the unlimited rule."""
    from .harness import Ledger, Run, run_once
    from .lr_free import FULL_FINE_TUNING, STARTS
    from .optimizers import Optimizer
    from .table3_sst2 import SHARED, SST2, sst2_inputs

    quick, files = sst2_inputs(SHARED, quick)
    steps, starts = (16, STARTS[-1:]) if quick else (200, STARTS)
    task = SST2(*files, quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out)
    rules = {"budget": None, "unlimited": dict(probe_budget=UNLIMITED)}
    found = {(start, name): [] for start in starts for name in rules}
    for seed in seeds:
        for start in starts:
            for name, gen in rules.items():
                found[(start, name)].append(run_once(ledger, task, Run(FULL_FINE_TUNING, None, Optimizer.GEN, start, seed), steps,
                                                     gen=gen))
    print(f"\nSST-2, {'tiny random BERT (mechanics only)' if quick else 'all-MiniLM-L6-v2'}, full fine-tuning, "
          f"{steps} steps, batch 16, seeds {seeds}: GeNAdamW at its defaults (budget) against the unlimited rule")
    print("| start | dev accuracy, budget (%) | unlimited (%) | budget - unlimited (points) | wall time, budget / unlimited |")
    print("|---|---|---|---|---|")
    for start in starts:
        budget, unlimited = found[(start, "budget")], found[(start, "unlimited")]
        accuracy = [statistics.fmean(r["metric"] for r in rows) for rows in (budget, unlimited)]
        seconds = [statistics.fmean(r["seconds"] for r in rows) for rows in (budget, unlimited)]
        cells = [" / ".join(f"{100 * r['metric']:.1f}" for r in rows) for rows in (budget, unlimited)]
        print(f"| {start:g} | {cells[0]} (mean {100 * accuracy[0]:.2f}) | {cells[1]} (mean {100 * accuracy[1]:.2f}) "
              f"| {100 * (accuracy[0] - accuracy[1]):+.2f} | {seconds[0] / seconds[1]:.2f} |", flush=True)


def stability_task(args: argparse.Namespace) -> None:
    """The stability task's table: cost, held-out loss and the APPI ranking of each config."""
    data = load()
    todo = configs(args.lrs, args.unlimited, args.grid, args.warmup_ablation, args.count_ablation, args.budget_ablation,
                   args.gift_ablation)
    results: dict[str, list[dict]] = {name: [] for name in todo}
    for seed in args.seeds:
        for name, config in todo.items():
            results[name].append(run(config, seed, data, args.steps, args.all_tokens))
            print(f"  {name}, seed {seed}: {results[name][-1]['seconds']:.0f} s, held-out {results[name][-1]['loss']:.3f}",
                  file=sys.stderr, flush=True)
    adamw = statistics.fmean(r["seconds"] for r in results["adamw 1e-3"])
    best = min((n for n in results if n.startswith("adamw")), key=lambda n: statistics.fmean(r["loss"] for r in results[n]))
    best_loss = statistics.fmean(r["loss"] for r in results[best])
    print(f"stability task, loss on {'every token' if args.all_tokens else 'the reference'}, {args.steps} steps, "
          f"seeds {args.seeds}, warm-up included; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| config | wall time / AdamW | probe rounds | probe forwards / step | compute fraction | warm-up forwards "
          f"| held-out loss | / unlimited | APPI tau vs unlimited at step {select_step(args.steps)} | at the end |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        loss = statistics.fmean(r["loss"] for r in runs)
        forwards = statistics.fmean(r["probes"] for r in runs) / args.steps
        start = name.rpartition("from ")[2]
        twin = results.get(f"unlimited from {start}")
        vs, tau_select, tau = "", "", ""
        if twin and twin is not runs and runs[0]["appi"]:
            vs = f"{loss / statistics.fmean(r['loss'] for r in twin):.3f}"
            tau_select = ", ".join(f"{kendall_tau(a['appi_select'], b['appi_select']):.2f}" for a, b in zip(runs, twin))
            tau = ", ".join(f"{kendall_tau(a['appi'], b['appi']):.2f}" for a, b in zip(runs, twin))
        warmups = [r["warmup"] for r in runs if r.get("warmup") is not None]
        warmup = f"{statistics.fmean(warmups):.0f}" if warmups else ""
        print(f"| {name} | {statistics.fmean(r['seconds'] for r in runs) / adamw:.3f} "
              f"| {statistics.fmean(r['rounds'] for r in runs):.0f} | {forwards:.2f} | {forwards / STEP_FORWARDS:.3f} "
              f"| {warmup} | {loss:.3f} | {vs} | {tau_select} | {tau} |", flush=True)
    for name, runs in results.items():  # how far two seeds of the unlimited rule agree: the ranking's noise floor
        if name.startswith("unlimited") and len(runs) > 1 and runs[0]["appi"]:
            pairs = list(itertools.combinations(runs, 2))
            print(f"{name}, seed against seed: APPI tau at step {select_step(args.steps)} "
                  + ", ".join(f"{kendall_tau(a['appi_select'], b['appi_select']):.2f}" for a, b in pairs)
                  + "; at the end " + ", ".join(f"{kendall_tau(a['appi'], b['appi']):.2f}" for a, b in pairs))
    print(f"best AdamW: {best} {best_loss:.3f}; each GeNAdamW run against it: " + ", ".join(
        f"{n} {statistics.fmean(r['loss'] for r in runs) / best_loss:.3f}" for n, runs in results.items()
        if not n.startswith("adamw")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2])
    parser.add_argument("--all_tokens", action="store_true", help="the loss on every token, not the reference's")
    parser.add_argument("--unlimited", action=argparse.BooleanOptionalAction, default=True,
                        help="also the rule with no budget (the costliest runs)")
    parser.add_argument("--grid", action=argparse.BooleanOptionalAction, default=True,
                        help="also AdamW 3e-4 and 3e-3 and the fixed probe_every=8 (without: the cost of long runs)")
    parser.add_argument("--warmup_ablation", action="store_true",
                        help=f"also the budget with warmup={WARMUP_BEFORE} (the earlier default) from each start")
    parser.add_argument("--count_ablation", action="store_true",
                        help=f"also the budget with a step counted as {STEP_FORWARDS_BEFORE:g} forwards (before) from each start")
    parser.add_argument("--budget_ablation", action="store_true",
                        help=f"also the earlier default budget {BUDGET_BEFORE['probe_budget']:g} from each start")
    parser.add_argument("--gift_ablation", action="store_true",
                        help="also the budget with each group's starting credit a gift (before 2026-12-07) from each start")
    parser.add_argument("--sst2", action="store_true", help="also the APPI ranking on SST-2 (MiniLM, 2 blocks)")
    parser.add_argument("--sst2_quality", action="store_true",
                        help="also dev accuracy on SST-2 (MiniLM full fine-tuning), budget against unlimited")
    parser.add_argument("--sst2_out", type=Path, default=Path("runs/budget_sst2.jsonl"))
    parser.add_argument("--stability", action=argparse.BooleanOptionalAction, default=True,
                        help="the stability task (without: only the SST-2 checks asked for)")
    parser.add_argument("--quick", action="store_true", help="40 steps, one seed, one start: mechanics only")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.seeds, args.lrs = 40, [0], [1e-3]
    if args.stability:
        stability_task(args)
    if args.sst2 or args.quick:
        sst2_taus(16 if args.quick else 200, [0] if args.quick else [0, 1], args.quick)
    if args.sst2_quality or args.quick:
        sst2_quality(args.sst2_out, [0] if args.quick else [0, 1], args.quick)


if __name__ == "__main__":
    main()
