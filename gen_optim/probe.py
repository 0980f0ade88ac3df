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

A probe computes ``d`` in chunks of tensors of one device, dtype and step count with
``torch._foreach_*`` ops (a handful of kernels per chunk, not about eleven per tensor), and
sets and restores the weights with one ``copy_`` per tensor (FSDP2's DTensor has no
``_foreach_copy_``). ``PROBE_CHUNK`` bounds the elements of a chunk, so that the transient
memory of a probe stays a few copies of that many elements beside the one copy of the group it
restores from. (On an H200 the chunks measured no faster than one tensor at a time at a
6-block GPT-2: benchmarks/RESULTS.md, overhead.py.)
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

Closure = Callable[[], "Tensor | float"]
PROBE_CHUNK = 2**26  # elements a probe computes the direction of at once (a larger tensor goes alone)

BACKWARD_FIX = (
    "The probe closure called backward(). A GeNAdamW closure must only compute the loss on the "
    "current batch and return it, e.g. `lambda: loss_fn(model(x), y)`; backward stays in your "
    "training loop. For models you can't write a closure for, use gen_optim.replay_closure(model)."
)


class ClosureError(RuntimeError):
    """The probe closure broke its contract; the message says how to fix it."""


def real(t: Tensor | None) -> Tensor | None:
    """A complex tensor as the real tensor ``torch.view_as_real`` of it (sharing its storage),
    as torch's AdamW treats it; any other tensor as it is."""
    return torch.view_as_real(t) if t is not None and torch.is_complex(t) else t


def adamw_directions(
    params: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], step: int,
    beta1: float, beta2: float, eps: float, weight_decay: float, grads: list[Tensor] | None = None,
    max_exp_avg_sqs: list[Tensor] | None = None, maximize: bool = False,
) -> list[Tensor]:
    """``d`` for real tensors of one device and dtype from moments that have seen ``step``
    gradients; with ``grads``, the moments first take them, as this step's AdamW update will
    (``step`` then counts them). Nothing passed in is changed.

    ``max_exp_avg_sqs`` (AMSGrad) replace ``v`` by the running maximum; with ``maximize`` the
    moments see ``-grad``, as in torch's kernel.
    """
    # only the foreach ops that FSDP2's DTensor has sharding rules for (no out-of-place lerp or
    # maximum, no _foreach_copy_): a copy is a multiplication by 1, which is exact
    if grads is not None:
        grads = torch._foreach_neg(grads) if maximize else grads
        exp_avgs = torch._foreach_mul(exp_avgs, 1.0)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        exp_avg_sqs = torch._foreach_mul(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        if max_exp_avg_sqs is not None:
            max_exp_avg_sqs = torch._foreach_mul(max_exp_avg_sqs, 1.0)
            torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
    # m_hat / (sqrt(v_hat) + eps) = m sqrt(c2) / (c1 (sqrt(v) + eps sqrt(c2))), c the bias corrections:
    # four passes over the tensors, where dividing by each correction apart took six
    root_c2 = math.sqrt(1 - beta2**step)
    denom = torch._foreach_sqrt(exp_avg_sqs if max_exp_avg_sqs is None else max_exp_avg_sqs)
    torch._foreach_add_(denom, eps * root_c2)
    d = torch._foreach_mul(params, weight_decay)
    torch._foreach_addcdiv_(d, exp_avgs, denom, value=root_c2 / (1 - beta1**step))
    return list(d)


def adamw_direction(
    param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int,
    beta1: float, beta2: float, eps: float, weight_decay: float, grad: Tensor | None = None,
    max_exp_avg_sq: Tensor | None = None, maximize: bool = False,
) -> Tensor:
    """``adamw_directions`` of one tensor; a complex tensor's ``d`` is complex."""
    listed = [None if t is None else [real(t)] for t in (grad, max_exp_avg_sq)]
    d = adamw_directions([real(param)], [real(exp_avg)], [real(exp_avg_sq)], step, beta1, beta2, eps,
                         weight_decay, *listed, maximize=maximize)[0]
    return torch.view_as_complex(d) if torch.is_complex(param) else d


def chunks(tensors: Sequence[Tensor], keys: Sequence[Any], limit: int | None = None) -> list[list[int]]:
    """Indices of ``tensors`` in runs that share a device, a dtype and their ``keys`` entry,
    each run of at most ``limit`` (default ``PROBE_CHUNK``) elements (a larger tensor is a run
    of its own)."""
    limit = PROBE_CHUNK if limit is None else limit
    runs: dict[tuple, list[list[int]]] = {}
    sizes: dict[tuple, int] = {}
    for i, (t, key) in enumerate(zip(tensors, keys)):
        kind = (t.device, t.dtype, key)
        if kind not in runs or sizes[kind] + t.numel() > limit:
            runs.setdefault(kind, []).append([])
            sizes[kind] = 0
        runs[kind][-1].append(i)
        sizes[kind] += t.numel()
    return [run for kind_runs in runs.values() for run in kind_runs]


def local(t: Tensor) -> Tensor:
    """A sharded tensor's (FSDP2's DTensor's) local shard; any other tensor as it is."""
    return t.to_local() if _is_dtensor(t) else t


def sharded(tensors: Iterable[Tensor]) -> bool:
    """Whether any of ``tensors`` is a DTensor (FSDP2 shards it over the ranks)."""
    return any(_is_dtensor(t) for t in tensors)


@functools.cache
def _dtensor_type() -> type | None:
    """FSDP2's DTensor class, where this torch has it (looked up once: the progress test asks
    about every tensor at every step)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return None
    return DTensor


def _is_dtensor(t: Tensor) -> bool:
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(t, dtensor)


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
    params: Sequence[Tensor], runs: Sequence[Sequence[int]],
    direction: Callable[[Sequence[int], list[Tensor]], list[Tensor]],
    etas: Sequence[float], loss: Callable[[], Tensor],
) -> list[Tensor]:
    """Losses at ``w - eta * d`` for each ``eta``; ``params`` are restored bit for bit.

    ``runs`` partition the indices of ``params`` into chunks (``chunks``); ``direction(run,
    ws)`` returns ``d`` of the tensors at ``run`` (as real tensors, ``real``) from their
    original values ``ws``. It is recomputed per probe and chunk, so that the extra memory is
    one copy of this group and the transient of one chunk.
    """
    views = [real(p.detach()) for p in params]
    backup = [v.clone() for v in views]
    losses = []
    try:
        for eta in etas:
            for run in runs:
                moved, originals = [views[i] for i in run], [backup[i] for i in run]
                for v, w in zip(moved, originals):  # copy_ per tensor: DTensor has no _foreach_copy_
                    v.copy_(w)
                torch._foreach_sub_(moved, direction(run, originals), alpha=eta)
            losses.append(loss())
    finally:
        for v, w in zip(views, backup):
            v.copy_(w)
    return losses


def sum_over_ranks(values: Tensor) -> Tensor:
    """Sum ``values`` over the ranks in one collective (a no-op when alone)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
    return values


def mean_over_ranks(values: Tensor) -> Tensor:
    """Average ``values`` over data-parallel ranks in one collective (a no-op when alone)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values
