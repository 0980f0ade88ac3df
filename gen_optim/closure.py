"""Ready-made probe closures for loops that can't write one (the HF Trainer, Accelerate).

A probe closure returns the loss of one fixed batch at the current weights, without
backward. GeNAdamW calls ``start_round()`` (when the closure has it) once before each probe
round, so that every probe of a round sees the same batch.

Which batch matters: probing a direction on a batch whose gradient is in it measures that
batch's own optimum, which lies further along ``d`` than the population's, and the fitted
rates grow until training diverges. GeNAdamW therefore probes, by default, along the
*previous* update's direction, which the current batch never entered: ``replay_closure``
replays the current batch (no extra data cost), and ``iterator_closure`` draws a fresh
batch per round, as the GeN reference code does.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

AUTOCAST_DEVICES = ("cpu", "cuda")  # where a recorded forward's autocast state is read
PRECISIONS = ("full", "training")


@dataclass(frozen=True)
class Inputs:
    """A recorded training forward: its arguments and the autocast (mixed precision) it ran under."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    autocast: tuple[tuple[str, torch.dtype], ...]

    @classmethod
    def record(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Inputs:
        enabled = tuple((d, torch.get_autocast_dtype(d)) for d in AUTOCAST_DEVICES if torch.is_autocast_enabled(d))
        return cls(args, kwargs, enabled)

    def replay(self, model: nn.Module, precision: str) -> Any:
        """``model(*args, **kwargs)`` at full precision (``"full"``: autocast off, also past
        Accelerate's mixed-precision wrapper of ``model.forward``) or at the precision the
        recorded forward used (``"training"``)."""
        with ExitStack() as stack:
            if precision == "full":
                stack.enter_context(_without_mixed_precision_wrapper(model))
            for device, dtype in self.autocast:
                stack.enter_context(torch.autocast(device, dtype=dtype, enabled=precision == "training"))
            return model(*self.args, **self.kwargs)


@contextmanager
def _without_mixed_precision_wrapper(model: nn.Module) -> Iterator[None]:
    """Call the model's own forward: Accelerate's ``prepare`` wraps ``model.forward`` in autocast
    under ``--mixed_precision`` and keeps the original as ``model._original_forward``."""
    original = model.__dict__.get("_original_forward")
    if original is None or "forward" not in model.__dict__:
        yield
        return
    wrapped = model.__dict__["forward"]
    model.forward = original
    try:
        yield
    finally:
        model.forward = wrapped


def output_loss(output: Any) -> torch.Tensor:
    """``output.loss`` of a Hugging Face model, with an error that says what to do without one."""
    loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
    if loss is None:
        raise ValueError(
            "the model's output has no `loss` (pass labels in the batch, as HF models expect), "
            "or give the closure a loss_fn to compute it"
        )
    return loss


class ProbeClosure:
    """Evaluates ``loss(batch)`` on the batch fixed for the round by ``start_round()``.

    Forwards made while evaluating are marked (``replaying``) so that recording hooks ignore
    them. (GeNAdamW restores BatchNorm running statistics after every probe, whatever the
    closure.)
    """

    def __init__(self, model: nn.Module, next_batch: Callable[[], Any], loss: Callable[[Any], torch.Tensor]) -> None:
        self.model = model
        self._next_batch = next_batch
        self._loss = loss
        self._batch: Any = None
        self.replaying = False

    def start_round(self) -> None:
        """Fix the batch that every probe of the coming round evaluates."""
        self._batch = self._next_batch()

    def __call__(self) -> torch.Tensor:
        if self._batch is None:
            self.start_round()
        self.replaying = True
        try:
            return self._loss(self._batch)
        finally:
            self.replaying = False


def replay_closure(
    model: nn.Module, loss_fn: Callable[..., torch.Tensor] | None = None, batch: str = "current",
    precision: str = "full",
) -> ProbeClosure:
    """A closure that replays inputs the model saw in training, recorded by a forward pre-hook.

    ``batch="current"`` (default) replays the last training batch: GeNAdamW's default
    ``probe_direction="previous"`` probes along the previous update, which has never seen
    it, so the fit is unbiased. ``batch="previous"`` replays the batch before (on the very
    first step there is none yet and the last one is used); with
    ``probe_direction="current"`` it is the less biased choice, but Adam's momentum still
    carries that batch's gradient (weight (1 - beta1) beta1). Only forwards in train mode
    with gradients enabled are recorded, so evaluation and generation don't count. A forward
    recorded under mixed precision (``torch.autocast``, or Accelerate's ``--mixed_precision``,
    which wraps ``model.forward`` in autocast) is replayed at full precision
    (``precision="full"``, default: bfloat16 rounding drowns the probes of small groups and
    collapses their rates, benchmarks/precision.py) or under the same autocast
    (``precision="training"``). The loss is ``output.loss`` (HF models) or
    ``loss_fn(output, *args, **kwargs)`` of the recorded inputs.
    """
    if batch not in ("previous", "current"):
        raise ValueError(f"batch must be 'previous' or 'current', got {batch!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    seen: deque[Inputs] = deque(maxlen=2)

    def next_batch() -> Inputs:
        if not seen:
            raise RuntimeError(
                "replay_closure has recorded no training forward of this model yet: call the same "
                "model object (or the module your wrapper wraps) in train mode before opt.step()"
            )
        return seen[0] if batch == "previous" else seen[-1]

    def loss(inputs: Inputs) -> torch.Tensor:
        output = inputs.replay(model, precision)
        return output_loss(output) if loss_fn is None else loss_fn(output, *inputs.args, **inputs.kwargs)

    closure = ProbeClosure(model, next_batch, loss)

    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if module.training and torch.is_grad_enabled() and not closure.replaying:
            seen.append(Inputs.record(args, kwargs))

    closure.hook = model.register_forward_pre_hook(record, with_kwargs=True)
    return closure


def iterator_closure(
    model: nn.Module, batches: Iterable[Any], loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None
) -> ProbeClosure:
    """A closure that takes a fresh batch from ``batches`` for each probe round.

    The loss is ``loss_fn(model, batch)``, or, without ``loss_fn``, ``model(**batch).loss``
    for a batch of HF model inputs with labels. Batches must already be on the model's
    device. The iterable is started again when it runs out.
    """
    source: Iterator[Any] = iter(batches)

    def next_batch() -> Any:
        nonlocal source
        try:
            return next(source)
        except StopIteration:
            source = iter(batches)
            return next(source)

    def loss(batch: Any) -> torch.Tensor:
        return output_loss(model(**batch)) if loss_fn is None else loss_fn(model, batch)

    return ProbeClosure(model, next_batch, loss)
