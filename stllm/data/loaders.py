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

NPZ_FIELDS = ("values", "time", "region_ids", "names", "lat", "lon", "adjacency", "channels", "mask")


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$STLLM_DATA_ROOT``, else ``../shared/data`` next to the project checkout."""
    if root is not None:
        return Path(root)
    env = os.environ.get("STLLM_DATA_ROOT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _open_npz(path: str | os.PathLike) -> Mapping[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except ValueError as e:  # object arrays need pickle: refuse
        raise CityDataError(str(path), "<file>", f"cannot read without pickle: {e}") from None


def _get(data: Mapping[str, np.ndarray], path, field: str, key: str) -> np.ndarray:
    if key not in data:
        raise CityDataError(str(path), field, f"key {key!r} not in file; available keys: {sorted(data)}")
    return data[key]


def load_npz(
    path: str | os.PathLike,
    keys: Mapping[str, str] | None = None,
    *,
    freq: str | None = None,
    start: str | None = None,
    channels: Sequence[str] | None = None,
    regions: Sequence[Region] | None = None,
    task: str = "flow",
    name: str | None = None,
    quantity: str = "",
    place: str = "",
) -> CityData:
    """Load ``(T, N, C)`` values from an npz. ``keys`` maps fields of :data:`NPZ_FIELDS` to npz keys
    (default ``{"values": "values", "time": "time"}``; absent fields are omitted or defaulted).

    Without a ``time`` key, ``start`` and ``freq`` build the time axis; with one, ``freq`` defaults
    to its first step. ``regions`` overrides the region metadata read from the file.
    """
    keys = {"values": "values", "time": "time", **(keys or {})}
    unknown = set(keys) - set(NPZ_FIELDS)
    if unknown:
        raise ValueError(f"load_npz: unknown field(s) {sorted(unknown)}; fields are {NPZ_FIELDS}")
    data = _open_npz(path)
    src = str(path)

    def get(field):
        k = keys.get(field)
        return None if k is None else _get(data, src, field, k)

    values = get("values")
    if values.ndim == 2:
        values = values[..., None]
    if values.ndim != 3:
        raise CityDataError(src, "values", f"key {keys['values']!r} must be (T, N, C) or (T, N), got {values.shape}")
    t, n, c = values.shape
    if keys.get("time") in data or start is None or freq is None:
        try:
            timestamps = np.asarray(get("time")).astype("datetime64[m]")
        except (ValueError, TypeError) as e:
            raise CityDataError(src, "time", f"key {keys['time']!r} is not parseable as dates: {e}") from None
        if freq is None and t > 1:
            freq = timestamps[1] - timestamps[0]
    else:
        timestamps = np.datetime64(start, "m") + np.arange(t) * parse_freq(freq)
    if regions is None:
        regions = _regions_from(data, keys, src, n)
    chans = channels or (tuple(str(x) for x in get("channels")) if "channels" in keys else
                         tuple(f"channel_{i}" for i in range(c)))
    adjacency = get("adjacency") if "adjacency" in keys else None
    mask = get("mask").astype(bool) if "mask" in keys else None
    return CityData(values, timestamps, freq if freq is not None else "1D", chans, regions, task=task,
                    name=name or Path(path).stem, quantity=quantity, place=place, adjacency=adjacency, mask=mask,
                    source=src)


def _regions_from(data, keys, src, n) -> tuple[Region, ...]:
    cols = {}
    for field in ("region_ids", "names", "lat", "lon"):
        if field in keys:
            arr = _get(data, src, field, keys[field])
            if arr.shape != (n,):
                raise CityDataError(src, field, f"key {keys[field]!r} has shape {arr.shape}, values have {n} regions")
            cols[field] = arr
    ids = cols.get("region_ids", np.arange(n))
    names = cols.get("names", [f"region {i}" for i in ids])
    lat = cols.get("lat", np.full(n, np.nan))
    lon = cols.get("lon", np.full(n, np.nan))
    return tuple(Region(str(i), str(nm), float(a), float(o)) for i, nm, a, o in zip(ids, names, lat, lon))


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


def read_zone_pois(path: str | os.PathLike) -> dict[str, tuple[tuple[str, int], ...]]:
    """UrbanGPT's ``zone_poi.json`` / ``region_poi.json``: id -> ((category, count), ...)."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        records = json.load(f)
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


def load_preset(name: str, root: str | os.PathLike | None = None, **synthetic) -> CityData:
    """A city by name (``PRESETS``) or an ``.npz`` path; ``synthetic`` holds ``synthetic_city`` options."""
    if name == "synthetic":
        from stllm.data.synthetic import synthetic_city

        return synthetic_city(**synthetic)
    if name in ("manhattan-taxi", "manhattan-bike"):
        return load_manhattan_flows(mode=name.split("-")[1], root=root)
    if name == "crime":
        return load_nyc_crime(root=root)
    if name == "bikenyc":
        return load_bikenyc(root=root)
    if name.endswith(".npz"):
        return load_npz(name)
    raise ValueError(f"data {name!r}: use one of {', '.join(PRESETS)} or a path to an .npz file")
