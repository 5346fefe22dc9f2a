"""Masked forecasting and event metrics, vectorised over any array shape (numpy in, numpy out).

Every function takes numpy arrays or torch tensors (converted with ``.detach().cpu()``) of the same
shape, usually the canonical ``(W, R, H, C)`` (windows, regions, horizon steps, channels), and an
optional boolean ``mask`` (True = observed, counted) that broadcasts against them.

Conventions (all stated here, all tested):

* **Missing values.** An entry counts only where ``mask`` is True *and* the target is finite; a NaN
  target is missing. A non-finite *prediction* at a counted entry raises ``ValueError``: a model or
  baseline that failed to predict must not be silently scored (or silently dropped).
* **Zeros.** MAE and RMSE count zero targets (zero flow is a real observation); MAPE ignores
  targets with ``|y| < eps`` (percentage error is undefined there). MAPE is a fraction (0.1 = 10 %).
* **Reductions.** ``axis`` is numpy's: the axes reduced (None = all -> a float). For per-channel
  results on ``(W, R, H, C)`` pass ``axis=(0, 1, 2)`` (or use :func:`flow_metrics`). A group with no
  counted entry gives NaN. RMSE is the root of the masked mean squared error of the whole group
  (pooled), not a mean of per-window RMSEs.
* **Events.** A target is positive when its count is > 0; a prediction is positive when its
  probability is ``>= threshold``. Counts TP/FP/FN are pooled over every axis but the last (the
  class axis). ``precision = TP/(TP+FP)``, ``recall = TP/(TP+FN)``, ``F1 = 2TP/(2TP+FP+FN)``; a 0/0
  is ``zero_division`` (default 0.0, scikit-learn's default: a class with no positives and no
  predicted positives scores 0, and so does its F1). With ``zero_division=np.nan`` such classes are
  left out of the macro averages (as scikit-learn >= 1.3 does). Macro averages are the unweighted
  means over classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "masked_mae",
    "masked_rmse",
    "masked_mape",
    "flow_metrics",
    "event_counts",
    "precision_recall_f1",
    "event_metrics",
    "f1_thresholds",
    "macro_f1_difference",
    "mae_difference",
    "to_numpy",
]


def to_numpy(x) -> np.ndarray:
    """A numpy view of ``x`` (torch tensors are detached and moved to the CPU; bf16 becomes float32)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _prepare(pred, y, mask, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 ``pred``, ``y`` and the bool mask of counted entries (observed and finite target)."""
    pred = to_numpy(pred).astype(np.float64, copy=False)
    y = to_numpy(y).astype(np.float64, copy=False)
    if pred.shape != y.shape:
        raise ValueError(f"{what}: prediction shape {pred.shape} != target shape {y.shape}")
    valid = np.isfinite(y)
    if mask is not None:
        m = to_numpy(mask)
        if m.dtype != np.bool_:
            m = m != 0
        try:
            valid = valid & np.broadcast_to(m, y.shape)
        except ValueError:
            raise ValueError(f"{what}: mask shape {m.shape} does not broadcast to {y.shape}") from None
    bad = valid & ~np.isfinite(pred)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{what}: {int(bad.sum())} non-finite predictions at counted entries, first at {first}")
    return pred, y, valid


def _masked_mean(err: np.ndarray, valid: np.ndarray, axis) -> np.ndarray | float:
    total = np.where(valid, err, 0.0).sum(axis=axis)
    count = valid.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return float(out) if np.ndim(out) == 0 else out


def masked_mae(pred, y, mask=None, axis=None):
    """Mean ``|pred - y|`` over counted entries (see module docstring); reduced over ``axis``."""
    pred, y, valid = _prepare(pred, y, mask, "masked_mae")
    return _masked_mean(np.abs(pred - y), valid, axis)


def masked_rmse(pred, y, mask=None, axis=None):
    """Root of the mean ``(pred - y)^2`` over counted entries; reduced over ``axis``."""
    pred, y, valid = _prepare(pred, y, mask, "masked_rmse")
    return np.sqrt(_masked_mean((pred - y) ** 2, valid, axis))


def masked_mape(pred, y, mask=None, axis=None, eps: float = 1e-6):
    """Mean ``|pred - y| / |y|`` (a fraction) over counted entries with ``|y| >= eps``; reduced over ``axis``."""
    pred, y, valid = _prepare(pred, y, mask, "masked_mape")
    valid = valid & (np.abs(y) >= eps)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(pred - y) / np.where(valid, np.abs(y), 1.0)
    return _masked_mean(rel, valid, axis)


def flow_metrics(pred, y, mask=None, channels: Sequence[str] | None = None, eps: float = 1e-6) -> dict[str, float]:
    """MAE / RMSE / MAPE per channel (last axis) and pooled over all channels, as one flat dict.

    Keys: ``"MAE/<channel>"``, ``"RMSE/<channel>"``, ``"MAPE/<channel>"`` for each channel in order,
    then ``"MAE"``, ``"RMSE"``, ``"MAPE"`` over every counted entry of every channel. ``channels``
    defaults to ``("0", "1", ...)``. MAPE is a fraction; an empty group gives NaN.
    """
    pred, y, valid = _prepare(pred, y, mask, "flow_metrics")
    n_ch = y.shape[-1] if y.ndim else 1
    channels = tuple(str(c) for c in channels) if channels is not None else tuple(str(i) for i in range(n_ch))
    if len(channels) != n_ch:
        raise ValueError(f"flow_metrics: {len(channels)} channel names for {n_ch} channels (last axis of {y.shape})")
    axes = tuple(range(y.ndim - 1))
    per = {
        "MAE": masked_mae(pred, y, valid, axis=axes),
        "RMSE": masked_rmse(pred, y, valid, axis=axes),
        "MAPE": masked_mape(pred, y, valid, axis=axes, eps=eps),
    }
    out: dict[str, float] = {}
    for i, ch in enumerate(channels):
        for name, vals in per.items():
            out[f"{name}/{ch}"] = float(np.atleast_1d(vals)[i])
    out["MAE"] = masked_mae(pred, y, valid)
    out["RMSE"] = masked_rmse(pred, y, valid)
    out["MAPE"] = masked_mape(pred, y, valid, eps=eps)
    return out


def event_counts(prob, y, mask=None, threshold: float | np.ndarray = 0.5,
                 by: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class ``(TP, FP, FN)`` (int arrays over the last axis) of ``prob >= threshold`` against ``y > 0``
    (``threshold``: one for all classes or one per class); with ``by`` (a non-class axis), one row of counts per
    index of that axis, ``(n_by, C)``.

    ``y`` may be counts or 0/1 labels; entries not counted (mask False or target NaN) are ignored.
    """
    prob, y, valid = _prepare(prob, y, mask, "event_counts")
    if y.ndim == 0:
        raise ValueError("event_counts: need at least one (class) axis")
    if by is not None and (not -y.ndim <= by < y.ndim or by % y.ndim == y.ndim - 1):
        raise ValueError(f"event_counts: axis {by} must be a non-class axis of shape {y.shape}")
    pred_pos = prob >= threshold
    true_pos = y > 0
    axes = tuple(i for i in range(y.ndim - 1) if by is None or i != by % y.ndim)
    tp = (valid & pred_pos & true_pos).sum(axis=axes)
    fp = (valid & pred_pos & ~true_pos).sum(axis=axes)
    fn = (valid & ~pred_pos & true_pos).sum(axis=axes)
    return np.atleast_1d(tp), np.atleast_1d(fp), np.atleast_1d(fn)


def _ratio(num: np.ndarray, den: np.ndarray, zero_division: float) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), zero_division)


def precision_recall_f1(tp, fp, fn, zero_division: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 from counts; each 0/0 is ``zero_division`` (see module docstring)."""
    tp, fp, fn = (np.asarray(a) for a in (tp, fp, fn))
    precision = _ratio(tp, tp + fp, zero_division)
    recall = _ratio(tp, tp + fn, zero_division)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn, zero_division)
    return precision, recall, f1


def _macro(v: np.ndarray) -> float:
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def event_metrics(
    prob,
    y,
    mask=None,
    classes: Sequence[str] | None = None,
    threshold: float | np.ndarray = 0.5,
    zero_division: float = 0.0,
) -> dict[str, float]:
    """Per-class and macro precision / recall / F1 of ``prob >= threshold`` against ``y > 0``.

    ``prob`` holds probabilities (or any scores) with classes on the last axis, ``y`` counts or 0/1
    labels of the same shape. Keys: ``"Precision/<class>"``, ``"Recall/<class>"``, ``"F1/<class>"``,
    ``"Support/<class>"`` (counted positives) for each class, then ``"Macro-Precision"``,
    ``"Macro-Recall"``, ``"Macro-F1"`` (unweighted means over classes; with ``zero_division=nan`` the
    undefined classes are left out, NaN if none is defined).
    """
    tp, fp, fn = event_counts(prob, y, mask, threshold)
    n_cls = tp.shape[0]
    classes = tuple(str(c) for c in classes) if classes is not None else tuple(str(i) for i in range(n_cls))
    if len(classes) != n_cls:
        raise ValueError(f"event_metrics: {len(classes)} class names for {n_cls} classes (last axis)")
    precision, recall, f1 = precision_recall_f1(tp, fp, fn, zero_division)
    out: dict[str, float] = {}
    for i, c in enumerate(classes):
        out[f"Precision/{c}"] = float(precision[i])
        out[f"Recall/{c}"] = float(recall[i])
        out[f"F1/{c}"] = float(f1[i])
        out[f"Support/{c}"] = float(tp[i] + fn[i])
    out["Macro-Precision"] = _macro(precision)
    out["Macro-Recall"] = _macro(recall)
    out["Macro-F1"] = _macro(f1)
    return out


def f1_thresholds(prob, y, mask=None, default: float = 0.5) -> np.ndarray:
    """Per-class decision thresholds ``(C,)`` maximising the F1 of ``prob >= t`` against ``y > 0`` on these
    (validation) entries: the midpoint between the last score predicted positive and the next lower one (the
    highest cut among ties of F1), ``default`` for a class without a counted positive.

    Why: F1 at a fixed 0.5 rewards whichever method happens to be calibrated near 0.5 (a class-balanced loss
    pushes probabilities up, clipped counts of rare events stay low); a threshold chosen on validation data
    compares methods by how well they rank the days, and is what a user would deploy."""
    prob, y, valid = _prepare(prob, y, mask, "f1_thresholds")
    if y.ndim == 0:
        raise ValueError("f1_thresholds: need at least one (class) axis")
    c = y.shape[-1]
    prob, pos, valid = prob.reshape(-1, c), (y > 0).reshape(-1, c), valid.reshape(-1, c)
    out = np.full(c, float(default))
    for k in range(c):  # a handful of classes; each one sorted once
        s, t = prob[valid[:, k], k], pos[valid[:, k], k]
        if not t.any():
            continue
        order = np.argsort(-s, kind="stable")
        s, t = s[order], t[order]
        f1 = 2 * np.cumsum(t) / (np.arange(1, s.size + 1) + t.sum())  # F1 when the top i + 1 are positive
        cut = np.append(s[1:] < s[:-1], True)  # cuts between distinct scores only
        i = int(np.flatnonzero(cut)[np.argmax(f1[cut])])
        out[k] = (s[i] + s[i + 1]) / 2 if i + 1 < s.size else s[i]
    return out


def macro_f1_difference(prob_a, prob_b, y, mask=None, threshold_a: float | np.ndarray = 0.5,
                        threshold_b: float | np.ndarray = 0.5, axis: int = 1, draws: int = 2000,
                        seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Macro-F1 of ``a`` minus that of ``b`` on the same entries (each at its own thresholds), with a paired
    bootstrap interval over ``axis`` (the regions of ``(W, R, H, C)`` predictions): ``{"diff", "low", "high",
    "draws", "units"}``.

    Why: a zero-shot event test holds few regions (the crime preset: 14), and regions differ far more than
    days, so a gap of 0.01 in Macro-F1 may be noise; resampling whole regions, both methods together, says
    how large a gap these regions can tell apart. F1 is recomputed from the summed counts of each draw (not an
    average of per-region F1s, which is a different statistic)."""
    if draws < 1 or not 0 < level < 1:
        raise ValueError(f"macro_f1_difference: need draws >= 1 and 0 < level < 1, got {draws}, {level}")
    ca, cb = (np.stack(event_counts(p, y, mask, thr, by=axis)).astype(np.float64)  # (3, units, C)
              for p, thr in ((prob_a, threshold_a), (prob_b, threshold_b)))
    units = ca.shape[1]
    weights = _unit_draws(units, draws, seed)

    def macro(c, w):  # (3, units, C) TP, FP, FN per unit, (D, units) draws -> (D,) Macro-F1
        return precision_recall_f1(*(w @ c[i] for i in range(3)))[2].mean(axis=-1)

    one = np.ones((1, units))
    return _interval(macro(ca, one)[0] - macro(cb, one)[0], macro(ca, weights) - macro(cb, weights), level, units)


def mae_difference(pred_a, pred_b, y, mask=None, axis: int = 1, draws: int = 2000, seed: int = 0,
                   level: float = 0.95) -> dict[str, float]:
    """MAE (over every counted entry, all channels) of ``a`` minus that of ``b``, with a paired bootstrap
    interval over ``axis`` (the regions): ``{"diff", "low", "high", "draws", "units"}``; as
    :func:`macro_f1_difference`, for forecasts. Negative: ``a`` is better."""
    pa, y_, valid = _prepare(pred_a, y, mask, "mae_difference")
    pb, _, _ = _prepare(pred_b, y, mask, "mae_difference")
    if not -y_.ndim <= axis < y_.ndim or draws < 1 or not 0 < level < 1:
        raise ValueError(f"mae_difference: need an axis of shape {y_.shape}, draws >= 1 and 0 < level < 1")
    units = y_.shape[axis]
    other = tuple(i for i in range(y_.ndim) if i != axis % y_.ndim)
    n = valid.sum(axis=other).astype(np.float64)  # (units,)
    ea, eb = (np.where(valid, np.abs(p - y_), 0.0).sum(axis=other) for p in (pa, pb))
    if n.sum() == 0:
        raise ValueError("mae_difference: no counted entry")
    weights = _unit_draws(units, draws, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (weights @ (ea - eb)) / (weights @ n)  # a draw of only empty units is NaN: left out below
    return _interval(float((ea - eb).sum() / n.sum()), boot[np.isfinite(boot)], level, units)


def _unit_draws(units: int, draws: int, seed: int) -> np.ndarray:
    """``(draws, units)``: how often each unit is drawn in each bootstrap resample (with replacement)."""
    rng = np.random.default_rng(seed)
    weights = np.zeros((int(draws), units))
    np.add.at(weights, (np.arange(int(draws))[:, None], rng.integers(0, units, (int(draws), units))), 1.0)
    return weights


def _interval(diff: float, boot: np.ndarray, level: float, units: int) -> dict[str, float]:
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": float(diff), "low": float(lo), "high": float(hi), "draws": int(boot.size), "units": int(units)}
