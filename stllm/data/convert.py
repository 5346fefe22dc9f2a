"""Converters from other projects' city data formats to a validated :class:`CityData`.

``convert(fmt, inputs, **options)`` is what ``stllm data convert`` calls; it returns the city and writes
nothing. Formats (:data:`FORMATS` describes each for ``--help``):

- ``libcity``: LibCity atomic files (``.geo`` + ``.dyna`` or ``.grid``), see
  https://bigscity-libcity-docs.readthedocs.io/en/latest/user_guide/data/atomic_files.html
- ``basicts``: a BasicTS dataset folder, both layouts: ``desc.json`` + ``data.dat`` (float32 memmap,
  BasicTS <= 0.5) and ``meta.json`` + ``{train,val,test}_data.npy`` (BasicTS 1.x, the current main).
- ``urbangpt-npz``: UrbanGPT's raw tensors (``np.load(path)['data']``, regions first: ``(N, T, C)`` or
  ``(rows, cols, T, C)``, as its ``instruction_generate/load_dataset.py`` indexes them).
- ``long-table``: a CSV (or parquet, with pyarrow) of ``time, region, channel, value`` rows.

Every converter takes ``name``, ``task`` and ``freq``; the time axis must be a regular grid (a gap is
an error naming it); values that are absent or empty become masked, never zero; every error names
the file and the column or field. CSVs are read with the standard library and turned into numpy
columns, so pandas is not needed.
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from stllm.data.city import CityData, CityDataError, Region, parse_freq
from stllm.data.loaders import _open_npz, read_json

FORMATS = {
    "libcity": "LibCity atomic files: a .geo (geo_id,type,coordinates: Point [lon, lat] or Polygon -> centroid) and a "
               ".dyna (dyna_id,type,time,entity_id,<values>) or a .grid (dyna_id,type,time,row_id,column_id,<values>; "
               "regions 'row_col'); inputs: the files or their folder. Channels: the value columns (option channels "
               "picks and orders them)",
    "basicts": "a BasicTS dataset folder: desc.json + data.dat (float32 memmap of desc 'shape'; time-of-day/day-of-"
               "week features dropped) or meta.json + train/val/test_data.npy (BasicTS 1.x); step from 'frequency "
               "(minutes)'; BasicTS stores no dates: start= is required unless the JSON has start_time or timestamps",
    "urbangpt-npz": "UrbanGPT's raw .npz tensors (key 'data'; (N, T, C) or (rows, cols, T, C), regions first); "
                    "options key, start, freq, channels, layout=NTC|TNC; its released files "
                    "(all_nyc_taxi_263x105216x2, all_nyc_bike_46x47x105216x2, crime_nyc_2016_1_2021_12_46x47, "
                    "2021-CHI_taxi_77x17520x2) have their start and step built in",
    "long-table": "a CSV or parquet long table: columns time,region,channel,value (names: time_col, region_col, "
                  "channel_col, value_col; no channel column = one channel); a second input (or regions=) is a region "
                  "table region,name,lat,lon. Missing rows or empty values are masked; a duplicated row is an error",
}
COMMON_OPTIONS = ("name", "task", "freq")
_TIME_FEATURES = ("time of day", "day of week", "day of month", "day of year")
# UrbanGPT's released tensors: file stem -> (start, step, channels); from load_dataset.py ("Data recorded:
# 2016.01.01---2021.12.31"; 105216 = 2192 days x 48, CHI 17520 = 365 x 48, crime at interval=1440 minutes)
URBANGPT_FILES = {
    "all_nyc_taxi_263x105216x2": ("2016-01-01", "30min", ("inflow", "outflow")),
    "all_nyc_bike_46x47x105216x2": ("2016-01-01", "30min", ("inflow", "outflow")),
    "crime_nyc_2016_1_2021_12_46x47": ("2016-01-01", "1D", None),
    "2021-CHI_taxi_77x17520x2": ("2021-01-01", "30min", ("inflow", "outflow")),
}


def convert(fmt: str, inputs: Sequence[str | os.PathLike], **options) -> CityData:
    """Read ``inputs`` in format ``fmt`` (a key of :data:`FORMATS`) into a validated :class:`CityData`.

    Options set to None are ignored (unset command-line flags); an option the format does not take
    is refused by name, listing the ones it does."""
    if fmt not in _CONVERTERS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ValueError(f"convert {fmt}: no input files given")
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or directory")
    fn = _CONVERTERS[fmt]
    accepted = [k for k in inspect.signature(fn).parameters if k != "paths"]
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"convert {fmt}: unknown option(s) {unknown}; it takes {accepted}")
    return fn(paths, **options)


# -- LibCity atomic files ---------------------------------------------------------------------------------
def from_libcity(paths: list[Path], channels: Sequence[str] | str | None = None, name: str | None = None,
                 task: str = "flow", freq: str | None = None) -> CityData:  # fmt: skip
    """A ``.geo`` (regions and coordinates) and a ``.dyna`` (one row per time x entity) or ``.grid``
    (one row per time x grid cell); value columns become channels."""
    files = _expand(paths)
    geo = _one(files, (".geo",), "a .geo file (geo_id,type,coordinates)")
    data = _one(files, (".dyna", ".grid"), "a .dyna or .grid file")
    g = _read_csv(geo, ("geo_id", "type", "coordinates"))
    lat, lon = _geo_coords(g["type"], g["coordinates"], geo)
    grid = data.suffix == ".grid"
    keys = ("time", "row_id", "column_id") if grid else ("time", "entity_id")
    d = _read_csv(data, keys)
    if grid:
        if "row_id" in g and "column_id" in g:
            ids = _cells(g, geo)
        else:  # a .geo without row_id/column_id: the cells that occur, in row-major order
            cells = np.unique(np.stack([_ints(d[k], data, k).astype(np.int64) for k in keys[1:]], 1), axis=0)
            ids = np.array([f"{r}_{c}" for r, c in cells])
            lat, lon = np.full(len(ids), np.nan), np.full(len(ids), np.nan)
        entity = _cells(d, data)
        names = [f"grid cell ({i.replace('_', ', ')})" for i in ids]
    else:
        ids, entity = g["geo_id"], d["entity_id"]
        names = [f"region {i}" for i in ids]
    _unique(ids, geo, "geo_id" if not grid else "row_id,column_id")
    value_cols = [c for c in d if c not in ("dyna_id", "type", *keys)]
    value_cols = _pick(value_cols, channels, data, "value columns")
    r_idx = _lookup(ids, entity, data, "entity_id" if not grid else "row_id,column_id", f"regions of {geo.name}")
    times, t_idx, step = _time_grid(_parse_times(d["time"], data, "time"), data, "time", freq)
    vals = np.stack([_numbers(d[c], data, c) for c in value_cols], axis=1)
    values, mask = _assemble((len(times), len(ids), len(value_cols)), t_idx, r_idx, None, vals, data,
                             ("time", "entity_id" if not grid else "row_id,column_id"))  # fmt: skip
    regions = tuple(Region(str(i), n, float(a), float(o)) for i, n, a, o in zip(ids, names, lat, lon))
    return _city(values, mask, times, step, value_cols, regions, data, name or data.stem, task)


def _geo_coords(types: np.ndarray, coords: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) per geo row from GeoJSON coordinates (lon first): a Point as is, a Polygon's area centroid
    (its outer ring), a LineString's vertex mean. One JSON parse per region (a few thousand at most)."""
    lat, lon = np.full(len(types), np.nan), np.full(len(types), np.nan)
    for i, (kind, text) in enumerate(zip(types, coords)):
        if not text.strip():
            continue
        try:
            c = np.asarray(json.loads(text), dtype=np.float64)
            if kind == "Point" and c.shape == (2,):
                lon[i], lat[i] = c
            elif kind == "Polygon" and c.ndim == 3 and c.shape[-1] == 2:
                lon[i], lat[i] = _centroid(c[0])
            elif kind == "LineString" and c.ndim == 2 and c.shape[-1] == 2:
                lon[i], lat[i] = c.mean(axis=0)
            else:
                raise ValueError(f"a {kind} needs {'[lon, lat]' if kind == 'Point' else 'GeoJSON coordinates'}")
        except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
            raise CityDataError(str(path), "coordinates", f"row {i + 2} (type {kind!r}): cannot read {text[:60]!r} "
                                                          f"({e}); expected Point [lon, lat] or Polygon "
                                                          "[[[lon, lat], ...]]") from None  # fmt: skip
    return lat, lon


def _centroid(ring: np.ndarray) -> tuple[float, float]:
    """Area centroid of a closed or open ring of (x, y); the vertex mean when its area is zero."""
    x, y = ring[:, 0], ring[:, 1]
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    cross = x * y1 - x1 * y
    area = cross.sum() / 2
    if abs(area) < 1e-15:
        return float(x.mean()), float(y.mean())
    return float(((x + x1) * cross).sum() / (6 * area)), float(((y + y1) * cross).sum() / (6 * area))


# -- BasicTS ----------------------------------------------------------------------------------------------
def from_basicts(paths: list[Path], start: str | None = None, channels: Sequence[str] | str | None = None,
                 name: str | None = None, task: str = "flow", freq: str | None = None) -> CityData:  # fmt: skip
    """A BasicTS dataset folder (or a file in it). Reads ``shape``, ``frequency (minutes)`` (or
    ``frequency``), ``feature_description`` (legacy: which features are time features, dropped),
    ``domain`` (the channel name) and, if present, ``start_time`` or ``timestamps``."""
    folder = paths[0] if paths[0].is_dir() else paths[0].parent
    if (folder / "desc.json").is_file():
        desc_path = folder / "desc.json"
        desc = _json_object(desc_path, "BasicTS's dataset description (shape, frequency (minutes), ...)")
        values, labels = _basicts_legacy(folder / "data.dat", desc, desc_path)
    elif (folder / "meta.json").is_file():
        desc_path = folder / "meta.json"
        desc = _json_object(desc_path, "BasicTS's dataset description (shape, frequency (minutes), ...)")
        values, labels = _basicts_current(folder, desc, desc_path)
    else:
        raise FileNotFoundError(f"{folder}: not a BasicTS dataset folder: expected desc.json + data.dat (BasicTS "
                                "<= 0.5) or meta.json + train_data.npy, val_data.npy, test_data.npy (BasicTS 1.x)")
    step = freq or desc.get("frequency (minutes)", desc.get("frequency"))
    if step is None:
        raise CityDataError(str(desc_path), "frequency (minutes)", "missing; pass freq= (--freq 5min)")
    step = parse_freq(f"{step}min" if isinstance(step, int | float) else str(step))
    t = values.shape[0]
    if start is None and isinstance(desc.get("timestamps"), list):
        times = _parse_times(np.asarray(desc["timestamps"], dtype=str), desc_path, "timestamps")
        if times.shape != (t,):
            raise CityDataError(str(desc_path), "timestamps", f"{times.size} timestamps for {t} time steps")
    else:
        start = start or desc.get("start_time")
        if start is None:
            raise ValueError(f"{desc_path}: field 'start_time': BasicTS stores no dates (only time-of-day and "
                             "day-of-week features); pass the first step's time: start= (--start 2018-01-01)")
        times = _parse_times(np.asarray([str(start)]), desc_path, "start_time")[0] + np.arange(t) * step
    labels = labels if channels is None else _names(channels, len(labels), desc_path)
    mask = np.isfinite(values)
    regions = tuple(Region(str(i), f"node {i}") for i in range(values.shape[1]))
    return _city(values, None if mask.all() else mask, times, step, labels, regions, desc_path,
                 name or str(desc.get("name") or folder.name), task)  # fmt: skip


def _basicts_legacy(dat: Path, desc: dict, desc_path: Path) -> tuple[np.ndarray, list[str]]:
    shape = _shape(desc, desc_path, dat)
    size = dat.stat().st_size
    if size != int(np.prod(shape)) * 4:
        raise CityDataError(str(dat), "<file>", f"{size} bytes, but {desc_path.name} 'shape' {list(shape)} of float32 "
                                                f"needs {int(np.prod(shape)) * 4}")  # fmt: skip
    data = np.array(np.memmap(dat, dtype=np.float32, mode="r", shape=shape))
    data = data[..., None] if data.ndim == 2 else data
    feats = desc.get("feature_description")
    c = data.shape[-1]
    if isinstance(feats, list) and len(feats) == c:
        keep = [i for i, f in enumerate(feats) if str(f).lower() not in _TIME_FEATURES]
        labels = _dedupe([str(feats[i]) for i in keep])
    else:
        keep, labels = list(range(c)), _default_labels(desc, c)
    if not keep:
        raise CityDataError(str(desc_path), "feature_description", f"every feature {feats} is a time feature")
    return data[..., keep], labels


def _basicts_current(folder: Path, desc: dict, desc_path: Path) -> tuple[np.ndarray, list[str]]:
    parts = []
    for part in ("train", "val", "test"):
        f = folder / f"{part}_data.npy"
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing; a BasicTS 1.x dataset splits the series into train_data.npy, "
                                    "val_data.npy and test_data.npy, which are joined back in that order")
        try:
            parts.append(np.load(f, allow_pickle=False))
        except ValueError as e:
            raise CityDataError(str(f), "<file>", f"not a readable .npy array ({e})") from None
    ndims = {p.ndim for p in parts}
    if len(ndims) != 1 or ndims.pop() not in (2, 3) or len({p.shape[1:] for p in parts}) != 1:
        raise CityDataError(str(folder / "train_data.npy"), "shape", "train/val/test arrays must all be (T, N) or "
                                                                     f"(T, N, C); got {[p.shape for p in parts]}")
    data = np.concatenate(parts).astype(np.float32, copy=False)
    shape = desc.get("shape")
    if isinstance(shape, list) and shape and int(shape[0]) != data.shape[0]:
        raise CityDataError(str(desc_path), "shape", f"says {shape[0]} time steps, the three .npy files hold "
                                                     f"{data.shape[0]}")  # fmt: skip
    data = data[..., None] if data.ndim == 2 else data
    return data, _default_labels(desc, data.shape[-1])


def _shape(desc: dict, desc_path: Path, dat: Path) -> tuple[int, ...]:
    shape = desc.get("shape")
    if not isinstance(shape, list) or len(shape) not in (2, 3) or not all(isinstance(s, int) and s > 0 for s in shape):
        raise CityDataError(str(desc_path), "shape", f"must be [T, N, C] or [T, N] to read {dat.name}, got {shape!r}")
    if not dat.is_file():
        raise FileNotFoundError(f"{dat}: missing; {desc_path.name} describes a float32 memmap data.dat next to it")
    return tuple(shape)


def _default_labels(desc: dict, c: int) -> list[str]:
    domain = str(desc.get("domain") or "value")
    return [domain] if c == 1 else [f"{domain} {i}" for i in range(c)]


# -- UrbanGPT raw tensors ---------------------------------------------------------------------------------
def from_urbangpt_npz(paths: list[Path], key: str | None = None, start: str | None = None, freq: str | None = None,
                      channels: Sequence[str] | str | None = None, layout: str = "NTC", name: str | None = None,
                      task: str | None = None) -> CityData:  # fmt: skip
    """One of UrbanGPT's ``.npz`` tensors: ``(N, T, C)`` regions first (``layout="TNC"`` for time first) or a
    ``(rows, cols, T, C)`` grid (regions ``row_col``); a 2-D array is one channel. The released files'
    start and step are known by file name; any other file needs ``start`` and ``freq``."""
    path = paths[0]
    arrays = _open_npz(path)
    if key is None:
        key = next((k for k in ("data", "values") if k in arrays), None)
        if key is None and len(arrays) == 1:
            key = next(iter(arrays))
    if key not in arrays:
        raise CityDataError(str(path), "key", f"no array {key!r} in the file; it holds {sorted(arrays)}: pass key=")
    arr = np.asarray(arrays[key])
    known = URBANGPT_FILES.get(path.stem, (None, None, None))
    start, freq = start or known[0], freq or known[1]
    if start is None or freq is None:
        missing = " and ".join(n for n, v in (("start", start), ("freq", freq)) if v is None)
        raise ValueError(f"{path}: not one of UrbanGPT's released files ({', '.join(URBANGPT_FILES)}), so its time "
                         f"axis is unknown: pass {missing} (--start 2016-01-01 --freq 30min)")
    if layout not in ("NTC", "TNC"):
        raise ValueError(f"layout must be 'NTC' (regions first, UrbanGPT's) or 'TNC', got {layout!r}")
    if arr.ndim == 4:
        rows, cols, t, c = arr.shape
        values = arr.reshape(rows * cols, t, c).transpose(1, 0, 2)
        regions = tuple(Region(f"{i}_{j}", f"grid cell ({i}, {j})") for i in range(rows) for j in range(cols))
    elif arr.ndim in (2, 3):
        values = arr[..., None] if arr.ndim == 2 else arr
        values = values.transpose(1, 0, 2) if layout == "NTC" else values
        regions = tuple(Region(str(i), f"region {i}") for i in range(values.shape[1]))
    else:
        raise CityDataError(str(path), key, f"must be (N, T, C), (N, T) or (rows, cols, T, C), got {arr.shape}")
    c = values.shape[-1]
    labels = _names(channels, c, path) if channels is not None else list(known[2] or [f"channel_{i}" for i in range(c)])
    if len(labels) != c:
        labels = [f"channel_{i}" for i in range(c)]
    step = parse_freq(freq)
    times = _parse_times(np.asarray([str(start)]), path, "start")[0] + np.arange(values.shape[0]) * step
    mask = np.isfinite(values)
    task = task or ("event" if "crime" in path.stem.lower() else "flow")
    return _city(values, None if mask.all() else mask, times, step, labels, regions, path, name or path.stem, task)


# -- long table -------------------------------------------------------------------------------------------
def from_long_table(paths: list[Path], time_col: str = "time", region_col: str = "region",
                    channel_col: str | None = None, value_col: str = "value", regions: str | None = None,
                    channels: Sequence[str] | str | None = None, name: str | None = None, task: str = "flow",
                    freq: str | None = None) -> CityData:  # fmt: skip
    """Rows ``time, region, channel, value`` pivoted to ``(T, N, C)``. ``channel_col`` defaults to
    ``channel`` when the table has that column, else one channel named after ``value_col`` (an explicit
    ``channel_col`` must exist). Regions come in the region table's order (``regions`` or a second
    input: ``region[,name,lat,lon]``), else sorted by id."""
    table = paths[0]
    region_file = Path(regions) if regions is not None else (paths[1] if len(paths) > 1 else None)
    if len(paths) > 2 or (regions is not None and len(paths) > 1):
        raise ValueError(f"long-table: give one table and at most one region table, got {[str(p) for p in paths]}")
    cols = _read_table(table, (time_col, region_col, value_col))
    if channel_col is None:
        channel_col = "channel" if "channel" in cols else ""
    elif channel_col and channel_col not in cols:
        raise CityDataError(str(table), channel_col, f"no such column (channel_col); columns are {list(cols)}")
    rid = np.char.strip(cols[region_col].astype(str))
    if region_file is not None:
        meta = _read_table(region_file, ("region",))
        ids = np.char.strip(meta["region"].astype(str))
        _unique(ids, region_file, "region")
        names = meta["name"] if "name" in meta else np.char.add("region ", ids)
        lat = _numbers(meta["lat"], region_file, "lat") if "lat" in meta else np.full(len(ids), np.nan)
        lon = _numbers(meta["lon"], region_file, "lon") if "lon" in meta else np.full(len(ids), np.nan)
    else:
        ids = _natural_sort(np.unique(rid))
        names, lat, lon = np.char.add("region ", ids), np.full(len(ids), np.nan), np.full(len(ids), np.nan)
    r_idx = _lookup(ids, rid, table, region_col, f"regions of {region_file}" if region_file else "regions")
    if channel_col:
        cname = np.char.strip(cols[channel_col].astype(str))
        uniq, first = np.unique(cname, return_index=True)
        labels = _pick(uniq[np.argsort(first)].tolist(), channels, table, f"channels in column {channel_col!r}")
        keep = np.isin(cname, labels)
        c_idx = _lookup(np.asarray(labels), cname[keep], table, channel_col, "channels")
    else:
        labels, keep, c_idx = [value_col], np.ones(len(rid), bool), None
    times, t_idx, step = _time_grid(_parse_times(cols[time_col], table, time_col), table, time_col, freq)
    vals = _numbers(cols[value_col], table, value_col)
    shape = (len(times), len(ids), len(labels))
    vals = vals[keep][:, None] if c_idx is None else vals[keep]
    values, mask = _assemble(shape, t_idx[keep], r_idx[keep], c_idx, vals, table,
                             (time_col, region_col, channel_col or None), rows=np.flatnonzero(keep))
    regs = tuple(Region(str(i), str(n), float(a), float(o)) for i, n, a, o in zip(ids, names, lat, lon))
    return _city(values, mask, times, step, labels, regs, table, name or table.stem, task)


def _read_table(path: Path, required: Sequence[str]) -> dict[str, np.ndarray]:
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), or save the table as "
                             "CSV") from None  # fmt: skip
        t = pq.read_table(path)
        cols = {n: np.asarray(t.column(n).to_numpy(zero_copy_only=False)).astype(str) for n in t.column_names}
        missing = [c for c in required if c not in cols]
        if missing:
            raise CityDataError(str(path), missing[0], f"no such column; columns are {list(cols)}")
        return cols
    return _read_csv(path, required)


# -- shared pieces ----------------------------------------------------------------------------------------
def _read_csv(path: Path, required: Sequence[str]) -> dict[str, np.ndarray]:
    """Columns of a CSV as str arrays; a missing column or a row of the wrong width is named with its line."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise CityDataError(str(path), "<file>", f"empty file; expected a header with {', '.join(required)}")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    missing = [c for c in required if c not in header]
    if missing:
        raise CityDataError(str(path), missing[0], f"no such column; the header has {header}")
    widths = np.fromiter(map(len, body), dtype=np.int64, count=len(body))
    bad = np.flatnonzero(widths != len(header))
    if bad.size:
        i = int(bad[0])
        raise CityDataError(str(path), "<row>", f"line {i + 2} has {widths[i]} fields, the header {len(header)}")
    if not body:
        return {h: np.array([], dtype=str) for h in header}
    return {h: np.asarray(col, dtype=str) for h, col in zip(header, zip(*body))}


def _parse_times(text: np.ndarray, path: Path, col: str) -> np.ndarray:
    """ISO times (``2016-01-01T00:00:00Z``, ``2016-01-01 00:30``) -> ``datetime64[m]``. ``Z`` is dropped;
    an explicit offset (``+08:00``) is converted to UTC by numpy (whose warning about it is silenced), so a
    file that mixes offsets across a DST change still lands on one regular clock."""
    s = np.char.strip(np.asarray(text, dtype=str))
    s = np.where(np.char.endswith(s, "Z"), np.char.rstrip(s, "Z"), s)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "no explicit representation of timezones", UserWarning)
            return s.astype("datetime64[m]")
    except ValueError:
        for i, v in enumerate(s):  # only on the error path: find the first bad value and its line
            try:
                np.datetime64(v, "m")
            except ValueError:
                raise CityDataError(str(path), col, f"row {i + 2}: {str(v)!r} is not an ISO time like "
                                                     "2016-01-01T00:00:00Z or 2016-01-01 00:30") from None
        raise


def _numbers(text: np.ndarray, path: Path, col: str) -> np.ndarray:
    """Numbers of a column as float64; empty cells (and ``nan``) become NaN, i.e. missing."""
    s = np.char.strip(np.asarray(text, dtype=str))
    s = np.where(s == "", "nan", s)
    try:
        return s.astype(np.float64)
    except ValueError:
        for i, v in enumerate(s):  # error path only
            try:
                float(v)
            except ValueError:
                raise CityDataError(str(path), col, f"row {i + 2}: {str(v)!r} is not a number") from None
        raise


def _ints(text: np.ndarray, path: Path, col: str) -> np.ndarray:
    """Integer ids as canonical strings (``"3.0"`` -> ``"3"``) so that two files' ids compare equal."""
    x = _numbers(text, path, col)
    bad = np.flatnonzero(~np.isfinite(x) | (x != np.round(x)))
    if bad.size:
        raise CityDataError(str(path), col, f"row {int(bad[0]) + 2}: {str(text[bad[0]])!r} is not an integer")
    return x.astype(np.int64).astype(str)


def _cells(cols: dict[str, np.ndarray], path: Path) -> np.ndarray:
    """Grid cell ids ``row_col`` from a table's ``row_id`` and ``column_id`` columns."""
    rows, columns = _ints(cols["row_id"], path, "row_id"), _ints(cols["column_id"], path, "column_id")
    return np.char.add(np.char.add(rows, "_"), columns)


def _time_grid(times: np.ndarray, path: Path, col: str, freq: str | None):
    """``(timestamps, index of each row, step)`` of a regular grid from first to last time; a time off the
    grid or a step with no row at all is refused, naming it (a step of missing values needs rows with
    empty values, which are masked)."""
    if times.size == 0:
        raise CityDataError(str(path), col, "no rows")
    uniq = np.unique(times)
    if freq is not None:
        step = parse_freq(freq)
    elif uniq.size > 1:
        step = np.diff(uniq).min()
    else:
        raise CityDataError(str(path), col, f"one time {uniq[0]} only: pass freq= to say the step")
    offset = uniq - uniq[0]
    off_grid = np.flatnonzero(offset % step != np.timedelta64(0, "m"))
    if off_grid.size:
        i = int(off_grid[0])
        raise CityDataError(str(path), col, f"irregular time grid: {uniq[i]} is not a whole number of {step} steps "
                                            f"after the first time {uniq[0]}")  # fmt: skip
    k = (offset // step).astype(np.int64)
    gap = np.flatnonzero(k != np.arange(k.size))
    if gap.size:
        i = int(gap[0])
        raise CityDataError(str(path), col, f"irregular time grid: no row between {uniq[i - 1]} and {uniq[i]} (step "
                                            f"{step}), first gap at {uniq[i - 1] + step}; add rows with empty values "
                                            "to mark missing steps")  # fmt: skip
    return uniq, ((times - uniq[0]) // step).astype(np.int64), step


def _assemble(shape: tuple[int, int, int], t_idx: np.ndarray, r_idx: np.ndarray, c_idx: np.ndarray | None,
              vals: np.ndarray, path: Path, key_cols: tuple, rows: np.ndarray | None = None):  # fmt: skip
    """Scatter rows into ``(T, N, C)``: ``vals`` is ``(rows, C)`` (wide, ``c_idx`` None) or ``(rows,)``
    (long). Cells without a row or with NaN are masked; a key that occurs twice is refused naming both lines."""
    t, n, c = shape
    key = t_idx * n + r_idx if c_idx is None else (t_idx * n + r_idx) * c + c_idx
    order = np.argsort(key, kind="stable")
    dup = np.flatnonzero(key[order][1:] == key[order][:-1])
    if dup.size:
        second = order[dup + 1]
        j = int(np.argmin(second))  # the duplicate that comes first in the file
        a, b = int(order[dup[j]]), int(second[j])
        rows = np.arange(len(key)) if rows is None else rows
        cols = ", ".join(k for k in key_cols if k)
        raise CityDataError(str(path), cols, f"duplicated row: line {int(rows[b]) + 2} repeats the ({cols}) of line "
                                             f"{int(rows[a]) + 2}")  # fmt: skip
    values = np.full(shape, np.nan, dtype=np.float32)
    if c_idx is None:
        values[t_idx, r_idx, :] = vals
    else:
        values[t_idx, r_idx, c_idx] = vals
    mask = np.isfinite(values)
    return np.where(mask, values, np.float32(0)), (None if mask.all() else mask)


def _lookup(ids: np.ndarray, keys: np.ndarray, path: Path, col: str, what: str) -> np.ndarray:
    """Index of each key in ``ids`` (vectorised); an unknown key is refused naming its line and value."""
    ids = np.asarray(ids, dtype=str)
    if ids.size == 0:
        raise CityDataError(str(path), col, f"no {what} to match against")
    sorter = np.argsort(ids)
    pos = np.searchsorted(ids, keys, sorter=sorter).clip(max=ids.size - 1)
    idx = sorter[pos]
    bad = np.flatnonzero(ids[idx] != keys)
    if bad.size:
        i = int(bad[0])
        raise CityDataError(str(path), col, f"row {i + 2}: {str(keys[i])!r} is not one of the {what} "
                                            f"({ids.size}: {ids[:5].tolist()}{' ...' if ids.size > 5 else ''})")
    return idx.astype(np.int64)


def _unique(ids: np.ndarray, path: Path, col: str) -> None:
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise CityDataError(str(path), col, f"ids must be unique; duplicated: {uniq[counts > 1][:5].tolist()}")


def _pick(available: list[str], wanted: Sequence[str] | str | None, path: Path, what: str) -> list[str]:
    """``wanted`` (a list or comma string) in its order, each checked against ``available``; all if None."""
    if wanted is None:
        if not available:
            raise CityDataError(str(path), what, "none found")
        return list(available)
    wanted = [w.strip() for w in wanted.split(",")] if isinstance(wanted, str) else [str(w) for w in wanted]
    unknown = [w for w in wanted if w not in available]
    if unknown:
        raise CityDataError(str(path), what, f"no {unknown}; available: {available}")
    return wanted


def _names(channels: Sequence[str] | str, c: int, path: Path) -> list[str]:
    names = [w.strip() for w in channels.split(",")] if isinstance(channels, str) else [str(w) for w in channels]
    if len(names) != c:
        raise CityDataError(str(path), "channels", f"{len(names)} names {names} for {c} channels")
    return names


def _dedupe(names: list[str]) -> list[str]:
    return names if len(set(names)) == len(names) else [f"{n} {i}" for i, n in enumerate(names)]


def _natural_sort(ids: np.ndarray) -> np.ndarray:
    """Region ids sorted as numbers when they all are (``2`` before ``10``), else as text."""
    if ids.size and all(re.fullmatch(r"-?\d+", i) for i in ids):
        return ids[np.argsort(ids.astype(np.int64), kind="stable")]
    return np.sort(ids)


def _expand(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        out += sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p]
    return out


def _one(files: list[Path], suffixes: tuple[str, ...], what: str) -> Path:
    found = [f for f in files if f.suffix.lower() in suffixes]
    if len(found) != 1:
        got = [str(f) for f in found] or [str(f) for f in files]
        raise ValueError(f"libcity: need exactly one {what} among the inputs, got {got}")
    return found[0]


def _json_object(path: Path, expected: str) -> dict:
    obj = read_json(path, expected)
    if not isinstance(obj, dict):
        raise CityDataError(str(path), "<root>", f"expected a JSON object: {expected}")
    return obj


def _city(values, mask, times, step, channels, regions, path: Path, name: str, task: str) -> CityData:
    return CityData(values, times, step, tuple(channels), regions, task=task, name=name, mask=mask, source=str(path))


_CONVERTERS: dict[str, Callable[..., CityData]] = {
    "libcity": from_libcity,
    "basicts": from_basicts,
    "urbangpt-npz": from_urbangpt_npz,
    "long-table": from_long_table,
}
