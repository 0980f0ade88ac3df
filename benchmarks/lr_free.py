"""Learning-rate-free for real: GeNAdamW against a tuned AdamW and the learning-rate-free peers.

Full fine-tuning of all-MiniLM-L6-v2 on SST-2 (the task of ``table3_sst2``: batch 16, 64
tokens, dev accuracy; every group trainable, LoRA not trained), with a constant rate and with
a cosine schedule after a linear warm-up (``benchmarks.optimizers.Schedule``); per schedule and
seed, the same data order and steps for:

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
``--quick``: a tiny randomly initialised BERT, 16 steps, one seed (mechanics only, for CI).

    python -m benchmarks.lr_free [--steps 200] [--seeds 3] [--plot benchmarks/results/lr_free.png]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from gen_optim.rule import Action, Verdict

from .harness import Ledger, Run, train
from .optimizers import Optimizer, Schedule
from .table3_sst2 import SHARED, SST2, sst2_inputs

ADAMW_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
STARTS = (1e-5, 1e-4, 1e-3)  # GeNAdamW's default lr is 1e-3
GOAL = 0.01  # GeNAdamW's metric within this (relative) of the best AdamW's, from every start
LABEL = "Full fine-tuning"


def runs_of(optimizer: Optimizer, seed: int, schedule: Schedule, starts: tuple[float, ...] = STARTS) -> list[Run]:
    lrs = ADAMW_GRID if optimizer is Optimizer.ADAMW else starts if optimizer.takes_lr else (float("nan"),)
    return [Run(LABEL, None, optimizer, lr, seed, schedule) for lr in lrs]


def key_of(run: Run, steps: int, task: str) -> dict:
    lr = None if run.lr != run.lr else run.lr  # NaN: the optimizer's own default
    return {"task": task, "optimizer": run.optimizer.value, "schedule": run.schedule.value, "lr": lr,
            "seed": run.seed, "steps": steps}


def settings(run: Run) -> str:
    if run.optimizer.takes_lr:
        return f"{run.optimizer.value} {'from ' if run.optimizer is not Optimizer.ADAMW else ''}{run.lr:g}"
    return f"{run.optimizer.value} (defaults)"


def report(rows: dict[tuple[str, float | None], list[dict]], schedule: Schedule, metric_name: str) -> None:
    adamw = [r for (name, _), rs in rows.items() if name == Optimizer.ADAMW.value for r in rs]
    if not adamw:
        print(f"\n({schedule.value}: no AdamW runs yet)")
        return
    seconds = statistics.fmean(r["seconds"] for r in adamw)
    peak = statistics.fmean(r["peak_mib"] for r in adamw)
    means = {k: statistics.fmean(r["metric"] for r in rs) for k, rs in rows.items()}
    best_key = max((k for k in rows if k[0] == Optimizer.ADAMW.value), key=means.get)
    best = means[best_key]
    print(f"\n### {schedule.value} schedule\n")
    print(f"| optimizer | {metric_name} (%) | vs best AdamW | dev loss | train loss | seeds | time / AdamW "
          f"| peak heap / AdamW | rates at the end |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, lr), rs in rows.items():
        metrics = [r["metric"] for r in rs]
        spread = f" +- {100 * statistics.stdev(metrics):.2f}" if len(metrics) > 1 else ""
        rates = rs[0].get("rates") or {}
        shown = ", ".join(f"{k} {v:.1e}" for k, v in rates.items())
        star = " (best)" if (name, lr) == best_key else ""
        print(f"| {settings(Run(LABEL, None, Optimizer(name), float('nan') if lr is None else lr, 0))}{star} "
              f"| {100 * statistics.fmean(metrics):.2f}{spread} | {100 * (means[(name, lr)] / best - 1):+.1f}% "
              f"| {statistics.fmean(r['eval_loss'] for r in rs):.4f} | {statistics.fmean(r['train_loss'] for r in rs):.4f} "
              f"| {len(rs)} | {statistics.fmean(r['seconds'] for r in rs) / seconds:.2f} "
              f"| {statistics.fmean(r['peak_mib'] for r in rs) / peak:.2f} | {shown} |")
    gen = {k: v for k, v in means.items() if k[0] == Optimizer.GEN.value}
    ours = (Optimizer.ADAMW.value, Optimizer.GEN.value, Optimizer.GEN_FRESH.value)
    peers = {k: v for k, v in means.items() if k[0] not in ours}
    if gen:
        worst = min(gen.values())
        within = all(v >= (1 - GOAL) * best for v in gen.values())
        ahead = all(worst > v for v in peers.values())
        print(f"\nGoal (GeNAdamW from every start within {100 * GOAL:.0f}% of the best AdamW, "
              f"{100 * best:.2f}%, and ahead of every peer): worst start {100 * worst:.2f}% "
              f"({100 * (worst / best - 1):+.1f}%): {'met' if within and ahead else 'NOT met'}"
              + ("" if ahead or not peers else f" (best peer {100 * max(peers.values()):.2f}%)"))


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


def plot(path: Path, ledger: Ledger, task: str, steps: int, schedules: list[Schedule]) -> None:
    from gen_optim.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(schedules), figsize=(6 * len(schedules), 4.5), squeeze=False)
    for axis, schedule in zip(axes[0], schedules):
        rows = grouped(ledger, task, steps, schedule)
        adamw = {k: v for k, v in rows.items() if k[0] == Optimizer.ADAMW.value}
        best = max(adamw, key=lambda k: statistics.fmean(r["metric"] for r in adamw[k]), default=None)
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
            axis.plot(xs, mean, style, label=settings(Run(LABEL, None, Optimizer(name),
                                                          float("nan") if lr is None else lr, 0)))
        axis.set_title(f"{task}, {schedule.value} schedule")
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
    parser.add_argument("--data", type=Path, default=SHARED, help="a folder with train.tsv and dev.tsv")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--schedules", nargs="+", default=[s.value for s in Schedule], choices=[s.value for s in Schedule])
    parser.add_argument("--optimizers", nargs="+", default=[o.value for o in Optimizer],
                        choices=[o.value for o in Optimizer], help="run these (report every one in the ledger)")
    parser.add_argument("--starts", type=float, nargs="+", default=list(STARTS),
                        help="the starting rates of GeNAdamW and GeN's reference")
    parser.add_argument("--out", type=Path, default=Path("runs/lr_free.jsonl"))
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny random BERT, 16 steps, 1 seed: mechanics only")
    parser.add_argument("--report", action="store_true", help="print the tables from --out without training")
    args = parser.parse_args()
    quick, files = sst2_inputs(args.data, args.quick)
    steps, seeds = (16, 1) if quick else (args.steps, args.seeds)
    schedules = [Schedule(s) for s in args.schedules]
    name = "tiny-bert" if quick else "minilm-l6"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(args.out, args.report)
    started = time.time()
    if not args.report:
        task = SST2(*files, quick)
        print(f"{'tiny random BERT (--quick: mechanics only)' if quick else 'all-MiniLM-L6-v2'}, full fine-tuning "
              f"on SST-2 from {files[0]}, {steps} steps, batch 16, {seeds} seed(s); torch {torch.__version__}",
              flush=True)
        for schedule in schedules:
            for seed in range(seeds):
                for optimizer in map(Optimizer, args.optimizers):
                    for run in runs_of(optimizer, seed, schedule, tuple(args.starts)):
                        key = key_of(run, steps, name)
                        if ledger.find(key) is None:
                            ledger.add(key, train(task, run, steps).to_dict())
    print(f"\n## Full fine-tuning of {name} on SST-2, {steps} steps ({time.time() - started:.0f} s)")
    for schedule in schedules:
        rows = grouped(ledger, name, steps, schedule)
        report(rows, schedule, "dev accuracy")
        trajectories(rows, steps)
    if args.plot:
        plot(args.plot, ledger, name, steps, schedules)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
