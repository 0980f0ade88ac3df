"""What a probe fit says against what the step does, early and late in AdamW's moments.

GeNAdamW fits each group's loss along the *previous* update's direction on the current batch
(a batch that direction never saw). The step it then takes follows the *current* direction,
whose bias-corrected first moment gives the current gradient a weight of (1 - beta1) /
(1 - beta1^t): 100%, 53%, 37%, ... in the first steps, 10% after ~1 / (1 - beta1). This script
measures the gap on the task of ``lr_free`` (full fine-tuning of all-MiniLM-L6-v2 on SST-2):
AdamW at ``--lr`` for ``t`` steps (every group, seed 0's batches), then at step t, per group:

- ``fit A/B``: the minimum of the previous-direction fit on batch t (what a probe round sees);
- ``this batch`` / ``next batch``: the loss change on batch t and on batch t+1 after the actual
  AdamW step of that group alone at ``s * lr``, ``s`` in ``SCALES``; and of all groups at once.

If the fits were a good guide to the step, a step within the fit's optimum would lower the
next batch's loss too. ``--at 2 30``: in the moments' transient and after it.
``--quick``: a tiny random BERT (mechanics only).

    python -m benchmarks.transient [--lr 1e-3] [--at 2 30]
"""
from __future__ import annotations

import argparse
import copy
import random

import torch

from gen_optim import group_parameters
from gen_optim.fit import Probes
from gen_optim.probe import adamw_direction

from .harness import equipped, trainable
from .table3_sst2 import SHARED, SST2, sst2_inputs

SCALES = (1.0, 2.0)
PROBE_SCALES = (-2.0, -1.0, 1.0, 2.0)


def loss_on(model, batch) -> float:
    with torch.no_grad():
        torch.manual_seed(1234)  # one dropout mask for every evaluation
        return float(model(**batch).loss)


def directions(opt, group, current: bool) -> list[torch.Tensor]:
    """AdamW's update direction of each parameter of ``group``: this step's (with its
    gradient) or the previous step's."""
    beta1, beta2 = group["betas"]
    out = []
    for p in group["params"]:
        state = opt.state[p]
        t = int(state["step"])
        out.append(adamw_direction(p, state["exp_avg"], state["exp_avg_sq"], t + 1 if current else t, beta1, beta2,
                                   group["eps"], group["weight_decay"], grad=p.grad if current else None))
    return out


def moved(model, opt, groups, scale: float, lr: float, current: bool) -> torch.nn.Module:
    """A copy of ``model`` with ``groups`` stepped by ``scale * lr`` along their directions."""
    twin = copy.deepcopy(model)
    index = {id(p): q for p, q in zip(model.parameters(), twin.parameters())}
    with torch.no_grad():
        for g in groups:
            for p, d in zip(g["params"], directions(opt, g, current)):
                index[id(p)].sub_(scale * lr * d)
    return twin


def study(task: SST2, lr: float, at: int) -> None:
    model = equipped(task, None, 0)
    trainable(model, None)
    groups = group_parameters(model)
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=1e-2)
    order = random.Random(0)
    batches = [task.batch(order) for _ in range(at + 2)]
    for step in range(at):
        opt.zero_grad(set_to_none=True)
        model(**batches[step]).loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    model(**batches[at]).loss.backward()
    here, after = batches[at], batches[at + 1]
    base_here, base_next = loss_on(model, here), loss_on(model, after)
    share = (1 - groups[0]["betas"][0]) / (1 - groups[0]["betas"][0] ** (at + 1))
    print(f"\n### AdamW at {lr:g}, step {at}: the current gradient is {100 * share:.0f}% of the first moment; "
          f"loss {base_here:.3f} on this batch, {base_next:.3f} on the next\n")
    print("| group | fit A/B (previous direction) | " + " | ".join(
        f"step x{s:g}: this batch | next batch" for s in SCALES) + " |")
    print("|---|---|" + "---|---|" * len(SCALES))
    for group in groups + [None]:
        chosen = groups if group is None else [group]
        if group is None:
            fitted = "-"
        else:
            losses = tuple(loss_on(moved(model, opt, chosen, s, lr, current=False), here) for s in PROBE_SCALES)
            fit = Probes(tuple(s * lr for s in PROBE_SCALES), losses).fit(base_here)
            fitted = "flat" if fit.flat or fit.B == 0 else (
                f"{fit.rate:.1e} ({'convex' if fit.B > 0 else 'concave'}, R^2 {fit.r2:.3f})")
        cells = []
        for s in SCALES:
            twin = moved(model, opt, chosen, s, lr, current=True)
            cells.append(f"{loss_on(twin, here) - base_here:+.3f} | {loss_on(twin, after) - base_next:+.3f}")
        print(f"| {'all' if group is None else group['name']} | {fitted} | " + " | ".join(cells) + " |", flush=True)


def study_task(quick: bool) -> SST2:
    """The task these studies probe (``--quick``: a tiny random BERT), its line printed."""
    quick, files = sst2_inputs(SHARED, quick)
    print(f"{'tiny random BERT (--quick: mechanics only)' if quick else 'all-MiniLM-L6-v2'}, full fine-tuning on "
          f"SST-2, batch 16; torch {torch.__version__}")
    return SST2(*files, quick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--at", type=int, nargs="+", default=[2, 30])
    parser.add_argument("--quick", action="store_true", help="tiny random BERT: mechanics only")
    args = parser.parse_args()
    task = study_task(args.quick)
    for at in args.at:
        study(task, args.lr, at)


if __name__ == "__main__":
    main()
