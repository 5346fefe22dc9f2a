"""Multi-period context: no view overlaps the forecast, padding keeps the anchor = historical average."""

import numpy as np
import pytest

from stllm.data import STInstructionDataset, synthetic_city
from stllm.data.context import ContextSpec, context_steps, gather_context, period_steps
from stllm.eval.baselines import historical_average

STEPS = {"30min": 48, "1h": 24, "1D": 1}


@pytest.mark.parametrize("recent_views", [False, True])
@pytest.mark.parametrize("freq", sorted(STEPS))
def test_views_hold_the_target_slots_and_never_reach_the_forecast(freq, recent_views):
    step = np.timedelta64(30, "m") if freq == "30min" else np.timedelta64(1, "h" if freq == "1h" else "D")
    spec = ContextSpec(input_len=12, output_len=12, days=7, weeks=3, recent_views=recent_views)
    day, week = STEPS[freq], 7 * STEPS[freq]
    span = 24 if recent_views else 12  # with recent views each view starts at the recent slots
    t0 = np.array([10 * week, 10 * week + 5])
    idx, padded = context_steps(spec, step, t0)
    assert idx.shape == (2, 10 * span + 12) == (2, spec.length) and not padded.any()
    assert (idx < t0[:, None]).all()  # not one target step, at any frequency
    h = np.arange(12 - span, 12)  # the slots each view holds, relative to t0
    weeks = idx[:, : 3 * span].reshape(2, 3, span)
    days = idx[:, 3 * span : 10 * span].reshape(2, 7, span)
    assert ((weeks - (t0[:, None, None] + h)) % week == 0).all()  # same slot of the week
    assert ((days - (t0[:, None, None] + h)) % day == 0).all()  # same slot of the day
    assert (np.diff(weeks, axis=1) > 0).all() and (np.diff(days, axis=1) > 0).all()  # oldest view first
    np.testing.assert_array_equal(idx[:, -12:], t0[:, None] - 12 + np.arange(12))  # then the recent steps
    t = span - 12  # where the target slots start inside a view
    if freq == "1D":  # a 12-day horizon: "1 day earlier" of day 11 is 12 days back, week views of days 7.. 2 weeks
        assert days[0, -1, t + 11] == t0[0] - 1 and days[0, -1, t] == t0[0] - 1
        assert weeks[0, -1, t + 7] == t0[0] + 7 - 14
    if recent_views:  # the recent slot 12 steps before t0, one week and one day earlier (nearest views last)
        assert weeks[0, -1, 0] == t0[0] - 12 - week and days[0, -1, 0] == t0[0] - 12 - day


def test_a_step_that_does_not_divide_a_day_is_refused_by_name():
    with pytest.raises(ValueError, match="a day is not a whole number of 7 minutes"):
        period_steps(np.timedelta64(7, "m"), "day", "odd.npz")
    city = synthetic_city(n_regions=3, days=10, freq="1h")
    with pytest.raises(ValueError, match="needs at least 168"):
        context_steps(ContextSpec(weeks=1), city.freq, [100])
    with pytest.raises(ValueError, match="needs at least 180"):  # a week before the first recent step
        context_steps(ContextSpec(weeks=1, recent_views=True), city.freq, [170])


@pytest.mark.parametrize("span", [12, 24])  # target slots only, or 12 recent slots then 12 target slots
def test_padded_weeks_are_filled_so_the_anchor_is_the_historical_average(span):
    city = synthetic_city(n_regions=4, days=26, freq="1h")  # at t0 = 3.5 weeks, 3 of 8 week views exist
    spec = ContextSpec(12, 12, days=2, weeks=8, recent_views=span == 24)
    t0 = np.array([3 * 168 + 80, 3 * 168 + 100])
    idx, padded = context_steps(spec, city.freq, t0)
    assert padded[:, : 8 * span].sum(axis=1).tolist() == [5 * span, 5 * span]
    window = gather_context(city.values, spec, city.freq, t0)  # (B, L, N, C)
    anchor = window[:, : 8 * span].reshape(2, 8, span, 4, 2)[:, :, span - 12 :].mean(axis=1)  # (B, H, N, C)
    ha = historical_average(city, t0 - 12, np.arange(4), 12, 12, weeks=8)  # (B, N, H, C)
    np.testing.assert_allclose(anchor.transpose(0, 2, 1, 3), ha, rtol=1e-5)
    # real entries are the values at their steps, untouched
    real = ~padded[0]
    np.testing.assert_array_equal(window[0][real], city.values[idx[0][real]])


def test_dataset_context_is_one_history_and_ignores_targets():
    city = synthetic_city(n_regions=5, days=22, freq="1h")
    ds = STInstructionDataset(city, days=7, weeks=2)
    assert ds.starts[0] == 168 - 12  # one week of warm-up before the first target
    i = ds.index_of(3, 2)
    s = ds[i]
    assert len(s["history"]) == 1 and s["history"][0][1].shape == (ContextSpec(12, 12, 7, 2).length, 5, 2)
    assert s["conversation"].user.count("<ST_HIS>") == 1
    assert "previous 7 days and 2 weeks" in s["conversation"].user
    # perturbing the targets (and everything after them) leaves the inputs unchanged
    t0, target = int(ds.starts[3]) + 12, s["target"].copy()
    city.values[t0:] += 1000.0
    again = STInstructionDataset(city, days=7, weeks=2)[i]
    np.testing.assert_array_equal(again["history"][0][1], s["history"][0][1])
    assert not np.array_equal(again["target"], target)


@pytest.mark.parametrize("freq,shift", [("30min", 1), ("1h", 1), ("1D", 2)])
def test_extra_views_are_moved_back_whole_periods_until_they_end_before_the_targets(freq, shift):
    days = 60 if freq == "1D" else 16
    city = synthetic_city(n_regions=3, days=days, freq=freq)
    ds = STInstructionDataset(city, extra_views=("week", "day"))
    s = ds[0]
    t_first_target = int(ds.starts[0]) + 12
    (_, week), (_, day), (_, recent) = s["history"]
    base = ds.scaled
    for view, lag in zip((week, day), ds.lags):
        start = t_first_target - lag  # the target slots `lag` steps back
        np.testing.assert_array_equal(view, base[start : start + 12])
        assert start + 12 <= t_first_target
    assert ds.view_shifts[0] == shift  # weeks: 1 unless the horizon is 7+ days
    text = s["conversation"].user
    assert ("one week earlier" in text) == (shift == 1)
    if freq == "1D":
        assert ds.view_shifts == (2, 12) and "12 days earlier" in text and "2 weeks earlier" in text


def test_level_block_holds_the_last_day_and_the_same_steps_in_each_context_week():
    """``[level week 3, 2, 1 | level now | weeks | days | recent]``: the level copies sit whole weeks back,
    the rest of the layout is the level-free one, and a copy before the data is filled from the real ones."""
    step, day, week = np.timedelta64(1, "h"), 24, 168
    spec = ContextSpec(12, 12, days=2, weeks=3, level_len=day)
    plain = ContextSpec(12, 12, days=2, weeks=3)
    assert spec.length == 4 * day + plain.length and spec.level_steps == 96
    t0 = np.array([10 * week, 10 * week + 5])
    idx, padded = context_steps(spec, step, t0)
    assert not padded.any()
    last_day = t0[:, None] - day + np.arange(day)
    np.testing.assert_array_equal(idx[:, 3 * day : 4 * day], last_day)
    for j, k in enumerate((3, 2, 1)):  # oldest week first
        np.testing.assert_array_equal(idx[:, j * day : (j + 1) * day], last_day - k * week)
    np.testing.assert_array_equal(idx[:, 4 * day :], context_steps(plain, step, t0)[0])
    assert spec.min_history(step) == week + day  # one whole weekly copy of the last day
    with pytest.raises(ValueError, match=f"needs at least {week + day}"):
        context_steps(spec, step, [week + day - 1])
    with pytest.raises(ValueError, match="needs weeks >= 1"):
        ContextSpec(12, 12, days=1, weeks=0, level_len=day)
    city = synthetic_city(n_regions=2, days=20, freq="1h")
    t = np.array([week + 30])  # only the copy one week back exists
    window = gather_context(city.values, spec, city.freq, t)
    one_back = city.values[t[0] - day - week : t[0] - week]
    for j in range(3):
        np.testing.assert_allclose(window[0, j * day : (j + 1) * day], one_back)
