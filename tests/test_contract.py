"""torch's optimizer contract, checked for torch.optim.AdamW (the control) and for GeNAdamW with
probing off and on: what a loop written for AdamW may do with any optimizer.

Modelled on torch's own generic checks (torch/testing/_internal/common_optimizers.py and
test/test_optim.py). The problem is functional (a loss of a list of tensors), so that a probe
closure can be built over any copy of the parameters.
"""
import copy
import io
import pickle

import pytest
import torch

from conftest import CUDA
from gen_optim import ClosureError, GeNAdamW

KINDS = ("adamw", "gen_off", "gen_on")
X = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
Y = torch.randn(32, 1, generator=torch.Generator().manual_seed(1))


def make_params(dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 8), (8,), (8, 1)]
    return [torch.nn.Parameter((0.5 * torch.randn(s, generator=g)).to(device, dtype)) for s in shapes]


def loss_of(params):
    W, b, v = (p.float() for p in params)
    return torch.nn.functional.mse_loss(torch.tanh(X.to(W.device) @ W + b) @ v, Y.to(W.device))


def closure_over(params):
    return lambda: loss_of(params)


def make(kind, params, **kw):
    kw.setdefault("lr", 1e-2)
    if kind == "adamw":
        return torch.optim.AdamW(params, **kw)
    if kind == "gen_off":
        return GeNAdamW(params, probe_every=0, **kw)
    return GeNAdamW(params, closure_over(params), probe_every=2, **kw)


def train(opt, params, steps=6, backward=True):
    for _ in range(steps):
        opt.zero_grad()
        if backward:
            loss_of(params).backward()
        opt.step()


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_is_deterministic_and_loads_into_a_fresh_optimizer(kind):
    runs = []
    for _ in range(2):
        params = make_params()
        opt = make(kind, params)
        train(opt, params, 4)
        runs.append((params, opt))
    first, second = (io.BytesIO() for _ in range(2))
    torch.save(runs[0][1].state_dict(), first)
    torch.save(runs[1][1].state_dict(), second)
    assert first.getvalue() == second.getvalue()

    params, opt = runs[0]
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fresh = make(kind, twin, lr=0.5)  # a different lr: the checkpoint's wins, as in torch
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert fresh.param_groups[0]["lr"] == 1e-2
    train(opt, params, 4)
    train(fresh, twin, 4)
    assert same(params, twin)


@pytest.mark.parametrize("kind", KINDS)
def test_deepcopy_steps_like_the_original(kind):
    params = make_params()
    opt = make(kind, params, weight_decay=0.1)
    train(opt, params, 3)
    twin = copy.deepcopy(opt)
    twin_params = twin.param_groups[0]["params"]
    assert all(p is not q for p, q in zip(params, twin_params))
    if kind == "gen_on":
        assert twin.closure is opt.closure  # Python copies a function by reference: point it at the copy
        twin.closure = closure_over(twin_params)
    train(opt, params, 4)
    train(twin, twin_params, 4)
    assert same(params, twin_params)
    assert twin.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


@pytest.mark.parametrize("kind", KINDS)
def test_pickle_round_trip(kind):
    params = make_params()
    opt = make(kind, params)
    train(opt, params, 4)  # step 4 probes (probe_every=2)
    loaded = pickle.loads(pickle.dumps(opt))
    loaded_params = loaded.param_groups[0]["params"]
    if kind == "gen_on":
        assert loaded.closure is None  # the probe closure is code over live tensors: set it again
        for p, q in zip(loaded_params, params):
            p.grad = q.grad.clone()
        with pytest.raises(RuntimeError, match="opt.closure"):
            loaded.step()
        loaded.closure = closure_over(loaded_params)
    train(opt, params, 4)
    train(loaded, loaded_params, 4)
    assert same(params, loaded_params)


@pytest.mark.parametrize("kind", KINDS)
def test_printing(kind):
    text = repr(make(kind, make_params()))
    assert "Parameter Group 0" in text and "lr: 0.01" in text
    if kind != "adamw":
        assert text.startswith("GeNAdamW (") and "probe_every" in text


@pytest.mark.parametrize("kind", KINDS)
def test_no_gradients_is_a_no_op(kind):
    params = make_params()
    before = [p.detach().clone() for p in params]
    opt = make(kind, params)
    if kind == "gen_on":
        opt.closure = lambda: pytest.fail("nothing to probe without gradients")
    for _ in range(3):
        opt.step()
    assert same(params, before)
    assert not any(torch.is_tensor(k) for k in opt.state)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_gradients_decay_only(kind):
    params, twin = make_params(), make_params()
    opt, control = make(kind, params, weight_decay=0.1), torch.optim.AdamW(twin, lr=1e-2, weight_decay=0.1)
    for o, ps in ((opt, params), (control, twin)):
        for _ in range(3):
            for p in ps:
                p.grad = torch.zeros_like(p)
            o.step()
    if kind == "gen_on":  # the probes follow the decay, the fitted rate differs: w shrinks by one factor
        factors = torch.cat([(p / q).flatten() for p, q in zip(params, make_params())])
        torch.testing.assert_close(factors, factors[:1].expand_as(factors))
        assert 0 < factors[0] < 1 and opt.history
    else:
        assert same(params, twin) and not same(params, make_params())


def schedulers(opt):
    s = torch.optim.lr_scheduler
    return {
        "LambdaLR": lambda: s.LambdaLR(opt, lambda t: 0.9**t),
        "MultiplicativeLR": lambda: s.MultiplicativeLR(opt, lambda t: 0.95),
        "StepLR": lambda: s.StepLR(opt, 2, gamma=0.5),
        "MultiStepLR": lambda: s.MultiStepLR(opt, [2, 4], gamma=0.5),
        "ConstantLR": lambda: s.ConstantLR(opt, factor=0.5, total_iters=3),
        "LinearLR": lambda: s.LinearLR(opt, start_factor=0.1, total_iters=4),
        "ExponentialLR": lambda: s.ExponentialLR(opt, 0.9),
        "PolynomialLR": lambda: s.PolynomialLR(opt, total_iters=8, power=2.0),
        "CosineAnnealingLR": lambda: s.CosineAnnealingLR(opt, T_max=8),
        "CosineAnnealingWarmRestarts": lambda: s.CosineAnnealingWarmRestarts(opt, T_0=3),
        "CyclicLR": lambda: s.CyclicLR(opt, base_lr=1e-3, max_lr=1e-2, step_size_up=2, cycle_momentum=False),
        "OneCycleLR": lambda: s.OneCycleLR(opt, max_lr=1e-2, total_steps=10, cycle_momentum=True, base_momentum=0.4,
                                           max_momentum=0.5),  # beta1 <= 0.5: a transient of 2 steps
        "SequentialLR": lambda: s.SequentialLR(
            opt, [s.LinearLR(opt, start_factor=0.1, total_iters=2), s.ExponentialLR(opt, 0.9)], milestones=[2]),
        "ChainedScheduler": lambda: s.ChainedScheduler([s.ExponentialLR(opt, 0.9), s.StepLR(opt, 3, gamma=0.5)]),
        "ReduceLROnPlateau": lambda: s.ReduceLROnPlateau(opt, patience=0, factor=0.5),
    }


@pytest.mark.parametrize("name", sorted(schedulers(None)))
@pytest.mark.parametrize("kind", KINDS[1:])
def test_every_scheduler(kind, name):
    """Probing off: AdamW bit for bit under the scheduler. On: the scheduler scales the fitted rate."""
    params, twin = make_params(), make_params()
    # beta1 0.5: the moments' transient (no rate grows) is 2 steps, so the fitted rate moves within 8
    opt, control = make(kind, params, betas=(0.5, 0.999)), torch.optim.AdamW(twin, lr=1e-2, betas=(0.5, 0.999))
    scheds = [schedulers(o)[name]() for o in (opt, control)]
    for _ in range(8):
        for o, ps, sched in ((opt, params, scheds[0]), (control, twin, scheds[1])):
            o.zero_grad()
            loss = loss_of(ps)
            loss.backward()
            o.step()
            sched.step(loss.item()) if name == "ReduceLROnPlateau" else sched.step()
    if not (kind == "gen_on" and name == "ReduceLROnPlateau"):  # that one follows each run's own loss
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in control.param_groups]
    if kind == "gen_off":
        assert same(params, twin)
    else:
        g = opt.param_groups[0]
        assert opt.rate(g) == pytest.approx(g["gen_lr"] * g["lr"] / g["gen_base_lr"], rel=1e-12)
        assert g["gen_lr"] != 1e-2 and all(torch.isfinite(p).all() for p in params)
    if name == "OneCycleLR":
        assert opt.param_groups[0]["betas"] == control.param_groups[0]["betas"] != (0.9, 0.999)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_complex_steps_and_fits_like_its_real_view(kind, foreach):
    g = torch.Generator().manual_seed(0)
    c0, b0, M = torch.randn(3, 4, dtype=torch.complex64, generator=g), torch.randn(8, generator=g), torch.randn(8, 24, generator=g)

    def f(r, b):  # a real function of the real view
        z = torch.tanh(M @ r.flatten() + b)
        return (z - 0.5).pow(2).mean() + 0.1 * r.pow(4).mean()

    cplx = [torch.nn.Parameter(c0.clone()), torch.nn.Parameter(b0.clone())]
    real = [torch.nn.Parameter(torch.view_as_real(c0).clone()), torch.nn.Parameter(b0.clone())]
    losses = (lambda: f(torch.view_as_real(cplx[0]), cplx[1]), lambda: f(*real))
    a = make(kind, cplx, foreach=foreach, weight_decay=0.1)
    b = make(kind, real, foreach=foreach, weight_decay=0.1)
    if kind == "gen_on":
        a.closure, b.closure = losses
    for _ in range(6):
        for opt, loss in zip((a, b), losses):
            opt.zero_grad()
            loss().backward()
            opt.step()
    torch.testing.assert_close(torch.view_as_real(cplx[0]), real[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cplx[1], real[1], rtol=1e-5, atol=1e-6)
    if kind == "gen_on":
        fa, fb = a.last_round["groups"]["group0"], b.last_round["groups"]["group0"]
        for key in ("A", "B", "r2", "ppi", "lr"):
            assert fa[key] == pytest.approx(fb[key], rel=1e-4, abs=1e-9)
        assert a.group_sizes() == b.group_sizes() == {"group0": 32}


@pytest.mark.parametrize("kind", KINDS)
def test_mixed_dtypes(kind):
    params = [p.to(dtype) for p, dtype in zip(make_params(), (torch.float32, torch.float64, torch.bfloat16))]
    params = [torch.nn.Parameter(p.detach()) for p in params]
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt, control = make(kind, params), torch.optim.AdamW(twin, lr=1e-2)
    train(opt, params, 5)
    train(control, twin, 5)
    assert [p.dtype for p in params] == [torch.float32, torch.float64, torch.bfloat16]
    if kind == "gen_on":
        assert all(torch.isfinite(p.float()).all() for p in params) and opt.history
    else:
        assert same(params, twin)


@pytest.mark.parametrize("kind", KINDS)
def test_torch_compile_of_step(kind):
    """Dynamo traces the AdamW part; probe rounds run eagerly inside the compiled step."""
    params, twin = make_params(), make_params()
    compiled, eager = make(kind, params, foreach=False), make(kind, twin, foreach=False)
    step = torch.compile(compiled.step, backend="eager")
    for _ in range(6):
        for opt, ps, run in ((compiled, params, step), (eager, twin, eager.step)):
            opt.zero_grad()
            loss_of(ps).backward()
            run()
    for p, q in zip(params, twin):  # compiled AdamW kernels round differently from eager ones, also torch's
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)  # a step is ~1e-2
    if kind == "gen_on":
        assert [r["step"] for r in compiled.history] == [r["step"] for r in eager.history] == [0, 2, 4]  # probe_every=2
        assert compiled.state["appi"]["group0"] == pytest.approx(eager.state["appi"]["group0"], rel=1e-3)


OPTIONS = {
    "amsgrad": dict(amsgrad=True),
    "maximize": dict(maximize=True),
    "foreach": dict(foreach=True),
    "for-loop": dict(foreach=False),
    "fused": dict(fused=True),
    "tensor lr": dict(lr=torch.tensor(1e-2), foreach=False),
    "tensor lr, fused": dict(lr=torch.tensor(1e-2), fused=True),
}
CUDA_OPTIONS = {  # torch's AdamW allows these on CUDA only
    "capturable": dict(capturable=True),
    "capturable, for-loop": dict(capturable=True, foreach=False),
    "capturable, tensor lr": dict(capturable=True, lr=torch.tensor(1e-2)),
}
DEVICE_OPTIONS = [(o, "cpu") for o in sorted(OPTIONS)] + [
    pytest.param(o, "cuda", marks=CUDA) for o in sorted(OPTIONS | CUDA_OPTIONS)]


@pytest.mark.parametrize("option, device", DEVICE_OPTIONS)
@pytest.mark.parametrize("kind", KINDS[1:])
def test_every_adamw_option(kind, option, device):
    kw = dict(OPTIONS | CUDA_OPTIONS)[option]
    if kw.get("capturable") and torch.is_tensor(kw.get("lr")):
        kw = kw | dict(lr=kw["lr"].to(device))
    params, twin = make_params(device=device), make_params(device=device)
    opt, control = make(kind, params, **kw), torch.optim.AdamW(twin, **{"lr": 1e-2, **kw})
    sign = -1.0 if kw.get("maximize") else 1.0
    if kind == "gen_on":
        opt.closure = lambda: sign * loss_of(params)  # the objective, maximized with maximize=True
    for _ in range(6):
        for o, ps in ((opt, params), (control, twin)):
            o.zero_grad()
            (sign * loss_of(ps)).backward()
            o.step()
    if kind == "gen_off":
        assert same(params, twin)
        assert [sorted(opt.state[p]) for p in params] == [sorted(control.state[p]) for p in twin]
    else:
        assert all(torch.isfinite(p).all() for p in params)
        assert any(e["accepted"] for r in opt.history for e in r["groups"].values())


@pytest.mark.parametrize("kind", KINDS)
def test_differentiable(kind):
    """A differentiable step (non-leaf parameters) is AdamW's; probes cannot be differentiable."""
    if kind == "gen_on":
        with pytest.raises(ValueError, match="probe_every=0"):
            make(kind, make_params(), differentiable=True)
        return
    results = []
    for build in (lambda ps: make(kind, ps, differentiable=True), lambda ps: torch.optim.AdamW(ps, lr=1e-2, differentiable=True)):
        leaves = make_params()
        params = [p.clone() for p in leaves]
        opt = build(params)
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        sum(p.sum() for p in params).backward()
        results.append([p.detach() for p in params] + [p.grad for p in leaves])
    assert same(*results)


@pytest.mark.parametrize("option", ["amsgrad", "maximize", "plain"])
def test_probes_follow_the_direction_the_option_steps_along(option):
    """On a quadratic the fit is exact: A = g'd and B = d'Qd for the d that the step then takes
    (measured as the update itself, with the rate pinned by rate_clip=(1, 1))."""
    torch.manual_seed(0)
    Q = torch.diag(torch.tensor([1.0, 2.0, 5.0, 9.0], dtype=torch.float64))
    w = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    maximize = option == "maximize"
    sign = -1.0 if maximize else 1.0

    def objective():  # minimised, or its negative maximised
        return sign * 0.5 * w @ Q @ w

    opt = GeNAdamW([w], objective, lr=0.05, probe_every=1, rate_clip=(1.0, 1.0), search=0, r2_min=0.0,
                   probe_direction="current", weight_decay=0.01, amsgrad=option == "amsgrad", maximize=maximize)
    for t in range(6):
        opt.zero_grad()
        objective().backward()
        g = sign * w.grad.clone()  # the gradient of the loss that is minimised
        before = w.detach().clone()
        opt.step()
        d = (before - w.detach()) / 0.05
        fit = opt.last_round["groups"]["group0"]
        assert fit["A"] == pytest.approx(float(g @ d), rel=1e-6)
        assert fit["B"] == pytest.approx(float(d @ Q @ d), rel=1e-6)
        if t == 0:  # the second moments differ from here on when gradients shrink: AMSGrad keeps the max
            w.data.mul_(0.1)


# What broke in 0.1.0, item by item.

def test_every_state_value_is_a_dict_for_the_device_idiom():
    params = make_params()
    opt = make("gen_on", params)
    train(opt, params, 3)
    assert all(isinstance(s, dict) for s in opt.state.values())
    for s in opt.state.values():
        for k, v in s.items():
            if torch.is_tensor(v):
                s[k] = v.to("cpu", copy=True)
    assert set(opt.state["appi"]) == {"group0"} and isinstance(opt.state["appi"]["group0"], float)
    assert {k for k in opt.state if not torch.is_tensor(k)} == {"gen", "appi"}
    train(opt, params, 2)


def test_history_is_bounded_and_spans_the_run(monkeypatch):
    from gen_optim import gen_adamw

    monkeypatch.setattr(gen_adamw, "HISTORY_ROUNDS", 8)
    params = make_params()
    opt = GeNAdamW(params, closure_over(params), lr=1e-2, probe_every=1, warmup=0, search=0)
    train(opt, params, 40)
    steps = [r["step"] for r in opt.history]
    assert len(steps) <= 8 and steps[0] == 0 and steps[-1] >= 40 - 8
    assert steps == list(range(0, 40, opt.state["gen"]["stride"]))[: len(steps)] and opt.state["gen"]["stride"] == 8
    assert opt.last_round["step"] == 39 and opt.state["gen"]["rounds"] == 40


def test_settings_are_per_group_and_survive_state_dict():
    params = make_params()
    opt = GeNAdamW([{"params": params[:2], "probe_every": 3, "r2_min": 0.5}, {"params": params[2:], "probe_every": 0}],
                   closure_over(params), lr=1e-2, warmup=0, search=0)
    train(opt, params, 7)
    assert [r["step"] for r in opt.history] == [0, 3, 6]
    assert all(set(r["groups"]) == {"group0"} for r in opt.history)
    fresh = GeNAdamW([{"params": params[:2]}, {"params": params[2:]}], closure_over(params), lr=1e-2)
    fresh.load_state_dict(opt.state_dict())
    assert [g["probe_every"] for g in fresh.param_groups] == [3, 0] and fresh.param_groups[0]["r2_min"] == 0.5
    with pytest.raises(ValueError, match="probe_scales"):
        GeNAdamW([{"params": params, "probe_scales": (1.0, 2.0)}], closure_over(params))


def test_adamw_checkpoint_switches_to_gen_with_its_moments():
    params, twin = make_params(), make_params()
    control = torch.optim.AdamW(twin, lr=3e-3, weight_decay=0.05)
    train(control, twin, 5)
    for p, q in zip(params, twin):
        p.data.copy_(q.data)
    off = GeNAdamW(params, lr=1.0, probe_every=0)
    off.load_state_dict(copy.deepcopy(control.state_dict()))  # load_state_dict keeps the tensors it is given
    assert off.param_groups[0]["gen_lr"] == 3e-3 and off.param_groups[0]["weight_decay"] == 0.05
    train(off, params, 5)
    train(control, twin, 5)
    assert same(params, twin)  # the moments carried over: AdamW continued bit for bit

    on = GeNAdamW(params, closure_over(params), lr=1.0, probe_every=2)
    on.load_state_dict(copy.deepcopy(control.state_dict()))
    assert on.param_groups[0]["gen_lr"] == 3e-3 and on.param_groups[0]["probe_every"] == 2
    assert on.state["appi"] == {"group0": 0.0}
    train(on, params, 4)
    assert on.history and 3e-3 / 16 <= on.param_groups[0]["gen_lr"] <= 3e-3 * 16


def test_checkpoint_from_before_the_debt_keeps_its_credit_and_owes_nothing():
    """A budget's schedule saved before the starting credit was lent (no ``gen_debt``) resumes
    with its credit as it was and no debt: its run began with the credit as a gift; a fresh
    optimizer's groups owe theirs."""
    from gen_optim.rule import Schedule

    params = make_params()
    opt = GeNAdamW(params, closure_over(params), lr=1e-2)
    assert Schedule.of(opt.param_groups[0]).debt == opt.param_groups[0]["gen_credit"] > 0
    train(opt, params, 3)
    saved = copy.deepcopy(opt.state_dict())
    credit = saved["param_groups"][0]["gen_credit"]
    del saved["param_groups"][0]["gen_debt"]
    resumed = GeNAdamW(make_params(), closure_over(params), lr=1e-2)
    resumed.load_state_dict(saved)
    assert Schedule.of(resumed.param_groups[0]) == Schedule(credit, saved["param_groups"][0]["gen_next"],
                                                            saved["param_groups"][0]["gen_interval"], True, 0.0)


def test_checkpoint_from_before_the_search_waited_counts_a_probed_group_as_searched():
    """Saved before the search waited for a signal (no ``gen_searched``): a group that has had
    a round had its search in it and does not search again; one that has had none searches in
    its first round."""
    params = make_params()
    opt = GeNAdamW(params, closure_over(params), lr=1e-2)
    unprobed = copy.deepcopy(opt.state_dict())
    train(opt, params, 3)
    assert opt.param_groups[0]["gen_rounds"] > 0 and opt.param_groups[0]["gen_searched"]
    probed = copy.deepcopy(opt.state_dict())
    for saved, searched in ((probed, True), (unprobed, False)):
        del saved["param_groups"][0]["gen_searched"]
        resumed = GeNAdamW(make_params(), closure_over(params), lr=1e-2)
        resumed.load_state_dict(saved)
        assert resumed.param_groups[0]["gen_searched"] is searched


def test_checkpoints_of_older_torch_load():
    params = make_params()
    opt = make("gen_on", params)
    train(opt, params, 3)
    saved = copy.deepcopy(opt.state_dict())
    for group in saved["param_groups"]:
        del group["foreach"]
    for key, s in saved["state"].items():
        if isinstance(key, int):
            s["step"] = float(s["step"])
    fresh = make("gen_on", [torch.nn.Parameter(p.detach().clone()) for p in params])
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["foreach"] is None
    assert all(torch.is_tensor(fresh.state[p]["step"]) for p in fresh.param_groups[0]["params"])
    train(fresh, fresh.param_groups[0]["params"], 2)


def test_torch_adam_checkpoint_with_l2_decay_is_refused():
    params = make_params()
    adam = torch.optim.Adam(params, weight_decay=0.1)
    train(adam, params, 1)
    with pytest.raises(ValueError, match="L2 weight decay"):
        GeNAdamW(params, probe_every=0).load_state_dict(adam.state_dict())


def test_lr_zero_and_a_warmup_from_zero():
    params = make_params()
    opt = GeNAdamW(params, closure_over(params), lr=0.0, probe_every=1)
    train(opt, params, 2)  # no ZeroDivisionError; nothing to probe at rate 0
    assert opt.rate(opt.param_groups[0]) == 0.0 and not opt.history
    opt.param_groups[0]["lr"] = 1e-2  # a loop that sets lr itself, from 0
    train(opt, params, 1)
    assert opt.param_groups[0]["gen_base_lr"] == 1e-2 and opt.history

    # a warm-up scheduler from 0: the first round still searches the starting rate
    params = make_params()
    opt = GeNAdamW(params, closure_over(params), lr=50.0, probe_every=1)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda t: t / 10)
    assert opt.param_groups[0]["lr"] == 0.0
    train(opt, params, 1)
    assert opt.param_groups[0]["gen_lr"] < 50.0 / 4  # lowered by the search, not the warm-up's halving


def test_a_number_in_the_closure_slot_is_a_type_error():
    with pytest.raises(TypeError, match="lr="):
        GeNAdamW(make_params(), 0.1)


def torch_style(opt, params):
    def closure():
        opt.zero_grad()
        loss = loss_of(params)
        loss.backward()
        return loss
    return closure


@pytest.mark.parametrize("kind", KINDS)
def test_step_with_torch_style_closure_trains_and_returns_the_loss(kind):
    params, twin = make_params(), make_params()
    opt, control = make(kind, params), torch.optim.AdamW(twin, lr=1e-2)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    for _ in range(5):
        loss = opt.step(torch_style(opt, params))
        plateau.step(loss)
        control.step(torch_style(control, twin))
    assert torch.is_tensor(loss) and loss.requires_grad
    if kind == "gen_on":
        assert [r["step"] for r in opt.history] == [0, 2, 4] and not same(params, make_params())  # probe_every=2
    else:
        assert same(params, twin)


def test_step_closure_rules():
    params = make_params()
    opt = GeNAdamW(params, lr=1e-2, probe_every=2)
    with pytest.raises(RuntimeError, match="probe closure"):  # probing needs the probe closure too
        opt.step(torch_style(opt, params))
    with pytest.raises(ClosureError, match="computed no gradient"):  # a loss-only closure given to step
        GeNAdamW(params, probe_every=0).step(lambda: loss_of(params))


@pytest.mark.parametrize("closure", ["plain", "iterator"])
def test_probes_leave_batchnorm_statistics_alone_with_any_closure(closure):
    from gen_optim import iterator_closure

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    twin = copy.deepcopy(model)
    loss = lambda: torch.nn.functional.mse_loss(model(X), Y)  # noqa: E731
    probe = loss if closure == "plain" else iterator_closure(model, [X], lambda m, x: torch.nn.functional.mse_loss(m(x), Y))
    opt = GeNAdamW(model.parameters(), probe, lr=1e-2, probe_every=1, rate_clip=(1.0, 1.0), search=0)
    control = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    for _ in range(3):
        for m, o in ((model, opt), (twin, control)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(X), Y).backward()
            o.step()
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(a, b)
    assert len(opt.history) == 3


def test_checkpoint_saved_by_0_1_0_loads():
    """tests/data/gen_adamw_0.1.0.pt was written by 0.1.0 (tests/make_0_1_0_checkpoint.py)."""
    from pathlib import Path

    import torch.nn.functional as F
    from conftest import Net, make_data

    from gen_optim import group_parameters

    saved = torch.load(Path(__file__).with_name("data") / "gen_adamw_0.1.0.pt")
    old = saved["optimizer"]["state"]
    model = Net()
    model.load_state_dict(saved["model"])
    tokens, target = make_data()
    opt = GeNAdamW(group_parameters(model), lambda: F.mse_loss(model(tokens), target), lr=1e-2, probe_every=2, warmup=2)
    opt.load_state_dict(saved["optimizer"])
    gen = opt.state["gen"]
    assert gen["step"] == old["step"] == 6 and gen["rounds"] == len(old["ppi"]) == 4
    assert opt.history == old["ppi"] and gen["mask"] == old["mask"] and opt.state["appi"] == old["appi"]
    assert all(isinstance(s, dict) for s in opt.state.values())
    assert [g["gen_lr"] for g in opt.param_groups] == [g["gen_lr"] for g in saved["optimizer"]["param_groups"]]
    assert all(g["gen_rounds"] == 4 for g in opt.param_groups)  # searched already: no second search
    assert all(g["gen_probed_at"] == old["ppi"][-1]["step"] for g in opt.param_groups)  # the next span counts from it
    assert opt.freeze().active == tuple(old["mask"]["active"])
    for _ in range(2):
        opt.zero_grad()
        F.mse_loss(model(tokens), target).backward()
        opt.step()
    # steps 6 and 7 both probe: warm-up is the moments' 10 steps (beta1 0.9), then warmup=2
    assert gen["step"] == 8 and gen["rounds"] == 6


def test_checkpoint_saved_by_0_1_0_resumes_under_the_budget_past_warm_up():
    """A resumed run whose groups had their warm-up rounds does not warm up again (unsmoothed
    rates, the warm-up's credit) when the budget schedules it."""
    from pathlib import Path

    import torch.nn.functional as F
    from conftest import Net, make_data

    from gen_optim import group_parameters
    from gen_optim.rule import Schedule

    saved = torch.load(Path(__file__).with_name("data") / "gen_adamw_0.1.0.pt")
    model = Net()
    tokens, target = make_data()
    for group in saved["optimizer"]["param_groups"]:
        group["betas"] = (0.5, 0.999)  # the moments' transient is 2 steps: warm-up's rounds are 2 + warmup
    for warmup, settled in ((2, True), (10, False)):  # its groups had 4 rounds
        opt = GeNAdamW(group_parameters(model), lambda: F.mse_loss(model(tokens), target), lr=1e-2, warmup=warmup)
        opt.load_state_dict(saved["optimizer"])
        schedules = [Schedule.of(g) for g in opt.param_groups]
        assert all(s.settled is settled and (s.credit == 0.0) is settled for s in schedules)
        assert all(g["probe_every"] is None for g in opt.param_groups)
