"""Scale-free logistic regression: the linear classifier an event model has to beat.

Why: the scale-free ridge (:mod:`stllm.eval.ridge`) regresses *counts* and clips them to [0, 1], so its
scores for rare events are squashed near 0 and it ranks by count, not by chance of an event. The matching
bar for an event head is a logistic regression on the same information: the model's multi-period context
after the scale-free normalisation, plus the normalisation statistics themselves (a busy region has more
events whatever its pattern), one sigmoid output per (horizon step, channel), fitted by L-BFGS on
``P(count > 0)``. It reads exactly what :func:`~stllm.eval.ridge.scale_free_ridge` reads (same fit set,
same checks: zero-shot, every context step before its forecast).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stllm.data.city import CityData
from stllm.data.context import ContextSpec
from stllm.data.scaler import STScaler
from stllm.encoders.linear import fit_logistic, logistic_rows
from stllm.eval.ridge import CHUNK, context_features, fit_pairs

__all__ = ["scale_free_logistic"]


def _inputs(city: CityData, scaler: STScaler, spec: ContextSpec, t0: np.ndarray, reg: np.ndarray,
            eps: float) -> np.ndarray:
    """``(B, L*C + 2C)`` float64: the normalised context, then each channel's context mean and log std."""
    from stllm.eval.baselines import _check_past  # lazy: baselines imports this module

    parts = []
    for i in range(0, len(t0), CHUNK):
        x, loc, scale = context_features(city, scaler, spec, t0[i : i + CHUNK], reg[i : i + CHUNK], eps, _check_past)
        parts.append(np.concatenate([x[:, :-1], loc, np.log(scale)], axis=1))  # drop the constant: a bias is fitted
    return np.concatenate(parts)


def scale_free_logistic(
    city: CityData,
    starts,
    regions,
    input_len: int,
    output_len: int,
    fit_regions: Sequence[str],
    fit_time: slice,
    fit_city: CityData | None = None,
    scaler: STScaler | None = None,
    days: int = 7,
    weeks: int = 8,
    recent_views: bool = False,
    eps: float = 0.1,
    l2: float = 1e-3,
    max_iter: int = 200,
    max_samples: int = 60_000,
    seed: int = 0,
) -> np.ndarray:
    """Logistic regression on the scale-free context -> event probabilities ``(W, R, H, C)`` float32.

    Inputs as :func:`~stllm.eval.ridge.scale_free_ridge` (``ContextSpec(input_len, output_len, days, weeks)``,
    scaled, each series normalised by its own context's mean and std + ``eps``) plus those statistics (mean and
    log std per channel). Targets: ``count > 0`` at each of the next ``output_len`` steps of every channel,
    fitted by :func:`stllm.encoders.linear.fit_logistic` (standardised inputs, mean BCE + ``l2 * ||W||^2``,
    L-BFGS with ``max_iter``; deterministic), on at most ``max_samples`` forecasts (fewer for a very long
    context: :func:`~stllm.encoders.linear.logistic_rows`). Same fit set and zero-shot refusals as the ridge
    (``ValueError``); event data only (``ValueError`` for flows: use the ridge).
    """
    from stllm.eval.baselines import check_layout  # lazy: baselines imports this module

    if city.task != "event":
        raise ValueError(f"scale_free_logistic: {city.source} holds {city.task} data; the logistic baseline scores "
                         "events (use 'ridge' or 'level_average' for flows)")
    if eps <= 0 or l2 < 0 or not np.isfinite(l2) or int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"scale_free_logistic: eps must be > 0, l2 >= 0 and max_iter a positive integer, got "
                         f"eps={eps}, l2={l2}, max_iter={max_iter!r}")
    starts, regions = check_layout(city, starts, regions, input_len, output_len)
    spec = ContextSpec(int(input_len), int(output_len), int(days), int(weeks), bool(recent_views))
    rows = logistic_rows((spec.length + 2) * city.n_channels, max_samples)  # memory: the whole design matrix
    fit_city, scaler, pair_t0, pair_reg = fit_pairs("scale_free_logistic", city, starts, regions, spec, fit_regions,
                                                    fit_time, fit_city, scaler, rows, seed)
    horizon = np.arange(output_len)
    x = _inputs(fit_city, scaler, spec, pair_t0, pair_reg, eps)
    y = (fit_city.values[pair_t0[:, None] + horizon, pair_reg[:, None]] > 0).reshape(len(pair_t0), -1)
    weights, bias = fit_logistic(x, y, l2, max_iter)

    w_, r_ = len(starts), len(regions)
    ev_t0, ev_reg = np.repeat(starts + input_len, r_), np.tile(regions, w_)
    p = 1.0 / (1.0 + np.exp(-(_inputs(city, scaler, spec, ev_t0, ev_reg, eps) @ weights + bias)))
    return p.reshape(w_, r_, output_len, city.n_channels).astype(np.float32)
