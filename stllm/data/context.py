"""Multi-period history ("closeness / period / trend") of a forecast window, as step indices.

A forecast of the ``output_len`` steps from ``t0`` reads one context window of ``length`` steps:

``[ week_W ... week_1 | day_D ... day_1 | recent ]``

* ``week_j`` (``output_len`` steps, or ``input_len + output_len`` with ``recent_views``): the target slots
  (after the recent ones) ``j`` weeks earlier, oldest first;
* ``day_j``: the same slots ``j`` days earlier;
* ``recent``: the ``input_len`` steps right before ``t0``.

With ``recent_views`` a view also holds the recent slots, so that the context says how the last hours
compare with the same hours in earlier weeks (a level 20% below usual this afternoon: weather, an
event). Off by default: on the Manhattan presets it made the scale-free ridge worse (README, Results).
Without it a view holds the ``output_len`` target slots only.

With ``level_len`` (the level block, in front of everything else) the context also holds the last
``level_len`` steps and the same steps on each of the ``weeks`` previous weeks (``[level_week_W ...
level_week_1 | level_now | ...]``): how busy the last day was against its usual, which the encoder's
anchor scales by (a city 20% quieter than its weekly profile since yesterday stays quieter for the next
hours; the historical average alone cannot see it).

A view never overlaps the forecast window: for target step ``t0 + h`` the ``j``-th source is
``t0 + h - (k_min(h) + j - 1) * period`` with ``k_min(h)`` the smallest whole number of periods that
lands before ``t0`` (on daily data with a 12-day horizon, the "1 day earlier" view of day 5 is 6 days
back). The mean of the week views is exactly the historical-average baseline: the residual anchor.

Sources before the first step of the data are filled with the mean of the same slot over the views
that exist (:func:`fill_padded`), so a city with less history than ``weeks`` weeks can be evaluated and
the anchor stays the historical average; at least one period of each used kind (and ``input_len``
steps) must exist before the first target. Training, evaluation, stage 1 and the ridge baseline all
gather through :func:`gather_context`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_DAY = np.timedelta64(1440, "m")
PERIODS = {"day": _DAY, "week": 7 * _DAY}


def period_steps(freq: np.timedelta64, period: str, source: str = "city") -> int:
    """Steps in one ``period`` ("day" or "week"); ``ValueError`` when the step does not divide it."""
    if period not in PERIODS:
        raise ValueError(f"period must be one of {sorted(PERIODS)}, got {period!r}")
    freq = np.timedelta64(freq).astype("timedelta64[m]")
    span = PERIODS[period]
    if freq <= np.timedelta64(0, "m") or span % freq != np.timedelta64(0, "m"):
        raise ValueError(
            f"{source}: a {period} is not a whole number of {freq} steps; the {period} views (and same-slot "
            f"baselines) need a step that divides {period} length (e.g. 30min, 1h, 1D)"
        )
    return int(span // freq)


def seasonal_offsets(output_len: int, period: int, k: int, first: int = 0) -> np.ndarray:
    """Offsets ``(output_len - first, k)`` from ``t0``: for slot ``t0 + h`` (``first <= h < output_len``;
    ``first < 0`` adds recent slots) the ``k`` most recent same slots at least one period back and before
    ``t0`` (nearest first); always negative."""
    h = np.arange(first, output_len)
    k_min = np.maximum(h // period + 1, 1)  # smallest k >= 1 with h - k * period < 0
    ks = k_min[:, None] + np.arange(k)[None]
    return h[:, None] - ks * period


@dataclass(frozen=True)
class ContextSpec:
    """Shape of one context window (see the module docstring); ``days = weeks = 0`` is the plain
    ``input_len`` history."""

    input_len: int = 12
    output_len: int = 12
    days: int = 7
    weeks: int = 8
    recent_views: bool = False  # each view also holds the recent slots (module docstring)
    level_len: int = 0  # steps of the level block and of each of its weekly copies (0: none)

    def __post_init__(self):
        for name in ("input_len", "output_len"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ContextSpec.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("days", "weeks", "level_len"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"ContextSpec.{name} must be >= 0, got {getattr(self, name)}")
        if self.level_len and not self.weeks:
            raise ValueError("ContextSpec.level_len compares the last steps with the same steps in earlier weeks; "
                             "it needs weeks >= 1")

    @classmethod
    def of_encoder(cls, config) -> ContextSpec:
        """The context an encoder built for ``config`` reads (an ``STEncoderConfig``: ``input_window``,
        ``horizon``, ``days``, ``weeks``, ``recent_views``, ``level_len``)."""
        return cls(config.input_window, config.horizon, config.days, config.weeks, config.recent_views,
                   config.level_len)

    @property
    def view_len(self) -> int:
        """Steps of one day/week view: the target slots, after the recent ones with ``recent_views``."""
        return self.output_len + (self.input_len if self.recent_views else 0)

    @property
    def level_steps(self) -> int:
        """Steps of the level block: the last ``level_len`` steps and their ``weeks`` weekly copies."""
        return (self.weeks + 1) * self.level_len if self.level_len else 0

    @property
    def length(self) -> int:
        return self.level_steps + (self.weeks + self.days) * self.view_len + self.input_len

    def offsets(self, freq: np.timedelta64, source: str = "city") -> tuple[np.ndarray, np.ndarray]:
        """``(offsets (L,), period (L,))``: steps relative to ``t0`` in window order, and the period in
        steps of each entry (0 for the recent steps), which padding moves by."""
        parts, periods = [], []
        if self.level_len:
            p = period_steps(freq, "week", source)
            now = np.arange(-self.level_len, 0)
            parts.append((now[None] - p * np.arange(self.weeks, 0, -1)[:, None]).ravel())  # oldest week first
            periods.append(np.full(self.weeks * self.level_len, p))
            parts.append(now)
            periods.append(np.zeros(self.level_len, np.int64))
        for name, k in (("week", self.weeks), ("day", self.days)):
            if k == 0:
                continue
            p = period_steps(freq, name, source)
            off = seasonal_offsets(self.output_len, p, k, self.output_len - self.view_len)  # (view_len, k)
            parts.append(off[:, ::-1].T.ravel())  # oldest view first, each view in time order
            periods.append(np.full(k * self.view_len, p))
        parts.append(np.arange(-self.input_len, 0))
        periods.append(np.zeros(self.input_len, np.int64))
        return np.concatenate(parts).astype(np.int64), np.concatenate(periods).astype(np.int64)

    def min_history(self, freq: np.timedelta64, source: str = "city") -> int:
        """Steps that must exist before the first target: ``input_len`` and one of each used period (and
        its recent slots, with ``recent_views``)."""
        need = [self.input_len]
        lead = self.input_len if self.recent_views else 0
        if self.days:
            need.append(period_steps(freq, "day", source) + lead)
        if self.weeks:
            need.append(period_steps(freq, "week", source) + max(lead, self.level_len))
        return max(need)


def context_steps(spec: ContextSpec, freq: np.timedelta64, t0, source: str = "city") -> tuple[np.ndarray, np.ndarray]:
    """Step indices ``(B, L)`` of the context windows of forecasts starting at ``t0`` (B,), and a bool
    ``(B, L)`` that marks padded entries (sources before step 0, moved forward by whole periods).

    Every index is ``< t0`` (checked); ``ValueError`` when ``t0`` has less history than
    :meth:`ContextSpec.min_history`.
    """
    t0 = np.atleast_1d(np.asarray(t0, dtype=np.int64))
    need = spec.min_history(freq, source)
    if t0.size and int(t0.min()) < need:
        raise ValueError(
            f"{source}: a forecast starting at step {int(t0.min())} has {int(t0.min())} steps of history; the "
            f"context (input_len={spec.input_len}, days={spec.days}, weeks={spec.weeks}) needs at least {need} "
            f"before the first target (one period of each view; {spec.weeks} weeks of warm-up for full context)"
        )
    off, period = spec.offsets(freq, source)
    idx = t0[:, None] + off[None]
    padded = idx < 0
    if padded.any():
        p = np.broadcast_to(period, idx.shape)
        idx = np.where(padded, idx + (-idx + p - 1) // np.maximum(p, 1) * p, idx)
    if (idx >= t0[:, None]).any() or (idx < 0).any():
        raise RuntimeError("context_steps: an index left [0, t0); this is a bug")
    return idx, padded


def fill_padded(window: np.ndarray, padded: np.ndarray, spec: ContextSpec) -> np.ndarray:
    """Replace padded view entries of ``window (B, L, ...)`` by the mean of the same slot over the real
    views of their kind (weeks or days), so the mean over all views (the anchor) is the mean of the
    real ones: exactly the historical average over the weeks that exist. ``padded (B, L)`` is from
    :func:`context_steps`. Recent steps and the last level steps are never padded. Returns a new float array."""
    out = np.array(window, dtype=np.result_type(window.dtype, np.float32), copy=True)
    if not padded.any():
        return out
    extra = (1,) * (out.ndim - 2)
    # (copies, steps per copy, first position): the level block's weekly copies, the week and day views
    days_at = spec.level_steps + spec.weeks * spec.view_len
    kinds = ((spec.weeks if spec.level_len else 0, spec.level_len, 0),
             (spec.weeks, spec.view_len, spec.level_steps), (spec.days, spec.view_len, days_at))
    for k, h, start in kinds:
        if k == 0:
            continue
        sl = slice(start, start + k * h)
        part = out[:, sl].reshape(out.shape[0], k, h, *out.shape[2:])  # (B, k, H, ...)
        real = ~padded[:, sl].reshape(-1, k, h, *extra)
        n = real.sum(axis=1, keepdims=True)
        mean = np.where(real, part, 0).sum(axis=1, keepdims=True) / np.maximum(n, 1)
        out[:, sl] = np.where(real, part, mean).reshape(out.shape[0], k * h, *out.shape[2:])
    return out


def gather_context(values: np.ndarray, spec: ContextSpec, freq: np.timedelta64, t0, cols=None,
                   source: str = "city") -> np.ndarray:
    """Context windows ``(B, L, N', C)`` of ``values (T, N, C)`` for forecasts starting at ``t0 (B,)``:
    columns ``cols`` (``(N',)`` shared, ``(B, N')`` per window, or None = all), padded views filled
    (:func:`fill_padded`). Boolean arrays (observed masks) are gathered without filling."""
    idx, padded = context_steps(spec, freq, t0, source)
    if cols is None:
        win = values[idx]
    else:
        cols = np.asarray(cols)
        win = values[idx[:, :, None], cols[None, None, :] if cols.ndim == 1 else cols[:, None, :]]
    return win if win.dtype == bool else fill_padded(win, padded, spec)
