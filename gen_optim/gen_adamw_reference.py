"""GeNAdamW written as plainly as possible: one tensor at a time, no checks, no distributed.

The test suite runs it beside ``GeNAdamW`` and checks that the two agree step for step, for
each setting (per param group too) and under schedulers; read this file to see the whole
algorithm in one place. Not covered here: the AdamW options (amsgrad, maximize, fused, ...),
complex parameters and mixed precision, which ``tests/test_contract.py`` checks against
closed forms and ``torch.optim.AdamW``.
"""
from __future__ import annotations

import math

import numpy as np
import torch


class GeNAdamWReference(torch.optim.Optimizer):
    def __init__(self, params, closure, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 probe_every=None, probe_budget=0.05, probe_scales=(-2.0, -1.0, 1.0, 2.0), r2_min=0.99, smoothing=0.9,
                 rate_clip=(0.5, 2.0), joint=False, warmup=0, search=6, probe_direction="previous",
                 fit_steps=None, progress=True):
        settings = dict(probe_every=probe_every, probe_budget=probe_budget, probe_scales=probe_scales, r2_min=r2_min, smoothing=smoothing,
                        rate_clip=rate_clip, joint=joint, warmup=warmup, search=search, probe_direction=probe_direction,
                        fit_steps=fit_steps, progress=progress)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **settings))
        self.closure = closure
        self.t = 0
        self.appi = {}
        for i, group in enumerate(self.param_groups):
            group.setdefault("name", f"group{i}")
            group["gen_lr"] = group["base_lr"] = group["lr"]  # the fitted rate; a scheduler scales it
            group["rounds"] = 0
            group["searched"] = False  # the line search runs until a round's fit has a signal (is not flat)
            group["descent"] = 0.0  # the decayed count of clean fits that descended, minus those that climbed
            # the progress test: decayed mean and variance of cos(g_t, d_{t-1}), and its count
            group["test_mean"], group["test_variance"], group["test_count"] = 0.0, 0.0, 0
            # Adam's moments follow the newest gradients for their first ceil(1 / (1 - beta1)) steps:
            # no rate grows then, and warm-up's rounds come after
            group["moment_steps"] = math.ceil(1 / (1 - group["betas"][0]) - 1e-9)
            group["warmup_rounds"] = group["moment_steps"] + group["warmup"] if group["warmup"] else 0
            # a fit's minimum A / B is spread over this many steps (the first moment's reach by default)
            group["spread"] = group["moment_steps"] if group["fit_steps"] is None else group["fit_steps"]
            # the budget's schedule: forwards it may spend, when it is next due, how often, warm-up over
            group["credit"] = (group["warmup_rounds"] + group["search"]) * (len(group["probe_scales"]) + 1.0)
            group["debt"] = group["credit"]  # lent: what the budget earns repays it before it adds credit
            group["next"], group["interval"], group["settled"] = 0, 1, group["warmup"] == 0
            group["probed_at"] = -1  # the step of its last round: a round's PPI counts for the steps since
            self.appi[group["name"]] = 0.0

    def direction(self, group, p, with_grad=True):
        """AdamW's update per unit rate: with the moments this step will leave, or as they stand."""
        beta1, beta2 = group["betas"]
        state = self.state[p]
        t, m, v = state.get("step", 0), state.get("m", torch.zeros_like(p)), state.get("v", torch.zeros_like(p))
        if with_grad:
            t, m, v = t + 1, beta1 * m + (1 - beta1) * p.grad, beta2 * v + (1 - beta2) * p.grad**2
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        return m_hat / (v_hat.sqrt() + group["eps"]) + group["weight_decay"] * p, m, v, t

    @staticmethod
    def floored(group, rate):
        """No move takes a rate below a millionth of the group's starting rate."""
        return max(rate, 1e-6 * group["base_lr"])

    @staticmethod
    def pay(group, forwards):
        """A budgeted group pays for its forwards from its credit; one on a fixed interval pays nothing."""
        if group["probe_every"] is None:
            group["credit"] -= forwards

    def fit(self, group, params, loss0):
        """Probe ``group`` along its direction at its fitted rate's scales; least-squares A, B,
        R^2 and whether the largest step raised the loss, or None when no probe moved the loss
        beyond float32 rounding."""
        previous = [group["probe_direction"] == "previous" and self.state[p].get("step", 0) > 0 for p in params]
        d = [self.direction(group, p, not prev)[0] for p, prev in zip(params, previous)]
        w0 = [p.clone() for p in params]
        etas = np.array(group["probe_scales"]) * group["gen_lr"]
        self.pay(group, len(etas))
        losses = []
        for eta in etas:
            for p, w, dp in zip(params, w0, d):
                p.copy_(w - eta * dp)
            losses.append(float(self.closure()) - loss0)
        for p, w in zip(params, w0):
            p.copy_(w)
        y = np.array(losses)
        rounding = 4 * np.finfo(np.float32).eps * abs(loss0)  # of a float32 mean loss
        if np.abs(y).max() <= rounding:
            return None
        X = np.stack([-etas, etas**2 / 2], axis=1)
        A, B = np.linalg.solve(X.T @ X, X.T @ y)
        uphill = not np.isfinite(y).all() or (etas.max() > 0 and y[np.argmax(etas)] > 0)
        rss = np.sum((y - X @ [A, B]) ** 2)
        # B's standard error: the residual's noise, and at least each loss's rounding
        noise = max(np.sqrt(rss / (len(y) - 2)) if len(y) > 2 else 0.0, rounding)
        B_se = noise * np.sqrt(np.linalg.inv(X.T @ X)[1, 1])
        return A, B, 1 - rss / np.sum((y - y.mean()) ** 2), uphill, B_se

    def search(self, pending):
        """The line search: lower each rate one fit can't correct, probe it again. Returns, by
        name, the last fit of each group whose rate it left as probed (None: flat); the round
        takes that fit as its own."""
        standing = {}
        for attempt in range(max(group["search"] for group, _ in pending)):
            pending = [(group, params) for group, params in pending if attempt < group["search"]]
            if not pending:
                break
            loss0 = float(self.closure())
            for group, _ in pending:
                self.pay(group, 1 / len(pending))
            if not np.isfinite(loss0):
                return {}
            lowered = []
            for group, params in pending:
                fit = self.fit(group, params, loss0)
                standing[group["name"]] = fit
                if fit is None:
                    continue
                A, B, r2, _, B_se = fit
                if not r2 >= group["r2_min"]:
                    group["gen_lr"] = self.floored(group, group["gen_lr"] / 4)
                elif A > 0 and B >= 2 * B_se and B > 0 and A / B / group["spread"] < group["rate_clip"][0] * group["gen_lr"]:
                    group["gen_lr"] = self.floored(group, max(A / B / group["spread"], group["gen_lr"] / 4))
                else:
                    continue
                del standing[group["name"]]
                lowered.append((group, params))
            pending = lowered
        return standing

    def progress(self, group):
        """The progress test takes this step's cosine between the gradient and the previous
        update's direction; a clearly descending test grows the rate, a clearly climbing one
        shrinks it."""
        params = [p for p in group["params"] if p.grad is not None and self.state[p].get("step", 0) > 0]
        dot = grad_sq = dir_sq = 0.0
        for p in params:
            d = self.direction(group, p, with_grad=False)[0]
            dot += float((p.grad * d).sum(dtype=torch.float64))
            grad_sq += float((p.grad * p.grad).sum(dtype=torch.float64))
            dir_sq += float((d * d).sum(dtype=torch.float64))
        if not params or grad_sq == 0 or dir_sq == 0:
            return
        c = dot / math.sqrt(grad_sq * dir_sq)
        # the decayed mean and variance of c (weights summing to 1, as Adam's bias correction makes them)
        n = group["test_count"]
        before, weight = 1 - 0.9**n, 1 - 0.9 ** (n + 1)
        mean = group["test_mean"] + 0.1 / weight * (c - group["test_mean"])
        group["test_variance"] = (0.9 * before * group["test_variance"] + 0.1 * (c - group["test_mean"]) * (c - mean)) / weight
        group["test_mean"], group["test_count"] = mean, n + 1
        if group["test_count"] < group["moment_steps"]:
            return
        # the variance of the decayed mean of independent steps: the variance times the squared weights' sum
        spread = group["test_variance"] * 0.1 / 1.9 * (1 + 0.9**group["test_count"]) / (1 - 0.9**group["test_count"])
        z = mean / math.sqrt(spread) if spread > 0 else math.copysign(math.inf, mean) if mean else 0.0
        if z > 5:  # the previous update clearly still descends on new gradients: the faster, the clearer
            group["gen_lr"] *= math.exp(min(0.1, 0.01 * (z - 5)))
        elif z < -2:
            group["gen_lr"] = self.floored(group, group["gen_lr"] / 1.05)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            if group["progress"] and group["probe_every"] != 0 and group["gen_lr"] > 0:
                self.progress(group)
        with_grads = [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]
        with_grads = [(g, params) for g, params in with_grads if params and g["gen_lr"] > 0 and g["probe_every"] != 0]
        budgeted = [g for g, _ in with_grads if g["probe_every"] is None]
        for g in budgeted:  # each step earns the budgeted groups their share of the budget, in forwards (a step: 2)
            earned = g["probe_budget"] * 2.0 / len(budgeted)
            repaid = min(earned, g["debt"])
            g["debt"] -= repaid
            g["credit"] += earned - repaid
        active = [(g, params) for g, params in with_grads
                  if ((g["credit"] >= -1e-9 and self.t >= g["next"]) if g["probe_every"] is None
                      else (self.t < g["warmup_rounds"] or self.t % g["probe_every"] == 0))]
        fits = {}
        if active:
            unsearched = [(g, params) for g, params in active if not g["searched"] and g["search"] > 0]
            standing = self.search(unsearched) if unsearched else {}
            loss0 = float(self.closure())
            rest = [g for g, _ in active if g["name"] not in standing]
            for group in rest:  # only the groups probed anew pay for this L0
                self.pay(group, 1 / len(rest))
            for group, params in active:
                group["rounds"] += 1
                lo, hi = group["rate_clip"]
                warming = not group["settled"] if group["probe_every"] is None else self.t < group["warmup_rounds"]
                held = self.state[params[0]].get("step", 0) < group["moment_steps"]
                smoothing = 0.0 if warming else group["smoothing"]
                old = group["gen_lr"]
                fit = standing[group["name"]] if group["name"] in standing else self.fit(group, params, loss0)
                group["searched"] = group["searched"] or fit is not None
                fits[group["name"]] = 0.0 if fit is None else fit[0]
                span, group["probed_at"] = self.t - group["probed_at"], self.t
                A, B, r2, uphill, B_se = (0.0, 0.0, 0.0, False, 0.0) if fit is None else fit
                clean = fit is not None and np.isfinite([A, B, r2]).all() and r2 >= group["r2_min"]
                if clean and not held:
                    group["descent"] = 0.9 * group["descent"] + (1.0 if A > 0 else -1.0)
                resolved = abs(B) >= 2 * B_se  # the probes moved the loss beyond its rounding in B's term
                accepted = A > 0 and B > 0 and r2 >= group["r2_min"] and resolved
                shrunk = False
                if clean and A > 0 and not resolved:
                    # a straight descent: its minimum lies at least A / B+ away, B+ the largest
                    # curvature the probes can't rule out; that may raise the rate, never lower it
                    steepest = max(B, 0.0) + 2 * B_se
                    step = min(A / steepest, max(group["probe_scales"]) * old)  # the least reduction it allows
                    self.appi[group["name"]] += span * 2 * (A * step - steepest * step**2 / 2) / sum(p.numel() for p in group["params"])
                    bound = A / steepest / group["spread"]
                    if bound > old and not (held or group["descent"] < (1 / (1 - 0.9**2)) ** 0.5):
                        group["gen_lr"] = smoothing * old + (1 - smoothing) * min(bound, hi * old)
                elif accepted:
                    step = min(A / B, max(group["probe_scales"]) * old)  # the parabola's minimum, or the farthest probe
                    self.appi[group["name"]] += span * 2 * (A * step - B * step**2 / 2) / sum(p.numel() for p in group["params"])
                    # the parabola's minimum, spread over the steps the first moment carries d into
                    target = min(max(A / B / group["spread"], lo * group["gen_lr"]), hi * group["gen_lr"])
                    group["gen_lr"] = self.floored(group, smoothing * group["gen_lr"] + (1 - smoothing) * target)
                    # a fit may raise the rate only past the moments' transient, when the direction has
                    # clearly descended lately (a tally one standard deviation of a fair coin's above 0)
                    if held or group["descent"] < (1 / (1 - 0.9**2)) ** 0.5:
                        group["gen_lr"] = min(group["gen_lr"], old)
                elif fit is not None and (
                        # a clean climb whose minimum lies behind, within the probes, when it clearly climbs
                        (A < 0 < B and resolved and A / B >= min(min(group["probe_scales"]), 0.0) * old
                         and r2 >= group["r2_min"]
                         and (held or group["descent"] <= -(1 / (1 - 0.9**2)) ** 0.5))
                        or (warming and uphill and not A <= 0)):  # overshooting (NaN probes too) in warm-up
                    group["gen_lr"] = self.floored(group, smoothing * group["gen_lr"] + (1 - smoothing) * lo * group["gen_lr"])
                    shrunk = True
                if group["probe_every"] is None:  # the budget's schedule after this round
                    settled = group["settled"] or group["rounds"] >= group["warmup_rounds"] or (
                        not held and accepted and lo * old <= A / B / group["spread"] <= hi * old)
                    if settled and not group["settled"]:  # warm-up's unspent credit is dropped, and not owed
                        group["debt"] = max(group["debt"] - max(group["credit"], 0.0), 0.0)
                        group["credit"] = min(group["credit"], 0.0)
                    moved = shrunk or not 1 / 1.05 < group["gen_lr"] / old < 1.05
                    group["interval"] = 1 if not settled or moved else min(2 * group["interval"], 256)
                    group["next"], group["settled"] = self.t + group["interval"], settled
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d, m, v, t = self.direction(group, p)
                self.state[p].update(step=t, m=m, v=v)
                p.sub_(group["gen_lr"] * group["lr"] / group["base_lr"] * d)
        self.t += 1
        joint = [g for g, _ in active if g["joint"]]
        if joint:
            loss1 = float(self.closure())
            for g in joint:
                self.pay(g, 1 / len(joint))
            slope = -sum(g["gen_lr"] * g["lr"] / g["base_lr"] * fits[g["name"]] for g in joint)
            curvature = 2 * (loss1 - loss0 - slope)
            if slope < 0 and curvature > 0 and -slope / curvature < 1:
                for g in joint:
                    g["gen_lr"] = self.floored(g, g["gen_lr"] * max(-slope / curvature, g["rate_clip"][0]))
