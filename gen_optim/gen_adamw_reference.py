"""GeNAdamW written as plainly as possible: one tensor at a time, no checks, no distributed.

The test suite runs it beside ``GeNAdamW`` and checks that the two agree step for step;
read this file to see the whole algorithm in one place.
"""
from __future__ import annotations


import numpy as np
import torch


class GeNAdamWReference(torch.optim.Optimizer):
    def __init__(self, params, closure, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 probe_every=8, probe_scales=(-2.0, -1.0, 1.0, 2.0), r2_min=0.99, smoothing=0.9,
                 rate_clip=(0.5, 2.0), joint=False, warmup=10, search=6, probe_direction="previous"):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.closure, self.probe_every, self.scales = closure, probe_every, probe_scales
        self.r2_min, self.smoothing, self.rate_clip, self.joint = r2_min, smoothing, rate_clip, joint
        self.probe_direction, self.warmup, self.search_steps = probe_direction, warmup, search
        self.t = 0
        self.appi = {}
        for i, group in enumerate(self.param_groups):
            group.setdefault("name", f"group{i}")
            group["gen_lr"] = group["lr"]
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

    def fit(self, group, params, loss0):
        """Probe ``group`` along its direction at its rate's scales; least-squares A, B, R^2,
        or None when no probe moved the loss beyond float32 rounding."""
        previous = [self.probe_direction == "previous" and self.state[p].get("step", 0) > 0 for p in params]
        d = [self.direction(group, p, not prev)[0] for p, prev in zip(params, previous)]
        w0 = [p.clone() for p in params]
        etas = np.array(self.scales) * group["gen_lr"]
        losses = []
        for eta in etas:
            for p, w, dp in zip(params, w0, d):
                p.copy_(w - eta * dp)
            losses.append(float(self.closure()) - loss0)
        for p, w in zip(params, w0):
            p.copy_(w)
        y = np.array(losses)
        if np.abs(y).max() <= 4 * np.finfo(np.float32).eps * abs(loss0):
            return None
        X = np.stack([-etas, etas**2 / 2], axis=1)
        A, B = np.linalg.solve(X.T @ X, X.T @ y)
        return A, B, 1 - np.sum((y - X @ [A, B]) ** 2) / np.sum((y - y.mean()) ** 2)

    def search(self, pending):
        """The first round's backtracking: lower each rate one fit can't correct, probe it again."""
        for _ in range(self.search_steps):
            if not pending:
                return
            loss0 = float(self.closure())
            if not np.isfinite(loss0):
                return
            lowered = []
            for group, params in pending:
                fit = self.fit(group, params, loss0)
                if fit is None:
                    continue
                A, B, r2 = fit
                if not r2 >= self.r2_min:
                    group["gen_lr"] /= 4
                elif A > 0 and B > 0 and A / B < self.rate_clip[0] * group["gen_lr"]:
                    group["gen_lr"] = max(A / B, group["gen_lr"] / 4)
                else:
                    continue
                lowered.append((group, params))
            pending = lowered

    @torch.no_grad()
    def step(self):
        probing = self.probe_every > 0 and (self.t < self.warmup or self.t % self.probe_every == 0)
        smoothing = self.smoothing if self.t >= self.warmup else 0.0
        if probing:
            active = [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]
            active = [(g, params) for g, params in active if params]
            if self.t == 0:
                self.search(active)
            loss0 = float(self.closure())
            fits = {}
            for group, params in active:
                fit = self.fit(group, params, loss0)
                fits[group["name"]] = 0.0 if fit is None else fit[0]
                if fit is None:
                    continue
                A, B, r2 = fit
                if A > 0 and B > 0 and r2 >= self.r2_min:
                    self.appi[group["name"]] += A**2 / (B * sum(p.numel() for p in group["params"]))
                    lo, hi = self.rate_clip
                    target = min(max(A / B, lo * group["gen_lr"]), hi * group["gen_lr"])
                    group["gen_lr"] = smoothing * group["gen_lr"] + (1 - smoothing) * target
                elif self.t < self.warmup or (A <= 0 and r2 >= self.r2_min):
                    group["gen_lr"] = smoothing * group["gen_lr"] + (1 - smoothing) * self.rate_clip[0] * group["gen_lr"]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d, m, v, t = self.direction(group, p)
                self.state[p].update(step=t, m=m, v=v)
                p.sub_(group["gen_lr"] * d)
        self.t += 1
        if probing and self.joint:
            loss1 = float(self.closure())
            probed = [g for g in self.param_groups if g["name"] in fits]
            slope = -sum(g["gen_lr"] * fits[g["name"]] for g in probed)
            curvature = 2 * (loss1 - loss0 - slope)
            if slope < 0 and curvature > 0 and -slope / curvature < 1:
                for g in probed:
                    g["gen_lr"] *= max(-slope / curvature, self.rate_clip[0])
