"""Helpers shared by the benchmarks: a small GPT-2, timed training steps, probe forwards counted, peak memory."""
from __future__ import annotations

import ctypes
import statistics
import time
from dataclasses import replace

import torch
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from transformers import GPT2Config, GPT2LMHeadModel

from gen_optim.gen_adamw import GEN_SETTINGS
from gen_optim.rule import STEP_FORWARDS, Schedule

VOCAB = 2048
# the default warm-up before it went to 0 (README, "When to probe: the budget"): the ablations' baseline
WARMUP_BEFORE = 10
# a training step counted as this many probe forwards before it went to rule.STEP_FORWARDS; the
# ablation runs the default budget with the credit that count gave it: the budget scaled by the ratio
STEP_FORWARDS_BEFORE = 3.0
COUNT_BEFORE = dict(probe_budget=GEN_SETTINGS["probe_budget"] * STEP_FORWARDS_BEFORE / STEP_FORWARDS)
# the default probe budget before it went to GEN_SETTINGS["probe_budget"] (README, "When to probe: the budget")
BUDGET_BEFORE = dict(probe_budget=0.1)


def forgive_debts(opt) -> None:
    """The budget as it was until 2026-12-07: each group's starting credit a gift, not a loan
    that its earnings repay first (``RateRule.earn``): a fresh GeNAdamW's groups owe nothing."""
    for group in opt.param_groups:
        replace(Schedule.of(group), debt=0.0).store(group)


def gpt2(layers: int, width: int, seq: int, device: str) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=layers, n_embd=width, n_head=4, vocab_size=VOCAB, n_positions=seq)
    return GPT2LMHeadModel(config).to(device)


def batches(n: int, batch: int, seq: int, device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, VOCAB, (batch, seq), generator=g).to(device) for _ in range(n)]


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def train_steps(model, opt, batch: torch.Tensor, n: int) -> None:
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()


def interleaved_step_times(runs: dict, batch: torch.Tensor, steps: int, rounds: int, device: str) -> dict[str, float]:
    """Median seconds per step of each ``name -> (model, optimizer, reset)``, timed in turns."""
    for model, opt, _ in runs.values():  # warm-up; optimizer state exists before timing
        train_steps(model, opt, batch, 2)
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (model, opt, reset) in runs.items():
            reset()
            times[name].append(timed(lambda: train_steps(model, opt, batch, steps), device) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


class ProbeForwards:
    """Counts a model's forwards run without gradients: GeNAdamW's probes (and ``L0``), since
    training forwards run with gradients. ``count`` can be reset; ``remove()`` unhooks."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.count = 0
        self._handle = model.register_forward_pre_hook(self._see)

    def _see(self, *_) -> None:
        self.count += not torch.is_grad_enabled()

    def remove(self) -> None:
        self._handle.remove()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def heap_in_use() -> int:
    """Bytes the C heap has handed out and not taken back (glibc ``mallinfo2``)."""
    info = _libc.mallinfo2()
    return info.uordblks + info.hblkhd


class HeapPeak:
    """Peak of ``heap_in_use()``, sampled on entry, before and after every module forward
    (training and probe forwards alike) and at exit."""

    def __enter__(self) -> HeapPeak:
        self.peak = heap_in_use()
        sample = lambda *args: setattr(self, "peak", max(self.peak, heap_in_use()))  # noqa: E731
        self.hooks = [register_module_forward_pre_hook(sample), register_module_forward_hook(sample)]
        return self

    def __exit__(self, *exc) -> None:
        self.peak = max(self.peak, heap_in_use())
        for hook in self.hooks:
            hook.remove()


def peak_memory(prepare, device: str) -> int:
    """Peak bytes in use during ``run()``, ``run = prepare()``, above the bytes in use before
    ``prepare`` (which builds the model): CUDA's max allocated, or on CPU the sampled peak of
    the C heap in use (``HeapPeak``). Memory ``prepare`` freed again does not count."""
    if device.startswith("cuda"):
        base = torch.cuda.memory_allocated()
        run = prepare()
        torch.cuda.reset_peak_memory_stats()
        run()
        return torch.cuda.max_memory_allocated() - base
    base = heap_in_use()
    run = prepare()
    with HeapPeak() as heap:
        run()
    return heap.peak - base
