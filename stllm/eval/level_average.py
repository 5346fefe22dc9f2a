"""Level-scaled historical average: the strong simple baseline for the encoder's level anchor.

The historical average scaled by how busy the last hours were against the same hours in earlier weeks
(:mod:`stllm.encoders.level`), with the exponents fitted on other regions' training windows: a handful
of parameters, fitted by MAE, that a city-wide quiet or busy day moves the forecast by. It is exactly the
encoder's starting point with a level block, so the table shows what the network adds on top of it.

What it reads: as :func:`stllm.eval.ridge.scale_free_ridge` (the same fit set and checks): the fit
city at ``fit_regions`` x the forecasts whose targets lie in ``fit_time``; for each evaluation window
only its context, all ``< t0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from stllm.data.city import CityData
from stllm.data.context import ContextSpec, period_steps
from stllm.data.scaler import STScaler
from stllm.encoders.level import fit_level_weights, level_anchor, level_from_scaler
from stllm.encoders.st_encoder import STEncoderConfig, anchor_parts
from stllm.eval.ridge import fit_pairs, scaled_contexts

__all__ = ["level_average"]

_CHUNK = 2048  # (t0, region) pairs per gather: a level context is ~9 days of steps


def level_average(
    city: CityData,
    starts,
    regions,
    input_len: int,
    output_len: int,
    fit_regions: Sequence[str],
    fit_time: slice,
    fit_city: CityData | None = None,
    scaler: STScaler | None = None,
    weeks: int = 8,
    max_samples: int = 20_000,
    seed: int = 0,
) -> np.ndarray:
    """Predictions ``(W, R, H, C)`` float32, original units: the ``weeks``-week historical average times
    ``exp(sum_i a_i log r_i)`` (a one-day level block), ``a`` fitted on ``fit_city`` x ``fit_regions`` x
    ``fit_time`` (at most ``max_samples`` forecasts, drawn with ``seed``). Errors as
    :func:`~stllm.eval.ridge.scale_free_ridge`; ``ValueError`` for event data (it scales counts)."""
    from stllm.eval.baselines import _check_past, check_layout  # lazy: baselines imports this module

    if city.task == "event":
        raise ValueError(f"level_average scales counts; {city.source} holds events")
    starts, regions = check_layout(city, starts, regions, input_len, output_len)
    spec = ContextSpec(int(input_len), int(output_len), 0, int(weeks),
                       level_len=period_steps(city.freq, "day", city.source))
    fit_city, scaler, pair_t0, pair_reg = fit_pairs("level_average", city, starts, regions, spec, fit_regions,
                                                    fit_time, fit_city, scaler, max_samples, seed)
    c = city.n_channels
    cfg = STEncoderConfig(in_channels=c, out_channels=c, num_tokens=c, input_window=spec.input_len,
                          horizon=spec.output_len, weeks=spec.weeks, level_len=spec.level_len,
                          **level_from_scaler(scaler))

    def parts(data: CityData, t0: np.ndarray, reg: np.ndarray) -> tuple[torch.Tensor, ...]:
        x = scaled_contexts(data, scaler, spec, t0, reg, "level_average", _check_past)
        return anchor_parts(torch.from_numpy(x), cfg)[1:]  # anchor, loc, scale, log ratios: (B, 1, ., C)

    horizon = np.arange(spec.output_len)
    fit = []
    for i in range(0, len(pair_t0), _CHUNK):
        t0, reg = pair_t0[i : i + _CHUNK], pair_reg[i : i + _CHUNK]
        y = scaler.transform(fit_city.values[t0[:, None] + horizon, reg[:, None]].astype(np.float32))  # (B, H, C)
        fit.append((*parts(fit_city, t0, reg), torch.from_numpy(np.ascontiguousarray(y[:, None]))))
    anchor, loc, scale, log_ratios, y = (torch.cat([f[j] for f in fit]) for j in range(5))
    weights = fit_level_weights(anchor, log_ratios, loc, scale, y.float(), None, cfg)

    w_, r_ = len(starts), len(regions)
    ev_t0, ev_reg = np.repeat(starts + input_len, r_), np.tile(regions, w_)
    out = np.empty((w_ * r_, spec.output_len, c), dtype=np.float32)
    with torch.no_grad():
        for i in range(0, w_ * r_, _CHUNK):
            anchor, loc, scale, log_ratios = parts(city, ev_t0[i : i + _CHUNK], ev_reg[i : i + _CHUNK])
            pred = level_anchor(anchor, log_ratios, weights, loc, scale, cfg) * scale + loc  # (B, 1, H, C)
            out[i : i + _CHUNK] = scaler.inverse(pred[:, 0].double().numpy())
    return out.reshape(w_, r_, spec.output_len, c)
