"""Scale-free logistic baseline: calibrated event chances on held-out regions, no future leaks, refusals, registry."""

from dataclasses import replace

import numpy as np
import pytest

from stllm.data import CityData, Region
from stllm.eval.baselines import BASELINES, eval_targets, run_baselines
from stllm.eval.logistic import scale_free_logistic
from stllm.eval.ridge import scale_free_ridge

H = 12  # input_len = output_len = 12 throughout


def event_city(values) -> CityData:
    values = np.asarray(values, dtype=np.float32)
    t, n, c = values.shape
    ts = np.datetime64("2024-01-01", "m") + np.arange(t) * np.timedelta64(1, "h")
    regions = tuple(Region(str(i), f"r{i}") for i in range(n))
    return CityData(values, ts, "1h", tuple(f"ch{i}" for i in range(c)), regions, task="event", source="test")


def poisson_city(seed=0, weeks=6) -> CityData:
    """Hourly Poisson counts at a constant rate per region: 0.1 in regions 0, 2, 4, 6, 2.0 in 1, 3, 5, 7."""
    rng = np.random.default_rng(seed)
    lam = np.tile([0.1, 2.0], 4)
    return event_city(rng.poisson(lam[None, :, None], (weeks * 168, 8, 1)))


def test_chance_of_an_event_on_held_out_regions():
    # P(count > 0) of Poisson(lam) is 1 - exp(-lam): 0.0952 at 0.1, 0.8647 at 2.0. The ridge regresses the
    # count and clips it, so a busy region reads 1 (certain) where an event happens 86% of the time. A light
    # penalty (the default 1e-3 pulls the quiet regions to 0.13, towards the pooled rate) leaves it calibrated.
    city = poisson_city()
    t = city.n_steps
    starts, ev = np.arange(t - 168 - H, t - 2 * H, 7), np.arange(4, 8)
    kw = dict(fit_regions=["0", "1", "2", "3"], fit_time=slice(0, t - 168))
    p = scale_free_logistic(city, starts, ev, H, H, l2=1e-4, **kw)
    assert p.shape == (len(starts), 4, H, 1) and p.dtype == np.float32
    quiet, busy = p[:, [0, 2]].mean(), p[:, [1, 3]].mean()
    assert abs(quiet - 0.0952) < 0.03, quiet
    assert abs(busy - 0.8647) < 0.03, busy
    ridge = scale_free_ridge(city, starts, ev, H, H, **kw)
    assert ridge[:, [1, 3]].mean() > 0.97  # clipped counts: no chance left to rank by


def test_weekly_pattern_is_read_from_the_context():
    # events exactly on a random set of slots of the week: the same slot last week says it all
    rng = np.random.default_rng(1)
    slots = rng.random((168, 2)) < 0.3
    city = event_city(np.tile(slots, (6, 1))[:, None, :] * np.ones((1, 6, 1)))
    t = city.n_steps
    starts, ev = np.arange(t - 168 - H, t - 2 * H, 5), np.array([4, 5])
    p = scale_free_logistic(city, starts, ev, H, H, ["0", "1", "2", "3"], slice(0, t - 168))
    y, _ = eval_targets(city, starts, ev, H, H)
    assert p[y > 0].min() > 0.8 and p[y == 0].max() < 0.2, (p[y > 0].min(), p[y == 0].max())


def test_no_future_leak():
    city = poisson_city(2, weeks=5)
    t_first = 4 * 168
    starts = np.array([t_first - H, t_first - H + 30, t_first - H + 70])
    kw = dict(fit_regions=["0", "1", "2", "3"], fit_time=slice(0, t_first), max_iter=30)
    ref = scale_free_logistic(city, starts, [4, 5, 6, 7], H, H, **kw)
    t0 = int(starts[1]) + H
    v = city.values.copy()
    v[t0:] = 50.0
    pred = scale_free_logistic(replace(city, values=v), starts, [4, 5, 6, 7], H, H, **kw)
    np.testing.assert_array_equal(pred[:2], ref[:2])  # windows starting at or before the corruption
    assert np.abs(pred[2:] - ref[2:]).max() > 0.1  # the last one reads it


def test_refusals_name_the_problem():
    city = poisson_city(weeks=5)
    starts, ev = np.array([504 - H]), np.array([4, 5])
    with pytest.raises(ValueError, match="fit_regions overlap the evaluated regions"):
        scale_free_logistic(city, starts, ev, H, H, ["3", "4"], slice(0, 504))
    with pytest.raises(ValueError, match="overlaps the evaluated target steps"):
        scale_free_logistic(city, starts, ev, H, H, ["0", "1"], slice(0, 510))
    with pytest.raises(ValueError, match="flow data.*'ridge'"):
        scale_free_logistic(replace(city, task="flow"), starts, ev, H, H, ["0", "1"], slice(0, 504))
    with pytest.raises(ValueError, match="l2 >= 0"):
        scale_free_logistic(city, starts, ev, H, H, ["0", "1"], slice(0, 504), l2=-1.0)


def test_run_baselines_registry():
    city = poisson_city(weeks=5)
    starts, ev = np.array([504 - H, 600]), np.array([4, 6])
    kw = dict(fit_regions=["0", "1"], fit_time=slice(0, 504), alpha=0.1)
    assert BASELINES["logistic"] is scale_free_logistic
    out = run_baselines(city, starts, ev, H, H, ridge_kwargs=kw)
    assert list(out) == ["last_value", "seasonal_naive_day", "seasonal_naive_week", "historical_average",
                         "ridge", "logistic"]  # events: no level_average
    kw.pop("alpha")  # the ridge's penalty is not the logistic's
    np.testing.assert_array_equal(out["logistic"], scale_free_logistic(city, starts, ev, H, H, **kw))
    assert "logistic" not in run_baselines(replace(city, task="flow"), starts, ev, H, H, ridge_kwargs=kw)
    with pytest.raises(ValueError, match="ridge_kwargs"):
        run_baselines(city, starts, ev, H, H, names=["logistic"])
