"""Probing: evaluate the loss with one group moved along its AdamW update, leaving no trace.

A probe of group ``k`` at step ``eta`` sets ``w_k <- w_k - eta * d_k`` (every other group
untouched), calls the closure, and puts ``w_k`` back bit for bit from a copy of that group
alone. ``d_k`` is an AdamW update direction per unit learning rate,

    d = m_hat / (sqrt(v_hat) + eps) + weight_decay * w,

with ``m_hat, v_hat`` the bias-corrected moments: either as they stand (the direction of
the previous update, which has never seen the current batch) or after this step's
gradient (so that ``w - lr * d`` is exactly where this step's AdamW update moves ``w``).
Every probe forward of a round runs from the same RNG state (identical dropout masks) and
leaves the caller's RNG untouched, and the running statistics of BatchNorm-style modules the
closure calls are restored after each evaluation.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

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
    max_exp_avg_sq: Tensor | None = None, maximize: bool = False,
) -> Tensor:
    """``d`` for one tensor from moments that have seen ``step`` gradients; with ``grad``, the
    moments first take it, as this step's AdamW update will (``step`` then counts it).

    ``max_exp_avg_sq`` (AMSGrad) replaces ``v`` by the running maximum; with ``maximize`` the
    moments see ``-grad``, as in torch's kernel. A complex tensor is treated as the real
    tensor ``torch.view_as_real`` of it, as torch's AdamW does.
    """
    if torch.is_complex(param):
        views = [None if t is None else torch.view_as_real(t) for t in (exp_avg, exp_avg_sq, grad, max_exp_avg_sq)]
        d = adamw_direction(torch.view_as_real(param), views[0], views[1], step, beta1, beta2, eps,
                            weight_decay, views[2], views[3], maximize)
        return torch.view_as_complex(d)
    if grad is not None:
        grad = -grad if maximize else grad
        exp_avg = exp_avg.lerp(grad, 1 - beta1)
        exp_avg_sq = exp_avg_sq.mul(beta2).addcmul_(grad, grad, value=1 - beta2)
        if max_exp_avg_sq is not None:
            max_exp_avg_sq = torch.maximum(max_exp_avg_sq, exp_avg_sq)
    second = exp_avg_sq if max_exp_avg_sq is None else max_exp_avg_sq
    denom = second.sqrt().div_(math.sqrt(1 - beta2**step)).add_(eps)
    return exp_avg.div(denom).div_(1 - beta1**step).add_(param, alpha=weight_decay)


def _fsdp_module_type() -> type | None:
    """FSDP2's module class, where this torch has it."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return None
    return FSDPModule


@contextmanager
def leave_no_trace() -> Iterator[None]:
    """Restore, on exit, the buffers of every module in train mode that tracks running
    statistics (BatchNorm-style) and ran a forward inside the block, whoever called it; and
    reshard every FSDP2 module that ran, so that the next forward gathers the weights afresh
    (a module that keeps its parameters unsharded after forward, as FSDP2's root does, would
    otherwise compute the next probe with the weights of this one)."""
    saved: dict[int, list[tuple[Tensor, Tensor]]] = {}
    sharded: dict[int, torch.nn.Module] = {}
    fsdp = _fsdp_module_type()

    def see(module: torch.nn.Module, args: tuple) -> None:
        if id(module) not in saved and module.training and getattr(module, "track_running_stats", False):
            saved[id(module)] = [(b, b.clone()) for b in module.buffers(recurse=False)]
        if fsdp is not None and isinstance(module, fsdp):
            sharded[id(module)] = module

    handle = torch.nn.modules.module.register_module_forward_pre_hook(see)
    try:
        yield
    finally:
        handle.remove()
        with torch.no_grad():
            for pairs in saved.values():
                for buffer, copy in pairs:
                    buffer.copy_(copy)
        for module in sharded.values():
            module.reshard()


def rng_devices(params: Sequence[Tensor]) -> list[int]:
    """The CUDA devices whose RNG a probe forward may draw from."""
    return sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})


def evaluate(closure: Closure, grads: Sequence[Tensor], devices: list[int]) -> Tensor:
    """The closure's loss as a 0-d float64 tensor, on the RNG state the caller holds now; the
    running statistics of the modules it calls are left as they were (``leave_no_trace``)."""
    versions = [g._version for g in grads]
    with torch.random.fork_rng(devices=devices), leave_no_trace():
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
