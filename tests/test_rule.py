"""The rate rule, case by case: a table of fits, rates and steps, and what each must do."""
import math

import pytest

from gen_optim.fit import Fit, Probes
from gen_optim.rule import MAX_INTERVAL, SEARCH_STEP, STEP_FORWARDS, Action, RateRule, Schedule, Verdict

RULE = RateRule(probe_every=4, warmup=2, search=6, r2_min=0.99, smoothing=0.9, rate_clip=(0.5, 2.0))
NAN = float("nan")
WARM, AFTER = True, False  # in warm-up, after it

# fit, warming, verdict, action, new rate (from a rate of 1e-2)
CASES = {
    "clean fit at its optimum": (Fit(1.0, 100.0, 1.0), WARM, Verdict.ACCEPTED, Action.FIT, 1e-2),
    "clean fit far above, clipped": (Fit(1.0, 1.0, 1.0), WARM, Verdict.ACCEPTED, Action.FIT, 2e-2),
    "clean fit far below, clipped": (Fit(1.0, 1e4, 1.0), WARM, Verdict.ACCEPTED, Action.FIT, 5e-3),
    "clean fit after warm-up, smoothed": (Fit(1.0, 1.0, 1.0), AFTER, Verdict.ACCEPTED, Action.FIT, 0.9e-2 + 0.1 * 2e-2),
    "poor uphill fit in warm-up shrinks": (Fit(1.0, 100.0, 0.5, uphill=True), WARM, Verdict.POOR, Action.SHRINK, 5e-3),
    "poor fit in warm-up whose probes all descend keeps": (Fit(1.0, 100.0, 0.5), WARM, Verdict.POOR, Action.KEEP, 1e-2),
    "poor fit after warm-up keeps": (Fit(1.0, 100.0, 0.5), AFTER, Verdict.POOR, Action.KEEP, 1e-2),
    "clean climb after warm-up shrinks, smoothed": (Fit(-1.0, 1.0, 1.0), AFTER, Verdict.CLIMB, Action.SHRINK,
                                                     0.9e-2 + 0.1 * 5e-3),
    "noisy climb after warm-up keeps": (Fit(-1.0, 1.0, 0.5), AFTER, Verdict.CLIMB, Action.KEEP, 1e-2),
    "concave after warm-up keeps": (Fit(1.0, -1.0, 1.0), AFTER, Verdict.CONCAVE, Action.KEEP, 1e-2),
    "concave uphill in warm-up shrinks": (Fit(1.0, -1.0, 1.0, uphill=True), WARM, Verdict.CONCAVE, Action.SHRINK, 5e-3),
    "concave descending in warm-up keeps": (Fit(1.0, -1.0, 1.0), WARM, Verdict.CONCAVE, Action.KEEP, 1e-2),
    "uphill after warm-up keeps": (Fit(1.0, 100.0, 0.5, uphill=True), AFTER, Verdict.POOR, Action.KEEP, 1e-2),
    "clean climb in warm-up shrinks": (Fit(-1.0, 1.0, 1.0), WARM, Verdict.CLIMB, Action.SHRINK, 5e-3),
    "flat in warm-up keeps": (Fit(0.0, 0.0, 0.0, flat=True), WARM, Verdict.FLAT, Action.KEEP, 1e-2),
    "nonfinite in warm-up shrinks": (Fit(NAN, NAN, NAN, uphill=True), WARM, Verdict.NONFINITE, Action.SHRINK, 5e-3),
    "nonfinite after warm-up keeps": (Fit(NAN, NAN, NAN, uphill=True), AFTER, Verdict.NONFINITE, Action.KEEP, 1e-2),
}


@pytest.mark.parametrize("name", CASES)
def test_decide(name):
    fit, warming, verdict, action, rate = CASES[name]
    decision = RULE.decide(fit, 1e-2, warming)
    assert (decision.verdict, decision.action) == (verdict, action)
    assert decision.rate == pytest.approx(rate, rel=1e-12)
    assert decision.accepted == (verdict is Verdict.ACCEPTED)
    if decision.accepted:
        assert decision.reason is None
    else:
        assert decision.reason.startswith(verdict.value) and decision.reason.endswith("rate shrunk") == (action is Action.SHRINK)


def test_poor_fit_reason_names_the_numbers():
    assert RULE.decide(Fit(1.0, 100.0, 0.5), 1e-2, AFTER).reason == "poor fit (R^2 0.5000 < 0.99)"


# fit, the rate the search moves 1.0 to (None: the search is done for this group)
SEARCH = {
    "flat": (Fit(0.0, 0.0, 0.0, flat=True), None),
    "poor: a quarter": (Fit(1.0, 1.0, 0.5), 1.0 / SEARCH_STEP),
    "overflowed: a quarter": (Fit(NAN, NAN, NAN), 1.0 / SEARCH_STEP),
    "optimum at 0.3: there": (Fit(0.3, 1.0, 1.0), 0.3),
    "optimum at 0.1: a quarter at most": (Fit(0.1, 1.0, 1.0), 1.0 / SEARCH_STEP),
    "optimum at 0.6: done": (Fit(0.6, 1.0, 1.0), None),
    "clean climb: done": (Fit(-1.0, 1.0, 1.0), None),
    "clean concave: done": (Fit(1.0, -1.0, 1.0), None),
}


@pytest.mark.parametrize("name", SEARCH)
def test_search_move(name):
    fit, rate = SEARCH[name]
    moved = RULE.search_move(fit, 1.0)
    assert moved == (None if rate is None else pytest.approx(rate))


def test_due():
    assert [s for s in range(13) if RULE.due(s)] == [0, 1, 4, 8, 12]
    assert not any(RateRule(0, 10, 6, 0.99, 0.9, (0.5, 2.0)).due(s) for s in range(20))


def test_of_a_group_and_the_floors():
    group = dict(probe_every=8, warmup=10, search=6, r2_min=0.9, smoothing=0.5, rate_clip=[0.25, 4.0], lr=1.0,
                 probe_budget=0.2, probe_scales=(-1.0, 1.0, 2.0))
    rule = RateRule.of(group)
    assert rule == RateRule(8, 10, 6, 0.9, 0.5, (0.25, 4.0), 0.2, 3)
    assert rule.shrink == rule.joint_floor == 0.25 and not math.isnan(rule.rate_clip[1])


BUDGET = RateRule(None, warmup=3, search=6, r2_min=0.99, smoothing=0.9, rate_clip=(0.5, 2.0), probe_budget=0.1, n_probes=4)
FIT_HERE = Fit(1.0, 100.0, 1.0)  # minimum at 1e-2: the rate from 1e-2 stays
FIT_FAR = Fit(1.0, 1.0, 1.0)  # minimum at 1: clipped to twice the rate


def test_budget_due_needs_credit_and_interval():
    # warm-up's credit: 3 rounds and 6 search re-probes, each 4 probes + L0
    assert BUDGET.first_schedule() == Schedule((3 + 6) * 5.0, 0, 1, False)
    assert BUDGET.first_schedule(rounds=3) == Schedule(0.0, 0, 1, True)
    assert BUDGET.due(0, Schedule(0.0, 0, 1, True)) and BUDGET.due(5, Schedule(-1e-12, 5, 1, True))
    assert not BUDGET.due(5, Schedule(-0.1, 5, 1, True)) and not BUDGET.due(4, Schedule(10.0, 5, 1, True))
    assert BUDGET.earned(groups=6) == pytest.approx(0.1 * STEP_FORWARDS / 6)
    assert BUDGET.warming(100, Schedule(0.0, 0, 1, False)) and not BUDGET.warming(0, Schedule(0.0, 0, 1, True))


# schedule before, rounds so far (this one counted), fit, what the rule decided (from 1e-2) -> schedule after, at step 10
AFTER_ROUND = {
    "warm-up goes on while the fit is clipped": (Schedule(10.0, 0, 1, False), 1, FIT_FAR, Schedule(10.0, 11, 1, False)),
    "a fit within the clip settles it; warm-up's credit is dropped": (
        Schedule(10.0, 0, 1, False), 1, FIT_HERE, Schedule(0.0, 12, 2, True)),
    "warm-up ends after its rounds; debt is kept": (Schedule(-3.0, 0, 1, False), 3, FIT_FAR, Schedule(-3.0, 11, 1, True)),
    "steady: the interval doubles": (Schedule(-1.0, 0, 8, True), 9, FIT_HERE, Schedule(-1.0, 26, 16, True)),
    "steady at the longest interval": (Schedule(0.0, 0, MAX_INTERVAL, True), 9, FIT_HERE,
                                       Schedule(0.0, 10 + MAX_INTERVAL, MAX_INTERVAL, True)),
    "a rate that moves: back to one step": (Schedule(-1.0, 0, 8, True), 9, FIT_FAR, Schedule(-1.0, 11, 1, True)),
    "a shrink: back to one step": (Schedule(-1.0, 0, 8, True), 9, Fit(-1.0, 1.0, 1.0), Schedule(-1.0, 11, 1, True)),
    "a kept rate is steady": (Schedule(-1.0, 0, 8, True), 9, Fit(1.0, -1.0, 1.0), Schedule(-1.0, 26, 16, True)),
}


@pytest.mark.parametrize("name", AFTER_ROUND)
def test_after_round(name):
    before, rounds, fit, after = AFTER_ROUND[name]
    decision = BUDGET.decide(fit, 1e-2, BUDGET.warming(10, before))
    assert BUDGET.after_round(before, 10, rounds, fit, decision, 1e-2) == after


def test_schedule_round_trips_through_a_group():
    group = {}
    Schedule(-2.5, 7, 4, True).store(group)
    assert Schedule.of(group) == Schedule(-2.5, 7, 4, True) and set(group) == set(Schedule.KEYS)


# probe steps and loss changes -> uphill (the probe at the largest positive step raised the loss)
UPHILL = {
    "all descend": ((-2.0, -1.0, 1.0, 2.0), (0.3, 0.1, -0.1, -0.2), False),
    "the largest step climbs": ((-2.0, -1.0, 1.0, 2.0), (0.3, 0.1, -0.1, 0.05), True),
    "only a smaller step climbs": ((-2.0, -1.0, 1.0, 2.0), (0.3, 0.1, 0.05, -0.2), False),
    "order of the probes does not matter": ((2.0, 1.0, -1.0), (0.05, -0.1, 0.1), True),
    "a nonfinite probe": ((-1.0, 1.0, 2.0), (0.1, float("inf"), -0.2), True),
    "flat": ((-1.0, 1.0, 2.0), (0.0, 0.0, 0.0), False),
}


@pytest.mark.parametrize("name", UPHILL)
def test_uphill(name):
    etas, deltas, uphill = UPHILL[name]
    assert Probes(etas, tuple(1.0 + d for d in deltas)).fit(1.0).uphill is uphill
    # maximizing: the loss is negated, so a rise is a descent
    if uphill and all(map(math.isfinite, deltas)):
        assert Probes(etas, tuple(1.0 - d for d in deltas)).fit(1.0, sign=-1.0).uphill
