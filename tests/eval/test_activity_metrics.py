"""Activity metrics: JSD against scipy, hand-worked day samples, copies and validity shares."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from stllm.data.activity import Activity, ActivityChain
from stllm.data.activity_checks import CheckConfig
from stllm.eval.activity_metrics import copy_share, day_key, day_samples, distribution_jsd, jsd, quality_row, validity

H = 3600


def test_jsd_equals_scipy_squared_and_its_bounds():
    rng = np.random.default_rng(0)
    for _ in range(5):
        p, q = rng.random(7), rng.random(7)
        assert jsd(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2, rel=1e-10)
    assert jsd([1, 2, 3], [2, 4, 6]) == 0.0  # same distribution, other scale
    assert jsd([1, 0], [0, 1]) == pytest.approx(1.0)  # disjoint supports: 1 bit
    assert np.isnan(jsd([0, 0], [1, 1]))


def _day(*acts, date=dt.date(2024, 1, 1)) -> ActivityChain:
    return ActivityChain(date=date, weekday="Mon", steps=tuple(acts))


def test_day_samples_hand_worked():
    # two places 0.02 deg of latitude apart: step 2.2239 km, radius of gyration half of it
    d = _day(Activity("Home", start=7 * H + 1800, lat=40.0, lon=-74.0), Activity("Office", start=9 * H, lat=40.02,
                                                                                   lon=-74.0))
    s = day_samples([d, _day(Activity("Park", start=23 * H))])
    assert s.category == ["Home", "Office", "Park"] and s.start_hour.tolist() == [7, 9, 23]
    assert s.n_activities.tolist() == [2, 1]
    step = 6371.0088 * np.radians(0.02)
    assert s.step_km == pytest.approx([step], rel=1e-9)
    assert s.gyration_km == pytest.approx([step / 2], rel=1e-6)


def test_distribution_jsd_of_hand_built_sets():
    a = [_day(Activity("Home", start=8 * H), Activity("Bar", start=20 * H))]
    b = [_day(Activity("Home", start=8 * H))]
    out = distribution_jsd(a, b)
    # categories {Home: 1, Bar: 1} vs {Home: 1}; hours {8, 20} vs {8}: both JSD([.5, .5], [1, 0])
    expect = jsd([0.5, 0.5], [1.0, 0.0])
    assert out["category"] == pytest.approx(expect) and out["start"] == pytest.approx(expect)
    assert out["n_activities"] == pytest.approx(1.0)  # 2 vs 1 activities: disjoint
    assert np.isnan(out["step_km"]) and np.isnan(out["gyration_km"])  # no coordinates
    assert distribution_jsd(a, a)["category"] == 0.0


def test_copy_share_uses_the_ten_minute_key():
    train = [_day(Activity("Home", start=8 * H + 60), Activity("Bar", start=20 * H))]
    same = _day(Activity("Home", start=8 * H + 300), Activity("Bar", start=20 * H + 120))  # same 10-min slots
    other = _day(Activity("Home", start=8 * H + 660), Activity("Bar", start=20 * H))
    assert day_key(same) == day_key(train[0]) != day_key(other)
    assert copy_share([same, other], train) == 0.5


def test_validity_and_quality_row():
    good = _day(Activity("Home", start=8 * H), Activity("Bar", start=20 * H))
    bad = _day(Activity("Home", start=20 * H), Activity("Bar", start=8 * H))
    share, per = validity([good, bad], CheckConfig())
    assert share == 0.5 and per["times"] == 0.5 and per["format"] == 1.0
    row = quality_row([good, bad], [good], [good], CheckConfig())
    assert row["valid"] == 0.5 and row["copies"] == 0.5


def test_summed_day_histograms_give_the_same_jsd_as_the_days_themselves():
    from stllm.eval.activity_metrics import day_histograms, histogram_jsd

    def day(*stops):  # (category, hour, lat offset in 0.01 deg)
        return _day(*(Activity(c, start=h * H, lat=40.0 + y / 100, lon=-74.0) for c, h, y in stops))

    real = [day(("Home", 7, 0), ("Office", 9, 2)), day(("Park", 12, 0)), day(("Home", 8, 0), ("Bar", 20, 30))]
    gen = [day(("Home", 6, 0), ("Office", 9, 1), ("Home", 18, 0)), day(("Bar", 21, 5)), day(("Office", 10, 0))]
    vocab = {c: i for i, c in enumerate(sorted({a.category for d in (*real, *gen) for a in d.activities}))}
    hr, hg = day_histograms(real, vocab), day_histograms(gen, vocab)
    assert hr["category"].sum() == sum(len(d.activities) for d in real)  # one count per activity, per day's row
    got = histogram_jsd({k: v.sum(0) for k, v in hg.items()}, {k: v.sum(0) for k, v in hr.items()})
    want = distribution_jsd(gen, real)
    assert got == pytest.approx(want, nan_ok=True)
    # weights = days drawn twice: the same as listing them twice
    w = np.arange(len(gen), dtype=float) % 3
    twice = [d for d, k in zip(gen, w) for _ in range(int(k))]
    assert histogram_jsd({k: w @ v for k, v in hg.items()}, {k: v.sum(0) for k, v in hr.items()}) == pytest.approx(
        distribution_jsd(twice, real), nan_ok=True)


def test_split_half_jsd_of_hand_built_days():
    from stllm.eval.activity_metrics import split_half_jsd

    days = [_day(Activity("A", start=8 * H)), _day(Activity("A", start=8 * H)), _day(Activity("B", start=8 * H)),
            _day(Activity("B", start=8 * H))]
    # 4 days into 2 + 2: {A, A} | {B, B} (category JSD 1) in 1 of 3 halvings, {A, B} | {A, B} (0) in 2 of 3
    j = split_half_jsd(days, n_splits=600)
    assert set(np.unique(j["category"])) == {0.0, 1.0} and j["category"].mean() == pytest.approx(1 / 3, abs=0.07)
    assert (j["start"] == 0).all() and np.isnan(j["step_km"]).all()  # same hour everywhere; no coordinates
    # other days for the same requests: the same halves of both, compared half by half
    j = split_half_jsd(days, n_splits=5, other=list(days))
    assert j["category"].shape == (5, 2) and (j["category"] == 0).all()
    with pytest.raises(ValueError, match="as many other days"):
        split_half_jsd(days, other=days[:3])
