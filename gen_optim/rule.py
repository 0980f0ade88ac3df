"""The rate rule: when a group is probed, what its fit is worth, and where that moves its rate.

Every decision GeNAdamW takes from the probes lives here, as pure functions of one group's
settings (``RateRule``), a ``Fit`` and the group's fitted rate; nothing here touches a tensor.

- ``due``: with a fixed ``probe_every``, a group is probed at each of its first ``warmup``
  steps, then every ``probe_every`` steps. Under the budget (``probe_every=None``, the
  default) each group keeps a ``Schedule``: it earns ``probe_budget * STEP_FORWARDS / K``
  forwards of *credit* per training step (K groups share the budget), pays for each probe it
  gets, and is due when its credit is not negative and its interval has passed. It starts
  with the credit of its warm-up (``warmup`` rounds and ``search`` re-probes); its warm-up lasts until a fit settles its rate (an
  accepted fit whose minimum lies within ``rate_clip`` of the rate) or ``warmup`` rounds
  have run, and the credit warm-up left over is then dropped, so that after warm-up probing
  costs at most ``probe_budget`` of the training compute. After warm-up the interval doubles
  while the rate is steady (a round moves it by less than ``STEADY``) and falls back to one
  step when it moves.
- ``judge``: a fit may set the rate only when it is finite, not flat, a descent direction
  (``A > 0``), convex (``B > 0``) and clean (``R^2 >= r2_min``): the ``Verdict``.
- ``decide``: an accepted fit moves the rate towards ``A / B``, clipped to ``rate_clip`` times
  the rate and smoothed (``smoothing``; none in warm-up). Without one, the rate *shrinks*
  (by ``rate_clip[0]``) when the fit is a clean climb (``A <= 0`` with ``R^2 >= r2_min``),
  and during warm-up also when the fit is *uphill* (the probe at the largest step raised the
  loss: the rate overshoots); otherwise it is kept. A noisy or concave fit whose probes all
  lowered the loss says nothing against the rate: shrinking on it collapsed small and sparse
  groups' rates (embed 5e-5 -> 1.6e-6 in 10 warm-up steps, benchmarks/RESULTS.md).
- ``search``: in a group's first round, a poor fit divides the rate by ``SEARCH_STEP`` and a
  clean convex fit whose minimum lies below ``rate_clip[0]`` times the rate moves it there (by
  ``SEARCH_STEP`` at most); the group is then probed again, ``search`` times at most.
- ``joint_floor``: the least factor the joint correction scales a rate by.

``rate_clip[0]`` serves as the clip floor, the shrink factor, the search trigger and the joint
floor; the benchmarks measured them together (benchmarks/RESULTS.md), so they stay one knob.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from .fit import Fit

SEARCH_STEP = 4.0  # the most one line-search probe lowers a rate
STEP_FORWARDS = 3.0  # a training step's cost in no-grad forwards of its batch (backward ~ 2 forwards)
STEADY = 1.05  # a round that moves a rate by less than this factor (either way) leaves it steady
MAX_INTERVAL = 256  # the longest a steady group's interval grows, in steps
CREDIT_SLACK = 1e-9  # forwards: credit this close below 0 counts as 0 (the sums of shares round)


class Verdict(str, Enum):
    """What a fit is worth: ``ACCEPTED`` may set a rate, the others say why not."""

    ACCEPTED = "accepted"
    NONFINITE = "nonfinite loss"
    FLAT = "flat (the probes did not change the loss)"
    CLIMB = "not a descent direction (A <= 0)"
    CONCAVE = "not convex along d (B <= 0)"
    POOR = "poor fit"


class Action(str, Enum):
    """What a decision does to the rate."""

    FIT = "fit"  # towards A / B
    SHRINK = "shrink"  # by rate_clip[0]
    KEEP = "keep"


@dataclass(frozen=True)
class Decision:
    """A fit's verdict, what it does to the rate, and the new rate."""

    verdict: Verdict
    action: Action
    rate: float
    detail: str = ""

    @property
    def accepted(self) -> bool:
        return self.verdict is Verdict.ACCEPTED

    @property
    def reason(self) -> str | None:
        """Why the fit did not set the rate (``None`` when it did), as the probe record keeps it."""
        if self.accepted:
            return None
        return self.verdict.value + self.detail + (": rate shrunk" if self.action is Action.SHRINK else "")


@dataclass(frozen=True)
class Schedule:
    """One group's probe schedule under the budget, kept in its param group as ``gen_credit``,
    ``gen_next``, ``gen_interval`` and ``gen_settled``."""

    credit: float  # forwards the group may still spend on probes; it waits while this is < 0
    next_step: int  # the first step at which it may be probed again
    interval: int  # steps from one round to the next while the credit allows
    settled: bool  # its warm-up is over

    KEYS = ("gen_credit", "gen_next", "gen_interval", "gen_settled")

    @classmethod
    def of(cls, group: dict[str, Any]) -> Schedule:
        return cls(*(group[k] for k in cls.KEYS))

    def store(self, group: dict[str, Any]) -> None:
        group.update(zip(self.KEYS, (float(self.credit), int(self.next_step), int(self.interval), bool(self.settled))))


@dataclass(frozen=True)
class RateRule:
    """One group's settings for the rule (see the module docstring)."""

    probe_every: int | None  # None: the budget schedules the rounds
    warmup: int
    search: int
    r2_min: float
    smoothing: float
    rate_clip: tuple[float, float]
    probe_budget: float = 0.1
    n_probes: int = 4  # len(probe_scales)

    @classmethod
    def of(cls, group: dict[str, Any]) -> RateRule:
        """The rule of a GeNAdamW param group."""
        return cls(group["probe_every"], group["warmup"], group["search"], group["r2_min"], group["smoothing"],
                   tuple(group["rate_clip"]), group["probe_budget"], len(group["probe_scales"]))

    @property
    def budgeted(self) -> bool:
        """Whether the budget schedules the rounds (no fixed ``probe_every``)."""
        return self.probe_every is None

    @property
    def probing(self) -> bool:
        return self.budgeted or self.probe_every > 0

    def first_schedule(self, rounds: int = 0) -> Schedule:
        """A group's schedule when it has had ``rounds`` rounds: due at once, with the credit
        of its warm-up (``warmup`` rounds and the first round's ``search`` re-probes) while that
        is still to come."""
        if rounds == 0:
            return Schedule(self.warmup_credit, 0, 1, self.warmup == 0)
        settled = rounds >= self.warmup
        return Schedule(0.0 if settled else self.warmup_credit, 0, 1, settled)

    @property
    def warmup_credit(self) -> float:
        """Forwards a group may spend before its warm-up ends: ``warmup`` rounds and ``search``
        re-probes, each its probes and one ``L0``."""
        return (self.warmup + self.search) * (self.n_probes + 1.0)

    def earned(self, groups: int) -> float:
        """The credit one training step earns each of ``groups`` probed groups."""
        return self.probe_budget * STEP_FORWARDS / max(groups, 1)

    def after_round(self, schedule: Schedule, step: int, rounds: int, fit: Fit, decision: Decision,
                    old_rate: float) -> Schedule:
        """The schedule after the group's ``rounds``-th round (counting this one) at ``step``."""
        lo, hi = self.rate_clip
        settled = schedule.settled or rounds >= self.warmup or (
            decision.accepted and lo * old_rate <= fit.rate <= hi * old_rate)
        credit = min(schedule.credit, 0.0) if settled and not schedule.settled else schedule.credit
        moved = decision.action is Action.SHRINK or not (1 / STEADY < decision.rate / old_rate < STEADY)
        interval = 1 if not settled or moved else min(2 * schedule.interval, MAX_INTERVAL)
        return Schedule(credit, step + interval, interval, settled)

    @property
    def shrink(self) -> float:
        """The factor a rate shrinks by without a clean fit."""
        return self.rate_clip[0]

    @property
    def joint_floor(self) -> float:
        """The least factor the joint correction scales a rate by."""
        return self.rate_clip[0]

    def due(self, step: int, schedule: Schedule | None = None) -> bool:
        """Whether the group is probed at ``step`` (under the budget, by its ``schedule``)."""
        if self.budgeted:
            return schedule.credit >= -CREDIT_SLACK and step >= schedule.next_step
        return self.probe_every > 0 and (step < self.warmup or step % self.probe_every == 0)

    def warming(self, step: int, schedule: Schedule | None = None) -> bool:
        """Whether the group is in warm-up: its first ``warmup`` steps, or under the budget
        until its schedule has settled."""
        return not schedule.settled if self.budgeted else step < self.warmup

    def judge(self, fit: Fit) -> Verdict:
        if not np.isfinite([fit.A, fit.B, fit.r2]).all():
            return Verdict.NONFINITE
        if fit.flat:
            return Verdict.FLAT
        if fit.A <= 0:
            return Verdict.CLIMB
        if fit.B <= 0:
            return Verdict.CONCAVE
        if fit.r2 < self.r2_min:
            return Verdict.POOR
        return Verdict.ACCEPTED

    def decide(self, fit: Fit, rate: float, warming: bool) -> Decision:
        """Where one round's fit moves the fitted ``rate`` (``warming``: in warm-up)."""
        verdict = self.judge(fit)
        detail = f" (R^2 {fit.r2:.4f} < {self.r2_min})" if verdict is Verdict.POOR else ""
        if verdict is Verdict.ACCEPTED:
            return Decision(verdict, Action.FIT, self._towards(fit.rate, rate, warming))
        clean_climb = fit.A <= 0 and fit.r2 >= self.r2_min
        if not fit.flat and (clean_climb or (warming and fit.uphill)):  # NaN fits count as uphill
            return Decision(verdict, Action.SHRINK, self._towards(0.0, rate, warming), detail)
        return Decision(verdict, Action.KEEP, rate, detail)

    def _towards(self, target: float, rate: float, warming: bool) -> float:
        lo, hi = self.rate_clip
        target = min(max(target, lo * rate), hi * rate)
        smoothing = 0.0 if warming else self.smoothing
        return smoothing * rate + (1 - smoothing) * target

    def search_move(self, fit: Fit, rate: float) -> float | None:
        """The lower rate one search fit calls for, or ``None`` when the search is done."""
        if fit.flat:
            return None
        if not fit.r2 >= self.r2_min:  # NaN too: a probe overflowed
            return rate / SEARCH_STEP
        if fit.A > 0 and fit.B > 0 and fit.rate < self.shrink * rate:
            return max(fit.rate, rate / SEARCH_STEP)
        return None
