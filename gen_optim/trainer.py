"""AdaPEFT inside the Hugging Face Trainer: select at a fraction of the run, freeze, keep going.

    opt = GeNAdamW(group_parameters(model), replay_closure(model), lr=1e-3)
    trainer = Trainer(model, args, train_dataset=..., optimizers=(opt, None),
                      callbacks=[AdaPEFTCallback(eps=0.01)])

At ``select_at`` of ``max_steps`` the callback proposes the mask (``propose_mask(eps,
method)``), freezes the other groups (``freeze``) and writes ``mask.json`` to ``output_dir``;
a run resumed from a Trainer checkpoint after that step freezes the same groups again (the
mask and APPI are in the optimizer's checkpoint). Each logging step adds the fitted rates and
APPI (``gen/lr/<group>``, ``gen/appi/<group>``) to the Trainer's logs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .gen_adamw import GeNAdamW
from .mask import METHODS, Mask
from .subset import MASK_FILE

try:
    from transformers import TrainerCallback
    from transformers.training_args import ParallelMode
except ImportError as err:  # pragma: no cover - the hf extra is missing
    raise ImportError("gen_optim.trainer needs transformers: pip install 'genadamw[hf]'") from err


def gen_optimizer(optimizer: Any) -> GeNAdamW:
    """The GeNAdamW inside the Trainer's optimizer (Accelerate wraps it)."""
    inner = optimizer
    while not isinstance(inner, GeNAdamW) and hasattr(inner, "optimizer"):
        inner = inner.optimizer
    if not isinstance(inner, GeNAdamW):
        raise TypeError(
            f"AdaPEFTCallback needs GeNAdamW as the Trainer's optimizer, got {type(optimizer).__name__}: "
            "pass Trainer(..., optimizers=(GeNAdamW(group_parameters(model), replay_closure(model)), None))"
        )
    return inner


def _ddp_finds_unused(args: Any, model: Any) -> bool:
    """Whether the Trainer wraps the model in DDP with ``find_unused_parameters``: as set, else
    (its default) unless activation checkpointing is on."""
    if args.ddp_find_unused_parameters is not None:
        return bool(args.ddp_find_unused_parameters)
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    return not (bool(checkpointing) or getattr(args, "activation_checkpointing", False))


class AdaPEFTCallback(TrainerCallback):
    """Propose and apply the AdaPEFT mask at ``select_at`` of the run (see the module docstring).

    Args:
        eps: the trainable fraction budget of the mask.
        select_at: the fraction of ``max_steps`` after which the mask is chosen (the paper: 0.1).
        method: ``"greedy"`` (the paper) or ``"exact"`` (the knapsack optimum).
    """

    def __init__(self, eps: float, select_at: float = 0.1, method: str = "greedy") -> None:
        if not 0.0 < select_at < 1.0:
            raise ValueError(f"select_at is a fraction of the run in (0, 1), got {select_at!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.eps, self.select_at, self.method = eps, select_at, method
        self.mask: Mask | None = None

    def select_step(self, state: Any) -> int:
        if not state.max_steps or state.max_steps <= 0:
            raise ValueError("AdaPEFTCallback needs the run's length: set max_steps or num_train_epochs")
        return max(1, round(self.select_at * state.max_steps))

    def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, model: Any = None,
                       **kwargs: Any) -> None:
        opt = gen_optimizer(optimizer)
        if args.parallel_mode == ParallelMode.DISTRIBUTED and not _ddp_finds_unused(args, model):
            raise ValueError(
                "AdaPEFTCallback freezes groups during the run, after DDP has fixed the parameters it "
                "expects gradients for: set TrainingArguments(ddp_find_unused_parameters=True) (the frozen "
                "groups then compute no gradients; DDP skips them in each backward)"
            )
        saved = opt.state["gen"]["mask"]
        if state.global_step >= self.select_step(state) and saved is not None:  # resumed after the selection
            self.mask = opt.freeze(Mask.from_dict(saved))

    def on_step_end(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        if self.mask is not None or state.global_step < self.select_step(state):
            return
        opt = gen_optimizer(optimizer)
        self.mask = opt.freeze(opt.propose_mask(self.eps, self.method))
        if state.is_world_process_zero:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            self.mask.save(Path(args.output_dir) / MASK_FILE)

    def on_log(self, args: Any, state: Any, control: Any, optimizer: Any = None, logs: Any = None,
               **kwargs: Any) -> None:
        if logs is None or optimizer is None:
            return
        opt = gen_optimizer(optimizer)
        values = {f"gen/lr/{g['name']}": float(opt.rate(g)) for g in opt.param_groups}
        values |= {f"gen/appi/{name}": value for name, value in opt.state["appi"].items()}
        logs.update(values)
        if state.log_history:  # the Trainer recorded this entry before calling on_log
            state.log_history[-1].update(values)
