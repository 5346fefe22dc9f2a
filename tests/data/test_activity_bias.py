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
