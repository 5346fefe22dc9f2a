"""Level-scaled historical average: the historical average where the level never moves, better where it does."""

import numpy as np
import pytest
from test_ridge import H, drifting_city, make_city, periodic_city

from stllm.eval.baselines import eval_targets, historical_average
from stllm.eval.level_average import level_average
from stllm.eval.metrics import masked_mae


def test_a_city_whose_level_never_moves_gets_the_historical_average():
    """Every week repeats exactly: each level ratio is 1, whatever the exponents, so the forecast is the
    historical average (and here the truth)."""
    city = periodic_city(weeks=12)
    starts, ev = np.arange(1512 - H, 2016 - 2 * H, 7), np.arange(4, 8)
    pred = level_average(city, starts, ev, H, H, fit_regions=["0", "1", "2", "3"], fit_time=slice(0, 1512))
    ha = historical_average(city, starts, ev, H, H)
    assert pred.shape == ha.shape and pred.dtype == np.float32
    np.testing.assert_allclose(pred, ha, rtol=1e-4)


def test_a_drifting_level_is_followed_on_regions_it_never_fitted():
    """Each region's level drifts day by day: the historical average lags it, the level-scaled one follows
    (fitted on regions 0-7, evaluated on 8-15 after the fit time)."""
    city = drifting_city(weeks=12)
    fit, ev = [str(r) for r in range(8)], np.arange(8, 16)
    starts = np.arange(1512 - H, 2016 - 2 * H, 5)
    y, mask = eval_targets(city, starts, ev, H, H)
    pred = level_average(city, starts, ev, H, H, fit_regions=fit, fit_time=slice(0, 1512))
    ha = historical_average(city, starts, ev, H, H)
    assert masked_mae(pred, y, mask) < 0.9 * masked_mae(ha, y, mask)


def test_refusals_name_the_baseline():
    city = drifting_city(weeks=12)
    starts = np.array([1512 - H])
    with pytest.raises(ValueError, match="level_average: fit_regions overlap the evaluated regions"):
        level_average(city, starts, np.array([0]), H, H, fit_regions=["0", "1"], fit_time=slice(0, 1512))
    with pytest.raises(ValueError, match="level_average: fit_time .* overlaps the evaluated target steps"):
        level_average(city, starts, np.array([9]), H, H, fit_regions=["0"], fit_time=slice(0, 1600))
    events = make_city(np.ones((2016, 2, 1)), task="event")
    with pytest.raises(ValueError, match="level_average scales counts"):
        level_average(events, starts, np.array([1]), H, H, fit_regions=["0"], fit_time=slice(0, 1512))
