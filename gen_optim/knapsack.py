"""The 0-1 knapsack of AdaPEFT's subset selection, on plain arrays.

Group k has value ``v_k = APPI_k |w_k|`` and weight ``|w_k|`` (its parameter count); a set
``S`` is feasible when ``sum_{k in S} |w_k| <= capacity``. Value is additive, so
``sum_{k in S} v_k`` is the influence the probes credit to training ``S``.

- ``greedy_chain``: the paper's solution: the nested sets made of the k groups of highest
  value-to-weight ratio (APPI), k = 0..K.
- ``exact_knapsack``: the optimum, and among optimal sets the lightest (the paper's refined,
  Pareto-optimal solution, Theorem 2.2), by meet in the middle: the subsets of each half
  are enumerated (2^(K/2) each) and joined by binary search, so K <= 40 stays fast.
- ``exact_frontier``: every Pareto-optimal (weight, value) point, by enumerating all
  2^K subsets (K <= 20).
"""
from __future__ import annotations

import numpy as np

MAX_EXACT = 40
MAX_FRONTIER = 20


def greedy_chain(values: np.ndarray, weights: np.ndarray) -> list[tuple[int, ...]]:
    """The K + 1 nested sets of the greedy order (ratio descending, then lighter, then index)."""
    ratio = np.where(weights > 0, values / np.maximum(weights, 1), 0.0)
    order = sorted(range(len(values)), key=lambda k: (-ratio[k], weights[k], k))
    return [tuple(sorted(order[:k])) for k in range(len(order) + 1)]


def _subsets(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Total value and weight of every subset, indexed by its bit mask."""
    total_v, total_w = np.zeros(1), np.zeros(1, dtype=np.int64)
    for v, w in zip(values, weights):
        total_v = np.concatenate([total_v, total_v + v])
        total_w = np.concatenate([total_w, total_w + w])
    return total_v, total_w


def _members(mask: int, offset: int = 0) -> tuple[int, ...]:
    return tuple(offset + k for k in range(mask.bit_length()) if mask >> k & 1)


def exact_knapsack(values: np.ndarray, weights: np.ndarray, capacity: int) -> tuple[int, ...]:
    """The lightest among the sets of maximal value with weight <= ``capacity``."""
    K = len(values)
    if K > MAX_EXACT:
        raise ValueError(
            f"the exact knapsack enumerates 2^(K/2) subsets per half and is limited to {MAX_EXACT} groups, "
            f"got {K}: use method='greedy', or coarser groups (by='category')"
        )
    half = K // 2
    va, wa = _subsets(values[:half], weights[:half])
    vb, wb = _subsets(values[half:], weights[half:])
    order = np.argsort(wb, kind="stable")
    vb, wb, masks_b = vb[order], wb[order], order
    best = np.maximum.accumulate(vb)
    first = np.flatnonzero(np.r_[True, best[1:] > best[:-1]])  # where the running best improves
    best_at = first[np.searchsorted(first, np.arange(len(vb)), side="right") - 1]  # lightest holder of best
    fit = np.searchsorted(wb, capacity - wa, side="right") - 1
    ok = fit >= 0
    total_v = np.where(ok, va + best[np.maximum(fit, 0)], -np.inf)
    total_w = np.where(ok, wa + wb[best_at[np.maximum(fit, 0)]], np.iinfo(np.int64).max)
    a = int(np.argmin(np.where(total_v == total_v.max(), total_w, np.iinfo(np.int64).max)))
    b = int(masks_b[best_at[fit[a]]])
    return _members(a) + _members(b, half)


def exact_frontier(values: np.ndarray, weights: np.ndarray) -> list[tuple[int, ...]]:
    """Every Pareto-optimal set, lightest first: more value needs more weight."""
    K = len(values)
    if K > MAX_FRONTIER:
        raise ValueError(
            f"the exact Pareto frontier enumerates all 2^K subsets and is limited to {MAX_FRONTIER} groups, "
            f"got {K}: use method='greedy', or propose_mask(eps, method='exact') per budget"
        )
    v, w = _subsets(values, weights)
    order = np.lexsort((-v, w))
    running = np.maximum.accumulate(v[order])
    keep = np.r_[True, running[1:] > running[:-1]] & (v[order] == running)
    return [_members(int(m)) for m in order[keep]]
