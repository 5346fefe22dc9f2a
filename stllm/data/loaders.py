"""Loaders that turn files into validated :class:`CityData` (never raw dicts).

``load_npz`` reads any ``.npz`` through a field -> key mapping; the presets below know the files in
``../shared/data`` (see its README): Manhattan taxi/bike 30-min flows joined to zone boroughs and
UrbanGPT's POI records, NYC crime (Manhattan zones or the 16x16 grid) and BikeNYC (hourly grid).
Pickle is never enabled for npz files; every error names the file and the field.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from stllm.data.city import CityData, CityDataError, Region, parse_freq

# every field of the documented city file (stllm.data.city_files); load_npz reads those ``keys`` maps to npz keys
NPZ_FIELDS = ("values", "time", "start", "freq", "task", "channels", "region_ids", "names", "lat", "lon", "boroughs",
              "mask", "adjacency", "poi_categories", "poi_counts", "name", "place", "quantity")
SCALAR_FIELDS = ("start", "freq", "task", "name", "place", "quantity")


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$STLLM_DATA_ROOT``, else ``../shared/data`` next to the project checkout."""
    if root is not None:
        return Path(root)
    env = os.environ.get("STLLM_DATA_ROOT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


_ZIP_MAGIC, _NPY_MAGIC = b"PK\x03\x04", b"\x93NUMPY"
_NPZ_HOW = "write it with numpy.savez(path, values=..., time=...)"


def _open_npz(path: str | os.PathLike) -> Mapping[str, np.ndarray]:
    """Every array of an ``.npz`` (pickle never enabled); a file that is not one is refused by what it is."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory; expected an .npz file ({_NPZ_HOW})")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    _check_npz_header(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy/zipfile raise half a dozen types for a damaged archive
        raise CityDataError(str(path), "<file>", f"not a readable .npz archive (truncated or corrupt: "
                                                 f"{type(e).__name__}: {e}); {_NPZ_HOW}") from None
    with archive:
        return {k: _read_member(archive, k, path) for k in archive.files}


def _check_npz_header(path: Path) -> None:
    """Name what the file is when it is not a zip archive: empty, a single ``.npy`` array, or text."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise CityDataError(str(path), "<file>", f"empty file (0 bytes); expected an .npz archive: {_NPZ_HOW}")
    if head.startswith(_NPY_MAGIC):
        raise CityDataError(str(path), "<file>", "a single .npy array, not an .npz archive of named arrays; "
                                                 "save it with numpy.savez(path, values=array, time=...)")
    if not head.startswith(_ZIP_MAGIC):
        try:
            kind = f"a text file starting {head.decode('utf-8').splitlines()[0][:40]!r}"
        except (UnicodeDecodeError, IndexError):
            kind = f"unknown binary data starting {head[:8]!r}"
        raise CityDataError(str(path), "<file>", f"{kind}, not an .npz (zip) archive; {_NPZ_HOW}")


def _read_member(archive, key: str, path: Path) -> np.ndarray:
    """One array of the archive; a damaged or object (pickle) member is refused naming its key."""
    try:
        return archive[key]
    except ValueError as e:
        if "pickle" in str(e):
            raise CityDataError(str(path), key, "holds Python objects (dtype=object), which need pickle and are "
                                                "never loaded; save numbers, or strings as a str array") from None
        raise CityDataError(str(path), key, f"unreadable array ({e}); the file is corrupt: {_NPZ_HOW}") from None
    except Exception as e:  # zlib.error, BadZipFile (CRC), EOFError, tokenize errors on a damaged header
        raise CityDataError(str(path), key, f"unreadable array ({type(e).__name__}: {e}); the file is truncated or "
                                            f"corrupt: {_NPZ_HOW}") from None


def _get(data: Mapping[str, np.ndarray], path, field: str, key: str) -> np.ndarray:
    if key not in data:
        raise CityDataError(str(path), field, f"key {key!r} not in file; available keys: {sorted(data)} (pass "
                                              f"keys={{{field!r}: <one of them>}} to load_npz, --keys {field}=<key> to "
                                              "stllm, or rename it)")
    return data[key]


def load_npz(
    path: str | os.PathLike,
    keys: Mapping[str, str | None] | None = None,
    *,
    freq: str | None = None,
    start: str | None = None,
    channels: Sequence[str] | None = None,
    regions: Sequence[Region] | None = None,
    task: str | None = None,
    name: str | None = None,
    quantity: str = "",
    place: str = "",
    nan_is_missing: bool = False,
) -> CityData:
    """Load ``(T, N, C)`` values from an npz. ``keys`` maps fields of :data:`NPZ_FIELDS` to npz keys
    (default ``{"values": "values", "time": "time"}``; fields not mapped are not read).

    Without a ``time`` key, ``start`` and ``freq`` build the time axis; with one, ``freq`` defaults
    to its first step. Arguments beat the file (``task``, ``freq``, ``start``, ``channels``, ``name``,
    ``quantity``, ``place``; ``regions`` replaces the region metadata). ``nan_is_missing``: NaN values
    without a ``mask`` key are missing (masked) rather than an error. Every shape problem of the
    mapped keys is found by :func:`npz_problems`; the first one is raised.
    """
    keys = {"values": "values", "time": "time", **(keys or {})}
    keys = {f: k for f, k in keys.items() if k is not None}
    unknown = set(keys) - set(NPZ_FIELDS)
    if unknown:
        raise ValueError(f"load_npz: unknown field(s) {sorted(unknown)}; fields are {NPZ_FIELDS}")
    data = _open_npz(path)
    src = str(path)
    problems = npz_problems(data, keys, src)
    if problems:
        raise problems[0]

    def get(field):
        return data[keys[field]] if field in keys else None

    def scalar(field, given):
        return given if given not in (None, "") else (str(get(field).reshape(())) if field in keys else None)

    values = get("values")
    values = values[..., None] if values.ndim == 2 else values
    t, n, c = values.shape
    freq, start = scalar("freq", freq), scalar("start", start)
    if "time" in keys and keys["time"] in data:
        timestamps = _timestamps(get("time"), src, keys["time"])
        if freq is None and t > 1:
            freq = timestamps[1] - timestamps[0]
    elif start is not None and freq is not None:
        try:
            timestamps = np.datetime64(start, "m") + np.arange(t) * parse_freq(freq)
        except ValueError as e:
            raise CityDataError(src, "start", f"{start!r} with freq {freq!r} gives no time axis: {e}") from None
    else:
        _get(data, src, "time", keys.get("time", "time"))  # raises, naming the keys there are
    if regions is None:
        regions = _regions_from(data, keys, n)
    chans = channels or (tuple(str(x) for x in get("channels")) if "channels" in keys else
                         tuple(f"channel_{i}" for i in range(c)))
    mask = get("mask")
    if mask is not None:
        mask = mask.astype(bool).reshape(values.shape)
    elif nan_is_missing and not np.isfinite(values).all():
        mask = np.isfinite(values)
    return CityData(values, timestamps, freq if freq is not None else "1D", chans, regions,
                    task=scalar("task", task) or "flow", name=scalar("name", name) or Path(path).stem,
                    quantity=scalar("quantity", quantity) or "", place=scalar("place", place) or "",
                    adjacency=get("adjacency"), mask=mask, source=src)


def _timestamps(raw: np.ndarray, src: str, key: str) -> np.ndarray:
    try:
        return np.asarray(raw).astype("datetime64[m]")
    except (ValueError, TypeError) as e:
        raise CityDataError(src, "time", f"key {key!r} is not parseable as dates: {e}") from None


def npz_problems(data: Mapping[str, np.ndarray], keys: Mapping[str, str], src: str) -> list[CityDataError]:
    """Every problem of the mapped keys' shapes and kinds, each naming the field and the key, so that
    ``stllm data check`` reports them all at once (:func:`load_npz` raises the first)."""
    if "values" not in keys:
        return [CityDataError(src, "values", "no key for the required field 'values'")]
    try:
        values = _get(data, src, "values", keys["values"])
    except CityDataError as e:
        return [e]
    if values.ndim not in (2, 3):
        return [CityDataError(src, "values", f"key {keys['values']!r} must be (T, N, C) or (T, N), got {values.shape}")]
    t, n = values.shape[:2]
    c = values.shape[2] if values.ndim == 3 else 1
    k = None
    if "poi_categories" in keys and keys["poi_categories"] in data:
        k = data[keys["poi_categories"]].shape[0] if data[keys["poi_categories"]].ndim == 1 else -1
    expected = {"time": (t,), "region_ids": (n,), "names": (n,), "lat": (n,), "lon": (n,), "boroughs": (n,),
                "channels": (c,), "mask": values.shape, "adjacency": (n, n), "poi_categories": (k,),
                "poi_counts": (n, k), **{f: () for f in SCALAR_FIELDS}}
    has = {"time": f"{t} steps", "channels": f"{c} channels", "mask": f"shape {values.shape}",
           "poi_categories": "one name per category", "poi_counts": f"{n} regions and {k} POI categories"}
    problems = []
    for field, key in keys.items():
        if field == "values":
            continue
        if key not in data:
            if field != "time" or ("start" not in keys):
                try:
                    _get(data, src, field, key)
                except CityDataError as e:
                    problems.append(e)
            continue
        arr = data[key]
        want = expected[field]
        if field in SCALAR_FIELDS:
            if arr.size != 1:
                problems.append(CityDataError(src, field, f"key {key!r} must be one value (a 0-d array), got shape "
                                                          f"{arr.shape}"))
        elif arr.shape != want:
            problems.append(CityDataError(src, field, f"key {key!r} has shape {arr.shape}, values have "
                                                      f"{has.get(field, f'{n} regions')}: expected {want}"))
        elif field in ("lat", "lon", "adjacency", "poi_counts") and not np.issubdtype(arr.dtype, np.number):
            problems.append(CityDataError(src, field, f"key {key!r} must hold numbers, got dtype {arr.dtype}"))
        elif field == "mask" and not (arr.dtype == np.bool_ or np.isin(arr, (0, 1)).all()):
            problems.append(CityDataError(src, field, f"key {key!r} must be bool (True = observed), got {arr.dtype}"))
        elif field == "poi_counts" and ((arr < 0).any() or (arr != np.round(arr)).any()):
            problems.append(CityDataError(src, field, f"key {key!r} must be non-negative whole counts"))
    if ("poi_counts" in keys) != ("poi_categories" in keys):
        have, lack = ("poi_counts", "poi_categories") if "poi_counts" in keys else ("poi_categories", "poi_counts")
        problems.append(CityDataError(src, lack, f"{have!r} needs {lack!r} too (poi_counts[i, j] = POIs of "
                                                 "category j in region i)"))
    return problems


def _regions_from(data, keys, n) -> tuple[Region, ...]:
    """Regions from the mapped per-region keys (shapes already checked by :func:`npz_problems`)."""
    col = {f: data[keys[f]] for f in ("region_ids", "names", "lat", "lon", "boroughs") if f in keys}
    ids = col.get("region_ids", np.arange(n))
    names = col.get("names", [f"region {i}" for i in ids])
    lat = col.get("lat", np.full(n, np.nan))
    lon = col.get("lon", np.full(n, np.nan))
    boroughs = col.get("boroughs", [""] * n)
    pois = [()] * n
    if "poi_counts" in keys:
        cats = [str(x) for x in data[keys["poi_categories"]]]
        counts = data[keys["poi_counts"]].astype(np.int64)
        pois = [tuple((cats[j], int(row[j])) for j in np.flatnonzero(row)) for row in counts]
    return tuple(Region(str(i), str(nm), float(a), float(o), borough=str(b), pois=p)
                 for i, nm, a, o, b, p in zip(ids, names, lat, lon, boroughs, pois))


# -- metadata joins -----------------------------------------------------------------------------------
def _read_zones_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        id_col = "zone_id" if "zone_id" in (reader.fieldnames or ()) else "location_id"
        if id_col not in (reader.fieldnames or ()) or "borough" not in (reader.fieldnames or ()):
            raise CityDataError(
                str(path), "zone_id", f"need columns zone_id/location_id and borough, got {reader.fieldnames}"
            )
        return {row[id_col]: row for row in reader}


def read_json(path: str | os.PathLike, expected: str):
    """Parse a JSON file; a corrupt one is refused naming the file, the line and column, and ``expected``
    (what the file should hold), instead of json's bare 'Expecting value: line 1 column 1'."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CityDataError(str(path), "<file>", f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                                                 f"expected {expected}") from None
    except UnicodeDecodeError as e:
        raise CityDataError(str(path), "<file>", f"not UTF-8 text (byte {e.start}); expected JSON: "
                                                 f"{expected}") from None


def read_zone_pois(path: str | os.PathLike) -> dict[str, tuple[tuple[str, int], ...]]:
    """UrbanGPT's ``zone_poi.json`` / ``region_poi.json``: id -> ((category, count), ...)."""
    path = Path(path)
    records = read_json(path, "an object of region id -> list of POI records with a category_name")
    if not isinstance(records, dict):
        raise CityDataError(str(path), "<root>", f"expected an object of id -> POI list, got {type(records).__name__}")
    out = {}
    for key, pois in records.items():
        try:
            out[str(key)] = tuple(Counter(p["category_name"] for p in pois).items())
        except (TypeError, KeyError):
            raise CityDataError(str(path), f"{key}.category_name", "POI record without a category_name") from None
    return out


def _with_metadata(regions, root: Path, with_pois: bool) -> tuple[Region, ...]:
    zones = _read_zones_csv(root / "nyc_manhattan_flows" / "zones.csv")
    pois = read_zone_pois(root / "region_metadata" / "urbangpt_poi" / "zone_poi.json") if with_pois else {}
    out = []
    for r in regions:
        row = zones.get(r.id)
        if row is None:
            raise CityDataError(str(root / "nyc_manhattan_flows" / "zones.csv"), "zone_id", f"no row for zone {r.id}")
        out.append(Region(r.id, r.name, r.lat, r.lon, borough=row["borough"], pois=pois.get(r.id, ())))
    return tuple(out)


# -- presets for ../shared/data ------------------------------------------------------------------------
_ZONE_KEYS = {"region_ids": "zone_id", "names": "zone_name", "lat": "lat", "lon": "lon"}


def load_manhattan_flows(mode: str = "taxi", root: str | os.PathLike | None = None, with_pois: bool = True) -> CityData:
    """Manhattan taxi or bike in/out flow, 30-min steps, 69 TLC zones (2019-2020), with boroughs and POIs.

    Channel 0 = inflow (arrivals), 1 = outflow (departures) for both modes (the file already fixes
    the source repository's swapped bike naming).
    """
    if mode not in ("taxi", "bike"):
        raise ValueError(f"mode must be 'taxi' or 'bike', got {mode!r}")
    root = data_root(root)
    path = root / "nyc_manhattan_flows" / "manhattan_taxi_bike_30min.npz"
    city = load_npz(path, {"values": mode, "time": "time", "adjacency": "adj", **_ZONE_KEYS},
                    channels=("inflow", "outflow"), task="flow", name=f"manhattan-{mode}", quantity=mode,
                    place="New York City")
    return replace(city, regions=_with_metadata(city.regions, root, with_pois))


def load_nyc_crime(grid: bool = False, root: str | os.PathLike | None = None, with_pois: bool = True) -> CityData:
    """NYC daily crime counts 2014-2015 (burglary, grand larceny, robbery, felony assault) as events.

    ``grid=False``: the 69 Manhattan zones (same order as the flows); ``grid=True``: the 16x16 grid of
    all NYC used by STHSL/ST-SHN, regions ``"row_col"`` at cell centres (row = latitude index).
    """
    root = data_root(root)
    if not grid:
        path = root / "nyc_crime" / "nyc_crime_daily_manhattan_zones.npz"
        city = load_npz(path, {"values": "counts", "time": "date", "channels": "categories", **_ZONE_KEYS},
                        freq="1D", task="event", name="nyc-crime-manhattan", quantity="crime", place="New York City")
        return replace(city, regions=_with_metadata(city.regions, root, with_pois))
    path = root / "nyc_crime" / "nyc_crime_daily.npz"
    data = _open_npz(path)
    counts = _get(data, path, "values", "counts")
    if counts.ndim != 4:
        raise CityDataError(str(path), "values", f"key 'counts' must be (rows, cols, T, C), got {counts.shape}")
    rows, cols, t, c = counts.shape
    lat = _get(data, path, "lat", "cell_lat_center")
    lon = _get(data, path, "lon", "cell_lon_center")
    if lat.shape != (rows,) or lon.shape != (cols,):
        raise CityDataError(str(path), "lat", f"cell centres {lat.shape}/{lon.shape} do not match grid {rows}x{cols}")
    regions = tuple(Region(f"{i}_{j}", f"grid cell ({i}, {j})", float(lat[i]), float(lon[j]))
                    for i in range(rows) for j in range(cols))
    values = counts.reshape(rows * cols, t, c).transpose(1, 0, 2)
    return CityData(values, _get(data, path, "time", "dates"), "1D",
                    tuple(str(x) for x in _get(data, path, "channels", "categories")), regions, task="event",
                    name="nyc-crime-grid", quantity="crime", place="New York City", source=str(path))


def load_bikenyc(root: str | os.PathLike | None = None) -> CityData:
    """BikeNYC (NYCBike1) hourly in/out flow on a 16x8 grid, 2014 (dates inferred; no coordinates)."""
    path = data_root(root) / "nycbike1_hourly" / "nycbike1_hourly_valtest.npz"
    data = _open_npz(path)
    shape = tuple(int(x) for x in _get(data, path, "grid_shape", "grid_shape"))
    regions = tuple(Region(f"{i}_{j}", f"grid cell ({i}, {j})") for i in range(shape[0]) for j in range(shape[1]))
    return load_npz(path, {"values": "data", "time": "time_inferred", "adjacency": "adj"}, regions=regions,
                    channels=("inflow", "outflow"), task="flow", name="bikenyc", quantity="bike",
                    place="New York City")


PRESETS = ("synthetic", "manhattan-taxi", "manhattan-bike", "crime", "bikenyc")


def load_preset(name: str, root: str | os.PathLike | None = None, file_options: Mapping | None = None,
                **synthetic) -> CityData:
    """A city by name (``PRESETS``), or a city file: an ``.npz`` or a folder of CSVs, read by
    :func:`stllm.data.city_files.load_city_file` with ``file_options`` (``task``, ``freq``, ``channels``,
    ``keys``: they beat the file). ``synthetic`` holds ``synthetic_city`` options."""
    options = {k: v for k, v in (file_options or {}).items() if v is not None}
    is_file = name.endswith(".npz") or Path(name).is_dir()
    if options and not is_file:
        raise ValueError(f"--{', --'.join(sorted(options))}: only for a city file (.npz or folder), and data "
                         f"{name!r} is a preset (use --synthetic_task for the synthetic city)")
    if name == "synthetic":
        from stllm.data.synthetic import synthetic_city

        return synthetic_city(**synthetic)
    if name in ("manhattan-taxi", "manhattan-bike"):
        return load_manhattan_flows(mode=name.split("-")[1], root=root)
    if name == "crime":
        return load_nyc_crime(root=root)
    if name == "bikenyc":
        return load_bikenyc(root=root)
    if is_file:
        from stllm.data.city_files import load_city_file

        return load_city_file(name, **options)
    raise ValueError(f"data {name!r}: use one of {', '.join(PRESETS)}, a path to an .npz file or a folder with "
                     "values.csv (see README: Your own city)")
