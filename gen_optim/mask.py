"""Masks: which named groups to train, chosen under a budget from the APPI record.

The *trainable fraction* of a set A of groups is ``|A| / |w|``: the parameters in A over
every parameter in the optimizer's groups (a tied weight counted once). The budget ``eps``
bounds it: a mask for ``eps`` trains at most ``eps |w|`` parameters.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .grouping import Grouper, named_groups, real_numel
from .knapsack import exact_frontier, exact_knapsack, greedy_chain

METHODS = ("greedy", "exact")


@dataclass(frozen=True)
class FrontierPoint:
    """One candidate set: its groups, trainable fraction and value ``sum_k APPI_k |w_k|``.

    The value is the accumulated ``A^2 / B`` of the set's groups: twice the loss reduction
    their fitted parabolas predicted, summed over probe rounds.
    """

    groups: tuple[str, ...]
    fraction: float
    value: float


@dataclass(frozen=True)
class Mask:
    """The groups to train (``active``), keyed by name so that it transfers between model sizes.

    ``appi`` and ``sizes`` are the snapshot it was chosen from; ``grouping`` is how the
    groups were formed (``"category"``, ``"layer"`` or ``"custom"``).
    """

    active: tuple[str, ...]
    fraction: float
    eps: float | None
    method: str
    appi: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    grouping: str = "category"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"active": list(self.active)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Mask:
        return cls(**(data | {"active": tuple(data["active"])}))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Mask:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def groups_of(self, model: nn.Module, by: str | Grouper | None = None) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """All of ``model``'s parameters, named and grouped by ``by`` (default: the mask's own
        grouping, as the mask was chosen)."""
        if by is None:
            if self.grouping == "custom":
                raise ValueError("this mask came from a custom grouping: pass the same callable as by=")
            by = self.grouping
        return named_groups(model, by=by, trainable_only=False)

    def apply(self, model: nn.Module, by: str | Grouper | None = None, allow_missing: bool = False) -> float:
        """Train exactly this mask's groups of ``model``; returns its trainable fraction.

        ``model`` is grouped with ``by`` (default: the mask's own grouping) over all its
        parameters; groups named here are set ``requires_grad=True``, all others ``False``.
        A named group the model lacks is an error, or a warning with ``allow_missing=True``.
        """
        groups = self.groups_of(model, by)
        missing = sorted(set(self.active) - set(groups))
        if missing:
            message = f"the mask names groups the model lacks: {missing} (model groups: {sorted(groups)})"
            if not allow_missing:
                raise ValueError(message + "; pass allow_missing=True to train the others anyway")
            warnings.warn(message, stacklevel=2)
        for name, members in groups.items():
            for _, p in members:
                p.requires_grad_(name in self.active)
        active = sum(real_numel(p) for name in self.active if name in groups for _, p in groups[name])
        return active / sum(real_numel(p) for members in groups.values() for _, p in members)


def _arrays(appi: dict[str, float], sizes: dict[str, int]) -> tuple[list[str], np.ndarray, np.ndarray]:
    names = list(sizes)
    weights = np.array([sizes[n] for n in names], dtype=np.int64)
    values = np.array([appi.get(n, 0.0) for n in names]) * weights
    return names, values, weights


def _point(names: list[str], values: np.ndarray, weights: np.ndarray, chosen: tuple[int, ...]) -> FrontierPoint:
    idx = list(chosen)
    return FrontierPoint(tuple(names[k] for k in idx), float(weights[idx].sum() / weights.sum()), float(values[idx].sum()))


def frontier(appi: dict[str, float], sizes: dict[str, int], method: str = "greedy") -> list[FrontierPoint]:
    """The greedy chain's K + 1 nested sets, or the exact Pareto set, lightest first."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    names, values, weights = _arrays(appi, sizes)
    sets = greedy_chain(values, weights) if method == "greedy" else exact_frontier(values, weights)
    return [_point(names, values, weights, s) for s in sets]


def propose(appi: dict[str, float], sizes: dict[str, int], eps: float, method: str = "greedy", grouping: str = "category") -> Mask:
    """The mask of ``method`` for budget ``eps`` (see ``GeNAdamW.propose_mask``)."""
    if isinstance(eps, bool) or not isinstance(eps, float | int) or math.isnan(eps) or not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps is the trainable fraction budget and must lie in [0, 1], got {eps!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not any(appi.get(n, 0.0) > 0 for n in sizes):
        raise ValueError("no group has any APPI yet: train with probing on (probe_every > 0) until probes are accepted")
    names, values, weights = _arrays(appi, sizes)
    capacity = int(math.floor(eps * weights.sum() + 1e-9))
    if method == "greedy":
        chosen = [s for s in greedy_chain(values, weights) if weights[list(s)].sum() <= capacity][-1]
    else:
        chosen = exact_knapsack(values, weights, capacity)
    point = _point(names, values, weights, chosen)
    return Mask(point.groups, point.fraction, float(eps), method, {n: appi.get(n, 0.0) for n in names}, dict(sizes), grouping)
