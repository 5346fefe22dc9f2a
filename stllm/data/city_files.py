"""The one documented on-disk form of a city: an ``.npz`` archive, or the same as a folder of CSVs.

A city nobody prepared for stllm should need no code: counts per region and time step, a clock,
and whatever metadata there is. Both forms carry the same fields and round-trip exactly through
:func:`save_city` / :func:`load_city_file` (values, mask, timestamps, regions, metadata).

``.npz`` (``numpy.savez``; scalars as 0-d arrays; strings as ``str`` arrays, never pickled objects):

============== ========== ========= ==================================================================
key            shape      required  meaning
============== ========== ========= ==================================================================
values         (T, N, C)  yes       counts or flows (float; (T, N) = one channel); NaN where missing
time           (T,)       yes [1]   ISO strings or datetime64 on a regular grid
start, freq    ()         [1]       first step and step ("30min", "1h", "1D"); ``freq`` alone checks ``time``
task           ()         no        "flow" (regression, default) or "event" (will an event happen)
channels       (C,)       no        channel names (default channel_0, ...)
region_ids     (N,)       no        region ids (default 0..N-1), unique
names          (N,)       no        region names for prompts (default "region <id>")
lat, lon       (N,)       no        region centroids in degrees; NaN where unknown
boroughs       (N,)       no        district of each region, for prompts
mask           (T, N, C)  no        bool, True = observed; default: observed where values are finite
adjacency      (N, N)     no        region graph weights
poi_categories (K,)       no        POI category names ...
poi_counts     (N, K)     no        ... and the number of POIs of each category in each region
name           ()         no        dataset name (default: the file name)
place          ()         no        city, e.g. "Chicago"
quantity       ()         no        what is counted, e.g. "taxi", "crime"
============== ========== ========= ==================================================================

[1] ``time``, or ``start`` + ``freq``.

Missing values are not filled by hand: a NaN (or, in CSV, an absent row) is masked, and the masked
entries are ignored by the scaler, the metrics and the baselines (``CityData.observed``).

The folder form holds ``values.csv``, a long table ``time,region,channel,value`` (``channel`` may be
left out for one channel; an absent row or an empty ``value`` is missing), and optionally
``regions.csv`` (``region,name,lat,lon,borough``; its order is the region order, and it may list
regions that never appear in ``values.csv``), ``meta.json`` (``freq``, ``task``, ``name``, ``place``,
``quantity``, ``channels`` in order), ``pois.csv`` (``region,category,count``) and
``adjacency.csv`` (``from,to,weight``; absent pairs are 0). Without ``freq`` the step is the
smallest gap between the times that occur; every time must lie on that grid.

:func:`load_city_file` reads either (a directory, or a ``.npz`` path); its ``task``, ``freq``,
``channels`` and ``keys`` (field -> npz key, for files with other key names) beat the file.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from stllm.data.city import TASKS, CityData, CityDataError, Region, parse_freq
from stllm.data.loaders import NPZ_FIELDS, _open_npz, load_npz, read_json

OVERRIDES = ("task", "freq", "channels", "keys")
FOLDER_FILES = ("values.csv", "regions.csv", "meta.json", "pois.csv", "adjacency.csv")


def load_city_file(
    path: str | os.PathLike,
    *,
    task: str | None = None,
    freq: str | None = None,
    channels: Sequence[str] | None = None,
    keys: Mapping[str, str] | None = None,
) -> CityData:
    """The city in ``path`` (an ``.npz`` file or a folder of CSVs), validated by :class:`CityData`.

    ``task``, ``freq`` and ``channels`` replace what the file says; ``keys`` maps documented fields to
    the npz keys that hold them (``{"values": "flow", "time": "timestamps"}``), for npz files only."""
    path = Path(path)
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    channels = tuple(channels) if channels else None
    if path.is_dir():
        if keys:
            raise ValueError(f"{path}: keys (--keys) rename npz keys; a CSV folder has fixed file and column names")
        return read_city_folder(path, task=task, freq=freq, channels=channels)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: not a city file; expected an .npz archive or a folder with values.csv")
    return read_city_npz(path, task=task, freq=freq, channels=channels, keys=keys)


def npz_keys(present: Sequence[str], keys: Mapping[str, str] | None = None) -> dict[str, str]:
    """Field -> key: every documented field the file has under its own name, then ``keys`` (which must
    name documented fields) on top."""
    keys = dict(keys or {})
    unknown = sorted(set(keys) - set(NPZ_FIELDS))
    if unknown:
        raise ValueError(f"keys (--keys): unknown field(s) {unknown}; the fields are {', '.join(NPZ_FIELDS)}")
    taken = set(keys.values())
    return {**{f: f for f in NPZ_FIELDS if f in present and f not in taken}, **keys}


def read_city_npz(path: str | os.PathLike, *, task=None, freq=None, channels=None, keys=None) -> CityData:
    """The ``.npz`` form: every documented key the file holds is read (see the module docstring)."""
    mapping = npz_keys(list(_open_npz(path)), keys)
    if "values" not in mapping:
        mapping["values"] = "values"  # load_npz names the keys there are
    if "time" not in mapping and "start" not in mapping:
        mapping["time"] = "time"
    return load_npz(path, mapping, task=task, freq=freq, channels=channels, nan_is_missing=True)


# -- the folder form -----------------------------------------------------------------------------------------
def _read_rows(path: Path, required: Sequence[str], optional: Sequence[str] = ()) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV; a missing column or a row of the wrong width is named by line."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise CityDataError(str(path), "<file>", f"not UTF-8 text (byte {e.start}); expected a CSV") from None
    if not rows:
        raise CityDataError(str(path), "<file>", f"empty file; expected a header {','.join(required)}")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in required if c not in header]
    if missing:
        raise CityDataError(str(path), missing[0], f"line 1: no column {missing[0]!r}; the header is {header}, "
                                                   f"expected {','.join([*required, *optional])}")
    body = rows[1:]
    bad = [i for i, r in enumerate(body) if len(r) != len(header)]
    if bad:
        raise CityDataError(str(path), "<row>", f"line {bad[0] + 2}: {len(body[bad[0]])} cells, the header has "
                                                f"{len(header)} ({len(bad)} such line(s))")
    return header, body


def _column(header: list[str], body: list[list[str]], name: str) -> np.ndarray:
    i = header.index(name)
    return np.array([r[i].strip() for r in body], dtype=str)


def _numbers(cells: np.ndarray, path: Path, field: str, allow_empty: bool = False) -> np.ndarray:
    """Floats of a CSV column; the first cell that is not a number is named by its line."""
    empty = cells == ""
    out = np.full(cells.shape, np.nan)
    try:
        out[~empty] = cells[~empty].astype(float)
    except ValueError:
        for i, cell in enumerate(cells.tolist()):
            if cell or not allow_empty:
                try:
                    float(cell)
                except ValueError:
                    raise CityDataError(str(path), field, f"line {i + 2}: {cell!r} is not a number") from None
    if empty.any() and not allow_empty:
        raise CityDataError(str(path), field, f"line {int(np.argmax(empty)) + 2}: empty {field!r}")
    return out


def _times(cells: np.ndarray, path: Path) -> np.ndarray:
    try:
        return cells.astype("datetime64[m]")
    except ValueError:
        for i, cell in enumerate(cells.tolist()):
            try:
                np.datetime64(cell, "m")
            except ValueError:
                raise CityDataError(str(path), "time", f"line {i + 2}: {cell!r} is not a date/time "
                                                       "(use ISO, e.g. 2024-01-31 or 2024-01-31T08:30)") from None
        raise


def _index(cells: np.ndarray, order: list[str]) -> np.ndarray:
    """Position of each cell in ``order`` (every cell must be in it)."""
    lookup = {v: i for i, v in enumerate(order)}
    return np.array([lookup[c] for c in cells], dtype=np.int64)


def read_city_folder(folder: str | os.PathLike, *, task=None, freq=None, channels=None) -> CityData:
    """The folder form (see the module docstring): ``values.csv`` + optional regions, meta, POIs, graph."""
    folder = Path(folder)
    vpath = folder / "values.csv"
    if not vpath.is_file():
        raise FileNotFoundError(f"{vpath}: no such file; a city folder holds values.csv (time,region,channel,value)")
    meta = _read_meta(folder / "meta.json")
    header, body = _read_rows(vpath, ("time", "region", "value"), ("channel",))
    if not body:
        raise CityDataError(str(vpath), "values", "no rows after the header")
    times = _times(_column(header, body, "time"), vpath)
    region_cells = _column(header, body, "region")
    chan_cells = _column(header, body, "channel") if "channel" in header else np.full(len(body), "value")
    values = _numbers(_column(header, body, "value"), vpath, "value", allow_empty=True)

    regions = _read_regions(folder / "regions.csv")
    order = [r.id for r in regions] if regions is not None else list(dict.fromkeys(region_cells.tolist()))
    unknown = ~np.isin(region_cells, order)
    if unknown.any():
        i = int(np.argmax(unknown))
        raise CityDataError(str(vpath), "region", f"line {i + 2}: region {str(region_cells[i])!r} is not in "
                                                  "regions.csv")
    chan_order = list(meta.get("channels") or dict.fromkeys(chan_cells.tolist()))
    unknown = ~np.isin(chan_cells, chan_order)
    if unknown.any():
        i = int(np.argmax(unknown))
        raise CityDataError(str(vpath), "channel", f"line {i + 2}: channel {str(chan_cells[i])!r} is not in "
                                                   f"meta.json's channels {chan_order}")
    step = freq or meta.get("freq")
    grid = _time_grid(times, step, vpath)
    t_idx = ((times - grid[0]) // (grid[1] - grid[0]) if len(grid) > 1 else np.zeros(len(times))).astype(np.int64)
    n_idx, c_idx = _index(region_cells, order), _index(chan_cells, chan_order)
    shape = (len(grid), len(order), len(chan_order))
    flat = np.ravel_multi_index((t_idx, n_idx, c_idx), shape)
    uniq, first, counts = np.unique(flat, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = flat == uniq[np.argmax(counts > 1)]
        a, b = np.flatnonzero(dup)[:2]
        raise CityDataError(str(vpath), "value", f"lines {a + 2} and {b + 2} both give ({times[a]}, region "
                                                 f"{str(region_cells[a])!r}, channel {str(chan_cells[a])!r})")
    dense = np.full(int(np.prod(shape)), np.nan, dtype=np.float64)
    dense[flat] = values
    dense = dense.reshape(shape)
    mask = np.isfinite(dense)
    if regions is None:
        regions = tuple(Region(i, f"region {i}") for i in order)
    regions = _with_pois(regions, folder / "pois.csv")
    adjacency = _read_adjacency(folder / "adjacency.csv", order)
    return CityData(dense.astype(np.float32), grid, step or (grid[1] - grid[0] if len(grid) > 1 else "1D"),
                    tuple(channels or chan_order), regions, task=task or meta.get("task", "flow"),
                    name=meta.get("name") or folder.name, quantity=meta.get("quantity", ""),
                    place=meta.get("place", ""), adjacency=adjacency, mask=None if mask.all() else mask,
                    source=str(folder))  # fmt: skip


def _time_grid(times: np.ndarray, step, path: Path) -> np.ndarray:
    """The regular grid from the first to the last time; a time off the grid is named by its line."""
    lo, hi = times.min(), times.max()
    if step is not None:
        try:
            delta = parse_freq(step)
        except ValueError as e:
            raise CityDataError(str(path.parent / "meta.json"), "freq", str(e)) from None
    else:
        gaps = np.diff(np.unique(times))
        if gaps.size == 0:
            return np.array([lo])
        delta = gaps.min()
    off = (times - lo) % delta != np.timedelta64(0, "m")
    if off.any():
        i = int(np.argmax(off))
        raise CityDataError(str(path), "time", f"line {i + 2}: {times[i]} is not on the {delta} grid starting "
                                               f"{lo} (irregular time steps; set freq in meta.json if that is wrong)")
    return lo + np.arange((hi - lo) // delta + 1) * delta


def _read_meta(path: Path) -> dict:
    if not path.is_file():
        return {}
    meta = read_json(path, "an object with freq, task, name, place, quantity, channels")
    if not isinstance(meta, dict):
        raise CityDataError(str(path), "<root>", f"expected a JSON object, got {type(meta).__name__}")
    known = ("freq", "task", "name", "place", "quantity", "channels")
    unknown = sorted(set(meta) - set(known))
    if unknown:
        raise CityDataError(str(path), unknown[0], f"unknown key; meta.json knows {', '.join(known)}")
    if "channels" in meta and not (isinstance(meta["channels"], list) and all(isinstance(c, str)
                                                                              for c in meta["channels"])):
        raise CityDataError(str(path), "channels", f"must be a list of names, got {meta['channels']!r}")
    if meta.get("task", "flow") not in TASKS:
        raise CityDataError(str(path), "task", f"must be one of {TASKS}, got {meta['task']!r}")
    return meta


def _read_regions(path: Path) -> tuple[Region, ...] | None:
    if not path.is_file():
        return None
    header, body = _read_rows(path, ("region",), ("name", "lat", "lon", "borough"))
    ids = _column(header, body, "region")
    first = np.unique(ids, return_index=True)[1]
    if len(first) < len(ids):
        i = int(np.flatnonzero(~np.isin(np.arange(len(ids)), first))[0])
        raise CityDataError(str(path), "region", f"line {i + 2}: region {str(ids[i])!r} listed twice")
    n = len(ids)
    names = _column(header, body, "name") if "name" in header else np.array([f"region {i}" for i in ids])
    lat = _numbers(_column(header, body, "lat"), path, "lat", True) if "lat" in header else np.full(n, np.nan)
    lon = _numbers(_column(header, body, "lon"), path, "lon", True) if "lon" in header else np.full(n, np.nan)
    borough = _column(header, body, "borough") if "borough" in header else np.full(n, "")
    return tuple(Region(i, nm, float(a), float(o), borough=b) for i, nm, a, o, b in zip(ids, names, lat, lon, borough))


def _with_pois(regions: tuple[Region, ...], path: Path) -> tuple[Region, ...]:
    if not path.is_file():
        return regions
    header, body = _read_rows(path, ("region", "category", "count"))
    ids, cats = _column(header, body, "region"), _column(header, body, "category")
    counts = _numbers(_column(header, body, "count"), path, "count")
    bad = (counts < 0) | (counts != np.round(counts))
    if bad.any():
        i = int(np.argmax(bad))
        raise CityDataError(str(path), "count", f"line {i + 2}: {counts[i]:g} is not a whole count >= 0")
    known = {r.id for r in regions}
    unknown = [i for i, r in enumerate(ids) if r not in known]
    if unknown:
        raise CityDataError(str(path), "region", f"line {unknown[0] + 2}: unknown region {str(ids[unknown[0]])!r}")
    per_region: dict[str, list[tuple[str, int]]] = {}
    for r, c, k in zip(ids, cats, counts):
        per_region.setdefault(str(r), []).append((str(c), int(k)))
    return tuple(Region(r.id, r.name, r.lat, r.lon, r.borough, tuple(per_region.get(r.id, r.pois)), r.kind)
                 for r in regions)


def _read_adjacency(path: Path, order: list[str]) -> np.ndarray | None:
    if not path.is_file():
        return None
    header, body = _read_rows(path, ("from", "to", "weight"))
    src, dst = _column(header, body, "from"), _column(header, body, "to")
    for field, cells in (("from", src), ("to", dst)):
        unknown = ~np.isin(cells, order)
        if unknown.any():
            i = int(np.argmax(unknown))
            raise CityDataError(str(path), field, f"line {i + 2}: unknown region {str(cells[i])!r}")
    adj = np.zeros((len(order), len(order)), dtype=np.float32)
    adj[_index(src, order), _index(dst, order)] = _numbers(_column(header, body, "weight"), path, "weight")
    return adj


# -- writing -------------------------------------------------------------------------------------------------
def freq_string(freq: np.timedelta64) -> str:
    """``"30min"``, ``"1h"``, ``"1D"``: the step as :func:`parse_freq` reads it back."""
    minutes = int(np.asarray(freq).astype("timedelta64[m]").astype(np.int64))
    if minutes % 1440 == 0:
        return f"{minutes // 1440}D"
    return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}min"


def _iso(ts: np.ndarray) -> np.ndarray:
    return np.datetime_as_string(np.asarray(ts).astype("datetime64[m]"), unit="m")


def _pois_table(city: CityData) -> tuple[list[str], np.ndarray]:
    """Categories (first-seen order) and ``(N, K)`` counts of the regions' POIs."""
    cats = list(dict.fromkeys(c for r in city.regions for c, _ in r.pois))
    col = {c: j for j, c in enumerate(cats)}
    counts = np.zeros((city.n_regions, len(cats)), dtype=np.int64)
    for i, r in enumerate(city.regions):
        for c, k in r.pois:
            counts[i, col[c]] = k
    return cats, counts


def save_city(city: CityData, path: str | os.PathLike) -> Path:
    """Write ``city`` in the documented form: ``*.npz`` -> one archive, anything else -> a CSV folder.

    Missing values are written as NaN (npz, with the mask) or as absent rows (CSV). Optional fields
    are written only when they carry something (names other than the default, known coordinates,
    boroughs, POIs, adjacency); :func:`load_city_file` reads the result back equal to ``city``."""
    path = Path(path)
    if path.suffix == ".npz":
        return _save_npz(city, path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: exists and is not a folder; a city is saved to an .npz path or a folder")
    return _save_folder(city, path)


def _save_npz(city: CityData, path: Path) -> Path:
    values = city.values.astype(np.float32, copy=True)
    arrays: dict[str, np.ndarray] = {"values": values, "time": _iso(city.timestamps),
                                     "freq": np.array(freq_string(city.freq)), "task": np.array(city.task),
                                     "channels": np.array(city.channels, dtype=str),
                                     "region_ids": np.array(city.region_ids, dtype=str),
                                     "names": np.array([r.name for r in city.regions], dtype=str),
                                     "name": np.array(city.name)}  # fmt: skip
    if city.mask is not None:
        values[~city.mask] = np.nan
        arrays["mask"] = city.mask
    coords = city.coords
    if np.isfinite(coords).any():
        arrays["lat"] = np.array([r.lat for r in city.regions])  # float64: Region keeps them unrounded
        arrays["lon"] = np.array([r.lon for r in city.regions])
    if any(r.borough for r in city.regions):
        arrays["boroughs"] = np.array([r.borough for r in city.regions], dtype=str)
    cats, counts = _pois_table(city)
    if cats:
        arrays["poi_categories"], arrays["poi_counts"] = np.array(cats, dtype=str), counts
    if city.adjacency is not None:
        arrays["adjacency"] = city.adjacency
    for key in ("place", "quantity"):
        if getattr(city, key):
            arrays[key] = np.array(getattr(city, key))
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def _save_folder(city: CityData, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    t, n, c = np.nonzero(city.observed)
    rows = np.stack([_iso(city.timestamps)[t], np.array(city.region_ids, dtype=str)[n],
                     np.array(city.channels, dtype=str)[c],
                     np.array([repr(float(v)) for v in city.values[t, n, c]], dtype=str)], axis=1)  # fmt: skip
    _write_csv(folder / "values.csv", ["time", "region", "channel", "value"], rows)
    _write_csv(folder / "regions.csv", ["region", "name", "lat", "lon", "borough"],
               [[r.id, r.name, _num(r.lat), _num(r.lon), r.borough] for r in city.regions])
    meta = {"freq": freq_string(city.freq), "task": city.task, "name": city.name, "channels": list(city.channels)}
    meta.update({k: getattr(city, k) for k in ("place", "quantity") if getattr(city, k)})
    _write_text(folder / "meta.json", json.dumps(meta, indent=2) + "\n")
    cats, counts = _pois_table(city)
    for name in ("pois.csv", "adjacency.csv"):
        (folder / name).unlink(missing_ok=True)  # an earlier city's metadata must not attach to this one
    if cats:
        i, j = np.nonzero(counts)
        _write_csv(folder / "pois.csv", ["region", "category", "count"],
                   [[city.region_ids[a], cats[b], str(counts[a, b])] for a, b in zip(i, j)])
    if city.adjacency is not None:
        i, j = np.nonzero(city.adjacency)
        _write_csv(folder / "adjacency.csv", ["from", "to", "weight"],
                   [[city.region_ids[a], city.region_ids[b], repr(float(city.adjacency[a, b]))] for a, b in zip(i, j)])
    return folder


def _num(x: float) -> str:
    return "" if not np.isfinite(x) else repr(float(x))


def _write_csv(path: Path, header: list[str], rows) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# -- flags -----------------------------------------------------------------------------------------------------
def parse_overrides(task: str | None = None, freq: str | None = None, channels: str | Sequence[str] | None = None,
                    keys: str | Mapping[str, str] | None = None) -> dict:
    """``--task``, ``--freq``, ``--channels a,b``, ``--keys values=flow,time=ts`` -> :func:`load_city_file`'s
    keyword arguments (unset ones left out); each bad value is refused naming its flag."""
    out: dict = {}
    if task is not None:
        if task not in TASKS:
            raise ValueError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
        out["task"] = task
    if freq is not None:
        try:
            parse_freq(freq)
        except ValueError as e:
            raise ValueError(f"--freq: {e}") from None
        out["freq"] = freq
    if channels is not None:
        names = [c.strip() for c in channels.split(",")] if isinstance(channels, str) else [str(c) for c in channels]
        if not names or any(not c for c in names):
            raise ValueError(f"--channels must be comma-separated names, e.g. inflow,outflow; got {channels!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"--channels: names must be unique, got {channels!r}")
        out["channels"] = tuple(names)
    if keys is not None:
        out["keys"] = _parse_keys(keys)
    return out


def _parse_keys(keys: str | Mapping[str, str]) -> dict[str, str]:
    if isinstance(keys, Mapping):
        pairs = [(str(k), str(v)) for k, v in keys.items()]
    else:
        pairs = []
        for item in (i.strip() for i in keys.split(",")):
            field, eq, key = (x.strip() for x in item.partition("="))
            if not (eq and field and key):
                raise ValueError(f"--keys must be field=key pairs, e.g. values=flow,time=timestamps; got {item!r}")
            pairs.append((field, key))
    unknown = sorted({f for f, _ in pairs} - set(NPZ_FIELDS))
    if unknown:
        raise ValueError(f"--keys: unknown field(s) {unknown}; the fields are {', '.join(NPZ_FIELDS)}")
    return dict(pairs)
