"""The rate rule: when a group is probed, what its fit is worth, and where that moves its rate.

Every decision GeNAdamW takes from the probes lives here, as pure functions of one group's
settings (``RateRule``), a ``Fit`` and the group's fitted rate; nothing here touches a tensor.

- ``due``: a group is probed at each of its first ``warmup`` steps, then every
  ``probe_every`` steps.
- ``judge``: a fit may set the rate only when it is finite, not flat, a descent direction
  (``A > 0``), convex (``B > 0``) and clean (``R^2 >= r2_min``): the ``Verdict``.
- ``decide``: an accepted fit moves the rate towards ``A / B``, clipped to ``rate_clip`` times
  the rate and smoothed (``smoothing``; none in warm-up). Without one, the rate *shrinks*
  (by ``rate_clip[0]``) during warm-up, unless the fit is flat, and after warm-up only when
  the fit is a clean climb (``A <= 0`` with ``R^2 >= r2_min``); otherwise it is kept.
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
class RateRule:
    """One group's settings for the rule (see the module docstring)."""

    probe_every: int
    warmup: int
    search: int
    r2_min: float
    smoothing: float
    rate_clip: tuple[float, float]

    @classmethod
    def of(cls, group: dict[str, Any]) -> RateRule:
        """The rule of a GeNAdamW param group."""
        return cls(group["probe_every"], group["warmup"], group["search"], group["r2_min"], group["smoothing"],
                   tuple(group["rate_clip"]))

    @property
    def shrink(self) -> float:
        """The factor a rate shrinks by without a clean fit."""
        return self.rate_clip[0]

    @property
    def joint_floor(self) -> float:
        """The least factor the joint correction scales a rate by."""
        return self.rate_clip[0]

    def due(self, step: int) -> bool:
        """Whether the group is probed at ``step``."""
        return self.probe_every > 0 and (step < self.warmup or step % self.probe_every == 0)

    def warming(self, step: int) -> bool:
        return step < self.warmup

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

    def decide(self, fit: Fit, rate: float, step: int) -> Decision:
        """Where one round's fit moves the fitted ``rate`` at ``step``."""
        verdict = self.judge(fit)
        detail = f" (R^2 {fit.r2:.4f} < {self.r2_min})" if verdict is Verdict.POOR else ""
        if verdict is Verdict.ACCEPTED:
            return Decision(verdict, Action.FIT, self._towards(fit.rate, rate, step))
        clean_climb = fit.A <= 0 and fit.r2 >= self.r2_min
        if not fit.flat and (self.warming(step) or clean_climb):  # NaN fits shrink in warm-up only
            return Decision(verdict, Action.SHRINK, self._towards(0.0, rate, step), detail)
        return Decision(verdict, Action.KEEP, rate, detail)

    def _towards(self, target: float, rate: float, step: int) -> float:
        lo, hi = self.rate_clip
        target = min(max(target, lo * rate), hi * rate)
        smoothing = 0.0 if self.warming(step) else self.smoothing
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
