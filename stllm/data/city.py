"""CityData: one city's region x time tensor plus the region metadata that prompts talk about.

Everything downstream (splits, scaler, prompts, dataset, collator) trusts a ``CityData``, so all
validation happens here, once, with errors that name the source file and the offending field.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

TASKS = ("flow", "event")

# (lat_min, lat_max, lon_min, lon_max) of the places the loaders declare, with a margin of ~20 km: a region
# of such a city outside its box has wrong coordinates (most often lat and lon swapped, which stays in range)
PLACE_BOXES = {"New York City": (40.3, 41.1, -74.5, -73.5)}

_FREQ_RE = re.compile(r"^\s*(\d*)\s*(min|m|t|h|d|w|s)\s*$", re.IGNORECASE)
_FREQ_UNIT = {"s": "s", "min": "m", "m": "m", "t": "m", "h": "h", "d": "D", "w": "W"}


class CityDataError(ValueError):
    """Invalid city data; the message starts with ``<source>: field '<name>'``."""

    def __init__(self, source: str, field_name: str, message: str):
        self.source, self.field = source, field_name
        super().__init__(f"{source}: field '{field_name}': {message}")


def parse_freq(freq: str | np.timedelta64) -> np.timedelta64:
    """``"30min"``, ``"1h"``, ``"h"``, ``"1D"``, ``"7d"`` or a ``timedelta64`` -> ``timedelta64[m]``."""
    if isinstance(freq, np.timedelta64):
        out = freq.astype("timedelta64[m]")
    else:
        match = _FREQ_RE.match(str(freq))
        if match is None:
            raise ValueError(f"cannot parse frequency {freq!r}; use e.g. '30min', '1h', '1D'")
        n = int(match.group(1) or 1)
        out = np.timedelta64(n, _FREQ_UNIT[match.group(2).lower()]).astype("timedelta64[m]")
    if out <= np.timedelta64(0, "m"):
        raise ValueError(f"frequency must be positive, got {freq!r}")
    return out


def freq_words(freq: np.timedelta64) -> str:
    """Human wording of a step, as in UrbanGPT's prompts: ``30-minute``, ``1-hour``, ``1-day``."""
    minutes = int(freq.astype("timedelta64[m]").astype(np.int64))
    if minutes % 1440 == 0:
        return f"{minutes // 1440}-day"
    if minutes % 60 == 0:
        return f"{minutes // 60}-hour"
    return f"{minutes}-minute"


@dataclass(frozen=True)
class Region:
    """One spatial unit. ``pois`` is ((category, count), ...) sorted by count desc then name."""

    id: str
    name: str
    lat: float = float("nan")
    lon: float = float("nan")
    borough: str = ""
    pois: tuple[tuple[str, int], ...] = ()
    kind: str = ""  # e.g. the synthetic region type; free text for real data

    def __post_init__(self):
        object.__setattr__(self, "id", str(self.id))
        object.__setattr__(self, "pois", tuple(sorted(((str(c), int(n)) for c, n in self.pois),
                                                      key=lambda cn: (-cn[1], cn[0]))))

    @property
    def has_coords(self) -> bool:
        return bool(np.isfinite(self.lat) and np.isfinite(self.lon))

    def top_pois(self, k: int = 5) -> tuple[tuple[str, int], ...]:
        return self.pois[:k]


@dataclass
class CityData:
    """Values ``(T, N, C)`` float32 on a regular time grid, with regions and optional adjacency.

    ``mask`` (bool, same shape, True = observed) is the only way to carry missing values: where it
    is False the value may be NaN and is stored as 0. ``task`` is ``"flow"`` (regression on counts)
    or ``"event"`` (will an event of each channel happen). ``source`` names the file in errors.
    """

    values: np.ndarray
    timestamps: np.ndarray
    freq: np.timedelta64 | str
    channels: tuple[str, ...]
    regions: tuple[Region, ...]
    task: str = "flow"
    name: str = "city"
    quantity: str = ""  # what is counted, for prompts: "taxi", "bike", "crime"
    place: str = ""  # where, for prompts: "New York City"
    adjacency: np.ndarray | None = None
    mask: np.ndarray | None = None
    source: str = "<memory>"
    _coords: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        err = self._error
        self.channels = tuple(str(c) for c in self.channels)
        self.regions = tuple(self.regions)
        try:
            self.freq = parse_freq(self.freq)
        except ValueError as e:
            raise err("freq", str(e)) from None
        if self.task not in TASKS:
            raise err("task", f"must be one of {TASKS}, got {self.task!r}")
        values = np.asarray(self.values)
        if values.ndim != 3:
            raise err("values", f"must be (T, N, C), got shape {values.shape}")
        if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
            raise err("values", f"must be real numbers, got dtype {values.dtype}")
        t, n, c = values.shape
        if len(self.channels) != c:
            raise err("channels", f"{len(self.channels)} names for {c} channels in values {values.shape}")
        if len(self.regions) != n:
            raise err("regions", f"{len(self.regions)} regions for {n} regions in values {values.shape}")
        if not all(isinstance(r, Region) for r in self.regions):
            raise err("regions", "must be Region objects")
        ids = [r.id for r in self.regions]
        if len(set(ids)) != n:
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise err("regions", f"region ids must be unique; duplicated: {dup}")
        self._check_coordinates()
        self.timestamps = self._check_timestamps(np.asarray(self.timestamps), t)
        self.values, self.mask = self._check_values(values, self.mask)
        if self.adjacency is not None:
            adj = np.asarray(self.adjacency, dtype=np.float32)
            if adj.shape != (n, n):
                raise err("adjacency", f"must be ({n}, {n}), got {adj.shape}")
            if not np.isfinite(adj).all():
                raise err("adjacency", "contains NaN or inf")
            self.adjacency = adj

    # -- validation helpers ---------------------------------------------------------------------------
    def _error(self, field_name: str, message: str) -> CityDataError:
        return CityDataError(self.source, field_name, message)

    def _check_coordinates(self) -> None:
        """Latitudes in [-90, 90], longitudes in [-180, 180], and inside the declared place's box when it is
        known (:data:`PLACE_BOXES`): a swapped (lon, lat) pair is named as such. Unknown (NaN) ones pass."""
        regions = [r for r in self.regions if r.has_coords]
        if not regions:
            return
        lat, lon = np.array([r.lat for r in regions]), np.array([r.lon for r in regions])
        order = "; lat and lon look swapped: give (lat, lon)" if (np.abs(lon) <= 90).all() else ""
        for name, values, limit in (("lat", lat, 90), ("lon", lon, 180)):
            bad = np.flatnonzero(np.abs(values) > limit)
            if bad.size:
                r = regions[int(bad[0])]
                raise self._error(name, f"region {r.id!r} has {name} {values[bad[0]]:g} outside [-{limit}, {limit}] "
                                        f"({bad.size} of {len(regions)} regions){order if name == 'lat' else ''}")
        box = PLACE_BOXES.get(self.place)
        if box is None:
            return
        inside = _in_box(lat, lon, box)
        if inside.all():
            return
        r = regions[int(np.flatnonzero(~inside)[0])]
        where = f"region {r.id!r} at (lat, lon) = ({r.lat:g}, {r.lon:g})"
        if _in_box(lon, lat, box).all():
            raise self._error("lat", f"{where}: lat and lon are swapped (every region of {self.place} would lie "
                                     "inside it with the columns exchanged); give (lat, lon)")
        raise self._error("lat", f"{where} lies outside {self.place} (lat {box[0]}..{box[1]}, lon {box[2]}..{box[3]}); "
                                 f"{int((~inside).sum())} of {len(regions)} regions do: check the coordinates")

    def _check_timestamps(self, ts: np.ndarray, t: int) -> np.ndarray:
        if ts.shape != (t,):
            raise self._error("timestamps", f"must be ({t},) to match values, got shape {ts.shape}")
        try:
            ts = ts.astype("datetime64[m]")
        except (ValueError, TypeError) as e:
            raise self._error("timestamps", f"not parseable as dates: {e}") from None
        if np.isnat(ts).any():
            raise self._error("timestamps", f"missing (NaT) at index {int(np.flatnonzero(np.isnat(ts))[0])}")
        if t > 1:
            steps = np.diff(ts)
            bad = np.flatnonzero(steps <= np.timedelta64(0, "m"))
            if bad.size:
                i = int(bad[0])
                raise self._error("timestamps", f"not strictly increasing at index {i + 1}: {ts[i]} -> {ts[i + 1]}")
            bad = np.flatnonzero(steps != self.freq)
            if bad.size:
                i = int(bad[0])
                raise self._error(
                    "timestamps", f"step {ts[i]} -> {ts[i + 1]} at index {i + 1} is not the stated freq {self.freq}"
                )
        return ts

    def _check_values(self, values: np.ndarray, mask) -> tuple[np.ndarray, np.ndarray | None]:
        values = values.astype(np.float32, copy=False)
        finite = np.isfinite(values)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != values.shape or mask.dtype != np.bool_:
                raise self._error("mask", f"must be bool {values.shape}, got {mask.dtype} {mask.shape}")
            bad = mask & ~finite
            if bad.any():
                raise self._error("values", f"NaN/inf where mask says observed, first at {_first(bad)}")
            if not finite.all() or (values[~mask] != 0).any():
                values = np.where(mask, values, np.float32(0))
        elif not finite.all():
            raise self._error("values", f"NaN/inf at (t, n, c)={_first(~finite)}; pass a mask to mark missing values")
        negative = values < 0
        if negative.any():
            raise self._error("values", f"negative count {values[negative][0]} at (t, n, c)={_first(negative)}")
        return values, mask

    # -- shape and lookup -----------------------------------------------------------------------------
    @property
    def n_steps(self) -> int:
        return self.values.shape[0]

    @property
    def n_regions(self) -> int:
        return self.values.shape[1]

    @property
    def n_channels(self) -> int:
        return self.values.shape[2]

    @property
    def region_ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.regions)

    @property
    def coords(self) -> np.ndarray:
        """``(N, 2)`` float32 (lat, lon); NaN where unknown."""
        if self._coords is None:
            self._coords = np.array([[r.lat, r.lon] for r in self.regions], dtype=np.float32).reshape(-1, 2)
        return self._coords

    @property
    def observed(self) -> np.ndarray:
        """Bool ``(T, N, C)`` of observed values (all True without a mask)."""
        return np.ones(self.values.shape, dtype=bool) if self.mask is None else self.mask

    def region_index(self, ids: Sequence[str | int], field_name: str = "regions") -> np.ndarray:
        """Indices of ``ids``; unknown ids raise naming them (and this city's source)."""
        lookup = {r.id: i for i, r in enumerate(self.regions)}
        ids = [str(i) for i in ids]
        unknown = [i for i in ids if i not in lookup]
        if unknown:
            raise self._error(field_name, f"unknown region ids {unknown[:8]} (city {self.name!r} has {self.n_regions})")
        return np.array([lookup[i] for i in ids], dtype=np.int64)

    def time_index(self, when: str | np.datetime64) -> int:
        """Index of the first step at or after ``when`` (``n_steps`` if none)."""
        return int(np.searchsorted(self.timestamps, np.datetime64(when, "m")))

    # -- derived cities -------------------------------------------------------------------------------
    def select_regions(self, ids: Sequence[str | int]) -> CityData:
        idx = self.region_index(ids)
        adj = None if self.adjacency is None else self.adjacency[np.ix_(idx, idx)]
        mask = None if self.mask is None else self.mask[:, idx]
        return replace(self, values=self.values[:, idx], regions=tuple(self.regions[i] for i in idx),
                       adjacency=adj, mask=mask)

    def slice_time(self, start: int | None = None, stop: int | None = None) -> CityData:
        sl = slice(start, stop)
        mask = None if self.mask is None else self.mask[sl]
        return replace(self, values=self.values[sl], timestamps=self.timestamps[sl], mask=mask)

    def aggregate(self, factor: int | None = None, freq: str | np.timedelta64 | None = None) -> CityData:
        """Sum counts over blocks of ``factor`` steps (or up to ``freq``): 30 min -> 1 h -> 1 day.

        With ``freq`` the blocks are aligned to the calendar (leading steps before the first block
        boundary and a trailing partial block are dropped); a block with any unobserved step is
        unobserved. Event counts are summed too (events per day from events per hour).
        """
        if (factor is None) == (freq is None):
            raise ValueError("aggregate: pass exactly one of factor or freq")
        if freq is not None:
            target = parse_freq(freq)
            ratio = target / self.freq
            if ratio != int(ratio) or int(ratio) < 1:
                raise self._error("freq", f"cannot aggregate {self.freq} steps to {target}: not a whole multiple")
            factor = int(ratio)
            aligned = (self.timestamps - np.datetime64(0, "m")) % target == np.timedelta64(0, "m")
            start = int(np.argmax(aligned)) if aligned.any() else self.n_steps
        else:
            if int(factor) != factor or factor < 1:
                raise ValueError(f"aggregate: factor must be a positive integer, got {factor!r}")
            factor, start = int(factor), 0
        blocks = (self.n_steps - start) // factor
        if blocks < 1:
            raise self._error("timestamps", f"fewer than {factor} steps to aggregate")
        stop = start + blocks * factor
        shape = (blocks, factor, self.n_regions, self.n_channels)
        values = self.values[start:stop].reshape(shape).sum(axis=1, dtype=np.float64).astype(np.float32)
        mask = None if self.mask is None else self.mask[start:stop].reshape(shape).all(axis=1)
        return replace(self, values=values, timestamps=self.timestamps[start:stop:factor],
                       freq=self.freq * factor, mask=mask)


def _in_box(lat: np.ndarray, lon: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    return (box[0] <= lat) & (lat <= box[1]) & (box[2] <= lon) & (lon <= box[3])


def _first(bad: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(bad)[0])
