"""GeNAdamW: AdamW whose per-group learning rates are fitted from the loss (GeN), recording
each group's influence (PPI/APPI) for AdaPEFT's subset selection.

Every ``probe_every`` steps, and at each of the first ``warmup`` steps, a *probe round* runs
before the update:

0. in the first round only, a backtracking line search (``search`` re-probes at most) lowers
   each rate that is too high for one fit to correct: a poor fit (the probes left the
   quadratic regime) divides the rate by 4, a clean convex fit whose minimum ``A / B`` lies
   below ``rate_clip[0]`` times the rate moves it to ``A / B`` (by 4x at most), then it
   probes again (a rate too high does its damage in one step; one too low grows in warm-up);
1. for each group k with gradients, the loss is evaluated at ``w - eta_j d_k`` for
   ``eta_j = s_j * lr_k`` (``s_j`` in ``probe_scales``), only group k moved (see ``probe``);
   ``d_k`` is the previous update's AdamW direction, which the current batch never entered
   (``probe_direction="previous"``), or this step's (``"current"``, the paper's);
2. ``L(eta) - L0 = -eta A + eta^2/2 B`` is fitted (see ``fit``); when ``A > 0``, ``B > 0`` and
   ``R^2 >= r2_min`` the group's rate moves towards ``A / B`` (clipped to ``rate_clip`` times
   the current rate, then smoothed: ``lr <- smoothing lr + (1 - smoothing) target``, with no
   smoothing during warm-up) and ``PPI_k = A^2 / (B |w_k|)`` is added to ``APPI_k``; a clean
   fit with ``A <= 0``, or any rejected fit during warm-up, moves it towards
   ``rate_clip[0]`` times itself instead; a flat fit (no probe moved the loss beyond float32
   rounding) leaves it alone;
3. with ``joint=True``, after the update the loss is evaluated once more at the new weights;
   with the slope ``G'delta = -sum_k lr_k A_k`` this fits the loss along the combined step
   ``delta``, and when the combined step passed its optimum ``c* < 1`` every fitted rate is
   scaled by ``max(c*, rate_clip[0])`` (per-group fits ignore the cross-curvature between groups).

Between rounds it is exactly ``torch.optim.AdamW`` with each group's fitted rate, computed by
torch's own AdamW kernels (foreach where torch uses them); a scheduler's ``group["lr"]``
scales the fitted rate by ``group["lr"] / group["gen_base_lr"]``.
"""
from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch.optim.adam import adam

from .fit import Fit, fit_quadratic, ppi
from .mask import FrontierPoint, Mask, frontier, propose
from .probe import Closure, adamw_direction, evaluate, mean_over_ranks, probe_group, rng_devices

FLAT_RESOLUTION = 4 * torch.finfo(torch.float32).eps  # times |L0|: float32 rounding of a mean loss
SEARCH_STEP = 4.0  # the most one line-search probe moves a rate

NO_CLOSURE_FIX = (
    "GeNAdamW needs a closure to probe the loss (probe_every={every}). Pass one that returns the "
    "loss of the current batch without calling backward, either to the constructor "
    "`GeNAdamW(params, closure=lambda: loss_fn(model(x), y))` or to `opt.step(closure)`; "
    "for the HF Trainer or other loops use `closure=gen_optim.replay_closure(model)`; "
    "or turn probing off with probe_every=0."
)


def _deepspeed_active() -> bool:
    if "accelerate" not in sys.modules:
        return False
    from accelerate.state import AcceleratorState, DistributedType

    return bool(AcceleratorState._shared_state) and AcceleratorState().distributed_type == DistributedType.DEEPSPEED


class GeNAdamW(torch.optim.Optimizer):
    """Drop-in ``torch.optim.AdamW`` with GeN-fitted per-group learning rates and APPI.

    Args:
        params: tensors, or param-group dicts; a dict may carry ``name`` (else ``group{i}``).
            ``gen_optim.group_parameters(model)`` gives the AdaPEFT groups.
        closure: returns the loss of the current batch *without* calling backward; may
            instead be passed to ``step(closure)``. Needed when ``probe_every > 0``.
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW``; ``lr`` is each group's
            starting rate.
        probe_every: steps between probe rounds (0 turns probing off: plain AdamW).
        probe_scales: the multiples ``s_j`` of a group's rate at which it is probed.
        r2_min: the least ``R^2`` of a fit that may set a rate.
        smoothing: weight of the old rate in ``lr <- smoothing lr + (1 - smoothing) target``.
        rate_clip: ``(lo, hi)``: one fit's target lies within ``[lo, hi]`` times the rate.
        joint: scale the rates down when the combined step of all groups passes its optimum.
        warmup: the first steps that all probe, unsmoothed, shrinking rates without a clean fit.
        search: re-probes per group in the first round's line search (0: none).
        probe_direction: ``"previous"`` (the last update's direction) or ``"current"``.
        foreach: as ``torch.optim.AdamW``.

    State: ``state["appi"]`` maps group name -> accumulated PPI; ``state["ppi"]`` holds one
    record per probe round; ``state["step"]`` counts steps. All survive ``state_dict()``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        closure: Closure | None = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        probe_every: int = 8,
        probe_scales: tuple[float, ...] = (-2.0, -1.0, 1.0, 2.0),
        r2_min: float = 0.99,
        smoothing: float = 0.9,
        rate_clip: tuple[float, float] = (0.5, 2.0),
        joint: bool = False,
        warmup: int = 10,
        search: int = 6,
        probe_direction: str = "previous",
        foreach: bool | None = None,
    ) -> None:
        if not (isinstance(lr, float | int) and lr > 0):
            raise ValueError(f"lr must be a positive float (the starting point of each fitted rate), got {lr!r}")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
        if not (isinstance(probe_every, int) and probe_every >= 0):
            raise ValueError(f"probe_every must be an int >= 0 (0 turns probing off), got {probe_every!r}")
        scales = tuple(float(s) for s in probe_scales)
        if len(set(scales)) < 3 or 0.0 in scales:
            raise ValueError(f"probe_scales needs at least 3 distinct non-zero values to fit and judge a parabola, got {probe_scales}")
        if not 0.0 <= r2_min <= 1.0 or not 0.0 <= smoothing < 1.0:
            raise ValueError(f"r2_min must lie in [0, 1] and smoothing in [0, 1), got {r2_min}, {smoothing}")
        if not (isinstance(warmup, int) and warmup >= 0):
            raise ValueError(f"warmup must be an int >= 0 (steps that all probe, unsmoothed), got {warmup!r}")
        if not (isinstance(search, int) and search >= 0):
            raise ValueError(f"search must be an int >= 0 (re-probes of the first round's line search), got {search!r}")
        if probe_direction not in ("previous", "current"):
            raise ValueError(f"probe_direction must be 'previous' or 'current', got {probe_direction!r}")
        if not 0.0 < rate_clip[0] <= 1.0 <= rate_clip[1]:
            raise ValueError(f"rate_clip must be (lo, hi) with 0 < lo <= 1 <= hi, got {rate_clip}")
        self.closure = closure
        self.probe_every = probe_every
        self.probe_scales = scales
        self.r2_min = r2_min
        self.smoothing = smoothing
        self.rate_clip = rate_clip
        self.joint = joint
        self.probe_direction = probe_direction
        self.warmup = warmup
        self.search = search
        self._warned: set[str] = set()
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach)
        super().__init__(params, defaults)
        self.state.setdefault("step", 0)
        self.state.setdefault("ppi", [])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer``; names the group and starts its fitted rate at ``lr``."""
        name = param_group.setdefault("name", f"group{len(self.param_groups)}")
        if any(g["name"] == name for g in self.param_groups):
            raise ValueError(f"two param groups are named {name!r}; group names must be unique")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("gen_lr", float(group["lr"]))
        group.setdefault("gen_base_lr", float(group["lr"]))
        self.state.setdefault("appi", {})[name] = 0.0

    @staticmethod
    def rate(group: dict[str, Any]) -> float:
        """The rate this group steps with: the fitted rate times the scheduler's factor."""
        return group["lr"] * (group["gen_lr"] / group["gen_base_lr"])

    def _init_group(self, group: dict[str, Any]) -> tuple[list[torch.Tensor], ...]:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("GeNAdamW does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        return params, grads, exp_avgs, exp_avg_sqs, steps

    def _direction(self, group: dict[str, Any], params, grads, exp_avgs, exp_avg_sqs, steps):
        """``d(i, w_i)`` for the i-th tensor of this group: the previous update's direction
        (``probe_direction="previous"``, where there is one) or this step's."""
        beta1, beta2 = group["betas"]
        args = (beta1, beta2, group["eps"], group["weight_decay"])

        def direction(i: int, w: torch.Tensor) -> torch.Tensor:
            t = int(steps[i])
            if self.probe_direction == "previous" and t > 0:
                return adamw_direction(w, exp_avgs[i], exp_avg_sqs[i], t, *args)
            return adamw_direction(w, exp_avgs[i], exp_avg_sqs[i], t + 1, *args, grad=grads[i])

        return direction

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> float | None:
        """One AdamW step, preceded by a probe round every ``probe_every`` steps.

        Returns the probe batch's loss ``L0`` on probe steps, else ``None``.
        """
        closure = closure if closure is not None else self.closure
        work = [(group, *self._init_group(group)) for group in self.param_groups]
        step = self.state["step"]
        probing = self.probe_every > 0 and (step < self.warmup or step % self.probe_every == 0)
        record = self._probe_round(closure, work) if probing else None
        for group, params, grads, exp_avgs, exp_avg_sqs, steps in work:
            if params:
                beta1, beta2 = group["betas"]
                adam(
                    params, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=group["foreach"],
                    amsgrad=False, beta1=beta1, beta2=beta2, lr=self.rate(group),
                    weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                    decoupled_weight_decay=True,
                )
        self.state["step"] += 1
        if record is None:
            return None
        if self.joint:
            self._joint_correction(closure, work, record)
        self.state["ppi"].append(record)
        return record["loss"]

    def _loss(self, closure: Closure, work: list[tuple]) -> Any:
        grads = [g for _, _, gs, *_ in work for g in gs]
        devices = rng_devices([p for group in self.param_groups for p in group["params"]])
        return lambda: evaluate(closure, grads, devices)

    def _probe_round(self, closure: Closure | None, work: list[tuple]) -> dict[str, Any]:
        """Probe every group with gradients, fit, and move the rates; returns the round's record."""
        if closure is None:
            raise RuntimeError(NO_CLOSURE_FIX.format(every=self.probe_every))
        if _deepspeed_active():
            raise RuntimeError(
                "GeNAdamW cannot probe under DeepSpeed: its optimizer wrapper hands the optimizer flat "
                "ZeRO shards, not the model's weights, so a probe would not move the model. Use "
                "data parallel (DDP) or turn probing off with probe_every=0."
            )
        if hasattr(closure, "start_round"):
            closure.start_round()
        loss = self._loss(closure, work)
        probed = [w for w in work if w[1] and self.rate(w[0]) > 0]
        if self.state["step"] == 0 and self.search:
            self._search(loss, probed)
        values = self._probe(loss, probed)
        return self._fit_round(values, [w[0] for w in probed])

    def _probe(self, loss: Any, probed: list[tuple]) -> list[float]:
        """``L0``, then each group's losses at its probe scales, averaged over ranks in the
        round's one host sync."""
        losses = [loss()]
        for w in probed:
            etas = [s * self.rate(w[0]) for s in self.probe_scales]
            losses += probe_group(w[1], self._direction(*w), etas, loss)
        return mean_over_ranks(torch.stack(losses)).tolist()

    def _fit(self, group: dict[str, Any], values: list[float], k: int) -> Fit:
        """The fit of the k-th probed group from a round's ``values``."""
        loss0, n = values[0], len(self.probe_scales)
        etas = np.array(self.probe_scales) * self.rate(group)
        delta = np.array(values[1 + k * n : 1 + (k + 1) * n]) - loss0
        return fit_quadratic(etas, delta, FLAT_RESOLUTION * abs(loss0))

    def _search(self, loss: Any, probed: list[tuple]) -> None:
        """The first round's backtracking: probe, lower each group's rate that one fit could
        not correct (``_search_move``), and probe those again, ``search`` times at most."""
        for _ in range(self.search):
            values = self._probe(loss, probed)
            if not np.isfinite(values[0]):
                return  # the closure itself is broken: nothing to learn about rates
            probed = [w for k, w in enumerate(probed) if self._search_move(w[0], self._fit(w[0], values, k))]
            if not probed:
                return

    def _search_move(self, group: dict[str, Any], fit: Fit) -> bool:
        """Lower a group's rate after one search fit; ``True`` when it must be probed again."""
        rate = self.rate(group)
        if fit.flat:
            return False
        if not fit.r2 >= self.r2_min:  # NaN too: a probe overflowed
            target = rate / SEARCH_STEP
        elif fit.A > 0 and fit.B > 0 and fit.rate < self.rate_clip[0] * rate:
            target = max(fit.rate, rate / SEARCH_STEP)
        else:
            return False
        group["gen_lr"] = target * group["gen_base_lr"] / group["lr"]
        return True

    def _fit_round(self, values: list[float], groups: list[dict[str, Any]]) -> dict[str, Any]:
        record: dict[str, Any] = {"step": self.state["step"], "loss": values[0], "groups": {}}
        for k, group in enumerate(groups):
            fit = self._fit(group, values, k)
            reason = fit.rejection(self.r2_min)
            if reason == "nonfinite loss":
                self._warn_once("nonfinite", "the probe closure returned NaN or inf; the affected fits are rejected")
            entry = {"A": fit.A, "B": fit.B, "r2": fit.r2, "ppi": 0.0, "accepted": reason is None, "reason": reason}
            if reason is None:
                entry["ppi"] = ppi(fit, sum(p.numel() for p in group["params"]))
                self.state["appi"][group["name"]] += entry["ppi"]
                self._move_rate(group, fit.rate)
            elif not fit.flat and (self.state["step"] < self.warmup or (fit.A <= 0 and fit.r2 >= self.r2_min)):
                self._move_rate(group, 0.0)  # no clean parabola yet, or a clean climb: step less
                entry["reason"] += ": rate shrunk"
            entry["lr"] = self.rate(group)
            record["groups"][group["name"]] = entry
        return record

    def _move_rate(self, group: dict[str, Any], target: float) -> None:
        rate, (lo, hi) = self.rate(group), self.rate_clip
        target = min(max(target, lo * rate), hi * rate)
        schedule = group["lr"] / group["gen_base_lr"]
        smoothing = self.smoothing if self.state["step"] >= self.warmup else 0.0
        group["gen_lr"] = smoothing * group["gen_lr"] + (1 - smoothing) * target / schedule

    def _joint_correction(self, closure: Closure, work: list[tuple], record: dict[str, Any]) -> None:
        """Fit the loss along the combined step just taken; scale the rates back if it overshot."""
        loss1 = mean_over_ranks(self._loss(closure, work)().reshape(1)).item()
        groups = [g for g in self.param_groups if g["name"] in record["groups"]]
        slope = -sum(self.rate(g) * record["groups"][g["name"]]["A"] for g in groups)
        curvature = 2.0 * (loss1 - record["loss"] - slope)
        scale = -slope / curvature if slope < 0 and curvature > 0 else 1.0
        scale = min(1.0, max(scale, self.rate_clip[0])) if np.isfinite(scale) else 1.0
        for g in groups:
            g["gen_lr"] *= scale
            record["groups"][g["name"]]["lr"] = self.rate(g)
        record["joint"] = {"loss": loss1, "slope": slope, "curvature": curvature, "scale": scale}

    def group_sizes(self) -> dict[str, int]:
        """``|w_k|``: the number of parameters in each group."""
        return {g["name"]: sum(p.numel() for p in g["params"]) for g in self.param_groups}

    def _grouping(self) -> str:
        kinds = {g.get("grouping", "custom") for g in self.param_groups}
        return kinds.pop() if len(kinds) == 1 else "custom"

    def pareto_frontier(self, method: str = "greedy") -> list[FrontierPoint]:
        """Candidate sets from ``state["appi"]``: the greedy chain, or the exact Pareto set."""
        return frontier(self.state["appi"], self.group_sizes(), method)

    def propose_mask(self, eps: float, method: str = "greedy") -> Mask:
        """The groups to train under trainable fraction ``<= eps``, from ``state["appi"]``.

        ``"greedy"`` (the paper): the largest set of the greedy chain (APPI descending) that
        fits. ``"exact"``: the 0-1 knapsack optimum of ``sum_k APPI_k |w_k|``, the lightest
        among ties (Pareto optimal); up to 40 groups. The mask is kept for ``freeze()``.
        """
        mask = propose(self.state["appi"], self.group_sizes(), eps, method, self._grouping())
        self.state["mask"] = mask.to_dict()
        return mask

    def freeze(self, mask: Mask | None = None) -> Mask:
        """Train only ``mask``'s groups (default: the last proposed mask), for real.

        Other groups get ``requires_grad=False``, lose ``.grad`` and their AdamW state, and
        are neither decayed nor probed any more; probing goes on for the active groups.
        Freeze before wrapping the model for data parallel (DDP fixes its gradient set).
        """
        if mask is None:
            if "mask" not in self.state:
                raise RuntimeError("freeze() needs a mask: call opt.propose_mask(eps) first, or pass freeze(mask)")
            mask = Mask.from_dict(self.state["mask"])
        unknown = sorted(set(mask.active) - {g["name"] for g in self.param_groups})
        if unknown:
            raise ValueError(f"the mask names groups this optimizer lacks: {unknown}")
        for group in self.param_groups:
            active = group["name"] in mask.active
            for p in group["params"]:
                p.requires_grad_(active)
                if not active:
                    p.grad = None
                    self.state.pop(p, None)
        self.state["mask"] = mask.to_dict()
        return mask

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"GeNAdamW: {message}", RuntimeWarning, stacklevel=3)
