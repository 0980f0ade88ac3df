"""Probing: evaluate the loss with one group moved along its AdamW update, leaving no trace.

A probe of group ``k`` at step ``eta`` sets ``w_k <- w_k - eta * d_k`` (every other group
untouched), calls the closure, and puts ``w_k`` back bit for bit from a copy of that group
alone. ``d_k`` is an AdamW update direction per unit learning rate,

    d = m_hat / (sqrt(v_hat) + eps) + weight_decay * w,

with ``m_hat, v_hat`` the bias-corrected moments: either as they stand (the direction of
the previous update, which has never seen the current batch) or after this step's
gradient (so that ``w - lr * d`` is exactly where this step's AdamW update moves ``w``).
Every probe forward of a round runs from the same RNG state (identical dropout masks) and
leaves the caller's RNG untouched.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

Closure = Callable[[], "Tensor | float"]

BACKWARD_FIX = (
    "The probe closure called backward(). A GeNAdamW closure must only compute the loss on the "
    "current batch and return it, e.g. `lambda: loss_fn(model(x), y)`; backward stays in your "
    "training loop. For models you can't write a closure for, use gen_optim.replay_closure(model)."
)


class ClosureError(RuntimeError):
    """The probe closure broke its contract; the message says how to fix it."""


def adamw_direction(
    param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int,
    beta1: float, beta2: float, eps: float, weight_decay: float, grad: Tensor | None = None,
) -> Tensor:
    """``d`` for one tensor from moments that have seen ``step`` gradients; with ``grad``, the
    moments first take it, as this step's AdamW update will (``step`` then counts it)."""
    if grad is not None:
        exp_avg = exp_avg.lerp(grad, 1 - beta1)
        exp_avg_sq = exp_avg_sq.mul(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = exp_avg_sq.sqrt().div_(math.sqrt(1 - beta2**step)).add_(eps)
    return exp_avg.div(denom).div_(1 - beta1**step).add_(param, alpha=weight_decay)


def rng_devices(params: Sequence[Tensor]) -> list[int]:
    """The CUDA devices whose RNG a probe forward may draw from."""
    return sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})


def evaluate(closure: Closure, grads: Sequence[Tensor], devices: list[int]) -> Tensor:
    """The closure's loss as a 0-d float64 tensor, on the RNG state the caller holds now."""
    versions = [g._version for g in grads]
    with torch.random.fork_rng(devices=devices):
        try:
            loss = closure()
        except RuntimeError as err:
            if "does not require grad" in str(err):
                raise ClosureError(BACKWARD_FIX) from err
            raise
    if any(g._version != v for g, v in zip(grads, versions)):
        raise ClosureError(BACKWARD_FIX)
    loss = torch.as_tensor(loss).detach()
    if loss.numel() != 1:
        raise ClosureError(
            f"The probe closure returned a tensor of shape {tuple(loss.shape)}; it must return the "
            "scalar mean loss of the batch (reduce it, e.g. `loss.mean()`)."
        )
    return loss.reshape(()).double()


def probe_group(
    params: Sequence[Tensor], direction: Callable[[int, Tensor], Tensor],
    etas: Sequence[float], loss: Callable[[], Tensor],
) -> list[Tensor]:
    """Losses at ``w - eta * d`` for each ``eta``; ``params`` are restored bit for bit.

    ``direction(i, w_i)`` returns ``d`` for the i-th tensor at its original value ``w_i``;
    it is recomputed per probe so that the extra memory is one copy of this group only.
    """
    backup = [p.detach().clone() for p in params]
    losses = []
    try:
        for eta in etas:
            for i, (p, w) in enumerate(zip(params, backup)):
                p.copy_(w).sub_(direction(i, w), alpha=eta)
            losses.append(loss())
    finally:
        for p, w in zip(params, backup):
            p.copy_(w)
    return losses


def mean_over_ranks(values: Tensor) -> Tensor:
    """Average ``values`` over data-parallel ranks in one collective (a no-op when alone)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values
