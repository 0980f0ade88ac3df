"""Learning-rate-free for real: GeNAdamW against a tuned AdamW and the learning-rate-free peers.

Two tasks (``--task``):

- ``sst2``: full fine-tuning of all-MiniLM-L6-v2 on SST-2 (the task of ``table3_sst2``: batch
  16, 64 tokens, dev accuracy; every group trainable, LoRA not trained);
- ``e2e``: LoRA (r 8 on q_proj and v_proj) with everything trainable on SmolLM2-135M cut to its
  first ``--blocks`` blocks, on E2E (the task of ``table4_e2e``: batch 8, test perplexity on the
  reference tokens of ``--test_rows`` test rows): the setting where per-group rates should
  matter most (LoRA's B starts at zero; the pretrained weights want much smaller steps than the
  adapters). A cut of SmolLM2 is a broken language model before training (perplexity 8.5e8
  with 4 blocks, ``benchmarks/cuts.py``), so this measures how fast each optimizer repairs and
  adapts it, not a fine-tuning of a working model; all 30 blocks cost about 7x more per step.

Each with a constant rate and with a cosine schedule after a linear warm-up
(``benchmarks.optimizers.Schedule``); per schedule and seed, the same data order and steps for:

- AdamW at each rate of ``ADAMW_GRID`` (two decades around the usual 3e-5): the best, and the
  spread, say how much tuning buys;
- GeNAdamW from each of ``STARTS`` (its default 1e-3 and ten and a hundred times below),
  untuned: the claim; and the same with its probes on a batch of their own along this step's
  direction (``Optimizer.GEN_FRESH``);
- Prodigy, schedule-free AdamW, D-Adaptation Adam at their documented defaults, and GeN's
  reference (``GeN.lr_parabola``, one rate for all groups) from each of ``STARTS``.

Each run records the metric, dev loss, final train loss, a train-loss curve, its wall time and
its peak heap, and GeNAdamW's runs their probe rounds (each group's rate and the fit's verdict:
the table of rate trajectories); the table gives time and memory as ratios to the AdamW runs of the same
schedule, measured in the same process one after the other. Results go to ``--out`` (one JSON
line per run; a rerun skips the runs already there); ``--report`` prints the tables only;
``--optimizers`` runs a subset (the others are reported when the ledger has them).
``--quick``: a tiny randomly initialised BERT (``e2e``: Llama), 16 steps, one seed (mechanics
only, for CI).

    python -m benchmarks.lr_free [--task sst2] [--steps 200] [--seeds 3] [--plot benchmarks/results/lr_free.png]
    python -m benchmarks.lr_free --task e2e [--blocks 4] [--steps 100] [--seeds 3]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gen_optim import group_parameters
from gen_optim.rule import Action, Verdict

from .harness import Ledger, Run, Task, best_of, equipped, train
from .optimizers import Optimizer, Schedule
from .table3_sst2 import SHARED as SST2_DATA, SST2, sst2_inputs
from .table4_e2e import SHARED as E2E_DATA, E2E, e2e_inputs

ADAMW_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
STARTS = (1e-5, 1e-4, 1e-3)  # GeNAdamW's default lr is 1e-3
GOAL = 0.01  # GeNAdamW's metric within this (relative) of the best AdamW's, from every start
SST2_TASK, E2E_TASK = "sst2", "e2e"
FULL_FINE_TUNING = "Full fine-tuning"  # the sst2 task's runs' label (budget.py trains the same runs)


@dataclass(frozen=True)
class Setting:
    """One task of the benchmark: its data and model, what trains, and how the tables name it."""

    task: Task
    name: str  # the ledger's task key
    label: str  # what trains, as the runs' label and the tables' title
    groups: tuple[str, ...] | None  # None: full fine-tuning (every group but LoRA's)
    blocks: int | None  # the model cut to its first blocks (None: whole)
    percent: bool  # the metric is a fraction, shown in percent

    @property
    def best_of(self) -> Callable[..., Any]:
        """``max`` or ``min``: the best of several metrics."""
        return best_of(self.task)

    @property
    def worst_of(self) -> Callable[..., Any]:
        return min if self.best_of is max else max

    def better(self, a: float, b: float) -> bool:
        """Whether metric ``a`` is better than ``b``."""
        return a > b if self.task.higher_is_better else a < b

    def within(self, value: float, best: float) -> bool:
        """Whether ``value`` is within ``GOAL`` (relative) of ``best``."""
        return value >= (1 - GOAL) * best if self.task.higher_is_better else value <= (1 + GOAL) * best

    def shown(self, value: float) -> float:
        return 100 * value if self.percent else value


def setting(task_name: str, data: Path | None, quick: bool, blocks: int, test_rows: int) -> Setting:
    """The task ``task_name`` (``SST2_TASK`` or ``E2E_TASK``) from ``data`` (default: its shared copy)."""
    if task_name == SST2_TASK:
        quick, files = sst2_inputs(data or SST2_DATA, quick)
        return Setting(SST2(*files, quick), "tiny-bert" if quick else "minilm-l6", FULL_FINE_TUNING, None, None, True)
    quick, files = e2e_inputs(data or E2E_DATA, quick)
    blocks = 2 if quick else blocks
    task = E2E(*files, quick, 64 if quick else test_rows, gen_mrs=0)
    # LoRA and everything else: every group the equipped model has
    groups = tuple(sorted({g["name"] for g in group_parameters(equipped(task, blocks, 0), trainable_only=False)}))
    name = f"tiny-llama-{blocks}" if quick else f"smollm2-{blocks}"
    return Setting(task, name, "LoRA + everything", groups, blocks, False)


def runs_of(optimizer: Optimizer, seed: int, schedule: Schedule, where: Setting,
            starts: tuple[float, ...] = STARTS) -> list[Run]:
    lrs = ADAMW_GRID if optimizer is Optimizer.ADAMW else starts if optimizer.takes_lr else (float("nan"),)
    return [Run(where.label, where.groups, optimizer, lr, seed, schedule) for lr in lrs]


def key_of(run: Run, steps: int, task: str) -> dict:
    lr = None if run.lr != run.lr else run.lr  # NaN: the optimizer's own default
    return {"task": task, "optimizer": run.optimizer.value, "schedule": run.schedule.value, "lr": lr,
            "seed": run.seed, "steps": steps}


def settings(run: Run) -> str:
    if run.optimizer.takes_lr:
        return f"{run.optimizer.value} {'from ' if run.optimizer is not Optimizer.ADAMW else ''}{run.lr:g}"
    return f"{run.optimizer.value} (defaults)"


def report(rows: dict[tuple[str, float | None], list[dict]], schedule: Schedule, where: Setting) -> None:
    adamw = [r for (name, _), rs in rows.items() if name == Optimizer.ADAMW.value for r in rs]
    if not adamw:
        print(f"\n({schedule.value}: no AdamW runs yet)")
        return
    seconds = statistics.fmean(r["seconds"] for r in adamw)
    peak = statistics.fmean(r["peak_mib"] for r in adamw)
    means = {k: statistics.fmean(r["metric"] for r in rs) for k, rs in rows.items()}
    best_key = where.best_of((k for k in rows if k[0] == Optimizer.ADAMW.value), key=means.get)
    best = means[best_key]
    unit = " (%)" if where.percent else ""
    print(f"\n### {schedule.value} schedule\n")
    print(f"| optimizer | {where.task.metric_name}{unit} | vs best AdamW | eval loss | train loss | seeds | time / AdamW "
          f"| peak heap / AdamW | rates at the end |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, lr), rs in rows.items():
        metrics = [where.shown(r["metric"]) for r in rs]
        spread = f" +- {statistics.stdev(metrics):.2f}" if len(metrics) > 1 else ""
        rates = rs[0].get("rates") or {}
        shown = ", ".join(f"{k} {v:.1e}" for k, v in rates.items())
        star = " (best)" if (name, lr) == best_key else ""
        print(f"| {settings(Run(where.label, where.groups, Optimizer(name), float('nan') if lr is None else lr, 0))}{star} "
              f"| {statistics.fmean(metrics):.2f}{spread} | {100 * (means[(name, lr)] / best - 1):+.1f}% "
              f"| {statistics.fmean(r['eval_loss'] for r in rs):.4f} | {statistics.fmean(r['train_loss'] for r in rs):.4f} "
              f"| {len(rs)} | {statistics.fmean(r['seconds'] for r in rs) / seconds:.2f} "
              f"| {statistics.fmean(r['peak_mib'] for r in rs) / peak:.2f} | {shown} |")
    gen = {k: v for k, v in means.items() if k[0] == Optimizer.GEN.value}
    ours = (Optimizer.ADAMW.value, Optimizer.GEN.value, Optimizer.GEN_FRESH.value)
    peers = {k: v for k, v in means.items() if k[0] not in ours}
    if gen:
        worst = where.worst_of(gen.values())
        within = all(where.within(v, best) for v in gen.values())
        ahead = all(where.better(worst, v) for v in peers.values())
        unit = "%" if where.percent else ""
        print(f"\nGoal (GeNAdamW from every start within {100 * GOAL:.0f}% of the best AdamW, "
              f"{where.shown(best):.2f}{unit}, and ahead of every peer): worst start {where.shown(worst):.2f}{unit} "
              f"({100 * (worst / best - 1):+.1f}%): {'met' if within and ahead else 'NOT met'}"
              + ("" if ahead or not peers else f" (best peer {where.shown(where.best_of(peers.values())):.2f}{unit})"))


def trajectories(rows: dict[tuple[str, float | None], list[dict]], steps: int) -> None:
    """Each GeNAdamW start's fitted rates (seed 0) after the last round at or before a few
    steps, and how its rounds judged the fits: the study of where the rates go and why."""
    gens = (Optimizer.GEN.value, Optimizer.GEN_FRESH.value)
    if not any(name in gens and rs[0].get("rounds") for (name, _), rs in rows.items()):
        return
    checkpoints = sorted({0, steps // 20, steps // 4, steps // 2, steps - 1})
    verdicts = [v for v in Verdict]
    print(f"\nGeNAdamW's rates (seed 0) after the last round at or before steps {checkpoints}, and its rounds' "
          f"verdicts ({', '.join(v.name.lower() for v in verdicts)}; shrunk: rounds that shrank the rate)\n")
    print("| start | group | rates | " + " | ".join(v.name.lower() for v in verdicts) + " | shrunk |")
    print("|---|---|---|" + "---|" * (len(verdicts) + 1))
    for (name, lr), rs in rows.items():
        if name not in gens or not rs[0].get("rounds"):
            continue
        rounds = rs[0]["rounds"]
        for group in rounds[0]["groups"]:
            seen = [(r["step"], r["groups"][group]) for r in rounds if group in r["groups"]]
            rates = []
            for k in checkpoints:
                before = [e["lr"] for step, e in seen if step <= k]
                rates.append(f"{before[-1]:.1e}" if before else "-")
            counts = [sum(e["verdict"] == v.value for _, e in seen) for v in verdicts]
            shrunk = sum(e["action"] == Action.SHRINK.value for _, e in seen)
            print(f"| {name} from {lr:g} | {group} | {' > '.join(rates)} | " + " | ".join(map(str, counts)) + f" | {shrunk} |")


def plot(path: Path, ledger: Ledger, where: Setting, steps: int, schedules: list[Schedule]) -> None:
    from gen_optim.plots import _pyplot

    plt = _pyplot()
    drawn = [s for s in schedules if grouped(ledger, where.name, steps, s)]  # a schedule with no runs gets no panel
    if not drawn:
        raise ValueError(f"--plot: {ledger.path} has no runs of {where.name} at {steps} steps to plot")
    fig, axes = plt.subplots(1, len(drawn), figsize=(6 * len(drawn), 4.5), squeeze=False)
    for axis, schedule in zip(axes[0], drawn):
        rows = grouped(ledger, where.name, steps, schedule)
        adamw = {k: v for k, v in rows.items() if k[0] == Optimizer.ADAMW.value}
        best = where.best_of(adamw, key=lambda k: statistics.fmean(r["metric"] for r in adamw[k]), default=None)
        for (name, lr), rs in rows.items():
            if name == Optimizer.ADAMW.value and (name, lr) != best:
                continue
            curves = [r["curve"] for r in rs if r.get("curve")]
            if not curves:
                continue
            mean = [statistics.fmean(c[i] for c in curves) for i in range(min(map(len, curves)))]
            xs = [(i + 0.5) * steps / len(mean) for i in range(len(mean))]
            style = "-" if name in (Optimizer.GEN.value, Optimizer.GEN_FRESH.value) else (
                "--" if name == Optimizer.ADAMW.value else ":")
            axis.plot(xs, mean, style, label=settings(Run(where.label, where.groups, Optimizer(name),
                                                          float("nan") if lr is None else lr, 0)))
        axis.set_title(f"{where.name}, {where.label.lower()}, {schedule.value} schedule")
        axis.set_xlabel("step")
        axis.set_ylabel("train loss (mean over seeds)")
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def grouped(ledger: Ledger, task: str, steps: int, schedule: Schedule) -> dict[tuple[str, float | None], list[dict]]:
    rows: dict[tuple[str, float | None], list[dict]] = {}
    for optimizer in Optimizer:
        for row in ledger.rows:
            key = row["key"]
            if (key["task"], key["steps"], key["schedule"], key["optimizer"]) == (task, steps, schedule.value,
                                                                                 optimizer.value):
                rows.setdefault((key["optimizer"], key["lr"]), []).append(row)
    return {k: sorted(v, key=lambda r: r["key"]["seed"]) for k, v in sorted(
        rows.items(), key=lambda kv: (list(Optimizer).index(Optimizer(kv[0][0])), kv[0][1] or 0.0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=SST2_TASK, choices=(SST2_TASK, E2E_TASK))
    parser.add_argument("--data", type=Path, default=None,
                        help=f"sst2: a folder with train.tsv and dev.tsv (default {SST2_DATA}); e2e: with devset.csv "
                             f"and testset_w_refs.csv (default {E2E_DATA})")
    parser.add_argument("--steps", type=int, default=None, help="default: 200 (sst2), 100 (e2e)")
    parser.add_argument("--blocks", type=int, default=4, help="e2e: SmolLM2 cut to its first blocks")
    parser.add_argument("--test_rows", type=int, default=500, help="e2e: test rows for perplexity (0: all 4,693)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--schedules", nargs="+", default=[s.value for s in Schedule], choices=[s.value for s in Schedule])
    parser.add_argument("--optimizers", nargs="+", default=[o.value for o in Optimizer],
                        choices=[o.value for o in Optimizer], help="run these (report every one in the ledger)")
    parser.add_argument("--starts", type=float, nargs="+", default=list(STARTS),
                        help="the starting rates of GeNAdamW and GeN's reference")
    parser.add_argument("--out", type=Path, default=Path("runs/lr_free.jsonl"))
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny random BERT or Llama, 16 steps, 1 seed: mechanics only")
    parser.add_argument("--report", action="store_true", help="print the tables from --out without training")
    args = parser.parse_args()
    where = setting(args.task, args.data, args.quick, args.blocks, args.test_rows)
    quick = not where.task.pretrained
    steps = 16 if quick else args.steps or (200 if args.task == SST2_TASK else 100)
    seeds = 1 if quick else args.seeds
    schedules = [Schedule(s) for s in args.schedules]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(args.out, args.report)
    started = time.time()
    title = f"{where.label} of {where.name} on {where.task.name}, {steps} steps"
    if not args.report:
        print(f"{title}, batch {where.task.batch_size}, {seeds} seed(s)"
              f"{' (--quick: a tiny random model, mechanics only)' if quick else ''}; torch {torch.__version__}",
              flush=True)
        for schedule in schedules:
            for seed in range(seeds):
                for optimizer in map(Optimizer, args.optimizers):
                    for run in runs_of(optimizer, seed, schedule, where, tuple(args.starts)):
                        key = key_of(run, steps, where.name)
                        if ledger.find(key) is None:
                            ledger.add(key, train(where.task, run, steps, where.blocks).to_dict())
    print(f"\n## {title} ({time.time() - started:.0f} s)")
    for schedule in schedules:
        rows = grouped(ledger, where.name, steps, schedule)
        report(rows, schedule, where)
        trajectories(rows, steps)
    if args.plot:
        plot(args.plot, ledger, where, steps, schedules)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
