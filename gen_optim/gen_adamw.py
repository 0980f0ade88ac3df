"""GeNAdamW: AdamW whose per-group learning rates are fitted from the loss (GeN), recording
each group's influence (PPI/APPI) for AdaPEFT's subset selection.

A *probe round* runs before the update for the groups that are due: by default as often as
``probe_budget`` allows (over a run long enough to repay each group's starting credit, probes
cost at most that fraction of the training compute, counted in forwards; see
``rule.Schedule``), or every ``probe_every`` steps and at each of the first
``ceil(1 / (1 - beta1)) + warmup`` steps when ``probe_every`` is given:

0. in each group's first round whose probes move the loss (its first round, unless that is
   flat: LoRA's ``A`` while ``B`` is 0), a backtracking line search (``search`` re-probes at
   most) lowers each rate that is too high for one fit to correct: a poor fit (the probes left
   the quadratic regime) divides the rate by 4, a clean convex fit whose *fitted rate* (below)
   lies below ``rate_clip[0]`` times the rate moves it there (by 4x at most), then it
   probes again (a rate too high does its damage in one step; one too low grows by the progress
   test). The search's last probes of a rate it leaves stand are the round's own (step 1);
1. for each group k with gradients, the loss is evaluated at ``w - eta_j d_k`` for
   ``eta_j = s_j * lr_k`` (``s_j`` in ``probe_scales``), only group k moved (see ``probe``);
   ``d_k`` is the previous update's AdamW direction, which the current batch never entered
   (``probe_direction="previous"``), or this step's (``"current"``, the paper's);
2. ``L(eta) - L0 = -eta A + eta^2/2 B`` is fitted (see ``fit``); when ``A > 0``, ``B > 0``
   (resolved: at least ``rule.CURVATURE_Z`` standard errors, the loss's rounding included) and
   ``R^2 >= r2_min`` the group's rate moves towards its *fitted rate* ``A / B / M``: the
   parabola's minimum spread over the ``M = ceil(1 / (1 - beta1))`` steps that AdamW's first
   moment carries a direction into (clipped to ``rate_clip`` times the current rate, then
   smoothed: ``lr <- smoothing lr + (1 - smoothing) target``, with no smoothing during
   warm-up) and ``PPI_k`` (``fit.ppi``: ``A^2 / (B |w_k|)``, capped at the farthest probed
   step) times the steps since the group's previous round (``RateRule.span``: APPI estimates
   the sum of PPI over every step, whatever the schedule) is added to ``APPI_k``. A fit may
   *raise* a rate only once AdamW's moments are past their transient (``M`` steps) and the
   group's *descent tally* (its recent clean fits that descended, minus those that climbed) is
   clearly positive; else it holds the rate. A clean
   climb (``A <= 0``) that *overshoots* (its parabola's minimum lies behind, within the probes)
   moves it towards ``rate_clip[0]`` times itself in the moments' transient or when the tally
   is clearly negative, and so does, during warm-up, a descending fit whose largest probe step
   raised the loss (*uphill*); a climb with no (resolved) minimum behind it within the probes,
   other rejected fits, and flat ones (no probe moved the loss beyond float32 rounding), leave
   it alone. A clean descent whose curvature is *unresolved* (below the loss's rounding at the
   probes' steps: a straight line) may raise the rate towards the least fitted rate it allows,
   ``A / (max(B, 0) + CURVATURE_Z se_B) / M``, as an accepted fit would, and adds the PPI of
   that steepest parabola (see ``rule``);
3. with ``joint=True``, after the update the loss is evaluated once more at the new weights;
   with the slope ``G'delta = -sum_k lr_k A_k`` this fits the loss along the combined step
   ``delta``, and when the combined step passed its optimum ``c* < 1`` every fitted rate is
   scaled by ``max(c*, rate_clip[0])`` (per-group fits ignore the cross-curvature between groups).

At every step, before any round, each group's *progress test* (``rule.Progress``) takes the
cosine between its gradient and the previous update's direction (one pass over its tensors, no
forward; summed over the shards under FSDP2); where the previous update clearly keeps
descending on each new batch the fitted rate grows, where it clearly climbs it shrinks
(``RateRule.progress_factor``; ``progress=False`` turns it off). Between rounds the update is
exactly ``torch.optim.AdamW``'s with each group's fitted rate, computed by torch's own AdamW
kernels (foreach where torch uses them); a scheduler's ``group["lr"]`` scales the fitted rate
by ``group["lr"] / group["gen_base_lr"]``.
"""
from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.optim.adamw import adamw
from torch.optim.optimizer import _get_scalar_dtype, _use_grad_for_differentiable

from .fit import Fit, Probes, ppi
from .grouping import real_numel
from .mask import FrontierPoint, Mask, frontier, propose
from .probe import (
    Closure,
    ClosureError,
    adamw_directions,
    chunks,
    evaluate,
    local,
    mean_over_ranks,
    probe_group,
    real,
    rng_devices,
    sharded,
    sum_over_ranks,
)
from .rule import PROBE_BUDGET, RATE_FLOOR, Progress, RateRule, Schedule, Standing, Verdict

NEVER_PROBED = -1  # ``gen_probed_at`` of a group there from the start: its first span counts from step 0
HISTORY_ROUNDS = 256  # probe records kept in the state; older ones are thinned to every other one
COSINE_DTYPE = torch.float32  # the progress test sums each tensor's terms in this dtype, or in the tensor's own if wider

# AdamW's options, as torch.optim.AdamW names and defaults them.
ADAMW_OPTIONS = dict(amsgrad=False, maximize=False, foreach=None, capturable=False, differentiable=False, fused=None)
# GeN's settings: per param group, like AdamW's, so they survive state_dict(), copies and pickles.
GEN_SETTINGS = dict(
    probe_every=None, probe_budget=PROBE_BUDGET, probe_scales=(-2.0, -1.0, 1.0, 2.0), r2_min=0.99, smoothing=0.9,
    rate_clip=(0.5, 2.0), joint=False, warmup=0, search=6, probe_direction="previous", fit_steps=None,
    progress=True,
)
PROBE_DIRECTIONS = ("previous", "current")

NO_CLOSURE_FIX = (
    "GeNAdamW needs a probe closure to probe the loss: one that returns the "
    "loss of the current batch without calling backward, given to the constructor, "
    "`GeNAdamW(params, closure=lambda: loss_fn(model(x), y))`, or set as `opt.closure`; "
    "for the HF Trainer or other loops use `closure=gen_optim.replay_closure(model)`; "
    "or turn probing off with probe_every=0. (`opt.step(closure)` takes torch's kind of closure, "
    "which computes the gradients, and cannot probe.)"
)
STEP_CLOSURE_FIX = (
    "opt.step(closure) follows torch's contract: the closure must compute the gradients "
    "(zero_grad, forward, backward) and return the loss. This one computed no gradient. A probe "
    "closure (the loss without backward) goes to the constructor, "
    "`GeNAdamW(params, closure=...)`, or to `opt.closure`."
)
FLOOR_WARNING = (
    "group '{name}' reached its rate floor ({floor:.3g}, {fraction:g} of its starting lr): its fits or "
    "its progress test kept lowering it. It is still probed and tested, so evidence can raise it "
    "again; a group that should not train can be left out of the mask given to opt.freeze."
)


def _deepspeed_active() -> bool:
    if "accelerate" not in sys.modules:
        return False
    from accelerate.state import AcceleratorState, DistributedType

    return bool(AcceleratorState._shared_state) and AcceleratorState().distributed_type == DistributedType.DEEPSPEED


def _check_adamw(lr: Any, betas: tuple, eps: float, weight_decay: float, options: dict[str, Any]) -> None:
    """torch.optim.AdamW's own checks of its arguments."""
    if isinstance(lr, torch.Tensor):
        if options["foreach"] and not options["capturable"]:
            raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
        if lr.numel() != 1:
            raise ValueError("a Tensor lr must have one element")
    elif isinstance(lr, bool) or not isinstance(lr, float | int):
        raise TypeError(f"lr must be a float (or a one-element Tensor), got {lr!r}")
    if not lr >= 0.0:
        raise ValueError(f"lr must be >= 0 (each group's starting rate), got {lr!r}")
    if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
        raise ValueError(f"betas must lie in [0, 1), got {betas}")
    if not eps >= 0 or not weight_decay >= 0:
        raise ValueError(f"eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
    if options["fused"] and options["differentiable"]:
        raise RuntimeError("`fused` does not support `differentiable`")
    if options["fused"] and options["foreach"]:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


def _check_gen(group: dict[str, Any]) -> None:
    """GeN's checks of one param group's settings."""
    every, scales, budget = group["probe_every"], group["probe_scales"], group["probe_budget"]
    if every is not None and (isinstance(every, bool) or not (isinstance(every, int) and every >= 0)):
        raise ValueError(f"probe_every must be None (the budget schedules), or an int >= 0 (a fixed interval; 0 "
                         f"turns probing off), got {every!r}")
    if isinstance(budget, bool) or not isinstance(budget, float | int) or not 0 < budget < float("inf"):
        raise ValueError(f"probe_budget is the most probing may add to the training compute over a run, a "
                         f"fraction > 0 (e.g. 0.05), got {budget!r}; turn probing off with probe_every=0")
    if len(set(scales)) < 3 or 0.0 in scales:
        raise ValueError(f"probe_scales needs at least 3 distinct non-zero values to fit and judge a parabola, "
                         f"got {scales}")
    if not 0.0 <= group["r2_min"] <= 1.0 or not 0.0 <= group["smoothing"] < 1.0:
        raise ValueError(f"r2_min must lie in [0, 1] and smoothing in [0, 1), got {group['r2_min']}, "
                         f"{group['smoothing']}")
    for key, meaning in (("warmup", "steps that all probe, unsmoothed"),
                         ("search", "re-probes of the line search that opens a group's first round with a signal")):
        if isinstance(group[key], bool) or not (isinstance(group[key], int) and group[key] >= 0):
            raise ValueError(f"{key} must be an int >= 0 ({meaning}), got {group[key]!r}")
    steps = group["fit_steps"]
    if steps is not None and (isinstance(steps, bool) or not (isinstance(steps, int) and steps >= 1)):
        raise ValueError(f"fit_steps must be None (ceil(1 / (1 - beta1)), the first moment's reach) or an int "
                         f">= 1 (1: GeN's A / B), got {steps!r}")
    if not isinstance(group["progress"], bool):
        raise ValueError(f"progress must be True (the progress test moves rates between rounds) or False, "
                         f"got {group['progress']!r}")
    if group["probe_direction"] not in PROBE_DIRECTIONS:
        raise ValueError(f"probe_direction must be one of {PROBE_DIRECTIONS}, got {group['probe_direction']!r}")
    lo, hi = group["rate_clip"]
    if not 0.0 < lo <= 1.0 <= hi:
        raise ValueError(f"rate_clip must be (lo, hi) with 0 < lo <= 1 <= hi, got {group['rate_clip']}")
    if group["differentiable"] and every != 0:
        raise ValueError(
            "differentiable=True cannot probe: probes edit the weights in place, which autograd forbids "
            "for tensors a differentiable step saved; use probe_every=0 (a differentiable AdamW)"
        )


def _fresh_log() -> dict[str, Any]:
    """The optimizer-wide record kept in ``state["gen"]``."""
    return {"step": 0, "rounds": 0, "stride": 1, "history": [], "last_round": None, "mask": None}


def _thin(log: dict[str, Any]) -> None:
    """Keep every other history record, doubling the stride, until at most ``HISTORY_ROUNDS`` remain."""
    while len(log["history"]) > HISTORY_ROUNDS:
        log["history"], log["stride"] = log["history"][::2], 2 * log["stride"]


def _last_probed(log: dict[str, Any], name: str) -> int:
    """The step of group ``name``'s last round in the record ``log`` (a checkpoint from before
    ``gen_probed_at``), or ``NEVER_PROBED``."""
    records = ([log["last_round"]] if log["last_round"] else []) + log["history"][::-1]
    return next((int(r["step"]) for r in records if name in r["groups"]), NEVER_PROBED)


def _log_from_0_1_0(state: dict[Any, Any]) -> dict[str, Any]:
    """``state["gen"]`` from a 0.1.0 checkpoint, which kept ``step``, ``ppi`` and ``mask`` in the state."""
    log = _fresh_log()
    log["step"] = int(state.pop("step", 0))
    log["history"] = list(state.pop("ppi", []))
    log["mask"] = state.pop("mask", None)
    log["rounds"] = len(log["history"])
    log["last_round"] = log["history"][-1] if log["history"] else None
    _thin(log)
    return log


@dataclass(frozen=True)
class DirectionSettings:
    """A group's settings that the previous update's direction depends on besides the step
    count; tensors of groups with equal settings are computed together."""

    betas: tuple[float, float]
    eps: float
    weight_decay: float
    amsgrad: bool


@dataclass
class GroupWork:
    """One param group's tensors with gradients, gathered for this step's AdamW kernel."""

    group: dict[str, Any]
    params: list[torch.Tensor] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)
    exp_avgs: list[torch.Tensor] = field(default_factory=list)
    exp_avg_sqs: list[torch.Tensor] = field(default_factory=list)
    max_exp_avg_sqs: list[torch.Tensor] = field(default_factory=list)
    steps: list[torch.Tensor] = field(default_factory=list)
    has_complex: bool = False
    _counts: list[int] | None = field(default=None, repr=False)

    def counts(self) -> list[int]:
        """The gradients each tensor's moments have seen (read once per round: with
        ``capturable`` or ``fused`` the counts live on the device)."""
        if self._counts is None:
            self._counts = [int(t) for t in self.steps]
        return self._counts

    def direction_settings(self) -> DirectionSettings:
        """The settings the previous update's direction depends on besides the step count."""
        g = self.group
        return DirectionSettings(tuple(g["betas"]), g["eps"], g["weight_decay"], g["amsgrad"])

    def runs(self) -> list[list[int]]:
        """The chunks a probe moves this group in: tensors of one device, dtype and count."""
        return chunks([real(p) for p in self.params], self.counts())

    def direction(self, run: Sequence[int], ws: list[torch.Tensor]) -> list[torch.Tensor]:
        """``d`` of the tensors at ``run`` (one count) at their values ``ws``: the previous
        update's direction (``probe_direction="previous"``, where there is one) or this step's."""
        g, settings = self.group, self.direction_settings()
        t = self.counts()[run[0]]
        previous = g["probe_direction"] == "previous" and t > 0

        def at(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
            return [real(tensors[i]) for i in run]

        return adamw_directions(
            ws, at(self.exp_avgs), at(self.exp_avg_sqs), t if previous else t + 1, *settings.betas, settings.eps,
            settings.weight_decay, grads=None if previous else at(self.grads),
            max_exp_avg_sqs=at(self.max_exp_avg_sqs) if settings.amsgrad else None, maximize=g["maximize"],
        )


@dataclass(frozen=True)
class Round:
    """A probe round: ``L0``, and the fit of each probed group's probes, by group name."""

    loss0: float
    fits: dict[str, Fit]


class GeNAdamW(torch.optim.Optimizer):
    """Drop-in ``torch.optim.AdamW`` with GeN-fitted per-group learning rates and APPI.

    Args:
        params: tensors, or param-group dicts; a dict may carry ``name`` (else ``group{i}``)
            and any setting below (AdamW's and GeN's alike) for that group alone.
            ``gen_optim.group_parameters(model)`` gives the AdaPEFT groups.
        closure: the *probe closure*: returns the loss of the current batch *without* calling
            backward. Needed unless ``probe_every=0``; may be set later as ``opt.closure``.
        lr, betas, eps, weight_decay, amsgrad: as ``torch.optim.AdamW``; ``lr`` is each group's
            starting rate.
        probe_every: ``None`` (default): the budget schedules the probe rounds; an int: a fixed
            interval between rounds instead (0 turns probing off: plain AdamW).
        probe_budget: the most probing adds to the training compute over a run, as a fraction
            (forwards counted; a training step counts as ``rule.STEP_FORWARDS``). Each group's
            first round's search (and warm-up) is lent to it as a starting credit that its share
            of the budget repays before it pays for later rounds, so a run too short to repay it
            spends that credit (``RateRule.warmup_credit`` forwards a group) and no more.
        probe_scales: the multiples ``s_j`` of a group's rate at which it is probed.
        r2_min: the least ``R^2`` of a fit that may set a rate.
        smoothing: weight of the old rate in ``lr <- smoothing lr + (1 - smoothing) target``.
        rate_clip: ``(lo, hi)``: one fit's target lies within ``[lo, hi]`` times the rate.
        joint: scale the rates down when the combined step of all groups passes its optimum.
        warmup: the steps that all probe after the moments' transient (``ceil(1 / (1 - beta1))``
            steps, where no rate grows) with a fixed interval, or each group's most rounds after
            it before its rate settles (budget); unsmoothed, shrinking uphill rates. 0 (the
            default): no warm-up and no transient rounds; the first round's search and the
            progress test set the early rates (README, "When to probe: the budget").
        search: re-probes per group in its line search (0: none), which runs in its first
            round whose fit is not flat, and whose probes of a rate it keeps are that round's.
        probe_direction: ``"previous"`` (the last update's direction) or ``"current"``.
        fit_steps: the steps an accepted fit's one-step minimum ``A / B`` is spread over: its
            target is ``A / B / fit_steps``. ``None`` (default): ``ceil(1 / (1 - beta1))``, the
            steps AdamW's first moment carries a direction into (10 at the default betas);
            ``1``: GeN's ``A / B``, measured better on a pretrained causal LM (PEFT masks and full
            fine-tuning) and for training from scratch, worse for full fine-tuning of MiniLM on
            SST-2 (README, "Learning-rate-free").
        progress: the progress test moves the fitted rates between rounds (see ``rule``); with
            ``False`` only probe rounds move them.
        foreach, maximize, capturable, differentiable, fused: as ``torch.optim.AdamW``
            (``differentiable`` only with ``probe_every=0``).

    State: ``state[p]`` holds AdamW's tensors for each parameter, ``state["appi"]`` maps group
    name -> accumulated PPI (each round's PPI times the steps since the group's previous round,
    ``RateRule.span``), and ``state["gen"]`` the step count, the last proposed mask and a
    bounded history of probe rounds (``opt.history``). All survive ``state_dict()``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        closure: Closure | None = None,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        probe_every: int | None = GEN_SETTINGS["probe_every"],
        probe_budget: float = GEN_SETTINGS["probe_budget"],
        probe_scales: tuple[float, ...] = GEN_SETTINGS["probe_scales"],
        r2_min: float = GEN_SETTINGS["r2_min"],
        smoothing: float = GEN_SETTINGS["smoothing"],
        rate_clip: tuple[float, float] = GEN_SETTINGS["rate_clip"],
        joint: bool = GEN_SETTINGS["joint"],
        warmup: int = GEN_SETTINGS["warmup"],
        search: int = GEN_SETTINGS["search"],
        probe_direction: str = GEN_SETTINGS["probe_direction"],
        fit_steps: int | None = GEN_SETTINGS["fit_steps"],
        progress: bool = GEN_SETTINGS["progress"],
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        if closure is not None and not callable(closure):
            raise TypeError(
                f"the second argument of GeNAdamW is the probe closure, got {closure!r}: pass the "
                "learning rate by keyword, `GeNAdamW(params, lr=...)`"
            )
        options = dict(amsgrad=amsgrad, maximize=maximize, foreach=foreach, capturable=capturable,
                       differentiable=differentiable, fused=fused)
        _check_adamw(lr, betas, eps, weight_decay, options)
        self.closure = closure
        self._warned: set[str] = set()
        settings = dict(probe_every=probe_every, probe_budget=probe_budget,
                        probe_scales=tuple(float(s) for s in probe_scales), r2_min=r2_min, smoothing=smoothing,
                        rate_clip=tuple(rate_clip), joint=joint, warmup=warmup, search=search,
                        probe_direction=probe_direction, fit_steps=fit_steps, progress=progress)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, **options, **settings)
        super().__init__(params, defaults)
        self.state["gen"] = _fresh_log()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer``; names the group, checks its settings and starts its
        fitted rate at ``lr``."""
        name = param_group.setdefault("name", f"group{len(self.param_groups)}")
        if any(g["name"] == name for g in self.param_groups):
            raise ValueError(f"two param groups are named {name!r}; group names must be unique")
        if "probe_scales" in param_group:
            param_group["probe_scales"] = tuple(float(s) for s in param_group["probe_scales"])
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            _check_gen(group)
        except ValueError:
            self.param_groups.pop()
            raise
        group.setdefault("gen_lr", float(group["lr"]))
        group.setdefault("gen_base_lr", float(group["lr"]))
        group.setdefault("gen_rounds", 0)
        group.setdefault("gen_searched", False)
        group.setdefault("gen_descent", 0.0)
        # its spans count from the step it joins at (a group added to a running optimizer has no earlier steps)
        group.setdefault("gen_probed_at", self.state["gen"]["step"] - 1 if "gen" in self.state else NEVER_PROBED)
        Progress().store(group)
        RateRule.of(group).first_schedule().store(group)
        self.state.setdefault("appi", {})[name] = 0.0

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Fill what older checkpoints and other optimizers' state dicts lack.

        Called by ``load_state_dict`` (this optimizer's groups still in place) and by
        unpickling (none): a key a loaded group lacks takes this optimizer's group's value,
        else the default; the fitted rate starts at the loaded ``lr``; 0.1.0's ``step``,
        ``ppi`` and ``mask`` entries move into ``state["gen"]``.
        """
        own = self.__dict__.get("param_groups") or []
        super().__setstate__(state)
        self.__dict__.setdefault("closure", None)
        self.__dict__.setdefault("_warned", set())
        for key, value in (ADAMW_OPTIONS | GEN_SETTINGS).items():
            self.defaults.setdefault(key, value)
        if "gen" not in self.state:
            self.state["gen"] = _log_from_0_1_0(self.state)
        appi = self.state.setdefault("appi", {})
        for i, group in enumerate(self.param_groups):
            mine = own[i] if i < len(own) else {}
            group.setdefault("name", mine.get("name", f"group{i}"))
            if not group.pop("decoupled_weight_decay", True) and group["weight_decay"] != 0:
                raise ValueError(
                    f"param group {group['name']!r} comes from torch.optim.Adam with L2 weight decay "
                    "(decoupled_weight_decay=False); GeNAdamW is AdamW: load it with weight_decay=0 or start afresh"
                )
            for key, value in self.defaults.items():
                if key != "lr":
                    group.setdefault(key, mine.get(key, value))
            group.setdefault("gen_lr", float(group["lr"]))
            group.setdefault("gen_base_lr", float(group["lr"]))
            if "gen_rounds" not in group:  # the history is read only for checkpoints from before these keys
                group["gen_rounds"] = sum(group["name"] in r["groups"] for r in self.state["gen"]["history"])
            group.setdefault("gen_searched", group["gen_rounds"] > 0)  # before 2026-12-07: searched in its first round
            group.setdefault("gen_descent", 0.0)
            if "gen_probed_at" not in group:
                group["gen_probed_at"] = _last_probed(self.state["gen"], group["name"])
            if any(k not in group for k in Progress.KEYS):  # from before the progress test: it starts afresh
                Progress().store(group)
            if "gen_credit" in group:  # from before the debt (2026-12-07): its starting credit was not owed
                group.setdefault("gen_debt", 0.0)
            if any(k not in group for k in Schedule.KEYS):  # from 0.1.0 or AdamW: warm-up only if not done
                RateRule.of(group).first_schedule(group["gen_rounds"]).store(group)
            appi.setdefault(group["name"], 0.0)
            for p in group["params"]:
                p_state = self.state.get(p)
                if p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = self._new_step(group, p, float(p_state["step"]))

    def __deepcopy__(self, memo: dict[int, Any]) -> GeNAdamW:
        """A copy that steps on its own copies of the parameters, with the same probe closure
        (deep-copied too: a closure over a model copies the model with the same parameters)."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        new.closure = copy.deepcopy(self.closure, memo)
        return new

    @staticmethod
    def _new_step(group: dict[str, Any], p: torch.Tensor, value: float = 0.0) -> torch.Tensor:
        """A parameter's step counter, where torch's AdamW keeps it for these options."""
        if group["capturable"] or group["fused"]:
            return torch.tensor(value, dtype=_get_scalar_dtype(is_fused=group["fused"]), device=p.device)
        return torch.tensor(value, dtype=_get_scalar_dtype())

    @staticmethod
    def rate(group: dict[str, Any]) -> float | torch.Tensor:
        """The rate this group steps with: the fitted rate times the scheduler's factor
        ``lr / gen_base_lr`` (its ``lr`` while no rate has been fitted from a positive one)."""
        base = group["gen_base_lr"]
        return group["gen_lr"] * (group["lr"] / base) if base > 0 else group["lr"]

    @property
    def history(self) -> list[dict[str, Any]]:
        """Probe records, oldest first: every round while there were at most ``HISTORY_ROUNDS``,
        then every 2nd, 4th, ... round, so that the whole run stays in a bounded record."""
        return self.state["gen"]["history"]

    @property
    def last_round(self) -> dict[str, Any] | None:
        """The latest probe round's record (read it after each step for a complete log)."""
        return self.state["gen"]["last_round"]

    def _init_group(self, group: dict[str, Any]) -> GroupWork:
        work = GroupWork(group)
        if group["gen_base_lr"] == 0 and float(group["lr"]) > 0:  # lr was 0 until now (a warm-up from 0)
            group["gen_lr"] = group["gen_base_lr"] = float(group["lr"])
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("GeNAdamW does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = self._new_step(group, p)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            work.has_complex |= torch.is_complex(p)
            work.params.append(p)
            work.grads.append(p.grad)
            work.exp_avgs.append(state["exp_avg"])
            work.exp_avg_sqs.append(state["exp_avg_sq"])
            if group["amsgrad"]:
                work.max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            work.steps.append(state["step"])
        return work

    @_use_grad_for_differentiable
    def step(self, closure: Closure | None = None) -> Any:
        """One AdamW step, preceded by a probe round for the groups that are due.

        ``closure`` is torch's kind (it computes the gradients and returns the loss, as for
        LBFGS or Lightning); it is called once with gradients enabled and its loss returned.
        Probes use the probe closure (``opt.closure``). Returns ``None`` without ``closure``.
        """
        loss = None if closure is None else self._training_closure(closure)
        log = self.state["gen"]
        work = [self._init_group(group) for group in self.param_groups]
        probing = self._probing(work)
        self._progress(probing)
        due = self._due(probing, log["step"])
        record = self._probe_round(due, work) if due else None
        for w in work:
            if w.params:
                g = w.group
                beta1, beta2 = g["betas"]
                adamw(
                    w.params, w.grads, w.exp_avgs, w.exp_avg_sqs, w.max_exp_avg_sqs, w.steps,
                    foreach=g["foreach"], capturable=g["capturable"], differentiable=g["differentiable"],
                    fused=g["fused"], has_complex=w.has_complex, amsgrad=g["amsgrad"], beta1=beta1, beta2=beta2,
                    lr=self.rate(g), weight_decay=g["weight_decay"], eps=g["eps"], maximize=g["maximize"],
                )
        log["step"] += 1
        if record is not None:
            joint = [w for w in due if w.group["joint"]]
            if joint:
                self._joint_correction(joint, work, record)
            self._log(record)
        self._check_floors(probing)
        return loss

    @torch.compiler.disable  # host-side logic: torch.compile(opt.step) runs it eagerly
    def _check_floors(self, probing: list[tuple[GroupWork, RateRule]]) -> None:
        """Warn, once a group, when the rules have held its rate at the floor (``RateRule.floored``)."""
        for w, rule in probing:
            if rule.at_floor(w.group["gen_lr"]):
                self._warn_once(f"floor {w.group['name']}", FLOOR_WARNING.format(
                    name=w.group["name"], floor=rule.floor, fraction=RATE_FLOOR))

    @torch.compiler.disable  # host-side logic: torch.compile(opt.step) runs it eagerly
    def _training_closure(self, closure: Closure) -> Any:
        """Call torch's kind of closure with gradients enabled; it must compute gradients."""
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad and p.is_leaf]
        computed: list[bool] = []
        handles = [p.register_post_accumulate_grad_hook(lambda _: computed.append(True)) for p in params]
        try:
            with torch.enable_grad():
                loss = closure()
        finally:
            for handle in handles:
                handle.remove()
        if params and not computed:
            raise ClosureError(STEP_CLOSURE_FIX)
        return loss

    @torch.compiler.disable  # host-side logic: torch.compile(opt.step) runs it eagerly
    def _progress(self, probing: list[tuple[GroupWork, RateRule]]) -> None:
        """Each testing group's progress test takes this step's ``c_t`` (the cosine between its
        gradient and the previous update's direction, over the tensors that have one), and its
        rate moves by the factor the rule gives (``RateRule.progress_factor``); one host sync for all."""
        rules = [(w, rule) for w, rule in probing if rule.progress]
        if not rules:
            return
        totals = self._cosine_terms([w for w, _ in rules])
        if totals is None:
            return
        if sharded(p for w, _ in rules for p in w.params):
            totals = sum_over_ranks(totals)  # FSDP2: each rank holds a shard of each tensor
        for (w, rule), (dot, grad_sq, dir_sq) in zip(rules, totals.tolist()):
            group = w.group
            if not (grad_sq > 0 and dir_sq > 0 and np.isfinite(dot)):
                continue  # no tensor with a previous update yet, or no gradient
            sign = -1.0 if group["maximize"] else 1.0
            test = Progress.of(group).after(sign * dot / np.sqrt(grad_sq * dir_sq))
            test.store(group)
            group["gen_lr"] = rule.floored(group["gen_lr"] * rule.progress_factor(test))

    @staticmethod
    def _cosine_terms(tested: list[GroupWork]) -> torch.Tensor | None:
        """Each group's ``g . d``, ``g . g`` and ``d . d`` (a ``len(tested) x 3`` float64
        tensor) over its tensors that have a previous update, ``d`` that update's direction; of
        a sharded tensor, its local shard. ``None`` when no tensor has one yet.

        The groups' tensors are computed together, in runs of one device, dtype, step count
        and direction settings (``probe.chunks``, at most ``PROBE_CHUNK`` elements each), not
        group by group, so the ops launched do not grow with the number of groups: on the
        2-layer GPT-2 of benchmarks/overhead.py (four groups) 55 a step against 119; on its CPU
        the time moved within the machine's noise (benchmarks/RESULTS.md).
        One pass per term: the squares as ``_foreach_norm``, ``g . d`` as the sums of
        ``d *= g`` (``d`` is this call's own). Each tensor's terms accumulate in
        ``COSINE_DTYPE`` or its own dtype if wider, the tensors' sums in float64: over 2^20
        float32 elements the cosine holds to about 1e-5 relative (torch's CPU norm kernel;
        the dot's cascaded sum to 1e-7), far below its noise from batch to batch, where
        summing every element in float64 cost more than the AdamW step itself."""
        owners = [(i, w, j) for i, w in enumerate(tested) for j, count in enumerate(w.counts()) if count > 0]
        if not owners:
            return None
        keys = [(w.direction_settings(), w.counts()[j]) for _, w, j in owners]

        def shards(members: list[tuple[int, GroupWork, int]], tensors: str) -> list[torch.Tensor]:
            return [local(real(getattr(w, tensors)[j])) for _, w, j in members]

        rows, index = [], []
        for run in chunks([real(w.params[j]) for _, w, j in owners], keys):
            members = [owners[k] for k in run]
            settings, count = keys[run[0]]
            d = adamw_directions(shards(members, "params"), shards(members, "exp_avgs"), shards(members, "exp_avg_sqs"),
                                 count, *settings.betas, settings.eps, settings.weight_decay,
                                 max_exp_avg_sqs=shards(members, "max_exp_avg_sqs") if settings.amsgrad else None)
            g = shards(members, "grads")
            acc = torch.promote_types(g[0].dtype, COSINE_DTYPE)
            squares = [torch.stack(torch._foreach_norm(ts, 2, acc)).double().square() for ts in (g, d)]
            torch._foreach_mul_(d, g)
            dots = torch.stack([t.sum(dtype=acc) for t in d]).double()
            rows.append(torch.stack([dots, *squares], 1))
            index += [i for i, _, _ in members]
        device = rows[0].device
        terms = torch.cat([r.to(device) for r in rows])
        totals = torch.zeros(len(tested), 3, dtype=torch.float64, device=device)
        return totals.index_add_(0, torch.tensor(index, device=device), terms)

    @staticmethod
    def _probing(work: list[GroupWork]) -> list[tuple[GroupWork, RateRule]]:
        """The groups GeN acts on this step, each with its rule: tensors with gradients, a
        positive fitted rate (the rule's floor keeps it so), and probing on."""
        rules = [(w, RateRule.of(w.group)) for w in work if w.params and w.group["gen_lr"] > 0]
        return [(w, rule) for w, rule in rules if rule.probing]

    @staticmethod
    def _due(rules: list[tuple[GroupWork, RateRule]], step: int) -> list[GroupWork]:
        """The groups of ``rules`` (``_probing``) probed at ``step``; under the budget, each
        first earns its share of this step's budget (``RateRule.earn``)."""
        budgeted = sum(rule.budgeted for _, rule in rules)
        for w, rule in rules:
            if rule.budgeted:
                rule.earn(Schedule.of(w.group), budgeted).store(w.group)
        return [w for w, rule in rules if rule.due(step, Schedule.of(w.group))]

    @staticmethod
    def _charge(probed: list[GroupWork], own: list[int], shared: int) -> None:
        """Pay for a round's forwards from the budgeted groups' credit: each its own probes and
        an equal share of the ``shared`` ones (``L0``, the joint correction's). A group on a
        fixed ``probe_every`` earns no credit and pays none, so that it keeps its starting
        credit should it move to the budget (``probe_every=None``) later."""
        for w, n in zip(probed, own):
            if RateRule.of(w.group).budgeted:
                w.group["gen_credit"] -= n + shared / len(probed)

    def _loss(self, closure: Closure, work: list[GroupWork]) -> Any:
        grads = [g for w in work for g in w.grads]
        devices = rng_devices([p for group in self.param_groups for p in group["params"]])
        return lambda: evaluate(closure, grads, devices)

    @torch.compiler.disable  # closure calls, fits and host syncs: torch.compile(opt.step) runs them eagerly
    def _probe_round(self, due: list[GroupWork], work: list[GroupWork]) -> dict[str, Any]:
        """Probe the due groups, fit, and move their rates; returns the round's record."""
        closure = self.closure
        if closure is None:
            raise RuntimeError(NO_CLOSURE_FIX)
        if _deepspeed_active():
            raise RuntimeError(
                "GeNAdamW cannot probe under DeepSpeed: its optimizer wrapper hands the optimizer flat "
                "ZeRO shards, not the model's weights, so a probe would not move the model. Use "
                "data parallel (DDP) or turn probing off with probe_every=0."
            )
        if hasattr(closure, "start_round"):
            closure.start_round()
        loss = self._loss(closure, work)
        with torch.no_grad():
            unsearched = [w for w in due if RateRule.of(w.group).searching(w.group["gen_searched"])]
            found = self._search(loss, unsearched)
            rest = [w for w in due if w.group["name"] not in found.fits]
            if rest:  # the search's last probes of a group whose rate it left stand are the round's own
                fresh = self._probe(loss, rest)
                found = Round(fresh.loss0, found.fits | fresh.fits)
            return self._fit_round(found, due)

    def _probe(self, loss: Any, probed: list[GroupWork]) -> Round:
        """``L0``, then each group's losses at its probe scales, averaged over ranks in the
        round's one host sync."""
        etas = [tuple(s * w.group["gen_lr"] for s in w.group["probe_scales"]) for w in probed]
        losses = [loss()]
        for w, group_etas in zip(probed, etas):
            losses += probe_group(w.params, w.runs(), w.direction, group_etas, loss)
        values = mean_over_ranks(torch.stack(losses)).tolist()
        self._charge(probed, [len(e) for e in etas], shared=1)
        fits, start = {}, 1
        for w, group_etas in zip(probed, etas):
            probes = Probes(group_etas, tuple(values[start : start + len(group_etas)]))
            fits[w.group["name"]] = probes.fit(values[0], sign=-1.0 if w.group["maximize"] else 1.0)
            start += len(group_etas)
        return Round(values[0], fits)

    def _search(self, loss: Any, probed: list[GroupWork]) -> Round:
        """The line search (``RateRule.searching``): probe, lower each group's rate that one
        fit could not correct (``RateRule.search_move``), and probe those again, ``search``
        times at most. Returns the last fit of each group whose rate the search left as it
        was probed: the round takes it as its own rather than probe the same rate again."""
        standing: dict[str, Fit] = {}
        loss0 = float("nan")
        for attempt in range(max((w.group["search"] for w in probed), default=0)):
            probed = [w for w in probed if attempt < w.group["search"]]
            if not probed:
                break
            found = self._probe(loss, probed)
            if not np.isfinite(found.loss0):
                return Round(found.loss0, {})  # the closure itself is broken: nothing to learn about rates
            lowered = []
            for w in probed:
                fit = found.fits[w.group["name"]]
                rate = RateRule.of(w.group).search_move(fit, w.group["gen_lr"])
                if rate is None:
                    standing[w.group["name"]], loss0 = fit, found.loss0
                else:
                    w.group["gen_lr"] = rate
                    lowered.append(w)
            probed = lowered
        return Round(loss0, standing)

    def _fit_round(self, found: Round, due: list[GroupWork]) -> dict[str, Any]:
        step = self.state["gen"]["step"]
        record: dict[str, Any] = {"step": step, "loss": found.loss0, "groups": {}}
        for w in due:
            group = w.group
            fit = found.fits[group["name"]]
            rule = RateRule.of(group)
            schedule = Schedule.of(group)
            held = rule.held(w.counts()[0] if w.steps else 0)
            if not held:
                group["gen_descent"] = rule.tally(group["gen_descent"], fit)
            standing = Standing(rule.warming(step, schedule), held, group["gen_descent"])
            decision = rule.decide(fit, group["gen_lr"], standing)
            if decision.verdict is Verdict.NONFINITE:
                self._warn_once("nonfinite", "the probe closure returned NaN or inf; the affected fits are rejected")
            entry = {"A": fit.A, "B": fit.B, "B_se": fit.curvature_se, "r2": fit.r2, "ppi": 0.0, "accepted": decision.accepted,
                     "verdict": decision.verdict.value, "action": decision.action.value, "reason": decision.reason,
                     "descent": group["gen_descent"], "progress": Progress.of(group).z}
            credited = rule.credited(fit, decision.verdict)
            if credited is not None:
                entry["ppi"] = ppi(credited, sum(real_numel(p) for p in group["params"]))
            entry["span"] = rule.span(step, group["gen_probed_at"])
            self.state["appi"][group["name"]] += entry["span"] * entry["ppi"]
            entry["appi"] = self.state["appi"][group["name"]]
            group["gen_probed_at"] = step
            old_rate, group["gen_lr"] = group["gen_lr"], decision.rate
            group["gen_rounds"] += 1
            group["gen_searched"] = group["gen_searched"] or rule.signals(decision.verdict)
            if rule.budgeted:
                rule.after_round(schedule, step, group["gen_rounds"], fit, decision, old_rate, held).store(group)
            entry["lr"] = float(self.rate(group))
            record["groups"][group["name"]] = entry
        return record

    @torch.compiler.disable
    def _joint_correction(self, joint: list[GroupWork], work: list[GroupWork], record: dict[str, Any]) -> None:
        """Fit the loss along the combined step just taken; scale the rates back if it overshot."""
        with torch.no_grad():
            loss1 = mean_over_ranks(self._loss(self.closure, work)().reshape(1)).item()
        self._charge(joint, [0] * len(joint), shared=1)
        groups = [w.group for w in joint]
        slope = -sum(float(self.rate(g)) * record["groups"][g["name"]]["A"] for g in groups)
        curvature = 2.0 * (loss1 - record["loss"] - slope)
        optimum = -slope / curvature if slope < 0 and curvature > 0 else 1.0
        optimum = min(1.0, optimum) if np.isfinite(optimum) else 1.0
        for g in groups:
            rule = RateRule.of(g)
            g["gen_lr"] = rule.floored(g["gen_lr"] * max(optimum, rule.joint_floor))
            record["groups"][g["name"]]["lr"] = float(self.rate(g))
        record["joint"] = {"loss": loss1, "slope": slope, "curvature": curvature, "scale": optimum}

    @torch.compiler.disable
    def _log(self, record: dict[str, Any]) -> None:
        """Keep ``record`` as the last round, and in the bounded history when on its stride."""
        log = self.state["gen"]
        log["last_round"] = record
        if log["rounds"] % log["stride"] == 0:
            log["history"].append(record)
            _thin(log)
        log["rounds"] += 1

    def group_sizes(self) -> dict[str, int]:
        """``|w_k|``: the number of (real) parameters in each group."""
        return {g["name"]: sum(real_numel(p) for p in g["params"]) for g in self.param_groups}

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
        self.state["gen"]["mask"] = mask.to_dict()
        return mask

    def freeze(self, mask: Mask | None = None) -> Mask:
        """Train only ``mask``'s groups (default: the last proposed mask), for real.

        Other groups get ``requires_grad=False``, lose ``.grad`` and their AdamW state, and
        are neither decayed nor probed any more; probing goes on for the active groups.
        Freeze before wrapping the model for data parallel (DDP fixes its gradient set).
        """
        if mask is None:
            if self.state["gen"]["mask"] is None:
                raise RuntimeError("freeze() needs a mask: call opt.propose_mask(eps) first, or pass freeze(mask)")
            mask = Mask.from_dict(self.state["gen"]["mask"])
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
        self.state["gen"]["mask"] = mask.to_dict()
        return mask

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"GeNAdamW: {message}", RuntimeWarning, stacklevel=4)
