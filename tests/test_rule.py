"""The rate rule, case by case: a table of fits, rates and steps, and what each must do."""
import math

import pytest

from gen_optim.fit import Fit
from gen_optim.rule import SEARCH_STEP, Action, RateRule, Verdict

RULE = RateRule(probe_every=4, warmup=2, search=6, r2_min=0.99, smoothing=0.9, rate_clip=(0.5, 2.0))
NAN = float("nan")
WARM, AFTER = 0, 8  # a warm-up step, and a step after it

# fit, step, verdict, action, new rate (from a rate of 1e-2)
CASES = {
    "clean fit at its optimum": (Fit(1.0, 100.0, 1.0), WARM, Verdict.ACCEPTED, Action.FIT, 1e-2),
    "clean fit far above, clipped": (Fit(1.0, 1.0, 1.0), WARM, Verdict.ACCEPTED, Action.FIT, 2e-2),
    "clean fit far below, clipped": (Fit(1.0, 1e4, 1.0), WARM, Verdict.ACCEPTED, Action.FIT, 5e-3),
    "clean fit after warm-up, smoothed": (Fit(1.0, 1.0, 1.0), AFTER, Verdict.ACCEPTED, Action.FIT, 0.9e-2 + 0.1 * 2e-2),
    "poor fit in warm-up shrinks": (Fit(1.0, 100.0, 0.5), WARM, Verdict.POOR, Action.SHRINK, 5e-3),
    "poor fit after warm-up keeps": (Fit(1.0, 100.0, 0.5), AFTER, Verdict.POOR, Action.KEEP, 1e-2),
    "clean climb after warm-up shrinks, smoothed": (Fit(-1.0, 1.0, 1.0), AFTER, Verdict.CLIMB, Action.SHRINK,
                                                     0.9e-2 + 0.1 * 5e-3),
    "noisy climb after warm-up keeps": (Fit(-1.0, 1.0, 0.5), AFTER, Verdict.CLIMB, Action.KEEP, 1e-2),
    "concave after warm-up keeps": (Fit(1.0, -1.0, 1.0), AFTER, Verdict.CONCAVE, Action.KEEP, 1e-2),
    "concave in warm-up shrinks": (Fit(1.0, -1.0, 1.0), WARM, Verdict.CONCAVE, Action.SHRINK, 5e-3),
    "flat in warm-up keeps": (Fit(0.0, 0.0, 0.0, flat=True), WARM, Verdict.FLAT, Action.KEEP, 1e-2),
    "nonfinite in warm-up shrinks": (Fit(NAN, NAN, NAN), WARM, Verdict.NONFINITE, Action.SHRINK, 5e-3),
    "nonfinite after warm-up keeps": (Fit(NAN, NAN, NAN), AFTER, Verdict.NONFINITE, Action.KEEP, 1e-2),
}


@pytest.mark.parametrize("name", CASES)
def test_decide(name):
    fit, step, verdict, action, rate = CASES[name]
    decision = RULE.decide(fit, 1e-2, step)
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
    group = dict(probe_every=8, warmup=10, search=6, r2_min=0.9, smoothing=0.5, rate_clip=[0.25, 4.0], lr=1.0)
    rule = RateRule.of(group)
    assert rule == RateRule(8, 10, 6, 0.9, 0.5, (0.25, 4.0))
    assert rule.shrink == rule.joint_floor == 0.25 and not math.isnan(rule.rate_clip[1])
