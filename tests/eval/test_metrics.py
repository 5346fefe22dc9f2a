"""Masked flow metrics and thresholded event metrics: hand-worked examples, scikit-learn, masking."""

import math

import numpy as np
import pytest
import torch

from stllm.eval.metrics import (
    event_counts,
    event_metrics,
    flow_metrics,
    macro_f1_difference,
    mae_difference,
    masked_mae,
    masked_mape,
    masked_rmse,
)

sk = pytest.importorskip("sklearn.metrics")

# pred / y laid out as 2 samples x 2 channels.
PRED = np.array([[1.0, 2.0], [3.0, 4.0]])
Y = np.array([[2.0, 2.0], [0.0, 8.0]])


# -- flows: hand-worked ------------------------------------------------------------------------------------
def test_hand_worked_flow_metrics():
    # |errors| = [[1, 0], [3, 4]]
    assert masked_mae(PRED, Y) == pytest.approx(2.0)  # (1 + 0 + 3 + 4) / 4
    assert masked_rmse(PRED, Y) == pytest.approx(math.sqrt(6.5))  # sqrt((1 + 0 + 9 + 16) / 4)
    # MAPE skips y = 0: (1/2 + 0/2 + 4/8) / 3
    assert masked_mape(PRED, Y) == pytest.approx(1 / 3)
    # per channel (reduce the sample axis): ch0 errors 1, 3; ch1 errors 0, 4
    np.testing.assert_allclose(masked_mae(PRED, Y, axis=0), [2.0, 2.0])
    np.testing.assert_allclose(masked_rmse(PRED, Y, axis=0), [math.sqrt(5), math.sqrt(8)])  # sqrt(10/2), sqrt(16/2)
    np.testing.assert_allclose(masked_mape(PRED, Y, axis=0), [0.5, 0.25])  # ch0 only y=2; ch1 (0 + 0.5) / 2
    # masking the last entry: (1 + 0 + 3) / 3
    mask = np.array([[True, True], [True, False]])
    assert masked_mae(PRED, Y, mask) == pytest.approx(4 / 3)
    assert masked_rmse(PRED, Y, mask) == pytest.approx(math.sqrt(10 / 3))
    assert masked_mape(PRED, Y, mask) == pytest.approx(0.25)  # (1/2 + 0) / 2


def test_flow_metrics_dict():
    out = flow_metrics(PRED, Y, None, channels=("inflow", "outflow"))
    assert list(out) == ["MAE/inflow", "RMSE/inflow", "MAPE/inflow", "MAE/outflow", "RMSE/outflow",
                         "MAPE/outflow", "MAE", "RMSE", "MAPE"]  # fmt: skip
    assert out["MAE/inflow"] == pytest.approx(2.0) and out["RMSE/outflow"] == pytest.approx(math.sqrt(8))
    assert out["MAPE/outflow"] == pytest.approx(0.25) and out["MAE"] == pytest.approx(2.0)
    assert out["RMSE"] == pytest.approx(math.sqrt(6.5)) and out["MAPE"] == pytest.approx(1 / 3)
    assert all(isinstance(v, float) for v in out.values())
    with pytest.raises(ValueError, match="3 channel names for 2"):
        flow_metrics(PRED, Y, None, channels=("a", "b", "c"))


def test_nan_target_is_missing_and_nan_prediction_raises():
    y = Y.copy()
    y[1, 1] = np.nan
    assert masked_mae(PRED, y) == pytest.approx(4 / 3)
    pred = PRED.copy()
    pred[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite predictions"):
        masked_mae(pred, Y)
    mask = np.ones_like(Y, dtype=bool)
    mask[0, 0] = False
    assert masked_mae(pred, Y, mask) == pytest.approx(7 / 3)  # a NaN where nothing is counted is fine
    with pytest.raises(ValueError, match="shape"):
        masked_mae(PRED, Y[:1])


def test_empty_group_is_nan():
    mask = np.array([[True, False], [True, False]])
    per = masked_mae(PRED, Y, mask, axis=0)
    assert per[0] == pytest.approx(2.0) and np.isnan(per[1])
    assert np.isnan(masked_mape(PRED, np.zeros_like(Y)))


def test_torch_inputs_match_numpy():
    rng = np.random.default_rng(0)
    p, y, m = rng.random((3, 4, 5, 2)), rng.random((3, 4, 5, 2)), rng.random((3, 4, 5, 2)) > 0.3
    for fn in (masked_mae, masked_rmse, masked_mape):
        ref = fn(p, y, m, axis=(0, 1, 2))
        got = fn(torch.from_numpy(p).float(), torch.from_numpy(y), torch.from_numpy(m), axis=(0, 1, 2))
        np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert flow_metrics(torch.from_numpy(p).bfloat16(), y, m)["MAE"] == pytest.approx(
        masked_mae(torch.from_numpy(p).bfloat16().float().numpy(), y, m)
    )


# -- flows: against scikit-learn ----------------------------------------------------------------------------
def test_flows_against_sklearn():
    rng = np.random.default_rng(1)
    y = rng.poisson(5.0, (6, 5, 4, 2)).astype(np.float64)
    p = y + rng.normal(0, 2, y.shape)
    mask = rng.random(y.shape) > 0.25
    flat_y, flat_p = y.reshape(-1, 2), p.reshape(-1, 2)
    # no mask, per channel and overall
    np.testing.assert_allclose(
        masked_mae(p, y, axis=(0, 1, 2)), sk.mean_absolute_error(flat_y, flat_p, multioutput="raw_values")
    )
    np.testing.assert_allclose(
        masked_rmse(p, y, axis=(0, 1, 2)), np.sqrt(sk.mean_squared_error(flat_y, flat_p, multioutput="raw_values"))
    )
    if hasattr(sk, "root_mean_squared_error"):
        assert masked_rmse(p, y) == pytest.approx(sk.root_mean_squared_error(y.ravel(), p.ravel()))
    # masked: sklearn on the counted entries only
    assert masked_mae(p, y, mask) == pytest.approx(sk.mean_absolute_error(y[mask], p[mask]))
    assert masked_rmse(p, y, mask) == pytest.approx(math.sqrt(sk.mean_squared_error(y[mask], p[mask])))
    for c in range(2):
        mc = mask[..., c]
        assert masked_mae(p, y, mask, axis=(0, 1, 2))[c] == pytest.approx(
            sk.mean_absolute_error(y[..., c][mc], p[..., c][mc])
        )
    # MAPE: sklearn on the nonzero counted targets (it would divide by eps at zeros)
    nz = mask & (y != 0)
    assert masked_mape(p, y, mask) == pytest.approx(sk.mean_absolute_percentage_error(y[nz], p[nz]))
    assert (y == 0).any()  # the comparison above really exercised the zero skipping


def test_masked_entries_change_nothing():
    rng = np.random.default_rng(2)
    y, p = rng.random((4, 3, 6, 2)) * 10, rng.random((4, 3, 6, 2)) * 10
    mask = rng.random(y.shape) > 0.4
    y2, p2 = y.copy(), p.copy()
    y2[~mask] = rng.random((~mask).sum()) * 1e6
    p2[~mask] = np.nan  # even a NaN prediction where nothing is counted
    for fn in (masked_mae, masked_rmse, masked_mape):
        np.testing.assert_allclose(fn(p2, y2, mask, axis=-1), fn(p, y, mask, axis=-1))
    assert flow_metrics(p2, y2, mask) == flow_metrics(p, y, mask)


def test_mape_ignores_zero_targets():
    y = np.array([0.0, 4.0, 0.0, 10.0, 1e-9])
    p = np.array([3.0, 5.0, 100.0, 8.0, 7.0])
    assert masked_mape(p, y) == pytest.approx((1 / 4 + 2 / 10) / 2)
    assert masked_mape(p, y, eps=1e-12) > 1e6  # with a tiny eps the 1e-9 target counts
    assert np.isfinite(masked_mae(p, y)) and masked_mae(p, y) == pytest.approx((3 + 1 + 100 + 2 + 7) / 5)


# -- events ----------------------------------------------------------------------------------------------
# 4 samples x 3 classes (a, b, c); targets are counts (positive = count > 0).
EV_Y = np.array([[1, 0, 0], [2, 0, 1], [0, 0, 0], [1, 0, 3]], dtype=np.float64)
EV_P = np.array([[0.9, 0.1, 0.6], [0.4, 0.2, 0.7], [0.7, 0.0, 0.1], [0.5, 0.3, 0.2]])
# predicted (>= 0.5): [[1,0,1],[0,0,1],[1,0,0],[1,0,0]]  (0.5 counts as positive)
# a: true [1,1,0,1] pred [1,0,1,1] -> TP 2, FP 1, FN 1 -> P = R = 2/3, F1 = 4 / (4 + 1 + 1) = 2/3
# b: no positives, no predicted positives -> every ratio is 0/0 = zero_division
# c: true [0,1,0,1] pred [1,1,0,0] -> TP 1, FP 1, FN 1 -> P = R = F1 = 1/2


def test_hand_worked_event_metrics():
    tp, fp, fn = event_counts(EV_P, EV_Y)
    assert tp.tolist() == [2, 0, 1] and fp.tolist() == [1, 0, 1] and fn.tolist() == [1, 0, 1]
    out = event_metrics(EV_P, EV_Y, classes=("a", "b", "c"))
    assert out["Precision/a"] == pytest.approx(2 / 3) and out["Recall/a"] == pytest.approx(2 / 3)
    assert out["F1/a"] == pytest.approx(2 / 3) and out["Support/a"] == 3
    assert out["Precision/b"] == out["Recall/b"] == out["F1/b"] == 0.0 and out["Support/b"] == 0
    assert out["F1/c"] == pytest.approx(0.5)
    assert out["Macro-Precision"] == pytest.approx((2 / 3 + 0 + 0.5) / 3)  # 7/18
    assert out["Macro-Recall"] == pytest.approx(7 / 18)
    assert out["Macro-F1"] == pytest.approx(7 / 18)
    ones = event_metrics(EV_P, EV_Y, classes="abc", zero_division=1.0)
    assert ones["F1/b"] == 1.0 and ones["Macro-F1"] == pytest.approx((2 / 3 + 1 + 0.5) / 3)  # 13/18
    nan = event_metrics(EV_P, EV_Y, classes="abc", zero_division=np.nan)
    assert np.isnan(nan["F1/b"]) and nan["Macro-F1"] == pytest.approx((2 / 3 + 0.5) / 2)  # b left out: 7/12
    # a stricter threshold: a predicts rows 0, 2 only -> TP 1, FP 1, FN 2 -> R = 1/3, F1 = 2 / (2 + 1 + 2)
    strict = event_metrics(EV_P, EV_Y, classes="abc", threshold=0.6)
    assert strict["Recall/a"] == pytest.approx(1 / 3) and strict["F1/a"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="2 class names for 3"):
        event_metrics(EV_P, EV_Y, classes=("a", "b"))


@pytest.mark.parametrize("zero_division", [0.0, 1.0, np.nan])
def test_events_against_sklearn(zero_division):
    rng = np.random.default_rng(3)
    shape = (5, 4, 3, 5)  # (W, R, H, classes)
    y = rng.poisson(0.6, shape).astype(np.float64)
    y[..., 3] = 0  # a class with no positives ...
    prob = rng.random(shape)
    prob[..., 3] = 0.1  # ... and no predicted positives
    prob[..., 4] = 0.9  # a class predicted everywhere
    yt, yp = (y.reshape(-1, 5) > 0).astype(int), (prob.reshape(-1, 5) >= 0.5).astype(int)
    ref = sk.precision_recall_fscore_support(yt, yp, average=None, zero_division=zero_division)
    out = event_metrics(prob, y, classes="abcde", zero_division=zero_division)
    for i, c in enumerate("abcde"):
        np.testing.assert_allclose(
            [out[f"Precision/{c}"], out[f"Recall/{c}"], out[f"F1/{c}"], out[f"Support/{c}"]],
            [ref[0][i], ref[1][i], ref[2][i], ref[3][i]],
            equal_nan=True,
        )
    macro = sk.precision_recall_fscore_support(yt, yp, average="macro", zero_division=zero_division)
    assert [out["Macro-Precision"], out["Macro-Recall"], out["Macro-F1"]] == pytest.approx(list(macro[:3]))
    # masked: per class, sklearn on that class's counted entries
    mask = rng.random(shape) > 0.3
    out = event_metrics(prob, y, mask, classes="abcde", zero_division=zero_division)
    for i, c in enumerate("abcde"):
        m = mask[..., i]
        p, r, f, _ = sk.precision_recall_fscore_support(
            (y[..., i][m] > 0).astype(int), (prob[..., i][m] >= 0.5).astype(int), labels=[1], average=None,
            zero_division=zero_division)  # fmt: skip
        np.testing.assert_allclose(
            [out[f"Precision/{c}"], out[f"Recall/{c}"], out[f"F1/{c}"]], [p[0], r[0], f[0]], equal_nan=True
        )


def test_event_masking_and_torch():
    rng = np.random.default_rng(4)
    y = rng.poisson(0.8, (6, 7, 4)).astype(np.float32)
    prob = rng.random(y.shape)
    mask = rng.random(y.shape) > 0.5
    y2, p2 = y.copy(), prob.copy()
    y2[~mask] = 1 - (y2[~mask] > 0)
    p2[~mask] = 1 - p2[~mask]
    ref = event_metrics(prob, y, mask)
    assert event_metrics(p2, y2, mask) == ref
    assert event_metrics(torch.from_numpy(prob), torch.from_numpy(y), torch.from_numpy(mask)) == ref
    assert event_metrics(prob, y) != ref  # the mask did matter


def test_f1_thresholds_pick_the_f1_optimal_cut_per_class_by_hand():
    """Class 0: scores .9 .8 .7 .2 .1 (.95 masked out), positives at .9 and .7: F1 of the top 1, 2, 3, 4, 5 is
    2/3, 1/2, 4/5, 2/3, 4/7 -> cut between .7 and .2 (.45). Class 1: ties .6 .6 .4 .4 .1, positives at one .6
    and both .4: only whole tie groups can be cut, top 2, 4, 5 give .4, 6/7, 3/4 -> between .4 and .1 (.25).
    Class 2 has no positive: the default."""
    from stllm.eval.metrics import f1_thresholds

    prob = np.array([[0.9, 0.6, 0.3], [0.8, 0.6, 0.2], [0.7, 0.4, 0.1], [0.2, 0.4, 0.5], [0.1, 0.1, 0.9],
                     [0.95, 0.0, 0.0]])  # fmt: skip
    y = np.array([[1, 1, 0], [0, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]])
    mask = np.ones_like(y, dtype=bool)
    mask[5, 0] = False
    thr = f1_thresholds(prob, y, mask, default=0.5)
    np.testing.assert_allclose(thr, [0.45, 0.25, 0.5])
    got = event_metrics(prob, y, mask, threshold=thr)
    assert got["F1/0"] == pytest.approx(0.8) and got["F1/1"] == pytest.approx(6 / 7)
    assert event_metrics(prob, y, mask)["F1/0"] == pytest.approx(0.8)  # .5 happens to cut there too
    assert event_metrics(prob, y, mask)["F1/1"] == pytest.approx(0.4)  # but not for class 1


def test_macro_f1_difference_resamples_whole_regions():
    # (W=1, R=2, H=2, C=1): region 0 has events [1, 0], region 1 [1, 1]. a is exact; b says "event" everywhere:
    # TP 3, FP 1 -> F1 6/7, so a - b = 1/7. Drawing region 1 twice: b is exact too (diff 0); region 0 twice:
    # b has TP 2, FP 2 -> F1 2/3 (diff 1/3); one of each: 1/7. The 95% interval spans [0, 1/3].
    y = np.array([[[[1.0], [0.0]], [[1.0], [1.0]]]])
    a = y * 0.9 + 0.05
    b = np.full_like(y, 0.7)
    out = macro_f1_difference(a, b, y, draws=4000, seed=0)
    assert out["diff"] == pytest.approx(1 / 7) and out["units"] == 2
    assert out["low"] == pytest.approx(0.0) and out["high"] == pytest.approx(1 / 3)
    # each method at its own thresholds: b at 0.8 calls nothing an event (F1 0), a at 0.5 stays exact
    assert macro_f1_difference(a, b, y, threshold_b=0.8)["diff"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="axis 3 must be a non-class axis"):
        macro_f1_difference(a, b, y, axis=3)


def test_mae_difference_resamples_whole_regions():
    # (W=2, R=2, C=1): a is exact; b errs by 1 everywhere in region 0 and by 3 in region 1 (pooled MAE 2).
    # Drawing region 0 twice gives a - b = -1, region 1 twice -3, one of each -2.
    y = np.zeros((2, 2, 1))
    b = np.array([[[1.0], [3.0]], [[-1.0], [3.0]]])
    out = mae_difference(y, b, y, draws=4000, seed=0)
    assert out["diff"] == pytest.approx(-2.0) and out["units"] == 2
    assert out["low"] == pytest.approx(-3.0) and out["high"] == pytest.approx(-1.0)
    mask = np.ones_like(y, dtype=bool)
    mask[:, 1] = False  # region 1 not counted: only its draws without region 0 are empty, and left out
    masked = mae_difference(y, b, y, mask, draws=500)
    assert masked["diff"] == pytest.approx(-1.0) and masked["low"] == masked["high"] == pytest.approx(-1.0)
    assert masked["draws"] < 500
