"""The optimizers the real-model benchmarks compare, each built and driven the way its authors
document, behind one object (``Driver``) so that the training loop has no branch per optimizer.

- AdamW (``torch.optim.AdamW``) and GeNAdamW: ``lr`` is the (starting) rate. GeNAdamW probes
  the previous update's direction on the training batch (its default); ``GEN_FRESH`` probes
  this step's direction on a batch of its own each round (``probe_direction="current"`` with
  ``iterator_closure``), as GeN's reference does.
- Prodigy (``prodigyopt``), D-Adaptation Adam (``dadaptation``): ``lr=1.0``, their documented
  default (a multiplier of the estimated step), decoupled weight decay like AdamW's.
- Schedule-free AdamW (``schedulefree``): its default ``lr``; ``train()``/``eval()`` around
  training and evaluation (evaluation reads the averaged weights), its own ``warmup_steps``
  instead of a scheduler.
- GeN's reference (``pip install gen-optim==0.1.1``, ``GeN.lr_parabola``): one fitted rate for
  all groups, refitted every ``GEN_REFERENCE_EVERY`` steps before ``AdamW.step``, on a batch of
  its own (its ``tr_iter``), the usage of its docstring; a schedule acts through its ``scale``.

A schedule (``Schedule.COSINE``: linear warm-up over ``WARMUP_FRACTION`` of the steps, then a
cosine to 0) multiplies every optimizer's rate through ``LambdaLR`` (GeNAdamW reads it as a
factor on its fitted rates), except schedule-free's and GeN's reference's, as above.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import nn

from gen_optim import GeNAdamW, iterator_closure

WEIGHT_DECAY = 1e-2  # decoupled, for every optimizer
WARMUP_FRACTION = 0.1
GEN_REFERENCE_EVERY = 8  # GeN's "lazy" refit interval (the paper's and AdaPEFT's)


class Optimizer(str, Enum):
    ADAMW = "AdamW"
    GEN = "GeNAdamW"
    GEN_FRESH = "GeNAdamW, fresh-batch probes"
    PRODIGY = "Prodigy"
    SCHEDULE_FREE = "AdamWScheduleFree"
    DADAPT = "DAdaptAdam"
    GEN_REFERENCE = "GeN reference"

    @property
    def takes_lr(self) -> bool:
        """Whether a run chooses its ``lr`` (the others run at their documented default)."""
        return self in (Optimizer.ADAMW, Optimizer.GEN, Optimizer.GEN_FRESH, Optimizer.GEN_REFERENCE)


class Schedule(str, Enum):
    CONSTANT = "constant"
    COSINE = "cosine"

    def factor(self, step: int, steps: int) -> float:
        """The multiplier of the rate at ``step`` of ``steps``."""
        if self is Schedule.CONSTANT:
            return 1.0
        warm = max(1, round(WARMUP_FRACTION * steps))
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


@dataclass
class Driver:
    """One optimizer in the loop: ``before_step(step)`` runs after backward and before
    ``opt.step()``, ``after_step`` after it; ``training()`` / ``evaluating()`` switch modes."""

    opt: torch.optim.Optimizer
    before_step: Callable[[int], None] = lambda step: None
    after_step: Callable[[], None] = lambda: None
    training: Callable[[], None] = lambda: None
    evaluating: Callable[[], None] = lambda: None
    rates: Callable[[], dict[str, float]] = field(default=lambda: {})  # fitted rates, where there are any
    rounds: Callable[[], list[dict[str, Any]]] = field(default=lambda: [])  # GeNAdamW's probe rounds

    def step(self, step: int) -> None:
        self.before_step(step)
        self.opt.step()
        self.after_step()


def scheduled(driver: Driver, schedule: Schedule, steps: int) -> Driver:
    """``driver`` with ``schedule`` applied through ``LambdaLR``."""
    if schedule is Schedule.CONSTANT:
        return driver
    scheduler = torch.optim.lr_scheduler.LambdaLR(driver.opt, lambda step: schedule.factor(step, steps))
    after = driver.after_step
    driver.after_step = lambda: (after(), scheduler.step())
    return driver


def build(optimizer: Optimizer, groups: list[dict[str, Any]], lr: float, model: nn.Module,
          batch: dict[str, torch.Tensor], steps: int, schedule: Schedule, probe_batches: Iterator[dict],
          gen: dict[str, Any] | None = None) -> Driver:
    """The driver of ``optimizer`` on ``groups``; ``batch`` is the dict the training loop fills
    with each step's batch (GeNAdamW's probe closure reads it), ``probe_batches`` the extra
    batches that GeN's reference and ``GEN_FRESH`` probe on."""
    if optimizer is Optimizer.ADAMW:
        return scheduled(Driver(torch.optim.AdamW(groups, lr=lr, weight_decay=WEIGHT_DECAY)), schedule, steps)
    if optimizer in (Optimizer.GEN, Optimizer.GEN_FRESH):
        if optimizer is Optimizer.GEN:
            closure, direction = (lambda: model(**batch).loss), "previous"
        else:  # this step's direction, probed on a batch of its own: what the step will do on unseen data
            closure, direction = iterator_closure(model, probe_batches), "current"
        opt = GeNAdamW(groups, closure, lr=lr, weight_decay=WEIGHT_DECAY, probe_direction=direction, **(gen or {}))
        driver = Driver(opt, rates=lambda: {g["name"]: float(g["gen_lr"]) for g in opt.param_groups},  # before the schedule
                        rounds=lambda: [{"step": r["step"], "groups": {name: {"lr": e["lr"], "verdict": e["verdict"],
                                                                              "action": e["action"]}
                                                                       for name, e in r["groups"].items()}}
                                        for r in opt.history])
        return scheduled(driver, schedule, steps)
    if optimizer is Optimizer.PRODIGY:
        from prodigyopt import Prodigy

        return scheduled(Driver(Prodigy(groups, lr=1.0, weight_decay=WEIGHT_DECAY)), schedule, steps)
    if optimizer is Optimizer.DADAPT:
        from dadaptation import DAdaptAdam

        return scheduled(Driver(DAdaptAdam(groups, lr=1.0, weight_decay=WEIGHT_DECAY, decouple=True)), schedule, steps)
    if optimizer is Optimizer.SCHEDULE_FREE:
        from schedulefree import AdamWScheduleFree

        warmup = round(WARMUP_FRACTION * steps) if schedule is Schedule.COSINE else 0
        opt = AdamWScheduleFree(groups, weight_decay=WEIGHT_DECAY, warmup_steps=warmup)
        return Driver(opt, training=opt.train, evaluating=opt.eval)
    if optimizer is Optimizer.GEN_REFERENCE:
        return _gen_reference(groups, lr, model, steps, schedule, probe_batches)
    raise ValueError(f"unknown optimizer {optimizer!r}")


def _gen_reference(groups, lr, model, steps, schedule, probe_batches) -> Driver:
    from GeN import lr_parabola
    from transformers import BatchEncoding

    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=WEIGHT_DECAY)
    encoded = (BatchEncoding(b) for b in probe_batches)  # its NLU path calls batch.to(device)

    def before_step(step: int) -> None:
        if (step + 1) % GEN_REFERENCE_EVERY == 0:
            lr_parabola(model, opt, tr_iter=encoded, device="cpu", task="NLU",
                        scale=schedule.factor(step, steps), lr_factor=[-1, 0, 1])

    return Driver(opt, before_step=before_step, rates=lambda: {"all": float(opt.param_groups[0]["lr"])})


def probe_stream(draw: Callable[[random.Random], dict], seed: int) -> Iterator[dict]:
    """Batches for GeN's reference to probe on, from their own generator (the training
    batches' order stays the seed's)."""
    rng = random.Random(f"probe-{seed}")
    while True:
        yield draw(rng)
