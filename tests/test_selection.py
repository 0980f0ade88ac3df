import itertools
import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Net, make_data
from hf_models import gpt2
from gen_optim import GeNAdamW, Mask, equip_lora, group_parameters
from gen_optim.knapsack import exact_frontier, exact_knapsack, greedy_chain
from gen_optim.mask import frontier, propose

instances = st.integers(1, 12).flatmap(lambda K: st.tuples(
    st.lists(st.integers(0, 6), min_size=K, max_size=K),  # small integers: many exact ties
    st.lists(st.integers(1, 8), min_size=K, max_size=K),
    st.floats(0.0, 1.0),
))


def brute_force(values, weights, capacity):
    best = None
    for r in range(len(values) + 1):
        for s in itertools.combinations(range(len(values)), r):
            v, w = sum(values[k] for k in s), sum(weights[k] for k in s)
            if w <= capacity and (best is None or (v, -w) > (best[0], -best[1])):
                best = (v, w)
    return best


def as_problem(values, weights):
    names = [f"g{k}" for k in range(len(values))]
    sizes = dict(zip(names, weights))
    appi = {n: v / w for n, v, w in zip(names, values, weights)}
    return appi, sizes


@settings(max_examples=200, deadline=None)
@given(instances)
def test_exact_equals_brute_force_lightest_among_ties(instance):
    values, weights, eps = instance
    capacity = int(np.floor(eps * sum(weights)))
    chosen = exact_knapsack(np.array(values, dtype=float), np.array(weights), capacity)
    assert (sum(values[k] for k in chosen), sum(weights[k] for k in chosen)) == brute_force(values, weights, capacity)


@settings(max_examples=200, deadline=None)
@given(instances)
def test_greedy_is_nested_within_budget_and_exact_dominates(instance):
    values, weights, eps = instance
    if not any(values):
        return
    appi, sizes = as_problem(values, weights)
    greedy, exact = propose(appi, sizes, eps, "greedy"), propose(appi, sizes, eps, "exact")
    assert greedy.fraction <= eps + 1e-12 and exact.fraction <= eps + 1e-12
    value = lambda m: sum(appi[n] * sizes[n] for n in m.active)  # noqa: E731
    assert value(exact) >= value(greedy) - 1e-9
    chain = [set(p.groups) for p in frontier(appi, sizes, "greedy")]
    assert all(a < b for a, b in zip(chain, chain[1:])) and len(chain) == len(values) + 1
    assert set(greedy.active) in chain
    nxt = chain[chain.index(set(greedy.active)) + 1] if set(greedy.active) != chain[-1] else None
    assert nxt is None or sum(sizes[n] for n in nxt) > eps * sum(weights) + 1e-9  # the largest that fits


@settings(max_examples=100, deadline=None)
@given(instances)
def test_exact_frontier_is_pareto(instance):
    values, weights, _ = instance
    sets = exact_frontier(np.array(values, dtype=float), np.array(weights))
    points = [(sum(weights[k] for k in s), sum(values[k] for k in s)) for s in sets]
    assert all(w1 < w2 and v1 < v2 for (w1, v1), (w2, v2) in zip(points, points[1:]))
    for capacity in range(sum(weights) + 1):
        value, weight = brute_force(values, weights, capacity)
        assert (weight, value) in points


def test_zero_appi_never_chosen_over_influence():
    appi, sizes = {"a": 0.0, "b": 1.0, "c": 0.5}, {"a": 1, "b": 10, "c": 10}
    assert propose(appi, sizes, 0.5, "greedy").active == ("b",)
    assert propose(appi, sizes, 1.0, "exact").active == ("b", "c")  # a adds parameters, no value
    assert greedy_chain(np.array([0.0, 10.0, 5.0]), np.array([1, 10, 10]))[1] == (1,)


def test_exact_scales_as_meet_in_the_middle_and_is_clear_beyond_40_groups():
    """Side by side, no absolute time: 8 more groups cost the meet in the middle 2^4 times (with a
    log and the caches, about 40x here), where enumerating every subset would cost 2^8 times."""
    rng = np.random.default_rng(0)

    def cpu_seconds(k):
        values, weights = rng.random(k), rng.integers(1, 10**6, k)
        start = time.process_time()
        exact_knapsack(values, weights, int(weights.sum() * 0.3))
        return time.process_time() - start

    seconds = {32: [], 40: []}
    for _ in range(3):
        for k in seconds:
            seconds[k].append(cpu_seconds(k))
    assert min(seconds[40]) < 128 * min(seconds[32])  # measured here: about 40
    with pytest.raises(ValueError, match="limited to 40 groups"):
        exact_knapsack(rng.random(41), rng.integers(1, 9, 41), 10)
    with pytest.raises(ValueError, match="limited to 20 groups"):
        exact_frontier(rng.random(21), rng.integers(1, 9, 21))


def trained_optimizer(model=None, steps=6):
    torch.manual_seed(0)
    model = model or Net()
    tokens, target = make_data()
    probe_tokens, probe_target = make_data(seed=1)
    opt = GeNAdamW(group_parameters(model), lambda: F.mse_loss(model(probe_tokens), probe_target),
                   lr=1e-2, probe_every=1, r2_min=0.5)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(tokens), target).backward()
        opt.step()
    return model, opt


def test_propose_mask_bad_input():
    model = Net()
    fresh = GeNAdamW(group_parameters(model), probe_every=0)
    with pytest.raises(ValueError, match="no group has any APPI"):
        fresh.propose_mask(0.5)
    _, opt = trained_optimizer()
    for eps in (-0.1, 1.5, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="eps"):
            opt.propose_mask(eps)
    with pytest.raises(ValueError, match="method"):
        opt.propose_mask(0.5, method="dp")
    with pytest.raises(RuntimeError, match="propose_mask"):
        fresh.freeze()


def test_mask_roundtrip_and_optimizer_frontier(tmp_path):
    _, opt = trained_optimizer()
    sizes = opt.group_sizes()
    mask = opt.propose_mask(0.6, method="exact")
    assert mask.fraction == sum(sizes[n] for n in mask.active) / sum(sizes.values()) <= 0.6
    assert mask.grouping == "category" and mask.appi == opt.state["appi"]
    mask.save(tmp_path / "mask.json")
    assert json.loads((tmp_path / "mask.json").read_text())["active"] == list(mask.active)
    assert Mask.load(tmp_path / "mask.json") == mask
    points = opt.pareto_frontier("exact")
    assert points[0].groups == () and points[-1].value == max(p.value for p in points)
    assert len(opt.pareto_frontier("greedy")) == len(sizes) + 1


def test_transfer_from_small_to_large_gpt2():
    small, large = equip_lora(gpt2(n_layer=2, n_embd=32)), equip_lora(gpt2(n_layer=4, n_embd=64))
    ids = torch.randint(0, 100, (4, 16))
    opt = GeNAdamW(group_parameters(small), lambda: small(input_ids=ids, labels=ids).loss, lr=3e-3, probe_every=1)
    for _ in range(4):
        opt.zero_grad()
        small(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    mask = opt.propose_mask(0.3)
    fraction = mask.apply(large)
    trainable = {g["name"] for g in group_parameters(large)}
    assert trainable == set(mask.active)
    total = sum(p.numel() for p in large.parameters())
    assert fraction == pytest.approx(sum(p.numel() for p in large.parameters() if p.requires_grad) / total)
    with pytest.raises(ValueError, match="lacks"):
        Mask(("lora_A", "head"), 0.1, 0.1, "greedy").apply(large)
    with pytest.warns(UserWarning, match="lacks"):
        assert Mask(("lora_A", "head"), 0.1, 0.1, "greedy").apply(large, allow_missing=True) > 0


def test_freeze_for_real():
    model, opt = trained_optimizer()
    mask = Mask(("others", "head"), 0.0, None, "manual")
    opt.freeze(mask)
    assert opt.freeze(mask) == mask  # idempotent
    frozen = [p for g in opt.param_groups if g["name"] not in mask.active for p in g["params"]]
    active = [p for g in opt.param_groups if g["name"] in mask.active for p in g["params"]]
    assert all(not p.requires_grad and p.grad is None and p not in opt.state for p in frozen)
    before = [p.clone() for p in frozen]
    start = [p.clone() for p in active]
    tokens, target = make_data()
    for _ in range(20):
        opt.zero_grad()
        F.mse_loss(model(tokens), target).backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, frozen))
    assert all(not torch.equal(a, b) for a, b in zip(start, active))
    assert all(p.grad is None for p in frozen) and all(p not in opt.state for p in frozen)
    assert set(opt.history[-1]["groups"]) == set(mask.active)  # probing goes on, active only
    with pytest.raises(ValueError, match="lacks"):
        opt.freeze(Mask(("lora_A",), 0.0, None, "manual"))


def test_freeze_uses_the_last_proposal():
    model, opt = trained_optimizer()
    mask = opt.propose_mask(0.5)
    assert opt.freeze() == mask
    assert {n for n, p in model.named_parameters() if p.requires_grad} and all(
        p.requires_grad == (g["name"] in mask.active) for g in opt.param_groups for p in g["params"])
