"""The GeN quadratic fit of the loss along one update direction.

Moving a group along its update ``d`` by a step ``eta`` changes the loss by

    L(w - eta d) - L(w) = -eta A + eta^2 / 2 B,    A ~ G'd,  B ~ d'Hd,

so probing a few ``eta`` and solving this 2-parameter least-squares problem (no
intercept: the change is 0 at eta = 0) estimates ``A`` and ``B``. The minimiser of the
fitted parabola is ``eta* = A / B`` and the loss it predicts to remove is ``A^2 / 2B``;
the paper's per-parameter influence is ``PPI = A^2 / (B |w|)`` (here capped at the farthest
probed step, see ``ppi``). When no probe changes the
loss by more than ``resolution`` (a group the loss does not depend on yet, such as LoRA's
``A`` while ``B = 0``) the fit is *flat*: it carries no information about the rate. A fit is
*uphill* when the probe at the largest positive step raised the loss: the rate overshoots.
A climbing fit (``A < 0``: the loss rises along the last update) *overshoots* when it is convex
and its minimum lies behind, among the probes (``-back <= A / B < 0``): the last steps went
past the minimum. A climb whose minimum lies beyond the probes (or that is concave) is a slope
of this batch rising along the update at every probed step: a statement about the direction on
this batch, not about how far the steps go.

The curvature is the small term: at the probes' steps ``eta^2 B / 2`` can be smaller than the
rounding of the loss itself. ``curvature_se`` is the standard error of ``B``, from the fit's
residual and at least from the loss's rounding (``resolution``): a ``B`` within a few of it is
noise. On all-MiniLM-L6-v2 the float32 probes at ``eta = 1e-5`` gave the classifier head
``B`` = 280 where float64 gives 34.1 at every step from 1e-6 to 1e-3 (``B`` = 35.06 is one
float32 rounding unit of the loss in one probe), so ``A / B`` was off by 8x and its sign by
chance (benchmarks/RESULTS.md, "Curvature below the loss's resolution").
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

FLAT_RESOLUTION = 4 * float(np.finfo(np.float32).eps)  # times |L0|: float32 rounding of a mean loss


@dataclass(frozen=True)
class Fit:
    """Slope ``A`` (G'd), curvature ``B`` (d'Hd), coefficient of determination ``r2``, and
    whether the probes left the loss unchanged (``flat``)."""

    A: float
    B: float
    r2: float
    flat: bool = False
    uphill: bool = False  # the probe at the largest positive step raised the loss: the rate overshoots
    reach: float = float("inf")  # the largest positive step probed: the parabola is data up to here
    back: float = float("inf")  # the largest backward step probed (0: none)
    curvature_se: float = 0.0  # standard error of B: from the residual, at least from the loss's rounding

    @property
    def rate(self) -> float:
        """The step that minimises the fitted parabola, ``A / B``."""
        return self.A / self.B

    @property
    def overshoots(self) -> bool:
        """A climb whose parabola has its minimum behind, within the probes (``-back <= A / B < 0``)."""
        return bool(self.A < 0 < self.B and self.A / self.B >= -self.back)


def fit_quadratic(etas: np.ndarray, delta_losses: np.ndarray, resolution: float = 0.0) -> Fit:
    """Least-squares ``A, B`` of ``delta_losses ~ -etas A + etas^2 / 2 B``, its ``R^2`` and the
    standard error of ``B`` (the residual's, with each loss's rounding ``resolution`` as the
    least noise); flat when every ``|delta_loss| <= resolution``."""
    etas = np.asarray(etas, dtype=np.float64)
    y = np.asarray(delta_losses, dtype=np.float64)
    if not np.isfinite(y).all():
        return Fit(float("nan"), float("nan"), float("nan"))
    if np.abs(y).max() <= resolution:
        return Fit(0.0, 0.0, 0.0, flat=True)
    design = np.stack([-etas, 0.5 * etas**2], axis=1)
    (A, B), *_ = np.linalg.lstsq(design, y, rcond=None)
    total = float(np.sum((y - y.mean()) ** 2))
    residual = float(np.sum((y - design @ np.array([A, B])) ** 2))
    r2 = 1.0 - residual / total if total > 0 else 0.0
    dof = len(y) - 2
    noise = max(np.sqrt(residual / dof) if dof > 0 else 0.0, resolution)
    covariance = np.linalg.pinv(design.T @ design)
    return Fit(float(A), float(B), r2, curvature_se=float(noise * np.sqrt(max(covariance[1, 1], 0.0))))


def ppi(fit: Fit, numel: int) -> float:
    """Per-parameter influence of a credited fit (``RateRule.credited``: an accepted one, or an
    unresolved descent at its steepest curvature): twice the loss reduction its parabola
    predicts, per parameter, at its minimum ``A / B`` or at ``reach`` if that is nearer.

    Within reach it is the paper's ``A^2 / (B |w|)``. Beyond it, that formula extrapolates the
    parabola past every probe and grows without bound as ``B -> 0+``: one nearly linear fit
    (LoRA's ``B`` early on) credited a group with 1e6 times the APPI of all others together
    (benchmarks/RESULTS.md), so the reduction is taken at the farthest probed step instead."""
    eta = min(fit.rate, fit.reach)
    return 2.0 * (fit.A * eta - 0.5 * fit.B * eta**2) / numel


@dataclass(frozen=True)
class Probes:
    """One group's probe losses, each with the step ``eta`` that produced it."""

    etas: tuple[float, ...]
    losses: tuple[float, ...]

    def fit(self, loss0: float, sign: float = 1.0) -> Fit:
        """The fit of ``sign * (L(eta) - L0)``: ``sign = -1`` when the group maximizes its objective.
        Flat when no probe moved the loss beyond float32 rounding of ``L0``."""
        delta = sign * (np.asarray(self.losses, dtype=np.float64) - loss0)
        fit = fit_quadratic(np.asarray(self.etas), delta, FLAT_RESOLUTION * abs(loss0))
        far = int(np.argmax(self.etas))
        uphill = not fit.flat and (not np.isfinite(delta).all() or (self.etas[far] > 0 and delta[far] > 0))
        reach = max((e for e in self.etas if e > 0), default=float("inf"))
        back = max((-e for e in self.etas if e < 0), default=0.0)
        return replace(fit, uphill=bool(uphill), reach=float(reach), back=float(back))
