"""Can a probe see the curvature? The same probes in float32 and in float64.

A probe round fits ``L(eta) - L0 = -eta A + eta^2 / 2 B`` from losses at steps ``eta`` that
are multiples of the group's rate. At a small rate the quadratic term ``eta^2 B / 2`` can be
smaller than the float32 rounding of the loss, and then ``B`` (and ``A / B``, the fitted rate)
is noise. This script measures it on the task of ``lr_free`` (full fine-tuning of
all-MiniLM-L6-v2 on SST-2): AdamW at ``--lr`` for ``--at`` steps (seed 0's batches), then on
the next batch, for each group and each probe step ``eta`` in ``--etas``, the fit of the
group's probes at ``(-2, -1, 1, 2) eta`` along the previous update's direction (what a probe
round sees), with the model in float32 (as it trains) and in float64 (the reference: its
rounding is 1e-9 of float32's). Per row: ``A``, ``B``, ``B``'s standard error as the rule
computes it (``Fit.curvature_se``: the residual's, at least the loss's float32 rounding),
whether the rule counts the curvature as resolved (``rule.CURVATURE_Z`` standard errors; the
floor is float32's rounding in both precisions: the float64 rows are the truth to compare
with, not what the rule would see), the verdict, and the fitted rate ``A / B / M`` (M = 10 at
the default betas) of a convex descent or, unresolved, the least fitted rate the rule takes
from it (``RateRule.bound``). Dropout is off (``model.eval()``) so that the two precisions
see the same function.

``--quick``: a tiny random BERT (mechanics only).

    python -m benchmarks.resolution [--lr 1e-5] [--at 20] [--etas 1e-6 1e-5 1e-4 1e-3]
"""
from __future__ import annotations

import argparse
import copy
import random

import torch

from gen_optim import GeNAdamW, group_parameters
from gen_optim.fit import Fit, Probes
from gen_optim.rule import RateRule, Verdict

from .harness import equipped, trainable
from .table3_sst2 import SST2
from .transient import PROBE_SCALES, directions, study_task

# the rule of a GeNAdamW group at its defaults
RULE = RateRule.of(GeNAdamW([torch.nn.Parameter(torch.zeros(1))]).param_groups[0])
PRECISIONS = (torch.float32, torch.float64)


def probe_fit(model: torch.nn.Module, params: list[torch.Tensor], ds: list[torch.Tensor], batch: dict,
              eta: float) -> Fit:
    """The fit of ``params``' probes at ``PROBE_SCALES * eta`` along ``ds`` on ``batch``."""
    with torch.no_grad():
        loss0 = float(model(**batch).loss)
        losses = []
        for s in PROBE_SCALES:
            torch._foreach_add_(params, ds, alpha=-s * eta)
            losses.append(float(model(**batch).loss))
            torch._foreach_add_(params, ds, alpha=s * eta)
    return Probes(tuple(s * eta for s in PROBE_SCALES), tuple(losses)).fit(loss0)


def study(task: SST2, lr: float, at: int, etas: list[float]) -> None:
    model = equipped(task, None, 0)
    trainable(model, None)
    groups = group_parameters(model)
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=1e-2)
    order = random.Random(0)
    for _ in range(at):
        opt.zero_grad(set_to_none=True)
        model(**task.batch(order)).loss.backward()
        opt.step()
    batch = task.batch(order)
    model.eval()
    print(f"\n### AdamW at {lr:g} for {at} steps; probes on the next batch along the previous direction\n")
    print("| group | eta | precision | A | B | se(B) | resolved | verdict | fitted rate (or bound) |")
    print("|---|---|---|---|---|---|---|---|---|")
    twins = {dtype: copy.deepcopy(model).to(dtype) for dtype in PRECISIONS}
    for i, group in enumerate(groups):
        ds = directions(opt, group, current=False)
        for eta in etas:
            for dtype, twin in twins.items():
                params = group_parameters(twin)[i]["params"]
                fit = probe_fit(twin, params, [d.to(dtype) for d in ds], batch, eta)
                verdict = RULE.judge(fit)
                rate = (f"{RULE.bound(fit):.2e} (bound)" if verdict is Verdict.UNRESOLVED
                        else f"{RULE.fitted(fit):.2e}" if fit.A > 0 and fit.B > 0 else "-")
                print(f"| {group['name']} | {eta:.0e} | {str(dtype).removeprefix('torch.')} | {fit.A:+.4g} | "
                      f"{fit.B:+.4g} | {fit.curvature_se:.3g} | {'yes' if RULE.resolved(fit) else 'no'} | "
                      f"{verdict.name.lower()} | {rate} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--at", type=int, default=20)
    parser.add_argument("--etas", type=float, nargs="+", default=[1e-6, 1e-5, 1e-4, 1e-3])
    parser.add_argument("--quick", action="store_true", help="tiny random BERT: mechanics only")
    args = parser.parse_args()
    study(study_task(args.quick), args.lr, args.at, args.etas)


if __name__ == "__main__":
    main()
