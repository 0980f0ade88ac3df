"""The shared harness of the real-model benchmarks: one task, many masks and optimizers, seeds.

A ``Task`` knows its data and its model (pretrained, cut to its first ``blocks`` blocks for
the small model of Algorithm 2), how to draw a training batch and how to score a model. The
harness does the rest, the same way for every benchmark (``table3_sst2`` today):

- ``select``: the paper's Part I. The model with LoRA components equipped and every parameter
  trainable, GeNAdamW, APPI recorded; beside it, at no extra forward, the per-group gradient
  score (mean squared gradient per parameter over the same steps: the Fisher-style score of
  FISH-mask / SPEFT-like methods) so that a mask from it can be compared at the same budget.
- ``train``: Part II. The model with LoRA equipped, only ``Run.groups`` trainable, trained by
  ``Run.optimizer`` from ``Run.lr`` for the given steps; the data order depends on the seed
  only, so that every mask and optimizer sees the same batches.
- ``kendall_tau``, ``masks``, ``random_mask``, ``frontier_gap``: rankings, the knapsack's
  sets, and how close the greedy chain comes to the exact frontier.
- ``Ledger``, ``run_once``, ``select_once``: the runs done so far, one JSON line each, so that
  a long benchmark resumes; ``start_lr`` (the paper's starting rates), ``best_rate`` (of an
  AdamW grid), ``yes_no`` and ``plot_frontier``: the pieces of the paper's tables and of its
  Figure 5; ``select_step``: where Part I selects (``SELECT_FRACTION`` of the horizon).

The optimizers (AdamW, GeNAdamW and the learning-rate-free peers) and schedules are in
``benchmarks.optimizers``.
"""
from __future__ import annotations

import copy
import json
import math
import random
import statistics
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from gen_optim import GeNAdamW, Mask, equip_lora, group_parameters
from gen_optim.grouping import real_numel
from gen_optim.mask import FrontierPoint, frontier, propose

from .common import HeapPeak, heap_in_use
from .optimizers import Optimizer, Schedule, build, probe_stream

CURVE_POINTS = 20  # the training-loss curve an outcome keeps: means over this many equal spans


@dataclass(frozen=True)
class Run:
    """One Part II run: the groups it trains (``None``: every group but LoRA's, full
    fine-tuning), how, and with which seed."""

    label: str
    groups: tuple[str, ...] | None
    optimizer: Optimizer
    lr: float
    seed: int
    schedule: Schedule = Schedule.CONSTANT


@dataclass
class Outcome:
    run: Run
    metric: float  # the task's score (higher is better)
    eval_loss: float
    train_loss: float  # mean over the last tenth of the steps
    fraction: float  # trainable parameters / all parameters (LoRA's included)
    seconds: float
    rates: dict[str, float] = field(default_factory=dict)  # fitted rates at the end (GeNAdamW, GeN's reference)
    peak_mib: float = 0.0  # peak heap above the built model's during training (benchmarks.common.HeapPeak)
    curve: list[float] = field(default_factory=list)  # mean training loss over CURVE_POINTS equal spans
    rounds: list[dict[str, Any]] = field(default_factory=list)  # GeNAdamW's probe rounds: rate, verdict, action
    scores: dict[str, float] = field(default_factory=dict)  # the benchmark's extra scores (e.g. E2E's BLEU)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"run": asdict(self.run) | {"optimizer": self.run.optimizer.value,
                                                          "schedule": self.run.schedule.value}}


class Task(Protocol):
    name: str
    metric_name: str
    higher_is_better: bool  # of the metric: accuracy yes, perplexity no
    pretrained: bool

    def model(self, blocks: int | None, seed: int) -> nn.Module:
        """The model (a fresh head drawn with ``seed``), cut to its first ``blocks`` blocks."""

    def batch(self, rng: random.Random) -> dict[str, torch.Tensor]:
        """One training batch, drawn with ``rng``."""

    def evaluate(self, model: nn.Module) -> tuple[float, float]:
        """``(metric, loss)`` on the evaluation split."""


FULL = "full"
LORA_GROUPS = ("lora_A", "lora_B")
PEFT_LR, FULL_LR = 1e-3, 1e-4  # the paper's starting rates for GeNAdamW: PEFT masks, full fine-tuning
FULL_FRACTION = 0.1  # a set training more than this fraction of the model starts from FULL_LR
SELECT_FRACTION = 0.1  # Part I selects at this fraction of the horizon (the paper's Algorithm 2)


def select_step(steps: int) -> int:
    """The step at which Part I reads APPI to select a mask: ``SELECT_FRACTION`` of ``steps``."""
    return max(1, math.floor(SELECT_FRACTION * steps + 1e-9))


def equipped(task: Task, blocks: int | None, seed: int, rank: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return equip_lora(task.model(blocks, seed), r=rank)


def trainable(model: nn.Module, groups: tuple[str, ...] | None) -> float:
    """Train ``groups`` only (``None``: all but LoRA's); returns the trainable fraction."""
    names = {g["name"] for g in group_parameters(model, trainable_only=False)}
    active = tuple(sorted(names - set(LORA_GROUPS))) if groups is None else groups
    return Mask(active, 0.0, None, "given").apply(model)


def train(task: Task, run: Run, steps: int, blocks: int | None = None, gen: dict[str, Any] | None = None,
          log: Callable[[str], None] = print, score: Callable[[nn.Module], dict[str, float]] | None = None) -> Outcome:
    """Part II: train ``run`` for ``steps`` and score it (``task.evaluate``, and ``score`` when
    given: extra scores of the trained model, kept in ``Outcome.scores``)."""
    model = equipped(task, blocks, run.seed)
    fraction = trainable(model, run.groups)
    groups = group_parameters(model)
    batch: dict[str, torch.Tensor] = {}
    base = heap_in_use()
    driver = build(run.optimizer, groups, run.lr, model, batch, steps, run.schedule,
                   probe_stream(task.batch, run.seed), gen)
    order = random.Random(run.seed)
    losses = []
    started = time.perf_counter()
    model.train()
    driver.training()
    with HeapPeak() as heap:
        for step in range(steps):
            batch.clear()
            batch.update(task.batch(order))
            driver.opt.zero_grad(set_to_none=True)
            loss = model(**batch).loss
            loss.backward()
            driver.step(step)
            losses.append(float(loss.detach()))
    seconds = time.perf_counter() - started
    driver.evaluating()
    metric, eval_loss = task.evaluate(model)
    extra = score(model) if score is not None else {}
    tail = losses[-max(1, steps // 10):]
    outcome = Outcome(run, metric, eval_loss, statistics.fmean(tail), fraction, seconds, driver.rates(),
                      (heap.peak - base) / 2**20, curve(losses), driver.rounds(), extra)
    log(f"  {run.label:<22} {run.optimizer.value:<8} {run.schedule.value} lr {run.lr:<7g} seed {run.seed}: "
        f"{task.metric_name} {metric:.4f}, eval loss {eval_loss:.4f}, train loss {outcome.train_loss:.4f}, "
        f"{100 * fraction:.3f}% trainable, {seconds:.0f} s, peak {outcome.peak_mib:.0f} MiB"
        + "".join(f", {k} {v:.4g}" for k, v in extra.items()))
    return outcome


def curve(losses: Sequence[float], points: int = CURVE_POINTS) -> list[float]:
    """The mean of ``losses`` over ``points`` consecutive spans of (nearly) equal length."""
    points = min(points, len(losses))
    bounds = [round(k * len(losses) / points) for k in range(points + 1)]
    return [statistics.fmean(losses[a:b]) for a, b in zip(bounds, bounds[1:])]


@dataclass
class Selection:
    """What Part I recorded: APPI at the selection step and at the end, the gradient score,
    how each group's fits were judged, and the group sizes."""

    appi: dict[str, float]
    appi_end: dict[str, float]
    fisher: dict[str, float]
    verdicts: dict[str, dict[str, int]]
    sizes: dict[str, int]
    seconds: float
    seconds_at_select: float


def select(task: Task, blocks: int | None, seed: int, steps: int, select_at: int, lr: float,
           by: str = "category", gen: dict[str, Any] | None = None) -> Selection:
    """Part I: everything trainable, LoRA equipped, GeNAdamW from ``lr``; APPI is read at
    ``select_at`` (the paper's 10% of the horizon) and at ``steps``."""
    model = equipped(task, blocks, seed)
    groups = group_parameters(model, by=by)
    batch: dict[str, torch.Tensor] = {}
    opt = GeNAdamW(groups, lambda: model(**batch).loss, lr=lr, **(gen or {}))
    squares = {g["name"]: 0.0 for g in groups}
    fisher: dict[str, float] = {}
    appi: dict[str, float] = {}
    at_select = 0.0
    verdicts: dict[str, dict[str, int]] = {g["name"]: {} for g in groups}
    order = random.Random(seed)
    started = time.perf_counter()
    for step in range(steps):
        batch.clear()
        batch.update(task.batch(order))
        opt.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for g in groups:
            squares[g["name"]] += sum(float(p.grad.pow(2).sum()) for p in g["params"] if p.grad is not None)
        opt.step()
        last = opt.last_round
        if last is not None and last["step"] == step:
            for name, entry in last["groups"].items():
                verdicts[name][entry["verdict"]] = verdicts[name].get(entry["verdict"], 0) + 1
        if step + 1 == select_at:
            appi = dict(opt.state["appi"])
            sizes = opt.group_sizes()
            fisher = {k: squares[k] / select_at / sizes[k] for k in squares}
            at_select = time.perf_counter() - started
    return Selection(appi, dict(opt.state["appi"]), fisher, verdicts, opt.group_sizes(), time.perf_counter() - started,
                     at_select)


def masks(scores: dict[str, float], sizes: dict[str, int], eps: float) -> tuple[list[tuple[str, ...]], tuple[str, ...]]:
    """The greedy chain's sets A_1..A_K of ``scores`` (APPI-like: value per parameter) and the
    set chosen for budget ``eps``."""
    chain = [p.groups for p in frontier(scores, sizes, "greedy")[1:]]
    return chain, propose(scores, sizes, eps, "greedy").active


@dataclass(frozen=True)
class FrontierGap:
    """One budget of the exact Pareto frontier (the paper's Section 4.3): the exact knapsack's
    set there, and the greedy chain's heaviest set within the same budget."""

    greedy: FrontierPoint
    exact: FrontierPoint

    @property
    def ratio(self) -> float:
        """The influence the greedy set captures, as a share of the exact optimum's."""
        return self.greedy.value / self.exact.value


def frontier_gap(scores: dict[str, float], sizes: dict[str, int]) -> list[FrontierGap]:
    """At every budget where the exact frontier has a non-empty set, how close greedy comes
    (values are ``scores x size`` summed over a set: the knapsack's influence)."""
    weight = lambda groups: sum(sizes[n] for n in groups)  # noqa: E731 (integers: no rounding of fractions)
    chain = frontier(scores, sizes, "greedy")  # nested, lightest first
    return [FrontierGap([p for p in chain if weight(p.groups) <= weight(point.groups)][-1], point)
            for point in frontier(scores, sizes, "exact") if point.value > 0]


def random_mask(sizes: dict[str, int], eps: float, seed: int) -> tuple[str, ...]:
    """A uniformly drawn non-empty set of groups whose trainable fraction is at most ``eps``."""
    names = list(sizes)
    total = sum(sizes.values())
    feasible = [tuple(n for k, n in enumerate(names) if bits >> k & 1) for bits in range(1, 2 ** len(names))]
    feasible = [s for s in feasible if sum(sizes[n] for n in s) <= eps * total]
    return random.Random(seed).choice(feasible)


def kendall_tau(a: dict[str, float], b: dict[str, float]) -> float:
    """Kendall's tau-b between two scorings of the same groups (ties count for neither)."""
    names = sorted(a)
    concordant = discordant = ties_a = ties_b = 0
    for i, m in enumerate(names):
        for n in names[i + 1:]:
            sa, sb = math.copysign(1, a[m] - a[n]) if a[m] != a[n] else 0, math.copysign(1, b[m] - b[n]) if b[m] != b[n] else 0
            ties_a += sa == 0
            ties_b += sb == 0
            concordant += sa * sb > 0
            discordant += sa * sb < 0
    pairs = len(names) * (len(names) - 1) // 2
    denominator = math.sqrt((pairs - ties_a) * (pairs - ties_b))
    return (concordant - discordant) / denominator if denominator else float("nan")


def fraction_of(groups: Sequence[str], sizes: dict[str, int]) -> float:
    return sum(sizes[g] for g in groups) / sum(sizes.values())


def mean_std(values: Sequence[float], scale: float = 100.0) -> str:
    """``mean +- std`` of ``values`` times ``scale`` (percent by default), or the one value."""
    if len(values) == 1:
        return f"{scale * values[0]:.2f}"
    return f"{scale * statistics.fmean(values):.2f} +- {scale * statistics.stdev(values):.2f}"


def size_of(model: nn.Module) -> int:
    return sum(real_numel(p) for p in model.parameters())


class Ledger:
    """The runs done so far, one JSON line each in ``path``; a rerun skips them."""

    def __init__(self, path: Path, report_only: bool = False):
        self.path, self.report_only = path, report_only
        self.rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def find(self, key: dict) -> dict | None:
        return next((r for r in self.rows if r["key"] == key), None)

    def report_view(self) -> Ledger:
        """The same rows, report-only: runs found in it are reused, runs missing are not trained."""
        view = copy.copy(self)
        view.report_only = True
        return view

    def add(self, key: dict, value: dict) -> dict:
        row = {"key": key, **value}
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        return row


def start_lr(groups: Sequence[str] | None, sizes: dict[str, int]) -> float:
    """GeNAdamW's starting rate for a run training ``groups`` (``None``: full fine-tuning)."""
    if groups is None:
        return FULL_LR
    return FULL_LR if fraction_of(groups, sizes) > FULL_FRACTION else PEFT_LR


def run_once(ledger: Ledger, task: Task, run: Run, steps: int, blocks: int | None = None,
             gen: dict[str, Any] | None = None, score: Callable[[nn.Module], dict[str, float]] | None = None) -> dict | None:
    """The outcome of ``run`` on the model cut to ``blocks``: from the ledger, else trained now
    (``None`` when the ledger only reports)."""
    key = {"kind": "train", "groups": None if run.groups is None else sorted(run.groups), "blocks": blocks,
           "optimizer": run.optimizer.value, "lr": run.lr, "seed": run.seed, "steps": steps}
    if gen and run.optimizer is Optimizer.GEN:
        key["gen"] = gen  # GeNAdamW's settings beyond the defaults: a run with other settings is another run
    found = ledger.find(key)
    if found is None and not ledger.report_only:
        found = ledger.add(key, train(task, run, steps, blocks, gen=gen, score=score).to_dict())
    return found


def select_key(blocks: int | None, seed: int, steps: int, select_at: int, lr: float, by: str = "category",
               gen: dict[str, Any] | None = None) -> dict:
    """The ledger key of a Part I run (GeNAdamW's settings beyond its defaults included)."""
    key = {"kind": "select", "blocks": blocks, "seed": seed, "steps": steps, "select_at": select_at, "lr": lr, "by": by}
    if gen:
        key["gen"] = gen
    return key


def select_once(ledger: Ledger, task: Task, blocks: int | None, seed: int, steps: int, select_at: int, lr: float,
                by: str = "category", gen: dict[str, Any] | None = None) -> dict:
    """Part I's record (``select``) from the ledger, else run now; a report-only ledger
    without it stops the benchmark, saying which run is missing."""
    key = select_key(blocks, seed, steps, select_at, lr, by, gen)
    found = ledger.find(key)
    if found is None and ledger.report_only:
        raise SystemExit("--report: Part I with " + ", ".join(f"{k} {v}" for k, v in key.items()) + " has not run yet")
    if found is None:
        s = select(task, blocks, seed, steps, select_at, lr, by=by, gen=gen)
        print(f"  Part I, {blocks or 'all'} blocks, seed {seed}, by {by}: {s.seconds:.0f} s; APPI at step {select_at} "
              + ", ".join(f"{k} {v:.3g}" for k, v in s.appi.items()), flush=True)
        found = ledger.add(key, asdict(s))
    return found


def best_of(task: Task) -> Callable[..., Any]:
    """``max`` or ``min``: how to pick the best of the task's metrics (highest or lowest, as it says)."""
    return max if task.higher_is_better else min


def best_rate(task: Task, outcomes: dict[float, dict]) -> float:
    """The rate whose outcome scores best on the task's metric."""
    return best_of(task)(outcomes, key=lambda lr: outcomes[lr]["metric"])


def yes_no(groups: Sequence[str] | None, categories: Sequence[str], present: Collection[str] | None = None) -> str:
    """The paper's Y/N columns: which of ``categories`` a run trains (``None``: all but LoRA's);
    a category the model lacks (not in ``present``, when given) is ``-``."""
    active = set(categories) - set(LORA_GROUPS) if groups is None else set(groups)
    return " | ".join("-" if present is not None and c not in present else "Y" if c in active else "N"
                      for c in categories)


def plot_frontier(path: Path, rows: dict[str, tuple[Any, str]], outcomes: dict[str, list[dict]],
                  tuned: dict[str, tuple[float, list[dict]]], metric_label: str, metric: Callable[[dict], float]) -> None:
    """The paper's Figure 5: ``metric`` (top) and the training loss (bottom) against the trainable
    fraction, for the selected sets A_k (a line), heuristic masks and baselines (``rows``' kinds
    "selected", "heuristic", "baseline", trained by GeNAdamW) and ``tuned`` (masks trained by AdamW
    at its best grid rate)."""
    from gen_optim.plots import _pyplot

    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    styles = {"heuristic": ("C1", "s"), "baseline": ("C2", "^")}
    chain = [(statistics.fmean(r["fraction"] for r in outcomes[n]), outcomes[n]) for n, (_, k) in rows.items()
             if k == "selected"]
    for axis, value, label in ((top, metric, metric_label), (bottom, lambda r: r["train_loss"], "train loss")):
        mean = lambda runs: statistics.fmean(value(r) for r in runs)  # noqa: E731
        axis.plot([100 * f for f, _ in chain], [mean(runs) for _, runs in chain], "-o", color="C0",
                  label="selected sets A_k (GeNAdamW)")
        for name, (_, kind) in rows.items():
            if kind in styles:
                color, marker = styles[kind]
                x, y = 100 * statistics.fmean(r["fraction"] for r in outcomes[name]), mean(outcomes[name])
                axis.scatter([x], [y], color=color, marker=marker)
                axis.annotate(name, (x, y), fontsize=7)
        for name, (_, runs) in tuned.items():
            axis.scatter([100 * runs[0]["fraction"]], [mean(runs)], color="C3", marker="x")
        axis.set_ylabel(label)
        axis.set_xscale("log")
    bottom.set_xlabel("trainable parameters (%)")
    top.scatter([], [], color="C1", marker="s", label="heuristic (GeNAdamW)")
    if tuned:
        top.scatter([], [], color="C3", marker="x", label="AdamW at its best grid rate")
    if any(kind == "baseline" for _, kind in rows.values()):
        top.scatter([], [], color="C2", marker="^", label="baseline (GeNAdamW)")
    top.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
