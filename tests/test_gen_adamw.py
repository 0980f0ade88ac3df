import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICES, Net, make_data, rng_state
from gen_optim import ClosureError, GeNAdamW, group_parameters, iterator_closure, probe
from gen_optim.gen_adamw_reference import GeNAdamWReference
from gen_optim.probe import chunks
from gen_optim.rule import RATE_FLOOR, Action, Progress, RateRule, Schedule, Verdict, moment_steps


def on(device, *tensors):
    return [t.to(device) for t in tensors]


def train(model, opt, steps, data=None, closure_data=None):
    tokens, target = data or make_data()
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(tokens), target).backward()
        opt.step()


def mse_closure(model, seed=1, device="cpu"):
    tokens, target = on(device, *make_data(seed=seed))
    return lambda: F.mse_loss(model(tokens), target)


def state_equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_probe_every_zero_is_adamw_step_for_step(dtype, device):
    torch.manual_seed(0)
    model = Net().to(device, dtype)
    model.embed.weight.requires_grad_(True)
    twin = copy.deepcopy(model)
    frozen_grad = {"fc.bias"}  # a parameter that never gets a gradient

    def groups(m):
        named = dict(m.named_parameters())
        return [
            {"params": [named["embed.weight"], named["fc.weight"]], "weight_decay": 0.1},
            {"params": [named["fc.bias"], named["norm.weight"], named["norm.bias"]], "lr": 3e-3},
            {"params": [named["head.weight"], named["head.bias"]], "weight_decay": 0.0},
        ]

    ours = GeNAdamW(groups(model), lr=1e-2, probe_every=0)
    ref = torch.optim.AdamW(groups(twin), lr=1e-2)
    tokens, target = on(device, *make_data())
    for _ in range(10):
        for m, opt in ((model, ours), (twin, ref)):
            opt.zero_grad()
            F.mse_loss(m(tokens).float(), target).backward()
            for name, p in m.named_parameters():
                if name in frozen_grad:
                    p.grad = None
            opt.step()
        assert state_equal(model, twin)
    assert not torch.equal(model.fc.weight, Net().to(device, dtype).fc.weight)


BASE = dict(lr=1e-2, probe_every=3, r2_min=0.9, smoothing=0.5, weight_decay=0.05)
EQUIVALENCE = {
    "previous direction": {},
    "current direction": dict(probe_direction="current"),
    "from lr 1.0, where the search lowers rates further than one fit can": dict(lr=1.0),
    "joint": dict(joint=True),
    "tight rate_clip": dict(rate_clip=(0.8, 1.25)),
    "wide rate_clip, no smoothing": dict(rate_clip=(0.25, 4.0), smoothing=0.0),
    "no search": dict(search=0),
    "the earlier default warm-up": dict(warmup=10),
    "fit_steps 1 (GeN's A / B), from lr 1.0": dict(fit_steps=1, lr=1.0),
    "fit_steps per group": dict(groups={"others": dict(fit_steps=1), "head": dict(fit_steps=3)}),
    "long warm-up, short search": dict(warmup=6, search=1, lr=1.0),
    "per-group settings": dict(groups={"others": dict(probe_every=2, r2_min=0.5), "head": dict(probe_every=0),
                                       "norm": dict(probe_scales=(-1.0, 1.0, 2.0), warmup=0, joint=True)}),
    "scheduler": dict(scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.8**t)),
    "budget (the default schedule)": dict(probe_every=None, steps=40, progressed=True),
    "budget without the progress test": dict(probe_every=None, steps=40, progress=False),
    "progress test per group": dict(probe_every=None, steps=40, groups={"others": dict(progress=False)}),
    "from lr 1e-5, where the probes cannot resolve the curvature": dict(probe_every=None, lr=1e-5, steps=40, warmup=10,
                                                                       unresolved=True),
    "budget with the earlier default warm-up": dict(probe_every=None, warmup=10, steps=40),
    "budget, short warm-up, joint": dict(probe_every=None, probe_budget=0.5, warmup=2, joint=True, steps=40),
    "budget that repays its debt in the run": dict(probe_every=None, probe_budget=2.0, search=1, steps=40, repaid=True),
    "a head at zero: the groups behind it are flat at first and search later": dict(
        probe_every=None, lr=1.0, steps=20, init=lambda m: m.head.weight.data.zero_(), deferred=True),
    "budget per group beside a fixed interval": dict(
        probe_every=None, steps=40, groups={"others": dict(probe_budget=1.0), "head": dict(probe_every=4),
                                            "norm": dict(probe_scales=(-1.0, 1.0, 2.0), warmup=0, joint=True)}),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", EQUIVALENCE)
def test_matches_reference_step_for_step(name, device):
    torch.manual_seed(0)
    model = Net().to(device, torch.float64)
    kw = BASE | EQUIVALENCE[name]
    kw.pop("init", lambda m: None)(model)
    twin = copy.deepcopy(model)
    per_group, scheduler, steps = kw.pop("groups", {}), kw.pop("scheduler", None), kw.pop("steps", 12)
    unresolved, progressed, repaid = kw.pop("unresolved", False), kw.pop("progressed", False), kw.pop("repaid", False)
    deferred = kw.pop("deferred", False)
    moved_by_progress = False

    def groups(m):
        return [g | per_group.get(g["name"], {}) for g in group_parameters(m)]

    ours = GeNAdamW(groups(model), mse_closure(model, device=device), **kw)
    ref = GeNAdamWReference(groups(twin), mse_closure(twin, device=device), **kw)
    schedulers = [scheduler(o) for o in (ours, ref)] if scheduler else []
    tokens, target = on(device, *make_data())
    for _ in range(steps):
        for m, opt in ((model, ours), (twin, ref)):
            opt.zero_grad()
            F.mse_loss(m(tokens.clone()), target.double()).backward()
            opt.step()
        for sched in schedulers:
            sched.step()
        if kw["lr"] == 1.0 and len(ours.history) == 1 and not deferred:
            assert any(g["gen_lr"] < kw["lr"] / 2 for g in ours.param_groups)  # below what one fit can do
        for a, b in zip(model.parameters(), twin.parameters()):
            # float64: the two sum in different orders (1e-12 in a rate), and fits whose curvature is near the
            # loss's rounding (the unresolved bound) carry that to 1e-8 in a rate and, at the rates the progress
            # test reaches, to 1e-9 in a weight (and so to 1e-9 in the test's mean of cosines, which can sit near 0);
            # a decision taken differently moves a rate by 5% or more
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
        assert [g["gen_lr"] for g in ours.param_groups] == pytest.approx([g["gen_lr"] for g in ref.param_groups], rel=1e-7)
        assert [Schedule.of(g) for g in ours.param_groups] == [
            Schedule(pytest.approx(g["credit"], abs=1e-9), g["next"], g["interval"], g["settled"],
                     pytest.approx(g["debt"], abs=1e-9)) for g in ref.param_groups]
        assert [Progress.of(g) for g in ours.param_groups] == [
            Progress(pytest.approx(g["test_mean"], rel=1e-7, abs=1e-8), pytest.approx(g["test_variance"], rel=1e-7, abs=1e-15),
                     g["test_count"]) for g in ref.param_groups]
        moved_by_progress |= any(RateRule.of(g).progress_factor(Progress.of(g)) != 1.0 for g in ours.param_groups)
    assert ours.state["appi"] == pytest.approx(ref.appi, rel=1e-7)
    assert any(r["groups"][n]["accepted"] for r in ours.history for n in r["groups"])
    assert [g["gen_lr"] for g in ours.param_groups] != [kw["lr"]] * len(ours.param_groups)
    if kw.get("joint") or "norm" in per_group:
        assert any("joint" in r for r in ours.history)
    if per_group.get("head", {}).get("probe_every") == 0:
        assert not any("head" in r["groups"] for r in ours.history)
    if unresolved:  # straight-line descents raised rates by their bound
        assert any(e["verdict"] == Verdict.UNRESOLVED.value and e["action"] == Action.FIT.value
                   for r in ours.history for e in r["groups"].values())
    if progressed:  # the progress test moved rates between rounds
        assert moved_by_progress
    if deferred:  # a group flat in its first round, searched in a later one
        first = ours.history[0]["groups"]
        assert any(e["verdict"] == Verdict.FLAT.value for e in first.values())
        assert all(g["gen_searched"] for g in ours.param_groups)
    if repaid:  # every group repaid its starting credit and then probed on the budget's earnings
        assert all(g["gen_debt"] == 0 for g in ours.param_groups)
        assert all(sum(name in r["groups"] for r in ours.history) > 2 for name in ours.state["appi"])
    if not kw.get("progress", True):
        assert not moved_by_progress and all(Progress.of(g).count == 0 for g in ours.param_groups)
    if "progress" in per_group.get("others", {}):
        assert [Progress.of(g).count > 0 for g in ours.param_groups] == [g["name"] != "others" for g in ours.param_groups]
    if kw["probe_every"] is None:  # the budget left steps without a round
        assert len(ours.history) < steps


def test_quadratic_fit_is_exact():
    """On L = 0.5 (w-w*)'Q(w-w*) the fit recovers A = g'd_k, B = d_k'Q d_k and the closed-form PPI."""
    torch.manual_seed(0)
    n = 6
    M = torch.randn(n, n, dtype=torch.float64)
    Q = M @ M.T + n * torch.eye(n, dtype=torch.float64)
    w_star = torch.randn(n, dtype=torch.float64)
    w = torch.nn.Parameter(torch.randn(n, dtype=torch.float64))
    parts = [torch.nn.Parameter(w.detach()[:2].clone()), torch.nn.Parameter(w.detach()[2:].clone())]

    def loss():
        e = torch.cat(parts) - w_star
        return 0.5 * e @ Q @ e

    wd, eps = 0.1, 1e-8
    opt = GeNAdamW([{"params": [parts[0]], "name": "a"}, {"params": [parts[1]], "name": "b"}],
                   loss, lr=0.05, weight_decay=wd, eps=eps, probe_every=1, r2_min=0.0, joint=False)
    loss().backward()
    g = torch.cat([p.grad for p in parts])
    w0 = torch.cat([p.detach() for p in parts])
    d = g / (g.abs() + eps) + wd * w0  # AdamW's first step: m_hat = g, v_hat = g^2
    opt.step()
    record = opt.history[0]["groups"]
    for name, idx in (("a", slice(0, 2)), ("b", slice(2, n))):
        dk = torch.zeros(n, dtype=torch.float64)
        dk[idx] = d[idx]
        A, B = float(g @ dk), float(dk @ Q @ dk)
        assert record[name]["A"] == pytest.approx(A, rel=1e-6)
        assert record[name]["B"] == pytest.approx(B, rel=1e-6)
        assert record[name]["r2"] == pytest.approx(1.0, abs=1e-9)
        step = min(A / B, 2 * 0.05)  # the minimum, or the farthest probe (scale 2 of the rate)
        assert record[name]["ppi"] == pytest.approx(2 * (A * step - B * step**2 / 2) / (idx.stop - idx.start), rel=1e-6)
        if A / B <= 0.1:
            assert record[name]["ppi"] == pytest.approx(A**2 / (B * (idx.stop - idx.start)), rel=1e-6)
        assert opt.state["appi"][name] == record[name]["ppi"]

    # the second round probes along the first update's direction, on the current gradient
    for p in parts:
        p.grad = None
    loss().backward()
    g2 = torch.cat([p.grad for p in parts])
    w1 = torch.cat([p.detach() for p in parts])
    m, v = 0.1 * g, 0.001 * g**2  # the moments after one step, before this one's gradient
    d_prev = (m / 0.1) / ((v / 0.001).sqrt() + eps) + wd * w1
    opt.step()
    record = opt.history[1]["groups"]
    for name, idx in (("a", slice(0, 2)), ("b", slice(2, n))):
        dk = torch.zeros(n, dtype=torch.float64)
        dk[idx] = d_prev[idx]
        assert record[name]["A"] == pytest.approx(float(g2 @ dk), rel=1e-6)
        assert record[name]["B"] == pytest.approx(float(dk @ Q @ dk), rel=1e-6)


def one_step_on(loss, params, **kw):
    """GeNAdamW's first step on ``loss`` of named tensors; returns the optimizer."""
    opt = GeNAdamW([{"params": [p], "name": n} for n, p in params.items()], loss, probe_every=1, **kw)
    loss().backward()
    opt.step()
    return opt


def test_first_round_backtracks_a_rate_far_too_high():
    """On a quadratic every fit is clean, so only a fitted rate (A/B over the moments' 10 steps)
    below rate/2 lowers the rate: by 4x per re-probe, then the round sets it to the fitted rate
    exactly (in warm-up, unsmoothed); without the search it only halves."""
    torch.manual_seed(0)
    Q = torch.diag(torch.tensor([1.0, 3.0, 10.0], dtype=torch.float64))
    w0 = torch.randn(3, dtype=torch.float64)
    for search in (6, 0):
        w = torch.nn.Parameter(w0.clone())
        opt = one_step_on(lambda: 0.5 * w @ Q @ w, {"w": w}, lr=300.0, weight_decay=0.0, search=search, warmup=10)
        fit = opt.history[0]["groups"]["w"]
        assert fit["r2"] == pytest.approx(1.0)
        optimum = fit["A"] / fit["B"] / moment_steps(0.9)
        assert optimum < 300.0 / 500  # the start is far too high
        assert opt.param_groups[0]["gen_lr"] == pytest.approx(optimum if search else 150.0, rel=1e-9)
    # at the defaults (no warm-up) the round after the search is smoothed: within 2x of the fitted rate
    w = torch.nn.Parameter(w0.clone())
    opt = one_step_on(lambda: 0.5 * w @ Q @ w, {"w": w}, lr=300.0, weight_decay=0.0)
    assert optimum < opt.param_groups[0]["gen_lr"] < 2 * optimum


def test_first_round_backtracks_out_of_a_non_quadratic_region():
    """log cosh is linear far out: probes there fit no parabola, the search divides the rate by 4
    until they do; without the search the first fit is poor and the rate only halves (in warm-up)."""
    torch.manual_seed(0)
    w0 = 3 * torch.randn(8, dtype=torch.float64)
    fits = {}
    for search in (6, 0):
        w = torch.nn.Parameter(w0.clone())
        opt = one_step_on(lambda: torch.log(torch.cosh(w)).sum(), {"w": w}, lr=10.0, weight_decay=0.0, search=search,
                          warmup=10)
        fits[search] = opt.history[0]["groups"]["w"]
        fits[search]["gen_lr"] = opt.param_groups[0]["gen_lr"]
    assert fits[0]["r2"] < 0.99 and fits[0]["gen_lr"] == 5.0
    assert fits[6]["accepted"] and fits[6]["gen_lr"] <= 10.0 / 4


def test_flat_fit_leaves_the_rate_alone():
    """LoRA's A does not move the loss while B = 0: its fit is flat, and even warm-up keeps its rate."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randn(32, 4)
    lora_A = torch.nn.Parameter(torch.randn(4, 2))
    lora_B = torch.nn.Parameter(torch.zeros(2, 4))

    def loss():
        return F.mse_loss(x + x @ lora_A @ lora_B, y)

    opt = one_step_on(loss, {"lora_A": lora_A, "lora_B": lora_B}, lr=1e-2)
    record = opt.history[0]["groups"]
    assert record["lora_A"]["reason"].startswith("flat") and record["lora_A"]["ppi"] == 0.0
    assert (record["lora_A"]["verdict"], record["lora_A"]["action"]) == (Verdict.FLAT.value, Action.KEEP.value)
    # accepted; its optimum lies above the rate, which the first step holds (the moments' transient)
    assert (record["lora_B"]["verdict"], record["lora_B"]["action"]) == (Verdict.ACCEPTED.value, Action.HOLD.value)
    assert opt.param_groups[0]["gen_lr"] == opt.param_groups[1]["gen_lr"] == 1e-2


def test_the_moments_transient_holds_rates_then_fits_move_them():
    """No fit raises a rate while AdamW's moments have seen fewer than ceil(1 / (1 - beta1))
    gradients, nor before the descent tally is clear; then the accepted fits move it (here up:
    the optimum is far above)."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randn(64, 4)
    weight = torch.nn.Parameter(torch.zeros(4, 4))

    def loss():
        return F.mse_loss(x @ weight, y)

    opt = GeNAdamW([{"params": [weight], "name": "w"}], loss, lr=1e-3, probe_every=1, betas=(0.75, 0.999), search=0,
                   warmup=10, progress=False)  # the fits alone, unsmoothed in warm-up
    for _ in range(9):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert all(r["groups"]["w"]["accepted"] for r in opt.history)  # every fit clean, its optimum ~0.1
    actions = [r["groups"]["w"]["action"] for r in opt.history]
    # held for moment_steps(0.75) = 4 steps; then the descent tally counts 1, 1.9, 2.71 >= CLEAR_TALLY
    assert actions == [Action.HOLD.value] * 6 + [Action.FIT.value] * 3
    assert [r["groups"]["w"]["lr"] for r in opt.history] == pytest.approx([1e-3] * 6 + [2e-3, 4e-3, 8e-3])
    assert opt.param_groups[0]["gen_descent"] == pytest.approx(sum(0.9**k for k in range(5)))


@pytest.mark.parametrize("device", DEVICES)
def test_probes_leave_no_trace(device):
    """With rates pinned (rate_clip 1..1, no search) a probing step is exactly AdamW: weights, BatchNorm
    buffers and the RNG stream are untouched by the probe forwards (dropout on, train mode)."""
    torch.manual_seed(0)
    model = Net(dropout=0.3, batchnorm=True).to(device)
    twin = copy.deepcopy(model)
    probe_tokens, probe_target = on(device, *make_data(seed=1))
    closure = iterator_closure(model, [probe_tokens], lambda m, tokens: F.mse_loss(m(tokens), probe_target))
    ours = GeNAdamW(model.parameters(), closure, lr=1e-2, probe_every=1, rate_clip=(1.0, 1.0), joint=False, r2_min=0.0,
                     search=0)
    ref = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    tokens, target = on(device, *make_data())
    for _ in range(5):
        rng = []
        for m, opt in ((model, ours), (twin, ref)):
            torch.manual_seed(1)
            opt.zero_grad()
            F.mse_loss(m(tokens), target).backward()
            opt.step()
            rng.append(rng_state(device))
        assert torch.equal(*rng)
        assert state_equal(model, twin)  # parameters and BatchNorm running statistics
    assert len(ours.history) == 5


def test_chunks_partition_the_tensors_by_kind_within_the_limit():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        n = int(torch.randint(1, 12, (1,), generator=g))
        sizes = torch.randint(1, 13, (n,), generator=g).tolist()  # some above the limit: alone
        dtypes = [(torch.float32, torch.float64)[int(b)] for b in torch.randint(0, 2, (n,), generator=g)]
        keys = torch.randint(0, 2, (n,), generator=g).tolist()
        tensors = [torch.zeros(s, dtype=d) for s, d in zip(sizes, dtypes)]
        runs = chunks(tensors, keys, limit=8)
        assert sorted(i for run in runs for i in run) == list(range(n))
        for run in runs:
            assert len({(dtypes[i], keys[i]) for i in run}) == 1
            assert len(run) == 1 or sum(sizes[i] for i in run) <= 8
        for kind in {(d, k) for d, k in zip(dtypes, keys)}:  # a kind's runs: its tensors in order, each run full
            mine = [run for run in runs if (dtypes[run[0]], keys[run[0]]) == kind]
            assert [i for run in mine for i in run] == [i for i in range(n) if (dtypes[i], keys[i]) == kind]
            assert all(sum(sizes[i] for i in a) + sizes[b[0]] > 8 for a, b in zip(mine, mine[1:]))


@pytest.mark.parametrize("device", DEVICES)
def test_probes_in_small_chunks_fit_what_one_chunk_fits(device, monkeypatch):
    """A group probed in chunks of one tensor at a time fits the rates of one chunk per group."""
    histories = []
    for limit in (probe.PROBE_CHUNK, 1):
        monkeypatch.setattr(probe, "PROBE_CHUNK", limit)
        torch.manual_seed(0)
        model = Net().to(device)
        opt = GeNAdamW(group_parameters(model), mse_closure(model, device=device), probe_every=1,
                       probe_direction="current", amsgrad=True)
        train(model, opt, 3, data=on(device, *make_data()))
        histories.append([e[k] for r in opt.history for e in r["groups"].values() for k in ("A", "B", "lr")])
    assert histories[0] == (pytest.approx(histories[1], rel=1e-5) if device == "cuda" else histories[1])
    assert len(histories[0]) == 3 * 3 * len(group_parameters(Net()))


@pytest.mark.parametrize("device", DEVICES)
def test_every_probe_of_a_round_sees_the_same_rng_state(device):
    torch.manual_seed(0)
    model = Net(dropout=0.5).to(device)
    draws = []
    tokens, target = on(device, *make_data())

    def closure():
        draws.append(torch.rand(1, device=device).item())
        return F.mse_loss(model(tokens), target)

    opt = GeNAdamW(group_parameters(model), closure, probe_every=1, joint=True, search=0)
    F.mse_loss(model(tokens), target).backward()
    opt.step()
    groups = len(opt.history[0]["groups"])
    assert len(draws) == 1 + 4 * groups + 1 and len(set(draws)) == 1
    assert opt.history[0]["groups"]["others"]["r2"] > 0.99  # clean fits in train mode with dropout


def test_closure_contract_errors_keep_weights():
    torch.manual_seed(0)
    model = Net()
    tokens, target = make_data()

    def backward_closure():
        loss = F.mse_loss(model(tokens), target)
        loss.backward()
        return loss

    def enable_grad_backward():
        with torch.enable_grad():
            return backward_closure()

    def raising():
        raise KeyError("boom")

    cases = [
        (backward_closure, ClosureError, "must only compute the loss"),
        (enable_grad_backward, ClosureError, "must only compute the loss"),
        (lambda: (model(tokens) - target) ** 2, ClosureError, "scalar"),
        (raising, KeyError, "boom"),
    ]
    for closure, error, message in cases:
        opt = GeNAdamW(model.parameters(), closure, probe_every=1)
        opt.zero_grad()
        F.mse_loss(model(tokens), target).backward()
        before = copy.deepcopy(model.state_dict())
        with pytest.raises(error, match=message):
            opt.step()
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        moments = [v for k, v in opt.state.items() if isinstance(k, torch.Tensor)]
        assert opt.state["gen"]["step"] == 0 and all(m["step"] == 0 and not m["exp_avg"].any() for m in moments)


def test_no_closure_is_an_error_that_shows_the_fix():
    model = Net()
    opt = GeNAdamW(model.parameters(), probe_every=4)
    tokens, target = make_data()
    F.mse_loss(model(tokens), target).backward()
    with pytest.raises(RuntimeError, match=r"closure=lambda: loss_fn\(model\(x\), y\)"):
        opt.step()
    GeNAdamW(model.parameters(), probe_every=0).step()  # no probing, no closure needed


def test_nonfinite_loss_rejects_round_once_with_warning():
    torch.manual_seed(0)
    model = Net()
    opt = GeNAdamW(group_parameters(model), lambda: torch.tensor(float("nan")), probe_every=1, warmup=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(model, opt, 3)
    assert sum("NaN or inf" in str(w.message) for w in caught) == 1
    assert all(not e["accepted"] and e["reason"] == "nonfinite loss" for r in opt.history for e in r["groups"].values())
    assert all(g["gen_lr"] == 1e-3 for g in opt.param_groups)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_warmup_probes_every_step_and_shrinks_rates_without_a_clean_fit():
    torch.manual_seed(0)
    model = Net()
    opt = GeNAdamW(group_parameters(model), lambda: torch.tensor(float("nan")), lr=1e-2, probe_every=4, warmup=3,
                   betas=(0.5, 0.999), progress=False)  # the fits alone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(model, opt, 13)
    # warm-up: the moments' 2 steps (beta1 0.5), then 3; then every 4th step
    assert [r["step"] for r in opt.history] == [0, 1, 2, 3, 4, 8, 12]
    assert all(g["gen_lr"] == pytest.approx(1e-2 * 0.5**5) for g in opt.param_groups)  # halved in warm-up only


@pytest.mark.parametrize(
    "kwargs",
    [dict(lr=-1.0), dict(lr=float("nan")), dict(differentiable=True), dict(probe_every=-1), dict(probe_every=1.5), dict(probe_scales=(1.0, 2.0)),
     dict(probe_scales=(0.0, 1.0, 2.0)), dict(r2_min=1.5), dict(smoothing=1.0), dict(rate_clip=(2.0, 3.0)),
     dict(betas=(1.0, 0.9)), dict(probe_direction="next"), dict(search=-1), dict(search=2.0), dict(fit_steps=0),
     dict(fit_steps=2.0), dict(fit_steps=True)],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        GeNAdamW(Net().parameters(), **kwargs)


def test_group_names_default_and_unique():
    model = Net()
    opt = GeNAdamW([{"params": [model.fc.weight]}, {"params": [model.head.weight], "name": "h"}], probe_every=0)
    assert [g["name"] for g in opt.param_groups] == ["group0", "h"]
    assert opt.state["appi"] == {"group0": 0.0, "h": 0.0}
    with pytest.raises(ValueError, match="named"):
        opt.add_param_group({"params": [model.fc.bias], "name": "h"})


def test_scheduler_scales_the_fitted_rate():
    torch.manual_seed(0)
    model = Net()
    opt = GeNAdamW(group_parameters(model), mse_closure(model), lr=1e-2, probe_every=2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 ** t)
    tokens, target = make_data()
    for _ in range(4):
        opt.zero_grad()
        F.mse_loss(model(tokens), target).backward()
        opt.step()
        sched.step()
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(1e-2 * 0.5**4)
        assert opt.rate(g) == pytest.approx(g["gen_lr"] * 0.5**4)
    assert any(g["gen_lr"] != 1e-2 for g in opt.param_groups)


def test_state_dict_resume_is_bit_identical():
    def run(resume_at=None):
        torch.manual_seed(0)
        model = Net(dropout=0.1)
        opt = GeNAdamW(group_parameters(model), mse_closure(model), lr=1e-2, probe_every=3)
        tokens, target = make_data()
        for step in range(12):
            if step == resume_at:
                saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
                rng = torch.get_rng_state()
                torch.manual_seed(123)
                model = Net(dropout=0.1)
                opt = GeNAdamW(group_parameters(model), mse_closure(model), lr=1e-2, probe_every=3)
                model.load_state_dict(saved_model)
                opt.load_state_dict(saved_opt)
                torch.set_rng_state(rng)
            opt.zero_grad()
            F.mse_loss(model(tokens), target).backward()
            opt.step()
        return model, opt

    a, opt_a = run()
    b, opt_b = run(resume_at=7)
    assert state_equal(a, b)
    assert opt_a.state["appi"] == opt_b.state["appi"] and opt_a.history == opt_b.history
    assert [g["gen_lr"] for g in opt_a.param_groups] == [g["gen_lr"] for g in opt_b.param_groups]


def test_ppi_within_reach_is_the_papers_and_beyond_it_is_capped():
    from gen_optim.fit import Probes, ppi

    etas = (-0.2, -0.1, 0.1, 0.2)
    for A, B in ((1.0, 20.0), (1.0, 1e-6)):  # minimum at 0.05 (within reach), at 1e6 (far beyond)
        fit = Probes(etas, tuple(1.0 - A * e + B * e**2 / 2 for e in etas)).fit(1.0)
        assert fit.reach == 0.2 and fit.A == pytest.approx(A) and fit.B == pytest.approx(B, rel=1e-4)
        expected = A**2 / B if A / B <= 0.2 else 2 * (A * 0.2 - B * 0.2**2 / 2)
        assert ppi(fit, 10) == pytest.approx(expected / 10, rel=1e-4)
    assert ppi(fit, 10) < 0.05  # not the 1e5 that A^2 / (B |w|) gives


def test_appi_counts_each_rounds_ppi_for_the_steps_since_the_groups_previous_round():
    """With the rates pinned (the same AdamW trajectory whatever the schedule), probing every
    4th step credits each round's PPI 4 times (the first round once): brute force from the
    PPI of every step, which a run probing at each step records."""
    pinned = dict(lr=1e-2, rate_clip=(1.0, 1.0), search=0, progress=False, r2_min=0.0)
    runs = {}
    for every in (1, 4):
        torch.manual_seed(0)
        model = Net()
        opt = GeNAdamW(group_parameters(model), mse_closure(model), probe_every=every, **pinned)
        train(model, opt, 24)
        runs[every] = (model, opt)
    (model_1, opt_1), (model_4, opt_4) = runs[1], runs[4]
    for a, b in zip(model_1.parameters(), model_4.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same trajectory: probes move nothing
    every_step = {r["step"]: r["groups"] for r in opt_1.history}
    assert sorted(every_step) == list(range(24)) and all(e["span"] == 1 for g in every_step.values() for e in g.values())
    for name in opt_4.state["appi"]:
        expected = every_step[0][name]["ppi"] + sum(4 * every_step[t][name]["ppi"] for t in range(4, 24, 4))
        assert opt_4.state["appi"][name] == pytest.approx(expected, rel=1e-6)
        assert opt_1.state["appi"][name] == pytest.approx(sum(every_step[t][name]["ppi"] for t in range(24)), rel=1e-9)
        assert [r["groups"][name]["span"] for r in opt_4.history] == [1, 4, 4, 4, 4, 4]
    assert any(v > 0 for v in opt_4.state["appi"].values())


def test_a_group_added_to_a_running_optimizer_counts_its_span_from_the_step_it_joins():
    torch.manual_seed(0)
    model = Net()
    groups = group_parameters(model)
    late = next(g for g in groups if g["name"] == "head")
    opt = GeNAdamW([g for g in groups if g is not late], mse_closure(model), lr=1e-2, probe_every=1, search=0)
    model.head.requires_grad_(False)
    train(model, opt, 5)
    model.head.requires_grad_(True)
    opt.add_param_group(late)
    train(model, opt, 3)
    assert [r["groups"]["head"]["span"] for r in opt.history if "head" in r["groups"]] == [1, 1, 1]
    assert [r["groups"]["embed"]["span"] for r in opt.history] == [1] * 8


def test_under_the_budget_appi_sums_ppi_over_every_step_up_to_each_groups_last_round():
    """Each group's rounds under the budget follow its own schedule; their spans add up to the
    steps up to its last round, and its APPI (also kept in each record) to their sum."""
    torch.manual_seed(0)
    model = Net()
    opt = GeNAdamW(group_parameters(model), mse_closure(model), lr=1e-2)
    train(model, opt, 80)
    rounds = {name: [(r["step"], r["groups"][name]) for r in opt.history if name in r["groups"]] for name in opt.state["appi"]}
    assert len({len(v) for v in rounds.values()}) > 1  # the groups were probed unequally often
    for group in opt.param_groups:
        entries = rounds[group["name"]]
        assert sum(e["span"] for _, e in entries) == entries[-1][0] + 1 == group["gen_probed_at"] + 1
        assert opt.state["appi"][group["name"]] == pytest.approx(sum(e["span"] * e["ppi"] for _, e in entries), rel=1e-12)
        assert entries[-1][1]["appi"] == opt.state["appi"][group["name"]]


def test_a_fixed_interval_pays_no_credit_and_moving_to_the_budget_probes_at_once():
    """Groups on a fixed ``probe_every`` neither earn nor pay credit: after 12 rounds every
    step they still hold their starting credit, and moved to the budget (``probe_every=None``)
    they are due at the next step, as a fresh group would be, not starved by forwards the
    fixed interval spent."""
    torch.manual_seed(0)
    model = Net()
    opt = GeNAdamW(group_parameters(model), mse_closure(model), lr=1e-2, probe_every=1, search=0)
    start = [g["gen_credit"] for g in opt.param_groups]
    train(model, opt, 12)
    assert len(opt.history) == 12 and [g["gen_credit"] for g in opt.param_groups] == start
    for g in opt.param_groups:
        g["probe_every"] = None
    train(model, opt, 1)
    assert opt.history[-1]["step"] == 12 and len(opt.history[-1]["groups"]) == len(opt.param_groups)


def test_a_search_that_lowers_no_rate_is_the_first_rounds_probing():
    """The search's probes at a rate it leaves stand are the round's own: a first round whose
    search lowers nothing costs one ``L0`` and each group's probes, and decides exactly what
    the same round without a search does (counted closure calls)."""
    runs = {}
    for search in (0, 6):
        torch.manual_seed(0)
        model = Net()
        closure, calls = mse_closure(model), [0]

        def counted():
            calls[0] += 1
            return closure()

        opt = GeNAdamW(group_parameters(model), counted, lr=1e-4, search=search, warmup=0)
        train(model, opt, 1)
        runs[search] = (calls[0], opt.history[0], [g["gen_lr"] for g in opt.param_groups])
    assert all(e["verdict"] != Verdict.POOR.value for e in runs[6][1]["groups"].values())  # nothing to lower
    assert runs[6] == runs[0]
    assert runs[0][0] == 1 + len(runs[0][1]["groups"]) * 4


def test_a_group_flat_in_its_first_round_is_searched_in_its_next():
    """Behind a head at zero the other groups' loss does not move at step 0 (LoRA's A while B
    is 0 is the same): their first round is flat and leaves the search for their next round,
    which lowers a rate of 1.0 further than one fit can (``rate_clip[0]`` = 0.5)."""
    torch.manual_seed(0)
    model = Net()
    model.head.weight.data.zero_()
    opt = GeNAdamW(group_parameters(model), mse_closure(model), lr=1.0)
    train(model, opt, 1)
    flat = [n for n, e in opt.history[0]["groups"].items() if e["verdict"] == Verdict.FLAT.value]
    assert "others" in flat and "head" not in flat
    groups = {g["name"]: g for g in opt.param_groups}
    assert all(groups[n]["gen_lr"] == 1.0 and not groups[n]["gen_searched"] for n in flat)
    assert groups["head"]["gen_searched"]
    while not all(groups[n]["gen_rounds"] >= 2 for n in flat):
        train(model, opt, 1)
    assert all(groups[n]["gen_searched"] for n in flat)
    assert groups["others"]["gen_lr"] < 0.5


@pytest.mark.parametrize("warmup", [0, 3])
@pytest.mark.parametrize("budget", [0.05, 0.2])
def test_the_budget_bounds_the_probe_forwards(budget, warmup):
    """Counted closure calls: a group's starting credit (its first round's search and warm-up)
    is lent to it, so over the run it spends that credit or its share of the budget, whichever
    is more, and at most one round beyond; its earnings repay the debt before they pay for a
    round, and once every group has repaid, probing goes on at the budget's rate."""
    from gen_optim.rule import STEP_FORWARDS, moment_steps

    torch.manual_seed(0)
    model = Net()
    tokens, target = make_data()
    calls = [0]

    def closure():
        calls[0] += 1
        return F.mse_loss(model(tokens), target)

    steps, search, scales = 1000, 2, (-2.0, -1.0, 1.0, 2.0)
    opt = GeNAdamW(group_parameters(model), closure, lr=1e-2, probe_budget=budget, warmup=warmup, search=search)
    groups = len(opt.param_groups)
    lent = groups * ((moment_steps(0.9) + warmup if warmup else 0) + search) * (len(scales) + 1)
    assert sum(g["gen_debt"] for g in opt.param_groups) == lent
    spent, repaid_at, credit_then = [], None, 0.0
    for t in range(steps):
        opt.zero_grad()
        F.mse_loss(model(tokens), target).backward()
        opt.step()
        spent.append(calls[0])
        if warmup == 0 and t == 0:  # no warm-up: every group probed at step 0, settled from then on
            assert [r["step"] for r in opt.history] == [0] and len(opt.history[0]["groups"]) == groups
            assert all(g["gen_settled"] for g in opt.param_groups)
        if repaid_at is None and all(g["gen_debt"] == 0 for g in opt.param_groups):
            repaid_at, credit_then = t, sum(max(g["gen_credit"], 0.0) for g in opt.param_groups)
    one_round = len(scales) * (search + 1) + search + 1  # a group's probes and L0s in its first round, at most
    earned = budget * STEP_FORWARDS * steps
    assert spent[-1] <= max(lent, earned) + groups * one_round
    if earned >= 2 * lent:  # long enough to repay the loan: the budget holds over the whole run
        assert repaid_at is not None and spent[-1] <= earned + groups * one_round
        after = spent[-1] - spent[repaid_at]
        rest = budget * STEP_FORWARDS * (steps - 1 - repaid_at)
        assert after <= rest + credit_then + groups * (len(scales) + 1)
        assert after >= 0.5 * rest  # and it is spent: rounds go on
    else:  # too short: the starting credit, no more
        assert spent[-1] <= lent + groups * one_round
    assert all(g["gen_settled"] for g in opt.param_groups)


def test_progress_test_measures_the_gradient_against_the_previous_update_closed_form():
    """After two steps the test holds c = cos(g_2, d_1), d_1 = m_hat / (sqrt(v_hat) + eps) + wd w =
    g_1 / (|g_1| + eps) + wd w elementwise (the first step's bias-corrected moments), at the weights
    the probes move from; with maximize the objective's gradient is -g."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 3, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    for maximize in (False, True):
        w = torch.nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
        sign = -1.0 if maximize else 1.0

        def loss():
            return sign * F.mse_loss(x @ w, y)

        opt = GeNAdamW([w], loss, lr=1e-2, weight_decay=0.1, maximize=maximize, search=0)
        grads = []
        for _ in range(2):
            opt.zero_grad()
            loss().backward()
            grads.append(w.grad.clone() * sign)  # the gradient of the loss minimised
            if len(grads) == 2:
                w_before = w.detach().clone()
            opt.step()
        d = grads[0] / (grads[0].abs() + 1e-8) + 0.1 * w_before
        c = float((grads[1] * d).sum() / (grads[1].norm() * d.norm()))
        test = Progress.of(opt.param_groups[0])
        assert test.count == 1 and test.mean == pytest.approx(c, rel=1e-12) and test.variance == 0.0
        assert c > 0.5  # the first steps descend along a full-batch gradient


def test_progress_test_of_groups_with_different_settings_computed_together_matches_brute_force():
    """The test computes every group's terms together, in runs of one step count and direction
    settings: against float64 brute force over four steps, each group's test holds its own
    cosines, with its own betas, eps, weight decay and AMSGrad, a group that shares its settings
    with another summed apart from it, and a tensor whose moments lag a step (no gradient at
    step 0) left out until it has a previous update, then counted at its own step count."""
    torch.manual_seed(0)
    shapes = {"w1": (3, 2), "w2": (2,), "w3": (3, 2), "w4": (2,)}
    w = {k: torch.nn.Parameter(torch.randn(*s, dtype=torch.float64)) for k, s in shapes.items()}
    settings = {"a": dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, amsgrad=False),
                "b": dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0, amsgrad=True),
                "c": dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, amsgrad=False)}  # a's settings
    members = {"a": ["w1", "w2"], "b": ["w3"], "c": ["w4"]}
    batches = [(torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)) for _ in range(4)]
    batch = [batches[0]]

    def loss():
        x, y = batch[0]
        return F.mse_loss(x @ w["w1"] + w["w2"] + x @ w["w3"] + w["w4"], y)

    opt = GeNAdamW([{"params": [w[k] for k in members[n]], "name": n, **settings[n]} for n in members], loss, lr=1e-2,
                   probe_every=10**6, search=0)
    moments = {k: {"m": torch.zeros_like(p), "v": torch.zeros_like(p), "vmax": torch.zeros_like(p), "t": 0}
               for k, p in w.items()}
    expected = {n: Progress() for n in members}
    for step, xy in enumerate(batches):
        batch[0] = xy
        opt.zero_grad()
        loss().backward()
        if step == 0:
            w["w2"].grad = None  # its moments start a step late
        for n, names in members.items():
            s = settings[n]
            (beta1, beta2), terms = s["betas"], torch.zeros(3, dtype=torch.float64)
            for k in names:
                state = moments[k]
                if state["t"] == 0 or w[k].grad is None:
                    continue
                t, v = state["t"], state["vmax"] if s["amsgrad"] else state["v"]
                d = (state["m"] / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + s["eps"]) + s["weight_decay"] * w[k].detach()
                g = w[k].grad
                terms += torch.stack([(g * d).sum(), (g * g).sum(), (d * d).sum()])
            if terms[1] > 0:
                expected[n] = expected[n].after(float(terms[0] / (terms[1] * terms[2]).sqrt()))
        for n, names in members.items():
            beta1, beta2 = settings[n]["betas"]
            for k in names:
                if w[k].grad is not None:
                    state, g = moments[k], w[k].grad
                    state["m"] = beta1 * state["m"] + (1 - beta1) * g
                    state["v"] = beta2 * state["v"] + (1 - beta2) * g * g
                    state["vmax"] = torch.maximum(state["vmax"], state["v"])
                    state["t"] += 1
        opt.step()
    assert moments["w2"]["t"] == 3 and moments["w1"]["t"] == 4
    for group in opt.param_groups:
        want = expected[group["name"]]
        assert want.count == 3
        assert Progress.of(group) == Progress(pytest.approx(want.mean, rel=1e-10), pytest.approx(want.variance, rel=1e-8),
                                              want.count)
    assert len({round(expected[n].mean, 6) for n in members}) == 3  # the groups' cosines differ


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_progress_cosine_keeps_its_precision_over_a_million_elements(dtype, rel):
    """The test's cosine sums each tensor in float32 (bfloat16 tensors upcast): against float64
    brute force on 2^20 elements whose cosine is small (0.02: the dot product cancels), it holds
    to ``rel`` (float32: 1.1e-5 measured, from the norm kernel; bfloat16: its products round
    each term by up to 2^-9)."""
    n = 2**20
    gen = torch.Generator().manual_seed(0)
    g1, noise = torch.randn(n, generator=gen, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64)
    w = torch.nn.Parameter(torch.zeros(n, dtype=dtype))
    opt = GeNAdamW([w], lambda: (w.double() * 0).sum(), lr=1e-3, weight_decay=0.0, probe_every=10**6, search=0)
    w.grad = g1.to(dtype)
    opt.step()  # the round at step 0 is flat; the moments now hold g1
    d = w.grad.double() / (w.grad.double().abs() + 1e-8)  # the first step's bias-corrected direction
    w.grad = (0.02 * d + noise).to(dtype)
    opt.step()
    g2 = w.grad.double()
    c = float((g2 @ d) / (g2.norm() * d.norm()))
    assert 0.01 < c < 0.03
    assert Progress.of(opt.param_groups[0]).mean == pytest.approx(c, rel=rel)


def test_progress_grows_a_rate_whose_updates_keep_descending_and_not_without_it():
    """On a full-batch problem far from its minimum every update keeps descending (c ~ 1): the
    test's z is large and the rate grows past the fits' between rounds; with progress=False the
    same run never changes a rate outside a round."""
    rates = {}
    for progress in (True, False):
        torch.manual_seed(0)
        x, y = torch.randn(64, 4), torch.randn(64, 4) * 10
        weight = torch.nn.Parameter(torch.zeros(4, 4))

        def loss():
            return F.mse_loss(x @ weight, y)

        opt = GeNAdamW([{"params": [weight], "name": "w"}], loss, lr=1e-4, probe_every=1000, warmup=0, search=0,
                       progress=progress)
        seen = []
        for _ in range(30):
            opt.zero_grad()
            loss().backward()
            opt.step()
            seen.append(opt.param_groups[0]["gen_lr"])
        rates[progress] = seen
        if progress:
            assert Progress.of(opt.param_groups[0]).z > 5 and Progress.of(opt.param_groups[0]).count == 29
    assert rates[False][1:] == [rates[False][1]] * 29  # the one round at step 0; nothing after
    assert rates[True][-1] > 2 * rates[False][-1]


def test_a_rate_the_progress_test_keeps_shrinking_stops_at_the_floor_with_a_warning_as_in_the_reference():
    """Gradients of alternating sign make every update overshoot (c_t = -1 at each step): the
    progress test shrinks the rate by PROGRESS_SHRINK a step without end. It stops at the floor,
    RATE_FLOOR times the starting lr, with one warning naming the group, and the group is still
    tested and probed; the reference takes the same steps."""
    lr, start = 1.0, 1.5 * RATE_FLOOR  # 9 shrinking steps reach the floor from here
    weights = [torch.nn.Parameter(torch.ones(3, dtype=torch.float64)) for _ in range(2)]
    opts = [kind([{"params": [w], "name": "w"}], lambda w=w: (w * 0).sum() + 1.0, lr=lr, weight_decay=0.0)
            for kind, w in zip((GeNAdamW, GeNAdamWReference), weights)]
    for opt in opts:
        opt.param_groups[0]["gen_lr"] = start
    floor, reached = RATE_FLOOR * lr, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(40):
            for w, opt in zip(weights, opts):
                w.grad = torch.full_like(w, (-1.0) ** step)
                opt.step()
            assert opts[0].param_groups[0]["gen_lr"] == pytest.approx(opts[1].param_groups[0]["gen_lr"], rel=1e-12)
            if reached is None and opts[0].param_groups[0]["gen_lr"] == floor:
                reached = step
    assert reached is not None and opts[0].param_groups[0]["gen_lr"] == floor
    assert Progress.of(opts[0].param_groups[0]).z < -2 and Progress.of(opts[0].param_groups[0]).count == 39  # still tested
    assert any(r["step"] > reached for r in opts[0].history)  # and still probed
    floored = [str(w.message) for w in caught if "rate floor" in str(w.message)]
    assert len(floored) == 1 and "'w'" in floored[0] and f"{floor:.3g}" in floored[0]
