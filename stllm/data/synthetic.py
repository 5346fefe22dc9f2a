"""A synthetic city whose region metadata carries signal: the embedded default for tests and the demo.

Each region has a type (residential, office, nightlife, park, transit) that sets both its POI mix
and the shape of its daily/weekly in/out flow, and a size that sets both its POI count and its
volume. A model that reads the POI mix can therefore infer the profile of a region it never saw.
Deterministic per seed; everything is vectorised over (time, region).
"""

from __future__ import annotations

import numpy as np

from stllm.data.city import CityData, Region, parse_freq

REGION_TYPES = ("residential", "office", "nightlife", "park", "transit")
POI_CATEGORIES = (
    "Residential", "Education Facility", "Cultural Facility", "Recreational Facility", "Social Services",
    "Transportation Facility", "Commercial", "Government Facility", "Religious Institution",
    "Health Services", "Public Safety",
)  # fmt: skip
EVENT_CATEGORIES = ("burglary", "larceny", "robbery", "assault")

# POI mix per type (rows follow REGION_TYPES, columns POI_CATEGORIES); normalised below.
_POI_MIX = np.array([
    [10, 3, 1, 1, 2, 1, 2, 0.5, 2, 1.5, 0.5],   # residential
    [1, 1, 1, 0.5, 1, 2, 10, 3, 0.3, 1, 1],     # office
    [1, 0.3, 4, 3, 0.5, 1, 8, 0.2, 0.3, 0.5, 1],  # nightlife
    [0.5, 0.5, 2, 10, 0.5, 0.5, 0.5, 0.5, 0.2, 0.2, 0.5],  # park
    [1, 0.5, 0.5, 0.5, 1, 10, 3, 1, 0.2, 0.5, 2],  # transit
])  # fmt: skip
_POI_MIX = _POI_MIX / _POI_MIX.sum(axis=1, keepdims=True)

# (inflow peak hours, outflow peak hours, peak width h, weekend volume factor, weekend midday share)
_PROFILES = {
    "residential": ((18.5,), (8.0,), 1.8, 0.8, 0.5),
    "office": ((8.5,), (17.5,), 1.3, 0.25, 0.2),
    "nightlife": ((21.5,), (1.0,), 2.0, 1.6, 0.3),
    "park": ((11.0,), (16.0,), 2.5, 1.8, 0.6),
    "transit": ((8.0, 18.0), (8.0, 18.0), 1.0, 0.55, 0.3),
}
# Mean events per day per type at average activity (columns EVENT_CATEGORIES).
_EVENT_RATE = np.array([
    [0.30, 0.25, 0.08, 0.10],  # residential
    [0.05, 0.60, 0.06, 0.05],  # office
    [0.05, 0.45, 0.25, 0.40],  # nightlife
    [0.02, 0.08, 0.06, 0.06],  # park
    [0.03, 0.50, 0.20, 0.15],  # transit
])  # fmt: skip
# Where each type tends to sit, as a fraction of the city box (lat, lon) and spread.
_PLACEMENT = np.array([[0.75, 0.5, 0.25], [0.25, 0.45, 0.12], [0.45, 0.35, 0.15], [0.6, 0.6, 0.3],
                       [0.4, 0.5, 0.1]])
_CITY_BOX = ((40.70, 40.82), (-74.02, -73.93))  # lat, lon
_NAME_A = ("North", "South", "East", "West", "Old", "New", "Upper", "Lower", "Little", "Grand", "Fort",
           "Bay", "Cedar", "Maple", "Oak", "River", "Stone", "Mill", "Kings", "Queens")
_NAME_B = ("Harbor", "Market", "Heights", "Square", "Village", "Gardens", "Point", "Bridge", "Hill",
           "Terrace", "Junction", "Commons", "Wharf", "Meadow", "Court", "Landing")
_BOROUGHS = ("Downtown", "Midtown", "Uptown")


def holiday_day(days: int) -> int | None:
    """Index of the synthetic holiday: the second Monday (day 7 when the city starts on a Monday)."""
    return 7 if days > 8 else None


def synthetic_city(
    seed: int = 0,
    n_regions: int = 24,
    days: int = 28,
    freq: str = "30min",
    task: str = "flow",
    start: str = "2024-01-01",
) -> CityData:
    """Build a synthetic city. ``task="flow"``: in/out counts at ``freq``; ``task="event"``: daily
    counts of :data:`EVENT_CATEGORIES`, rates set by region type and that day's activity."""
    if n_regions < 1 or days < 1:
        raise ValueError(f"synthetic_city needs n_regions >= 1 and days >= 1, got {n_regions}, {days}")
    if task not in ("flow", "event"):
        raise ValueError(f"task must be 'flow' or 'event', got {task!r}")
    rng = np.random.default_rng(seed)
    step = parse_freq(freq)
    if np.timedelta64(1, "D") % step != np.timedelta64(0, "m"):
        raise ValueError(f"freq {freq!r} must divide a day")
    start64 = np.datetime64(start, "m")

    types = np.arange(n_regions) % len(REGION_TYPES)  # every type present once n >= 5
    rng.shuffle(types)
    size = rng.lognormal(0.0, 0.5, n_regions)
    n_pois = rng.poisson(30 * size) + 1
    poi_counts = np.stack([rng.multinomial(k, _POI_MIX[t]) for k, t in zip(n_pois, types)])
    coords = _place(rng, types)
    regions = tuple(
        Region(
            id=str(i), name=name, lat=float(coords[i, 0]), lon=float(coords[i, 1]),
            borough=_BOROUGHS[min(2, int(3 * (coords[i, 0] - _CITY_BOX[0][0]) / np.ptp(_CITY_BOX[0])))],
            pois=tuple((c, int(k)) for c, k in zip(POI_CATEGORIES, poi_counts[i]) if k > 0),
            kind=REGION_TYPES[types[i]],
        )
        for i, name in enumerate(_names(rng, n_regions))
    )  # fmt: skip

    steps_per_day = int(np.timedelta64(1, "D") // step)
    ts = start64 + np.arange(days * steps_per_day) * step
    rate = _flow_rates(rng, ts, types, size, holiday_day(days))  # (T, N, 2), mean count per 30 min
    rate *= float(step / np.timedelta64(30, "m"))
    adjacency = _knn_adjacency(coords, k=min(4, n_regions - 1))
    common = dict(regions=regions, place="Synthetic City", adjacency=adjacency, source=f"synthetic_city(seed={seed})")
    if task == "flow":
        values = rng.poisson(rate).astype(np.float32)
        return CityData(values, ts, step, ("inflow", "outflow"), task="flow", name=f"synthetic-{seed}",
                        quantity="mobility", **common)
    activity = rate.sum(axis=2).reshape(days, steps_per_day, n_regions).sum(axis=1)  # (D, N)
    rel = activity / activity.mean(axis=0, keepdims=True)
    event_rate = _EVENT_RATE[types][None] * np.sqrt(rel)[..., None]  # (D, N, 4)
    counts = rng.poisson(event_rate).astype(np.float32)
    days_ts = start64 + np.arange(days) * np.timedelta64(1, "D")
    return CityData(counts, days_ts, "1D", EVENT_CATEGORIES, task="event", name=f"synthetic-{seed}-events",
                    quantity="crime", **common)


def _flow_rates(rng, ts, types, size, holiday) -> np.ndarray:
    hours = ((ts - ts.astype("datetime64[D]")) / np.timedelta64(1, "h")).astype(np.float64)  # (T,)
    day = ((ts.astype("datetime64[D]") - ts[0].astype("datetime64[D]")) // np.timedelta64(1, "D")).astype(int)
    dow = (ts.astype("datetime64[D]").astype(np.int64) + 3) % 7  # 0 = Monday
    weekend = (dow >= 5) | (day == holiday if holiday is not None else False)
    n = len(types)
    rate = np.zeros((len(ts), n, 2))
    shift = rng.normal(0.0, 0.4, n)  # regions of one type peak at slightly different times
    for t_idx, kind in enumerate(REGION_TYPES):
        cols = np.flatnonzero(types == t_idx)
        if cols.size == 0:
            continue
        peaks_in, peaks_out, width, wk_factor, wk_mid = _PROFILES[kind]
        h = hours[:, None] - shift[cols][None]
        for ch, peaks in enumerate((peaks_in, peaks_out)):
            weekday = sum(_bump(h, p, width) for p in peaks) + 0.08
            midday = _bump(h, 13.0, 3.5) + 0.08
            weekend_shape = wk_factor * ((1 - wk_mid) * weekday + wk_mid * midday)
            rate[:, cols, ch] = np.where(weekend[:, None], weekend_shape, weekday)
    daily_noise = rng.lognormal(0.0, 0.1, day.max() + 1)[day]  # city-wide weather
    return rate * (25.0 * size)[None, :, None] * daily_noise[:, None, None]


def _bump(h: np.ndarray, peak: float, width: float) -> np.ndarray:
    d = (h - peak + 12.0) % 24.0 - 12.0  # circular distance in hours
    return np.exp(-0.5 * (d / width) ** 2)


def _place(rng, types) -> np.ndarray:
    (lat0, lat1), (lon0, lon1) = _CITY_BOX
    p = _PLACEMENT[types]
    frac = np.clip(p[:, :2] + rng.normal(0, 1, (len(types), 2)) * p[:, 2:], 0.02, 0.98)
    return np.stack([lat0 + frac[:, 0] * (lat1 - lat0), lon0 + frac[:, 1] * (lon1 - lon0)], axis=1)


def _names(rng, n: int) -> list[str]:
    combos = [f"{a} {b}" for a in _NAME_A for b in _NAME_B]
    order = rng.permutation(len(combos))
    return [combos[order[i % len(combos)]] + ("" if i < len(combos) else f" {i // len(combos) + 1}")
            for i in range(n)]


def _knn_adjacency(coords: np.ndarray, k: int) -> np.ndarray:
    n = len(coords)
    adj = np.zeros((n, n), dtype=np.float32)
    if k < 1:
        return adj
    d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1)[:, :k]
    adj[np.repeat(np.arange(n), k), nearest.ravel()] = 1.0
    return np.maximum(adj, adj.T)
