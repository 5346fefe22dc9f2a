"""The per-category logit correction: b worked by hand from known shares, and fitted without test days."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from stllm.data.activity import Activity, ActivityChain
from stllm.data.activity_bias import category_bias, fit_category_bias


def _day(user: str, day: int, *cats: str) -> ActivityChain:
    return ActivityChain(date=dt.date(2024, 1, day), user=user,
                         steps=tuple(Activity(category=c, start=3600 * (8 + i)) for i, c in enumerate(cats)))


def test_bias_is_the_log_ratio_of_known_shares():
    # target 3 A, 1 B (0.75 / 0.25), generated 1 A, 1 B (0.5 / 0.5): b_A = log 1.5, b_B = log 0.5
    b = category_bias(["A", "A", "A", "B"], ["A", "B", "C"], alpha=0.0, clip=10.0)
    assert set(b) == {"A", "B"}  # only the target's categories; C (never real) is left to the LM
    assert b["A"] == pytest.approx(math.log(0.75 / 0.5)) and b["B"] == pytest.approx(math.log(0.25 / 0.5))
    # default pseudo-count 1 on both sides: target 4/6, 2/6; generated 2/4, 2/4 (C's count outside the target set)
    b = category_bias(["A", "A", "A", "B"], ["A", "B"])
    assert b["A"] == pytest.approx(math.log(4 / 3)) and b["B"] == pytest.approx(math.log(2 / 3))
    # a fixed-point step adds to the previous b; the clip bounds a category the model never wrote
    b = category_bias(["A"] * 99 + ["B"], ["A"] * 100, previous={"A": 0.25}, alpha=1e-12, clip=2.0)
    assert b["B"] == 2.0 and b["A"] == pytest.approx(0.25 + math.log(0.99), abs=1e-6)
    with pytest.raises(ValueError, match="no activity in the target days"):
        category_bias([], ["A"])


def test_bias_is_fitted_without_test_days():
    trained = [_day("u", 1, "Home", "Office", "Home"), _day("v", 2, "Park")]
    generated = [_day("u", 3, "Office", "Office", "Home")]  # a validation request of user u
    test = [_day("u", 10, "Bar"), _day("v", 11, "Park", "Park")]
    b = fit_category_bias(trained, generated, test)
    # target Home 2, Office 1, Park 1 (+1 each: 3/7, 2/7, 2/7); generated Home 1, Office 2, Park 0 (2/6, 3/6, 1/6)
    assert b["Home"] == pytest.approx(math.log((3 / 7) / (2 / 6)))
    assert b["Park"] == pytest.approx(math.log((2 / 7) / (1 / 6)))
    changed = [_day("u", 10, "Bar", "Bar", "Bar"), _day("v", 11, "Office")]  # other test days: b unchanged
    assert fit_category_bias(trained, generated, changed) == b
    assert "Bar" not in b  # a test-day-only category plays no part
    with pytest.raises(ValueError, match="field 'generated': user u on 2024-01-10 is a test day"):
        fit_category_bias(trained, [*generated, _day("u", 10, "Bar")], test)
    with pytest.raises(ValueError, match="field 'trained': user v on 2024-01-11 is a test day"):
        fit_category_bias([*trained, _day("v", 11, "Park")], generated, test)


def test_user_bias_is_each_users_smoothed_log_ratio_shrunk_by_their_generated_activities():
    from stllm.data.activity_bias import user_category_bias

    pop = {"A": 0.5, "B": 0.3, "C": 0.2}
    target = {"u": ["A"] * 6 + ["B"] * 2, "w": ["A"] * 4, "v": ["B"]}
    generated = {"u": ["A", "A", "B", "B"], "w": ["C"]}  # v: no validation request, no b
    b = user_category_bias(target, generated, pop, alpha=2.0, shrink=4.0, clip=5.0)
    assert set(b) == {"u", "w"} and set(b["u"]) == {"A", "B"} and set(b["w"]) == {"A", "C"}
    # u: p = (6 + 2*.5)/10, (2 + 2*.3)/10 = .7, .26; q = (2 + 1)/6, (2 + .6)/6 = .5, .4333; shrink 4/(4+4) = 1/2
    assert b["u"]["A"] == pytest.approx(0.5 * math.log(0.7 / 0.5))
    assert b["u"]["B"] == pytest.approx(0.5 * math.log(0.26 / (2.6 / 6)))
    # w: p_A = 5/6, q_A = 1/3; p_C = .4/6, q_C = 1.4/3; one generated activity: shrink 1/5
    assert b["w"]["A"] == pytest.approx(0.2 * math.log(2.5))
    assert b["w"]["C"] == pytest.approx(0.2 * math.log((0.4 / 6) / (1.4 / 3)))
    # the clip bounds the log ratio before the shrink: log(1/7) = -1.95 -> -1
    assert user_category_bias(target, generated, pop, alpha=2.0, shrink=4.0, clip=1.0)["w"]["C"] == pytest.approx(-0.2)
    # a user whose model days already match their own mix gets no correction
    same = user_category_bias({"u": ["A", "B"] * 5}, {"u": ["A", "B"] * 5}, pop)
    assert same["u"] == pytest.approx({"A": 0.0, "B": 0.0})
    with pytest.raises(ValueError, match="alpha > 0"):
        user_category_bias(target, generated, pop, alpha=0.0)


def test_user_bias_is_fitted_per_user_without_test_days():
    from stllm.data.activity_bias import fit_user_category_bias

    trained = [_day("u", 1, "Home", "Office"), _day("u", 2, "Home", "Home"), _day("v", 2, "Park")]
    generated = [_day("u", 3, "Office", "Office", "Office", "Office")]
    test = [_day("u", 10, "Bar"), _day("v", 11, "Park", "Park")]
    b = fit_user_category_bias(trained, generated, test, alpha=1.0, shrink=0.0)
    # population Home 3/5, Office 1/5, Park 1/5; u: p_Home = (3 + .6)/5, p_Office = (1 + .2)/5;
    # q_Home = .6/5, q_Office = 4.2/5
    assert set(b) == {"u"}
    assert b["u"]["Home"] == pytest.approx(math.log(3.6 / 0.6)) and b["u"]["Home"] > 0 > b["u"]["Office"]
    assert b["u"]["Office"] == pytest.approx(math.log(1.2 / 4.2))
    with pytest.raises(ValueError, match="field 'generated': user u on 2024-01-10 is a test day"):
        fit_user_category_bias(trained, [*generated, _day("u", 10, "Bar")], test)


def test_user_bias_from_expected_counts_matches_the_same_counts_sampled():
    from stllm.data.activity_bias import user_category_bias

    pop = {"A": 0.5, "B": 0.3, "C": 0.2}
    target = {"u": ["A"] * 6 + ["B"] * 2}
    sampled = user_category_bias(target, {"u": ["A", "A", "B", "B"]}, pop, alpha=2.0, shrink=4.0, clip=5.0)
    expected = user_category_bias(target, {"u": {"A": 2.0, "B": 2.0}}, pop, alpha=2.0, shrink=4.0, clip=5.0)
    assert expected["u"] == pytest.approx(sampled["u"])
    # fractional mass: q_A = (1.5 + 1)/(3 + 2) = .5, q_C = (.5 + .4)/5 = .18; p_C = .4/10; G = 3 -> shrink 3/7
    frac = user_category_bias(target, {"u": {"A": 1.5, "B": 1.0, "C": 0.5}}, pop, alpha=2.0, shrink=4.0, clip=5.0)
    assert frac["u"]["A"] == pytest.approx(3 / 7 * math.log(0.7 / 0.5))
    assert frac["u"]["C"] == pytest.approx(3 / 7 * math.log(0.04 / 0.18))
    assert user_category_bias(target, {"u": {"A": 0.0}}, pop) == {}  # no mass: no b


def test_user_share_bias_tilts_each_user_by_their_share_over_the_populations():
    from stllm.data.activity_bias import user_share_bias

    # u: 3 A, 1 B; v: 1 B, 3 C; population 3/8 A, 2/8 B, 3/8 C. alpha 2: b = s * log(1 + t / (2 pi))
    days = [_day("u", 1, "A", "A", "B"), _day("u", 2, "A"), _day("v", 1, "B", "C", "C", "C")]
    b = user_share_bias(days, 0.5, alpha=2.0, clip=10.0)
    assert set(b) == {"u", "v"} and set(b["u"]) == {"A", "B"}  # a category the user never did: 0 (left out)
    assert b["u"]["A"] == pytest.approx(0.5 * math.log(1 + 3 / 0.75))  # 0.5 * log 5
    assert b["u"]["B"] == pytest.approx(0.5 * math.log(1 + 1 / 0.5))  # 0.5 * log 3
    assert b["v"]["C"] == pytest.approx(0.5 * math.log(5)) and b["v"]["B"] == pytest.approx(0.5 * math.log(3))
    assert user_share_bias(days, 1.0, alpha=2.0, clip=1.0)["u"] == {"A": 1.0, "B": 1.0}  # log 5, log 3 clipped
    assert user_share_bias(days, 0.0) == {}
    assert user_share_bias(days, -0.5, alpha=2.0)["u"]["A"] == pytest.approx(-0.5 * math.log(5))  # towards pi
    with pytest.raises(ValueError, match="alpha > 0"):
        user_share_bias(days, 1.0, alpha=0.0)
