"""Baselines on the canonical layout: known answers, no future leaks, encoder baselines, registry."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from stllm.data import CityData, Region, STScaler, synthetic_city
from stllm.encoders.io import save_encoder
from stllm.encoders.st_encoder import STEncoder, STEncoderConfig
from stllm.eval.baselines import (
    BASELINES,
    NOT_ZERO_SHOT,
    _check_past,
    baseline_label,
    encoder_only,
    eval_targets,
    historical_average,
    last_value,
    run_baselines,
    seasonal_naive,
    supervised_encoder,
)
from stllm.eval.metrics import flow_metrics, masked_mae

TINY = dict(residual_channels=8, conv_channels=8, skip_channels=16, end_channels=16, token_dim=8, layers=2)


def make_city(values, freq="1h", task="flow", mask=None, start="2024-01-01", channels=None):
    values = np.asarray(values, dtype=np.float32)
    t, n, c = values.shape
    step = np.timedelta64(1, "D") if freq == "1D" else np.timedelta64(int(freq[:-1]), "h")
    ts = np.datetime64(start, "m") + np.arange(t) * step
    channels = channels or tuple(f"ch{i}" for i in range(c))
    regions = tuple(Region(str(i), f"r{i}", 40.7 + i / 100, -74.0 + i / 100) for i in range(n))
    adj = np.ones((n, n), dtype=np.float32) - np.eye(n, dtype=np.float32)
    return CityData(values, ts, freq, channels, regions, task=task, mask=mask, adjacency=adj, source="test")


def weekly_city(weeks=3, n=3, c=2, seed=0):
    """Hourly series that repeats exactly every week (random per slot of week, region, channel)."""
    pattern = np.random.default_rng(seed).integers(0, 50, (168, n, c))
    return make_city(np.tile(pattern, (weeks, 1, 1)))


def corrupt_from(city, t0, seed=0):
    """A copy of ``city`` whose values at steps >= t0 are replaced by large random counts (and all observed)."""
    v = city.values.copy()
    v[t0:] = np.random.default_rng(seed).integers(1000, 2000, v[t0:].shape)
    mask = None if city.mask is None else city.mask.copy()
    if mask is not None:
        mask[t0:] = True
    return replace(city, values=v, mask=mask)


@pytest.fixture
def encoder_dir(tmp_path):
    """A tiny random STEncoder (12 -> 12 steps, 2 channels) with a scaler fitted on a synthetic city."""
    torch.manual_seed(0)
    enc = STEncoder(STEncoderConfig(in_channels=2, out_channels=2, **TINY)).eval()
    city = synthetic_city(0, n_regions=4, days=14, freq="1h")
    save_encoder(enc, tmp_path / "enc")
    STScaler.fit(city, log1p=True).save(tmp_path / "enc" / "scaler.json")
    return tmp_path / "enc"


# -- layout ----------------------------------------------------------------------------------------------
def test_eval_targets_layout_and_validation():
    v = np.arange(40 * 3 * 2, dtype=np.float32).reshape(40, 3, 2)
    mask = np.ones(v.shape, dtype=bool)
    mask[15, 2, 1] = False
    city = make_city(v, mask=mask)
    y, m = eval_targets(city, np.array([0, 3]), np.array([2, 0]), 12, 4)
    assert y.shape == m.shape == (2, 2, 4, 2) and y.dtype == np.float32
    np.testing.assert_array_equal(y[1, 0, 1:, 1], v[16:19, 2, 1])  # window 1 targets start at 3 + 12
    assert y[1, 0, 0, 1] == 0  # unobserved values are stored as 0
    np.testing.assert_array_equal(y[0, 1], v[12:16, 0])
    assert not m[1, 0, 0, 1] and not m[0, 0, 3, 1] and m.sum() == m.size - 2  # step 15 is in both windows
    y_ids, _ = eval_targets(city, np.array([0, 3]), np.array(["2", "0"]), 12, 4)
    np.testing.assert_array_equal(y_ids, y)
    with pytest.raises(ValueError, match="outside the time range"):
        eval_targets(city, np.array([0, 25]), np.array([0]), 12, 4)
    with pytest.raises(ValueError, match="non-empty"):
        eval_targets(city, np.array([], dtype=int), np.array([0]), 12, 4)
    with pytest.raises(ValueError, match="unknown region ids"):
        eval_targets(city, np.array([0]), np.array(["7"]), 12, 4)
    with pytest.raises(ValueError, match="outside"):
        eval_targets(city, np.array([0]), np.array([3]), 12, 4)


# -- known answers ----------------------------------------------------------------------------------------
def test_constant_series_all_exact():
    city = make_city(np.full((24 * 9, 2, 2), 7.0))
    starts, regions = np.array([24 * 7 + 3, 24 * 8 - 12]), np.array([0, 1])
    y, _ = eval_targets(city, starts, regions, 12, 12)
    for name in ("last_value", "seasonal_naive_day", "seasonal_naive_week", "historical_average"):
        np.testing.assert_array_equal(BASELINES[name](city, starts, regions, 12, 12), y, err_msg=name)


def test_weekly_periodic_series():
    city = weekly_city(weeks=3)
    starts = np.array([168 + 5, 168 + 100, 2 * 168 - 20, 3 * 168 - 30])
    regions = np.array([0, 2])
    y, _ = eval_targets(city, starts, regions, 12, 18)
    np.testing.assert_array_equal(seasonal_naive(city, starts, regions, 12, 18, period="week"), y)
    np.testing.assert_array_equal(historical_average(city, starts, regions, 12, 18, weeks=8), y)
    np.testing.assert_array_equal(historical_average(city, starts, regions, 12, 18, weeks=1), y)
    assert masked_mae(seasonal_naive(city, starts, regions, 12, 18, period="day"), y) > 1  # not daily-periodic
    assert masked_mae(last_value(city, starts, regions, 12, 18), y) > 1


def test_seasonal_naive_day_horizon_longer_than_a_day():
    pattern = np.random.default_rng(1).integers(0, 30, (24, 2, 1))
    city = make_city(np.tile(pattern, (6, 1, 1)))
    starts = np.array([24, 50, 24 * 6 - 42])
    y, _ = eval_targets(city, starts, np.array([0, 1]), 12, 30)  # 30 target steps: more than a day
    np.testing.assert_array_equal(seasonal_naive(city, starts, np.array([0, 1]), 12, 30, period="day"), y)
    # reads only before the window even for h >= 24 (else the corrupted copy would change it)
    for w, s in enumerate(starts):
        bad = corrupt_from(city, s + 12)
        np.testing.assert_array_equal(
            seasonal_naive(bad, starts[w : w + 1], [0, 1], 12, 30, period="day"), y[w : w + 1]
        )


def test_ramp_last_value_error():
    t = np.arange(300, dtype=np.float32)
    city = make_city(np.stack([t, 2 * t + 5], axis=1)[:, :, None])  # region 1 grows twice as fast
    starts, h = np.array([0, 40, 100, 250]), 10
    pred = last_value(city, starts, np.array([0, 1]), 12, h)
    np.testing.assert_array_equal(pred[:, 0, :, 0], np.repeat(starts[:, None] + 11, h, axis=1))
    y, _ = eval_targets(city, starts, np.array([0, 1]), 12, h)
    # target t0 + k vs last value t0 - 1: error k + 1 (region 0), 2 (k + 1) (region 1)
    np.testing.assert_allclose(masked_mae(pred[:, :1], y[:, :1]), (h + 1) / 2)
    np.testing.assert_allclose(masked_mae(pred, y), 1.5 * (h + 1) / 2)


def test_last_value_skips_unobserved_history_steps():
    v = np.arange(30, dtype=np.float32).reshape(30, 1, 1)
    mask = np.ones(v.shape, dtype=bool)
    mask[10:12] = False  # the last two history steps of window start 0 are missing
    city = make_city(v, mask=mask)
    assert last_value(city, np.array([0]), np.array([0]), 12, 3)[0, 0, :, 0].tolist() == [9.0] * 3


def test_historical_average_hand_worked_and_fallbacks():
    # 3 weeks of hourly data, one region/channel; week k holds the value 10 * (k + 1) at every step
    v = np.repeat([10.0, 20.0, 30.0], 168)[:, None, None]
    city = make_city(v)
    s = 2 * 168 + 10  # history and targets in week 3: HA of weeks 1 and 2 = 15
    assert np.all(historical_average(city, np.array([s]), [0], 12, 6, weeks=8) == 15.0)
    assert np.all(historical_average(city, np.array([s]), [0], 12, 6, weeks=1) == 20.0)  # last week only
    # a missing week is left out of the mean
    mask = np.ones(v.shape, dtype=bool)
    mask[:168] = False
    assert np.all(historical_average(make_city(v, mask=mask), np.array([s]), [0], 12, 6) == 20.0)
    # less than a week before the targets: same slot of the previous days (all in week 1 -> 10, day 4 onward)
    d = np.arange(24 * 5, dtype=np.float32)[:, None, None]  # value = step index
    pred = historical_average(make_city(np.concatenate([d, d])), np.array([3 * 24 + 2]), [0], 12, 4)
    t0 = 3 * 24 + 14
    expected = [np.mean([t0 + h - 24 * k for k in (1, 2, 3)]) for h in range(4)]  # days 3, 2, 1 before
    np.testing.assert_allclose(pred[0, 0, :, 0], expected)
    # less than a day of history -> refuse, naming the window
    with pytest.raises(ValueError, match="at least one day"):
        historical_average(city, np.array([0]), [0], 12, 12)
    with pytest.raises(ValueError, match="less than one week"):
        seasonal_naive(city, np.array([100]), [0], 12, 12, period="week")


def test_event_baselines_are_probabilities():
    # daily counts, 5 weeks, one region, two classes; class 0 happens on Mondays and Tuesdays only,
    # class 1 on every third day (not weekly)
    days = np.arange(35)
    dow = (days + 0) % 7  # 2024-01-01 is a Monday
    v = np.stack([np.where(dow < 2, 3.0, 0.0), np.where(days % 3 == 0, 1.0, 0.0)], axis=1)[:, None, :]
    city = make_city(v, freq="1D", task="event", start="2024-01-01")
    starts, regions = np.array([28 - 7, 35 - 7 - 7]), np.array([0])  # 7 days history, 7 days ahead
    y, _ = eval_targets(city, starts, regions, 7, 7)
    for name in ("last_value", "seasonal_naive_day", "seasonal_naive_week", "historical_average"):
        p = BASELINES[name](city, starts, regions, 7, 7)
        assert p.shape == y.shape and p.min() >= 0 and p.max() <= 1, name
    np.testing.assert_array_equal(seasonal_naive(city, starts, regions, 7, 7)[..., 0], y[..., 0] > 0)
    ha = historical_average(city, starts, regions, 7, 7)
    np.testing.assert_array_equal(ha[..., 0], (y[..., 0] > 0).astype(float))  # weekly class: exact
    # class 1 target day t: fraction of the same weekdays t - 7k (k = 1..8, existing) with t - 7k divisible by 3
    t0 = starts[0] + 7
    expect = [np.mean([(t0 + h - 7 * k) % 3 == 0 for k in range(1, 9) if t0 + h - 7 * k >= 0]) for h in range(7)]
    np.testing.assert_allclose(ha[0, 0, :, 1], expect)
    np.testing.assert_array_equal(last_value(city, starts, regions, 7, 7)[0, 0, :, 0], 0.0)  # day 27 is a Sunday


# -- no future leaks -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["last_value", "seasonal_naive_day", "seasonal_naive_week", "historical_average", "encoder_only"]
)
def test_baselines_cannot_see_the_targets(name, encoder_dir):
    city = synthetic_city(3, n_regions=4, days=16, freq="1h")
    starts, regions = np.array([24 * 9, 24 * 12 + 7, 24 * 15 - 24]), np.array([3, 0, 1])
    kw = {"encoder_dir": encoder_dir} if name == "encoder_only" else {}
    ref = BASELINES[name](city, starts, regions, 12, 12, **kw)
    y, _ = eval_targets(city, starts, regions, 12, 12)
    for w, s in enumerate(starts):
        bad = corrupt_from(city, s + 12, seed=w)
        assert not np.array_equal(eval_targets(bad, starts, regions, 12, 12)[0][w], y[w])  # targets did change
        # (the encoder gets a different batch size alone: equal up to float rounding; a leak moves it by ~1000s)
        np.testing.assert_allclose(
            BASELINES[name](bad, starts[w : w + 1], regions, 12, 12, **kw), ref[w : w + 1], rtol=1e-5, atol=1e-5
        )


def test_check_past_refuses_future_reads():
    _check_past(np.array([[3, 4]]), np.array([5]), "x")
    with pytest.raises(RuntimeError, match="future leak"):
        _check_past(np.array([[3, 5]]), np.array([5]), "x")


# -- encoder baselines --------------------------------------------------------------------------------------
def test_encoder_only_equals_direct_forward(encoder_dir):
    from stllm.encoders.io import load_encoder

    city = synthetic_city(1, n_regions=5, days=10, freq="1h")
    starts, regions = np.array([10, 77, 150]), np.array([4, 1, 2])
    pred = encoder_only(city, starts, regions, 12, 12, encoder_dir, chunk=2)
    assert pred.shape == (3, 3, 12, 2) and pred.dtype == np.float32
    enc = load_encoder(encoder_dir).eval()
    scaler = STScaler.load(encoder_dir / "scaler.json")
    for w, s in enumerate(starts):
        x = torch.from_numpy(scaler.transform(city.values[s : s + 12][:, regions])[None])
        with torch.no_grad():
            direct = scaler.inverse(enc(x).forecast.double())[0].numpy()  # (R, H, C)
        np.testing.assert_allclose(pred[w], direct, rtol=1e-5, atol=1e-4)
    # shorter horizon: the first steps; a longer input_len: the encoder reads its 12 steps right before t0
    np.testing.assert_allclose(encoder_only(city, starts, regions, 12, 5, encoder_dir), pred[:, :, :5], rtol=1e-6)
    np.testing.assert_allclose(encoder_only(city, starts - 6, regions, 18, 12, encoder_dir), pred, rtol=1e-6)
    with pytest.raises(ValueError, match="exceeds the encoder's horizon"):
        encoder_only(city, starts, regions, 12, 13, encoder_dir)


def test_encoder_only_bad_inputs(encoder_dir, tmp_path):
    three = make_city(np.ones((200, 2, 3)))
    with pytest.raises(ValueError, match="built for in_channels=2"):
        encoder_only(three, np.array([0]), [0], 12, 12, encoder_dir)
    (tmp_path / "noscaler").mkdir()
    save_encoder(STEncoder(STEncoderConfig(**TINY)), tmp_path / "noscaler")
    with pytest.raises(FileNotFoundError, match="scaler.json"):
        encoder_only(make_city(np.ones((200, 2, 2))), np.array([0]), [0], 12, 12, tmp_path / "noscaler")
    # events: the forecast count becomes a probability in [0, 1]
    ev = synthetic_city(0, n_regions=3, days=40, task="event")
    torch.manual_seed(1)
    save_encoder(STEncoder(STEncoderConfig(in_channels=4, out_channels=4, input_window=7, horizon=7, **TINY)),
                 tmp_path / "ev")  # fmt: skip
    STScaler.fit(ev).save(tmp_path / "ev" / "scaler.json")
    p = encoder_only(ev, np.array([20, 26]), [0, 1, 2], 7, 7, tmp_path / "ev")
    assert p.shape == (2, 3, 7, 4) and p.min() >= 0 and p.max() <= 1


def test_encoder_only_with_graph_mixing(tmp_path):
    torch.manual_seed(0)
    enc = STEncoder(STEncoderConfig(graph_mixing=True, **TINY)).eval()
    save_encoder(enc, tmp_path / "g")
    city = synthetic_city(2, n_regions=5, days=6, freq="1h")
    scaler = STScaler.fit(city)
    scaler.save(tmp_path / "g" / "scaler.json")
    regions = np.array([0, 3, 4])
    pred = encoder_only(city, np.array([30]), regions, 12, 12, tmp_path / "g")
    x = torch.from_numpy(scaler.transform(city.values[30:42][:, regions])[None])
    adj = torch.from_numpy(city.adjacency[np.ix_(regions, regions)])
    with torch.no_grad():
        direct = scaler.inverse(enc(x, adj).forecast.double())[0].numpy()
    np.testing.assert_allclose(pred[0], direct, rtol=1e-5, atol=1e-4)


def test_supervised_encoder_beats_last_value():
    torch.set_num_threads(1)
    city = synthetic_city(0, n_regions=6, days=14, freq="1h")
    first_target = 24 * 11
    starts = np.arange(first_target - 12, city.n_steps - 24 + 1, 6)
    regions = np.arange(6)
    pred, result = supervised_encoder(
        city, starts, regions, 12, 12, train_time=slice(0, first_target), encoder_config=TINY, max_steps=150,
        epochs=50, steps_per_epoch=50, batch_size=16, lr=3e-3, log1p=True, seed=0, return_result=True,
    )  # fmt: skip
    y, mask = eval_targets(city, starts, regions, 12, 12)
    sup = flow_metrics(pred, y, mask, city.channels)
    last = flow_metrics(last_value(city, starts, regions, 12, 12), y, mask, city.channels)
    assert np.isfinite(pred).all() and pred.shape == y.shape
    assert sup["MAE"] < 0.8 * last["MAE"], (sup["MAE"], last["MAE"])
    assert result.split.regions == tuple(str(r) for r in regions)  # trained on the evaluated regions ...
    assert np.datetime64(result.split.time_range[1]) <= city.timestamps[first_target]  # ... before the targets
    with pytest.raises(ValueError, match="after the first target step"):
        supervised_encoder(city, starts, regions, 12, 12, train_time=slice(0, first_target + 1), max_steps=1)


# -- registry -----------------------------------------------------------------------------------------------
def test_run_baselines_registry(encoder_dir):
    city = weekly_city(weeks=2, c=2)
    starts, regions = np.array([170, 200]), np.array([0, 1])
    out = run_baselines(city, starts, regions, 12, 12)
    assert list(out) == ["last_value", "seasonal_naive_day", "seasonal_naive_week", "historical_average"]
    y, _ = eval_targets(city, starts, regions, 12, 12)
    np.testing.assert_array_equal(out["seasonal_naive_week"], y)
    out = run_baselines(city, starts, regions, 12, 12, names=["encoder_only", "last_value"], encoder_dir=encoder_dir)
    assert list(out) == ["encoder_only", "last_value"] and out["encoder_only"].shape == y.shape
    assert set(BASELINES) == {"last_value", "seasonal_naive_day", "seasonal_naive_week", "historical_average", "ridge",
                              "level_average", "logistic",
                              "encoder_only", "supervised_encoder"}  # fmt: skip
    assert NOT_ZERO_SHOT == {"supervised_encoder"}
    assert baseline_label("supervised_encoder") == "supervised_encoder (not zero-shot)"
    assert baseline_label("last_value") == "last_value"
    with pytest.raises(ValueError, match="needs encoder_dir"):
        run_baselines(city, starts, regions, 12, 12, names=["encoder_only"])
    with pytest.raises(ValueError, match="needs train_time"):
        run_baselines(city, starts, regions, 12, 12, names=["supervised_encoder"])
    with pytest.raises(ValueError, match="unknown baseline"):
        run_baselines(city, starts, regions, 12, 12, names=["oracle"])
    json.dumps({k: v.tolist() for k, v in out.items()})  # plain arrays, serialisable
