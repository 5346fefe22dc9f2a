"""Baselines on the canonical evaluation layout, each using only what a deployed system knows.

**Canonical layout.** An evaluation set is ``starts (W,)`` (index of the first *history* step of each
window) and ``regions (R,)`` (region indices; region ids are accepted too), with ``input_len`` history
steps and ``output_len`` target steps. Window ``w`` predicts steps ``t0_w .. t0_w + output_len - 1``
with ``t0_w = starts[w] + input_len``; :func:`eval_targets` returns those targets ``(W, R, H, C)`` in
original units with their observed mask. Every baseline returns predictions of the same shape.

**No future leaks.** A baseline reads, for window ``w``, only steps ``< t0_w`` (any earlier step, not
just the ``input_len`` history: a deployed system keeps its past). Every gather index is checked
against ``t0_w`` before reading (:func:`_check_past`), and the tests corrupt all values at and after
``t0_w`` and check the prediction does not change.

**Events** (``city.task == "event"``): baselines return probabilities in [0, 1] that an event
(count > 0) happens: last value -> 1 if the last count > 0 else 0; seasonal naive -> the same for the
same slot one period earlier; historical average -> the fraction of the averaged past slots with a
count > 0; encoder-only -> ``clip(forecast count, 0, 1)``, so at threshold 0.5 an event is predicted
where the forecast count is >= 0.5 (MAE training makes the forecast a median-like value, and a median
count >= 1 means P(count >= 1) >= 0.5); ridge -> the same clip.

Baselines:

* :func:`last_value`: the last observed history step (within the ``input_len`` window), held flat.
* :func:`seasonal_naive`: the same slot one ``period`` ("day" or "week") earlier; for target steps a
  whole period or more into the window, the most recent same slot *before* the window.
* :func:`historical_average`: mean of the same slot of the week over the ``weeks`` most recent weeks
  before the window (see its docstring for the fallbacks).
* :func:`~stllm.eval.ridge.scale_free_ridge` (``"ridge"``): closed-form ridge on the model's scale-free
  multi-period context (previous weeks' and days' target slots plus the recent steps), fitted on *other*
  regions (``fit_regions`` x ``fit_time``): the linear bar a forecasting model must clear.
* :func:`~stllm.eval.logistic.scale_free_logistic` (``"logistic"``, events only): logistic regression on
  the same context and fit set, scoring ``P(count > 0)``: the linear bar an event head must clear.
* :func:`~stllm.eval.level_average.level_average` (``"level_average"``, counts only): the historical
  average scaled by how busy the last hours were against the same hours in earlier weeks, its few
  exponents fitted on the same fit set as the ridge: the encoder's level-scaled anchor on its own.
* :func:`encoder_only`: the stage-1 :class:`STEncoder` forecast head, loaded from its directory, with
  its own ``scaler.json``: zero-shot when the evaluated regions/times were not trained on.
* :func:`supervised_encoder`: a fresh STEncoder trained (with :func:`pretrain_st_encoder`) on the
  *evaluated* regions over a time range before the windows. **Not zero-shot** (:data:`NOT_ZERO_SHOT`):
  an upper reference.

:data:`BASELINES` maps names to functions; :func:`run_baselines` runs several on one evaluation set.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from stllm.data.city import CityData
from stllm.data.context import ContextSpec, context_steps, gather_context, period_steps, seasonal_offsets
from stllm.data.scaler import STScaler
from stllm.encoders.io import load_encoder
from stllm.encoders.st_encoder import STEncoder, STEncoderConfig
from stllm.eval.level_average import level_average
from stllm.eval.logistic import scale_free_logistic
from stllm.eval.ridge import scale_free_ridge

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINES",
    "NOT_ZERO_SHOT",
    "baseline_label",
    "check_layout",
    "encoder_only",
    "eval_targets",
    "historical_average",
    "last_value",
    "run_baselines",
    "scale_free_logistic",
    "scale_free_ridge",
    "seasonal_naive",
    "supervised_encoder",
]

SCALER_NAME = "scaler.json"
NOT_ZERO_SHOT = frozenset({"supervised_encoder"})


# -- layout ------------------------------------------------------------------------------------------------
def check_layout(city: CityData, starts, regions, input_len: int, output_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate an evaluation set; returns ``(starts int64 (W,), regions int64 (R,))``.

    ``regions`` may be indices or region ids (strings). Raises ``ValueError`` for an empty set,
    windows that do not fit in the city's time range, or unknown regions.
    """
    if int(input_len) != input_len or input_len < 1:
        raise ValueError(f"input_len must be a positive integer, got {input_len!r}")
    if int(output_len) != output_len or output_len < 1:
        raise ValueError(f"output_len must be a positive integer, got {output_len!r}")
    starts = np.asarray(starts)
    if starts.ndim != 1 or starts.size == 0:
        raise ValueError(f"starts must be a non-empty 1-D array of window start steps, got shape {starts.shape}")
    if not np.issubdtype(starts.dtype, np.integer):
        raise ValueError(f"starts must be integer step indices, got dtype {starts.dtype}")
    starts = starts.astype(np.int64)
    last = city.n_steps - int(input_len) - int(output_len)
    bad = (starts < 0) | (starts > last)
    if bad.any():
        raise ValueError(
            f"{city.source}: window start {int(starts[bad][0])} is outside the time range: with input_len="
            f"{input_len} and output_len={output_len} starts must lie in [0, {last}] ({city.n_steps} steps)"
        )
    regions = np.asarray(regions)
    if regions.ndim != 1 or regions.size == 0:
        raise ValueError(f"regions must be a non-empty 1-D array, got shape {regions.shape}")
    if regions.dtype.kind in "USO":
        regions = city.region_index([str(r) for r in regions], field_name="eval regions")
    elif not np.issubdtype(regions.dtype, np.integer):
        raise ValueError(f"regions must be region indices (integers) or ids (strings), got dtype {regions.dtype}")
    regions = regions.astype(np.int64)
    bad = (regions < 0) | (regions >= city.n_regions)
    if bad.any():
        raise ValueError(f"{city.source}: region index {int(regions[bad][0])} outside [0, {city.n_regions})")
    return starts, regions


def eval_targets(city: CityData, starts, regions, input_len: int, output_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets ``y (W, R, H, C)`` float32 in original units and their observed mask (bool, same shape)."""
    starts, regions = check_layout(city, starts, regions, input_len, output_len)
    steps = starts[:, None] + input_len + np.arange(output_len)[None]  # (W, H)
    y = city.values[steps[:, :, None], regions[None, None, :]]  # (W, H, R, C)
    m = city.observed[steps[:, :, None], regions[None, None, :]]
    return np.ascontiguousarray(y.transpose(0, 2, 1, 3)), np.ascontiguousarray(m.transpose(0, 2, 1, 3))


def _check_past(src: np.ndarray, t0: np.ndarray, what: str) -> None:
    """Refuse any read at or after the window's first target step (``src`` broadcasts against ``t0``)."""
    t0 = t0.reshape(t0.shape + (1,) * (src.ndim - t0.ndim))
    if (src >= t0).any():
        raise RuntimeError(f"{what}: would read a step at or after the target window (future leak)")


def _gather(city: CityData, src: np.ndarray, regions: np.ndarray, arr: np.ndarray | None = None) -> np.ndarray:
    """``arr[src[..., None], regions]`` -> ``src.shape + (R, C)`` (``arr`` defaults to ``city.values``)."""
    arr = city.values if arr is None else arr
    return arr[src[..., None], regions]


def _as_event(x: np.ndarray) -> np.ndarray:
    return (x > 0).astype(np.float32)


def _period_steps(city: CityData, period: str) -> int:
    return period_steps(city.freq, period, city.source)


# -- simple baselines ------------------------------------------------------------------------------------
def last_value(city: CityData, starts, regions, input_len: int, output_len: int) -> np.ndarray:
    """The last observed history step of each (window, region, channel), repeated over the horizon.

    Only the ``input_len`` history steps are searched; if none is observed the stored value of the last
    step (0 for unobserved) is used. Events: 1.0 if that count > 0 else 0.0.
    """
    starts, regions = check_layout(city, starts, regions, input_len, output_len)
    t0 = starts + input_len
    src = starts[:, None] + np.arange(input_len)[None]  # (W, L)
    _check_past(src, t0, "last_value")
    hist = _gather(city, src, regions)  # (W, L, R, C)
    obs = _gather(city, src, regions, city.observed)
    # index of the last observed step (L - 1 if none is observed)
    rev = obs[:, ::-1]
    last = input_len - 1 - np.where(rev.any(axis=1), rev.argmax(axis=1), 0)  # (W, R, C)
    val = np.take_along_axis(hist, last[:, None], axis=1)[:, 0]  # (W, R, C)
    if city.task == "event":
        val = _as_event(val)
    return np.repeat(val[:, :, None, :], output_len, axis=2).astype(np.float32)


def _seasonal_sources(t0: np.ndarray, output_len: int, period: int, k: int) -> np.ndarray:
    """Steps ``(W, H, k)``: for target ``t0 + h`` the ``k`` most recent same-slot steps before ``t0``."""
    return t0[:, None, None] + seasonal_offsets(output_len, period, k)[None]


def seasonal_naive(
    city: CityData, starts, regions, input_len: int, output_len: int, period: str = "week"
) -> np.ndarray:
    """The same slot one ``period`` earlier ("day": yesterday, "week": last week).

    For a target step ``t0 + h`` the source is ``t0 + h - k * period`` with the smallest ``k`` that lies
    before the window (k = 1 unless the horizon is a period or longer). Raises ``ValueError`` when a
    window has less than one period of data before it. The source is read as stored (an unobserved
    step reads 0). Events: 1.0 if that count > 0 else 0.0.
    """
    starts, regions = check_layout(city, starts, regions, input_len, output_len)
    p = _period_steps(city, period)
    t0 = starts + input_len
    src = _seasonal_sources(t0, output_len, p, 1)[..., 0]  # (W, H)
    if (src < 0).any():
        w = int(np.argwhere(src < 0)[0, 0])
        raise ValueError(
            f"seasonal_naive(period={period!r}): window {w} (start {int(starts[w])}) has {int(t0[w])} steps "
            f"before its targets, less than one {period} ({p} steps)"
        )
    _check_past(src, t0, "seasonal_naive")
    val = _gather(city, src, regions).transpose(0, 2, 1, 3)  # (W, R, H, C)
    if city.task == "event":
        val = _as_event(val)
    return np.ascontiguousarray(val, dtype=np.float32)


def _slot_mean(city: CityData, src: np.ndarray, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the last axis of ``src (W, H, K)`` of observed, existing (>= 0) steps -> ``(W, H, R, C)``
    values (flows) or fractions with count > 0 (events), and the number of steps averaged."""
    exists = src >= 0
    idx = np.where(exists, src, 0)
    vals = _gather(city, idx, regions)  # (W, H, K, R, C)
    if city.task == "event":
        vals = _as_event(vals)
    ok = _gather(city, idx, regions, city.observed) & exists[..., None, None]
    n = ok.sum(axis=2)
    total = np.where(ok, vals, 0.0).sum(axis=2, dtype=np.float64)
    return total / np.maximum(n, 1), n


def historical_average(
    city: CityData, starts, regions, input_len: int, output_len: int, weeks: int = 8, chunk: int = 64
) -> np.ndarray:
    """Mean of the same slot of the week over the ``weeks`` most recent weeks before the window.

    For target step ``t0 + h`` the candidates are ``t0 + h - k * week`` for the ``weeks`` smallest
    ``k >= 1`` that lie before ``t0``; only candidates inside the data (step >= 0) and observed are
    averaged. Where none is left (less than a week of history, or all missing), the fallback is the
    same slot of the day over the ``7 * weeks`` most recent days before the window (same rules). If
    that is empty too, ``ValueError``. For daily data (crime) "slot of the week" is the weekday and
    the fallback is the mean over the previous days. Events: the fraction of those slots with a
    count > 0. Computed in chunks of ``chunk`` windows.
    """
    if int(weeks) != weeks or weeks < 1:
        raise ValueError(f"weeks must be a positive integer, got {weeks!r}")
    starts, regions = check_layout(city, starts, regions, input_len, output_len)
    p_week, p_day = _period_steps(city, "week"), _period_steps(city, "day")
    out = np.empty((len(starts), len(regions), output_len, city.n_channels), dtype=np.float32)
    for i in range(0, len(starts), chunk):
        t0 = starts[i : i + chunk] + input_len
        src = _seasonal_sources(t0, output_len, p_week, weeks)
        _check_past(src, t0, "historical_average")
        mean, n = _slot_mean(city, src, regions)
        if (n == 0).any():
            src = _seasonal_sources(t0, output_len, p_day, 7 * weeks)
            _check_past(src, t0, "historical_average")
            day_mean, day_n = _slot_mean(city, src, regions)
            if ((n == 0) & (day_n == 0)).any():
                w = i + int(np.argwhere((n == 0) & (day_n == 0))[0, 0])
                raise ValueError(
                    f"historical_average: window {w} (start {int(starts[w])}) has no observed same-slot step "
                    f"of the week or of the day before its targets (needs at least one day of history)"
                )
            mean = np.where(n == 0, day_mean, mean)
        out[i : i + chunk] = mean.transpose(0, 2, 1, 3)
    return out


# -- encoder baselines -----------------------------------------------------------------------------------
@torch.no_grad()
def _encoder_predict(
    encoder: STEncoder,
    scaler: STScaler,
    city: CityData,
    starts: np.ndarray,
    regions: np.ndarray,
    input_len: int,
    output_len: int,
    chunk: int = 64,
    device: str | torch.device = "cpu",
    what: str = "encoder_only",
) -> np.ndarray:
    cfg = encoder.config
    if cfg.in_channels != city.n_channels or cfg.out_channels != city.n_channels:
        raise ValueError(
            f"{what}: the encoder was built for in_channels={cfg.in_channels}, out_channels={cfg.out_channels}; "
            f"the data {city.source} has {city.n_channels} channels {list(city.channels)}"
        )
    if len(scaler.mean) != city.n_channels:
        raise ValueError(f"{what}: the scaler has {len(scaler.mean)} channels, the data has {city.n_channels}")
    if output_len > cfg.horizon:
        raise ValueError(f"{what}: output_len={output_len} exceeds the encoder's horizon {cfg.horizon}")
    t0 = starts + input_len
    spec = ContextSpec.of_encoder(cfg)
    need = spec.min_history(city.freq, city.source)
    if (t0 < need).any():
        w = int(np.argmax(t0 < need))
        raise ValueError(f"{what}: window {w} has {int(t0[w])} steps before its targets, the encoder reads {need}")
    adj = None
    if cfg.graph_mixing:
        if city.adjacency is None:
            raise ValueError(f"{what}: the encoder uses graph mixing but {city.source} has no adjacency")
        adj = torch.from_numpy(city.adjacency[np.ix_(regions, regions)]).to(device)
    encoder = encoder.to(device).eval()
    out = np.empty((len(starts), len(regions), output_len, city.n_channels), dtype=np.float32)
    for i in range(0, len(starts), chunk):
        t = t0[i : i + chunk]
        _check_past(context_steps(spec, city.freq, t, city.source)[0], t, what)  # (w, L): before the targets
        x = scaler.transform(gather_context(city.values, spec, city.freq, t, regions, city.source)).astype(np.float32)
        if city.mask is not None:  # missing = training mean
            x = np.where(gather_context(city.observed, spec, city.freq, t, regions, city.source), x, np.float32(0))
        forecast = encoder(torch.from_numpy(np.ascontiguousarray(x)).to(device), adj).forecast
        pred = scaler.inverse(forecast[:, :, :output_len].double().cpu().numpy())  # (w, R, H, C)
        out[i : i + chunk] = pred
    if city.task == "event":
        out = np.clip(out, 0.0, 1.0)
    return out


def encoder_only(
    city: CityData,
    starts,
    regions,
    input_len: int,
    output_len: int,
    encoder_dir: str | Path,
    chunk: int = 64,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """The stage-1 STEncoder's forecast head, loaded from ``encoder_dir`` (+ its ``scaler.json``).

    The encoder reads its own ``input_window`` steps right before each window's targets (equal to
    ``input_len`` when it was trained for this set-up; longer is allowed, it is still the past) and
    its first ``output_len`` forecast steps (``<= horizon``) are returned, inverse-scaled with the
    encoder's training scaler. Missing inputs read as the training mean (scaled 0), as in training.
    All regions of ``chunk`` windows go through one forward pass (with graph mixing, the evaluated
    regions form the graph, adjacency from the city). Events: ``clip(count, 0, 1)`` (module docstring).
    """
    starts, regions = check_layout(city, starts, regions, input_len, output_len)
    path = Path(encoder_dir)
    if not (path / SCALER_NAME).is_file():
        raise FileNotFoundError(f"encoder directory {path} is missing {SCALER_NAME}")
    encoder = load_encoder(path)
    if not isinstance(encoder, STEncoder):
        raise ValueError(f"{path}: holds a {type(encoder).__name__}, encoder_only needs an STEncoder")
    scaler = STScaler.load(path / SCALER_NAME)
    encoder.match_scaler(scaler)  # the scaler saved beside it may be a new city's own (cross-city evaluation)
    return _encoder_predict(encoder, scaler, city, starts, regions, input_len, output_len, chunk, device)


def supervised_encoder(
    city: CityData,
    starts,
    regions,
    input_len: int,
    output_len: int,
    train_time: slice,
    chunk: int = 64,
    device: str | torch.device = "cpu",
    return_result: bool = False,
    **pretrain_kwargs,
):
    """NOT zero-shot: train a fresh STEncoder on the *evaluated* regions, then predict like :func:`encoder_only`.

    Training (:func:`stllm.train.pretrain_encoder.pretrain_st_encoder`, its scaler fitted on the same
    regions x ``train_time``) reads only ``regions`` x ``train_time``; ``train_time.stop`` must be at
    or before the first target step of every window (``ValueError`` otherwise), so training never
    sees a target. ``pretrain_kwargs`` go to ``pretrain_st_encoder`` (``max_steps``, ``epochs``,
    ``seed``, ``encoder_config``...); the encoder config defaults to ``input_window=input_len``,
    ``horizon=output_len`` and the city's channel count. With ``return_result`` returns
    ``(pred, PretrainResult)``. The name is in :data:`NOT_ZERO_SHOT`: report it as a reference only.
    """
    from stllm.train.pretrain_encoder import pretrain_st_encoder

    starts, regions = check_layout(city, starts, regions, input_len, output_len)
    if not isinstance(train_time, slice):
        raise ValueError(f"train_time must be a slice of steps, got {train_time!r}")
    t_start, t_stop, step = train_time.indices(city.n_steps)
    first_target = int((starts + input_len).min())
    if step != 1 or t_stop <= t_start:
        raise ValueError(f"train_time must be a non-empty contiguous slice, got {train_time}")
    if t_stop > first_target:
        raise ValueError(
            f"supervised_encoder: train_time {train_time} ends at step {t_stop}, after the first target step "
            f"{first_target} of the evaluation windows; training must end before the evaluated targets"
        )
    cfg = pretrain_kwargs.pop("encoder_config", None)
    cfg = {} if cfg is None else (cfg.to_dict() if isinstance(cfg, STEncoderConfig) else dict(cfg))
    cfg.update(in_channels=city.n_channels, out_channels=city.n_channels)
    cfg.setdefault("input_window", int(input_len))
    cfg.setdefault("horizon", int(output_len))
    pretrain_kwargs.setdefault("progress", False)
    pretrain_kwargs.setdefault("device", device)
    ids = [city.region_ids[i] for i in regions]
    result = pretrain_st_encoder(city, ids, slice(t_start, t_stop), encoder_config=cfg, **pretrain_kwargs)
    pred = _encoder_predict(result.encoder, result.scaler, city, starts, regions, input_len, output_len, chunk,
                            device, what="supervised_encoder")  # fmt: skip
    return (pred, result) if return_result else pred


# -- registry --------------------------------------------------------------------------------------------
BASELINES: dict[str, Callable[..., np.ndarray]] = {
    "last_value": last_value,
    "seasonal_naive_day": functools.partial(seasonal_naive, period="day"),
    "seasonal_naive_week": functools.partial(seasonal_naive, period="week"),
    "historical_average": historical_average,
    "level_average": level_average,
    "ridge": scale_free_ridge,
    "logistic": scale_free_logistic,
    "encoder_only": encoder_only,
    "supervised_encoder": supervised_encoder,
}


FIT_SET = ("fit_city", "fit_regions", "fit_time", "scaler", "seed")  # of ridge_kwargs, what level_average shares


def baseline_label(name: str) -> str:
    """Table label: the name, with ``" (not zero-shot)"`` for the baselines in :data:`NOT_ZERO_SHOT`."""
    return f"{name} (not zero-shot)" if name in NOT_ZERO_SHOT else name


def run_baselines(
    city: CityData,
    starts,
    regions,
    input_len: int,
    output_len: int,
    names: Sequence[str] | None = None,
    encoder_dir: str | Path | None = None,
    weeks: int = 8,
    train_time: slice | None = None,
    pretrain_kwargs: dict | None = None,
    device: str | torch.device = "cpu",
    ridge_kwargs: dict | None = None,
) -> dict[str, np.ndarray]:
    """Run baselines by name on one evaluation set -> ``{name: pred (W, R, H, C)}`` in ``names`` order.

    ``names`` defaults to every baseline whose inputs are available: the four simple ones, plus
    ``level_average`` (counts only), ``ridge`` and ``logistic`` (events only) when ``ridge_kwargs`` is given
    (their fit set: at least ``fit_regions`` and ``fit_time`` of :func:`~stllm.eval.ridge.scale_free_ridge`;
    ``weeks`` defaults to this function's), ``encoder_only`` when ``encoder_dir`` is and
    ``supervised_encoder`` when ``train_time`` is. Asking for ``ridge``, ``level_average`` or ``logistic``
    without ``ridge_kwargs``, ``encoder_only`` without ``encoder_dir`` (or ``supervised_encoder`` without
    ``train_time``) raises ``ValueError``, as does
    an unknown name.
    """
    if names is None:
        names = ["last_value", "seasonal_naive_day", "seasonal_naive_week", "historical_average"]
        if ridge_kwargs is not None:
            names += ["ridge", "logistic"] if city.task == "event" else ["level_average", "ridge"]
        if encoder_dir is not None:
            names.append("encoder_only")
        if train_time is not None:
            names.append("supervised_encoder")
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {sorted(BASELINES)}")
    unfitted = [n for n in ("ridge", "level_average", "logistic") if n in names] if ridge_kwargs is None else []
    if unfitted:
        raise ValueError(f"baseline {unfitted[0]!r} needs ridge_kwargs (at least fit_regions and fit_time, on other "
                         "regions)")
    if "encoder_only" in names and encoder_dir is None:
        raise ValueError("baseline 'encoder_only' needs encoder_dir (a stage-1 encoder directory)")
    if "supervised_encoder" in names and train_time is None:
        raise ValueError("baseline 'supervised_encoder' needs train_time (a slice of steps before the windows)")
    starts, regions = check_layout(city, starts, regions, input_len, output_len)
    extra = {
        "historical_average": {"weeks": weeks},
        "ridge": {"weeks": weeks, **(ridge_kwargs or {})},
        "level_average": {"weeks": weeks, **{k: v for k, v in (ridge_kwargs or {}).items() if k in FIT_SET}},
        "logistic": {"weeks": weeks, **{k: v for k, v in (ridge_kwargs or {}).items() if k != "alpha"}},  # same inputs
        "encoder_only": {"encoder_dir": encoder_dir, "device": device},
        "supervised_encoder": {"train_time": train_time, "device": device, **(pretrain_kwargs or {})},
    }
    out: dict[str, np.ndarray] = {}
    for name in names:
        out[name] = BASELINES[name](city, starts, regions, input_len, output_len, **extra.get(name, {}))
        logger.info("baseline %s: predictions %s", baseline_label(name), out[name].shape)
    return out
