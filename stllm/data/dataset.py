"""STInstructionDataset: lazy (window start, region) instruction samples over a CityData.

Nothing is materialised per sample: the city is scaled once, a sample is an index pair, and its
history is a numpy *view* of the scaled city window (shared by every region of that window, which
lets the collator encode each window once). The prompt text is built on access.

Multi-period context (``days``/``weeks`` > 0, see :mod:`stllm.data.context`): the history of a sample
is one context window ``(L, N, C)``: the target slots (after the recent ones with ``recent_views``) on
each of the previous ``weeks`` weeks and ``days`` days, then the recent ``input_len`` steps. It is
gathered once per window (shared by every region of it) and read by an encoder built for the same
``days``/``weeks``/``recent_views``.

Optional extra history views (``extra_views=("week", "day")``, the older mechanism): the same slots
as the target one week / one day earlier, each as its own ``<ST_HIS>`` placeholder before the recent
history. A view is moved back by whole periods until it ends before the first target (on daily data
the "day" view of a 12-day horizon is 12 days back), and the prompt says by how much.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from stllm.data.city import CityData
from stllm.data.context import ContextSpec, gather_context, period_steps
from stllm.data.prompts import PROMPT_STYLES, VIEW_WORDS, PromptContext, build_conversation
from stllm.data.scaler import STScaler

_UIDS = itertools.count()


class STInstructionDataset(torch.utils.data.Dataset):
    """Samples ``i = window * n_regions + region``: consecutive indices share a window.

    Each sample is a dict: ``conversation`` (system/user/answer text with placeholders),
    ``history`` (list of ``(window_key, view (T, N, C))`` in placeholder order), ``region`` (index
    into N), ``target`` ``(output_len, C)`` float32 (scaled values for flows, ``count > 0`` for
    events), ``target_mask`` bool, ``task``, ``geo`` ``(G, 2)`` (lat, lon) per ``<GEO>``, ``id``.
    """

    def __init__(
        self,
        city: CityData,
        scaler: STScaler | None = None,
        regions: Sequence[str] | None = None,
        time: slice | None = None,
        input_len: int = 12,
        output_len: int = 12,
        stride: int = 1,
        extra_views: Sequence[str] = (),
        with_geo: bool = False,
        top_pois: int = 5,
        days: int = 0,
        weeks: int = 0,
        recent_views: bool = False,
        prompt_style: str = "urbangpt",
        level_len: int = 0,
    ):
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style {prompt_style!r}: one of {', '.join(PROMPT_STYLES)}")
        if input_len < 1 or output_len < 1 or stride < 1:
            raise ValueError(f"input_len, output_len and stride must be >= 1, got {input_len}, {output_len}, {stride}")
        unknown = [v for v in extra_views if v not in VIEW_WORDS]
        if unknown:
            raise ValueError(f"unknown extra view(s) {unknown}; known: {sorted(VIEW_WORDS)}")
        if with_geo and not all(r.has_coords for r in city.regions):
            missing = [r.id for r in city.regions if not r.has_coords][:5]
            raise ValueError(f"{city.source}: with_geo needs coordinates for every region; missing for {missing}")
        if (days or weeks) and extra_views:
            raise ValueError("extra_views and a multi-period context (days/weeks) both add day/week history; "
                             "use one: the context holds the same slots")
        self.context_spec = ContextSpec(input_len, output_len, days, weeks, recent_views, level_len)
        self.city, self.scaler = city, scaler
        self.input_len, self.output_len = input_len, output_len
        self.extra_views, self.with_geo, self.top_pois = tuple(extra_views), with_geo, top_pois
        self.prompt_style = prompt_style
        self.scaled = city.values if scaler is None else scaler.transform(city.values)
        self.region_idx = (np.arange(city.n_regions) if regions is None
                           else city.region_index(regions, field_name="STInstructionDataset.regions"))
        lo, hi, _ = (time or slice(None)).indices(city.n_steps)
        self.lags = tuple(self._lag(v) for v in self.extra_views)
        # histories may reach before ``lo`` (a held-out region's past, the training regions' own past), not before 0
        first = max([lo, *[lag - output_len for lag in self.lags]])
        if self.has_context:
            first = max(lo, self.context_spec.min_history(city.freq, city.source) - input_len)
        last = hi - input_len - output_len  # inclusive
        self.starts = np.arange(first, last + 1, stride, dtype=np.int64) if last >= first else np.zeros(0, np.int64)
        if self.starts.size == 0:
            raise ValueError(
                f"{city.source}: no complete window of {input_len}+{output_len} steps"
                f"{' with views ' + str(self.extra_views) if self.extra_views else ''} in steps [{lo}, {hi})"
                + (f" after the context's warm-up ({first - lo} steps)" if self.has_context else "")
            )
        self._uid = next(_UIDS)
        self._last_context: tuple[int, np.ndarray] | None = None
        self._minutes = (city.timestamps - np.datetime64(0, "m")).astype(np.int64)
        self._freq_minutes = int(city.freq.astype(np.int64))

    def _lag(self, view: str) -> int:
        """Steps back of a view: whole periods, the fewest that end the view before the first target."""
        period = period_steps(self.city.freq, view, f"{self.city.source}: extra view {view!r}")
        return period * -(-self.output_len // period)

    @property
    def has_context(self) -> bool:
        return bool(self.context_spec.days or self.context_spec.weeks)

    @property
    def view_shifts(self) -> tuple[int, ...]:
        """Whole periods each extra view is moved back (1 unless the horizon is a period or longer)."""
        return tuple(lag // period_steps(self.city.freq, v) for v, lag in zip(self.extra_views, self.lags))

    @property
    def n_windows(self) -> int:
        return int(self.starts.size)

    @property
    def n_regions(self) -> int:
        return int(self.region_idx.size)

    def __len__(self) -> int:
        return self.n_windows * self.n_regions

    def index_of(self, window: int, region: int) -> int:
        """Sample index of window number ``window`` and region number ``region`` (positions in this dataset)."""
        return window * self.n_regions + region

    def context(self, i: int) -> PromptContext:
        w, r = divmod(self._check(i), self.n_regions)
        t0 = int(self.starts[w])
        c = self.city
        return PromptContext(
            task=c.task, region=c.regions[self.region_idx[r]], channels=c.channels,
            history_start=int(self._minutes[t0]), target_start=int(self._minutes[t0 + self.input_len]),
            input_len=self.input_len, output_len=self.output_len, freq_minutes=self._freq_minutes,
            quantity=c.quantity, place=c.place, extra_views=self.extra_views, with_geo=self.with_geo,
            top_pois=self.top_pois, view_shifts=self.view_shifts, context_days=self.context_spec.days,
            context_weeks=self.context_spec.weeks, style=self.prompt_style,
        )  # fmt: skip

    def _check(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range for {n} samples")
        return i % n

    def __getitem__(self, i: int) -> dict:
        i = self._check(int(i))
        w, r = divmod(i, self.n_regions)
        t0, n = int(self.starts[w]), int(self.region_idx[r])
        t_in, t_out = self.input_len, self.output_len
        if self.has_context:
            history = [((self._uid, "context", t0), self._context_window(t0 + t_in))]
        else:
            view_starts = [t0 + t_out - lag for lag in self.lags] + [t0]
            history = [((self._uid, s), self.scaled[s:s + t_in]) for s in view_starts]
        tgt = slice(t0 + t_in, t0 + t_in + t_out)
        if self.city.task == "event":
            target = (self.city.values[tgt, n] > 0).astype(np.float32)
        else:
            target = self.scaled[tgt, n]
        c = self.city
        return {
            "id": f"{c.name}:{c.timestamps[t0]}:{c.regions[n].id}",
            "conversation": build_conversation(self.context(i)),
            "history": history,
            "region": n,
            "target": target,
            "target_mask": c.observed[tgt, n] if c.mask is not None else np.ones(target.shape, dtype=bool),
            "task": c.task,
            "geo": c.coords[n:n + 1] if self.with_geo else np.zeros((0, 2), np.float32),
            "adjacency": c.adjacency,
        }

    def _context_window(self, t0: int) -> np.ndarray:
        """The scaled context ``(L, N, C)`` of the forecast starting at ``t0``; the last one is kept, so the
        regions of a window (consecutive indices) gather it once."""
        cached = self._last_context
        if cached is None or cached[0] != t0:
            window = gather_context(self.scaled, self.context_spec, self.city.freq, [t0], source=self.city.source)
            cached = self._last_context = (t0, np.ascontiguousarray(window[0], dtype=np.float32))
        return cached[1]


def window_batches(dataset: STInstructionDataset, batch_size: int, shuffle: bool = True, seed: int = 0):
    """Index batches that keep regions of one window together (so each batch encodes few windows),
    windows in shuffled order. Use as ``DataLoader(ds, batch_sampler=list(window_batches(...)))``."""
    rng = np.random.default_rng(seed)
    windows = rng.permutation(dataset.n_windows) if shuffle else np.arange(dataset.n_windows)
    order = (windows[:, None] * dataset.n_regions + np.arange(dataset.n_regions)[None]).ravel()
    if shuffle:  # shuffle regions inside each window
        order = order.reshape(dataset.n_windows, dataset.n_regions)
        order = np.take_along_axis(order, rng.random(order.shape).argsort(axis=1), axis=1).ravel()
    return [order[i:i + batch_size].tolist() for i in range(0, order.size, batch_size)]
