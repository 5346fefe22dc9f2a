"""Foursquare-style check-ins: columnar arrays, a CSV loader, a synthetic generator, splits, next-POI samples.

A :class:`CheckIns` holds one row per check-in as parallel numpy arrays, always sorted by user then time.
Users, POIs, categories and trajectories are stored as integer indices into vocabularies (``user_ids``,
``poi_ids``, ``categories``, ``trajectory_ids``: the raw ids as strings). The POI table (``poi_lat``,
``poi_lon``, ``poi_category``) is indexed by the POI index. A POI index of ``-1`` marks a POI that is not in
the table (after :func:`align_checkins` onto a training set's table): such targets count as misses.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np

REQUIRED_COLUMNS = ("user_id", "POI_id", "POI_catname", "latitude", "longitude", "local_time")
TRAJECTORY_COLUMN = "trajectory_id"


class CheckInError(ValueError):
    """Bad check-in input; the message names the file, the row and the field."""


@dataclass(frozen=True)
class CheckIns:
    user: np.ndarray  # (n,) int64 index into user_ids
    poi: np.ndarray  # (n,) int64 index into poi_ids / the POI table; -1 = not in the table
    category: np.ndarray  # (n,) int64 index into categories
    lat: np.ndarray  # (n,) float64, the check-in's own coordinates
    lon: np.ndarray  # (n,) float64
    time: np.ndarray  # (n,) datetime64[m], local time
    trajectory: np.ndarray  # (n,) int64 index into trajectory_ids
    user_ids: np.ndarray  # (U,) str
    poi_ids: np.ndarray  # (P,) str
    categories: np.ndarray  # (C,) str
    trajectory_ids: np.ndarray  # (R,) str
    poi_lat: np.ndarray  # (P,) float64
    poi_lon: np.ndarray  # (P,) float64
    poi_category: np.ndarray  # (P,) int64 index into categories
    source: str = ""

    def __len__(self) -> int:
        return int(self.user.shape[0])

    @property
    def n_pois(self) -> int:
        return int(self.poi_ids.shape[0])

    @property
    def n_users(self) -> int:
        return int(self.user_ids.shape[0])

    def subset(self, rows: np.ndarray) -> CheckIns:
        """Rows selected by a boolean mask or index array (kept in user/time order); vocabularies unchanged."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = np.sort(rows)
        return replace(self, **{f: getattr(self, f)[rows] for f in _ROW_FIELDS})

    def compacted(self) -> CheckIns:
        """The same rows with vocabularies and POI table rebuilt from them alone (``subset`` keeps the full
        ones): a training part must not list POIs that only later rows visit."""
        return build_checkins(self.user_ids[self.user], self.poi_ids[self.poi], self.categories[self.category],
                              self.lat, self.lon, self.time, self.trajectory_ids[self.trajectory], source=self.source)

    def users_present(self) -> np.ndarray:
        """Raw ids of the users that have at least one row."""
        return self.user_ids[np.unique(self.user)]

    def __repr__(self) -> str:
        return (f"CheckIns({len(self)} rows, {len(np.unique(self.user))} users, {self.n_pois} POIs, "
                f"{len(self.categories)} categories, source={self.source!r})")


_ROW_FIELDS = ("user", "poi", "category", "lat", "lon", "time", "trajectory")


def _vocab(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, index = np.unique(raw.astype(str), return_inverse=True)
    return ids, index.astype(np.int64)


def build_checkins(user, poi, category, lat, lon, time, trajectory, source: str = "") -> CheckIns:
    """CheckIns from raw per-row columns (ids of any kind); builds vocabularies and the POI table, sorts.

    A POI's table coordinates and category are those of its first check-in in time order.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    time = np.asarray(time).astype("datetime64[m]")
    user_ids, user = _vocab(np.asarray(user))
    poi_ids, poi = _vocab(np.asarray(poi))
    categories, cat = _vocab(np.asarray(category))
    traj_ids, traj = _vocab(np.asarray(trajectory))
    n = len(user)
    cols = (("poi", poi), ("category", cat), ("lat", lat), ("lon", lon), ("time", time), ("trajectory", traj))
    for name, col in cols:
        if len(col) != n:
            raise CheckInError(f"{source or 'check-ins'}: column {name} has {len(col)} rows, user has {n}")
    _check_coords(lat, lon, source, rows=None)
    order = np.lexsort((time, user))
    user, poi, cat, lat, lon, time, traj = (a[order] for a in (user, poi, cat, lat, lon, time, traj))
    by_time = np.argsort(time, kind="stable")
    _, first_pos = np.unique(poi[by_time], return_index=True)  # every POI in the vocabulary has a row
    first = by_time[first_pos]
    return CheckIns(user=user, poi=poi, category=cat, lat=lat, lon=lon, time=time, trajectory=traj,
                    user_ids=user_ids, poi_ids=poi_ids, categories=categories, trajectory_ids=traj_ids,
                    poi_lat=lat[first], poi_lon=lon[first], poi_category=cat[first], source=source)


def _check_coords(lat: np.ndarray, lon: np.ndarray, source: str, rows: np.ndarray | None) -> None:
    where = source or "check-ins"
    for name, col, lim in (("latitude", lat, 90.0), ("longitude", lon, 180.0)):
        bad = np.flatnonzero(~np.isfinite(col) | (np.abs(col) > lim))
        if bad.size:
            i = int(bad[0])
            row = f"row {int(rows[i])}" if rows is not None else f"row index {i}"
            hint = ""
            if name == "latitude" and np.isfinite(col[i]) and abs(lon[i]) <= 90.0:
                hint = " (latitude outside +-90: are latitude and longitude swapped?)"
            raise CheckInError(f"{where}: {row}: {name} {float(col[i])!r} out of range [-{lim:g}, {lim:g}]{hint}; "
                               f"{bad.size} bad row(s) in all")


def _parse_time(value: str) -> datetime:
    s = value.strip()
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    t = datetime.fromisoformat(s)
    return t.replace(tzinfo=None)  # local wall-clock time is what the column holds


def load_checkins(path: str | os.PathLike, time_column: str = "local_time") -> CheckIns:
    """Read a Foursquare-style check-in CSV (the shared ``foursquare_nyc`` format) with the csv module.

    Needs columns user_id, POI_id, POI_catname, latitude, longitude and ``time_column``; ``trajectory_id``
    is used when present, otherwise a trajectory is one user's check-ins on one calendar day. Rows are
    numbered as file lines (the header is line 1).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    required = tuple(c if c != "local_time" else time_column for c in REQUIRED_COLUMNS)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise CheckInError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(header) or 'none'}")
        has_traj = TRAJECTORY_COLUMN in header
        users, pois, cats, lats, lons, times, trajs, lines = [], [], [], [], [], [], [], []
        for line, rec in enumerate(reader, start=2):
            try:
                t = _parse_time(rec[time_column] or "")
            except ValueError:
                raise CheckInError(f"{path}: row {line}: unparsable {time_column} {rec[time_column]!r}") from None
            for name in ("latitude", "longitude"):
                try:
                    float(rec[name])
                except (TypeError, ValueError):
                    raise CheckInError(f"{path}: row {line}: unparsable {name} {rec[name]!r}") from None
            users.append(rec["user_id"])
            pois.append(rec["POI_id"])
            cats.append(rec["POI_catname"])
            lats.append(float(rec["latitude"]))
            lons.append(float(rec["longitude"]))
            times.append(t)
            trajs.append(rec[TRAJECTORY_COLUMN] if has_traj else f"{rec['user_id']}_{t.date().isoformat()}")
            lines.append(line)
    if not users:
        raise CheckInError(f"{path}: no rows")
    lat, lon = np.array(lats), np.array(lons)
    _check_coords(lat, lon, str(path), rows=np.array(lines))
    return build_checkins(users, pois, cats, lat, lon, np.array(times, dtype="datetime64[m]"),
                          trajs, source=str(path))


def align_checkins(checkins: CheckIns, reference: CheckIns) -> CheckIns:
    """Re-index ``checkins`` onto ``reference``'s vocabularies and POI table (e.g. test onto train).

    POIs missing from the reference table get index -1 (unknown; counted as misses at evaluation).
    Users and categories missing from the reference are appended to its vocabularies.
    """
    def remap(own_ids, own_idx, ref_ids):
        lookup = {s: i for i, s in enumerate(ref_ids.tolist())}
        extra = [s for s in own_ids.tolist() if s not in lookup]
        for s in extra:
            lookup[s] = len(lookup)
        table = np.array([lookup[s] for s in own_ids.tolist()], dtype=np.int64)
        return table[own_idx], np.array(ref_ids.tolist() + extra, dtype=str)  # no fixed-width cut of new ids

    user, user_ids = remap(checkins.user_ids, checkins.user, reference.user_ids)
    cat, categories = remap(checkins.categories, checkins.category, reference.categories)
    poi_lookup = {s: i for i, s in enumerate(reference.poi_ids.tolist())}
    table = np.array([poi_lookup.get(s, -1) for s in checkins.poi_ids.tolist()], dtype=np.int64)
    poi = table[checkins.poi] if len(table) else np.full(len(checkins), -1, dtype=np.int64)
    order = np.lexsort((checkins.time, user))
    out = replace(checkins, user=user, category=cat, poi=poi, user_ids=user_ids, categories=categories,
                  poi_ids=reference.poi_ids, poi_lat=reference.poi_lat, poi_lon=reference.poi_lon,
                  poi_category=reference.poi_category)
    return replace(out, **{f: getattr(out, f)[order] for f in _ROW_FIELDS})


def user_trajectories(checkins: CheckIns, min_visits: int = 2) -> tuple[dict[int, np.ndarray], int]:
    """Per user index, the row indices of their check-ins in time order; users with fewer than
    ``min_visits`` rows are skipped and counted. Returns (trajectories, n_skipped)."""
    order = np.lexsort((checkins.time, checkins.user))
    users, starts, counts = np.unique(checkins.user[order], return_index=True, return_counts=True)
    out: dict[int, np.ndarray] = {}
    skipped = 0
    for u, s, c in zip(users.tolist(), starts.tolist(), counts.tolist()):
        if c < min_visits:
            skipped += 1
            continue
        out[u] = order[s:s + c]
    return out, skipped


def next_poi_rows(checkins: CheckIns, history: int = 10, target_mask: np.ndarray | None = None,
                  min_visits: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Next-POI samples as row indices: every check-in after a user's first is a target.

    Returns ``(hist, rows)``: ``hist`` (N, history) int64 row indices of the preceding check-ins of the
    same user, right-aligned (the last column is the last visit) and left-padded with -1; ``rows`` (N,)
    the target check-in's row. ``target_mask`` (n,) bool restricts which rows may be targets (e.g. the test
    part of a chronological split, history still drawn from all rows). Users with fewer than
    ``min_visits`` check-ins give no samples.
    """
    if history < 1:
        raise ValueError(f"history must be >= 1, got {history}")
    trajs, _ = user_trajectories(checkins, min_visits=max(2, min_visits))
    if not trajs:
        return np.zeros((0, history), dtype=np.int64), np.zeros(0, dtype=np.int64)
    seqs = list(trajs.values())
    lengths = np.array([len(s) for s in seqs])
    rows = np.concatenate(seqs)  # user-major, time order
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pos = np.arange(len(rows)) - np.repeat(offsets, lengths)  # position within the user's sequence
    keep = pos >= 1
    if target_mask is not None:
        target_mask = np.asarray(target_mask, dtype=bool)
        if target_mask.shape != (len(checkins),):
            raise ValueError(f"target_mask has shape {target_mask.shape}, expected ({len(checkins)},)")
        keep &= target_mask[rows]
    t = np.flatnonzero(keep)
    lag = np.arange(history, 0, -1)  # history ... 1
    src = t[:, None] - lag[None, :]
    valid = lag[None, :] <= pos[t][:, None]
    hist = np.where(valid, rows[np.clip(src, 0, None)], -1).astype(np.int64)
    return hist, rows[t].astype(np.int64)


def next_poi_samples(checkins: CheckIns, history: int = 10, target_mask: np.ndarray | None = None,
                     min_visits: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """:func:`next_poi_rows` with the target as a POI index (-1 when the POI is not in the table)."""
    hist, rows = next_poi_rows(checkins, history=history, target_mask=target_mask, min_visits=min_visits)
    return hist, checkins.poi[rows].astype(np.int64)


def merge_checkins(train: CheckIns, test: CheckIns) -> tuple[CheckIns, np.ndarray]:
    """``test`` re-indexed onto ``train``'s tables (:func:`align_checkins`) and appended to ``train``'s rows.

    Returns ``(merged, is_test)``: ``is_test`` (n,) marks the rows that came from ``test``. Next-POI
    evaluation draws a seen user's history from both files (what a deployed system would know) while
    targets come from ``test`` only.
    """
    aligned = align_checkins(test, train)
    n_traj = len(train.trajectory_ids)
    cols = {f: np.concatenate([getattr(train, f), getattr(aligned, f)]) for f in _ROW_FIELDS}
    cols["trajectory"] = np.concatenate([train.trajectory, aligned.trajectory + n_traj])
    is_test = np.concatenate([np.zeros(len(train), bool), np.ones(len(aligned), bool)])
    order = np.lexsort((cols["time"], cols["user"]))
    merged = replace(aligned, **{f: v[order] for f, v in cols.items()},
                     trajectory_ids=np.concatenate([train.trajectory_ids, aligned.trajectory_ids]),
                     source=f"{train.source} + {test.source}")
    return merged, is_test[order]


def chronological_split(checkins: CheckIns, frac: float = 0.8) -> tuple[CheckIns, CheckIns]:
    """Global time cut: the first ``frac`` of check-ins (by time) train, the rest (all later) test."""
    if not 0.0 < frac < 1.0:
        raise ValueError(f"frac must be in (0, 1), got {frac}")
    times = np.sort(checkins.time)
    cut = times[min(len(times) - 1, int(round(frac * len(times))))]
    train = checkins.time < cut
    return checkins.subset(train), checkins.subset(~train)


def unseen_user_split(checkins: CheckIns, frac: float = 0.8, seed: int = 0) -> tuple[CheckIns, CheckIns]:
    """Split by user: a random ``frac`` of users train, the others (never seen in training) test."""
    if not 0.0 < frac < 1.0:
        raise ValueError(f"frac must be in (0, 1), got {frac}")
    users = np.unique(checkins.user)
    rng = np.random.default_rng(seed)
    n_train = min(len(users) - 1, max(1, int(round(frac * len(users)))))
    train_users = rng.permutation(users)[:n_train]
    train = np.isin(checkins.user, train_users)
    tr, te = checkins.subset(train), checkins.subset(~train)
    assert not np.intersect1d(tr.user, te.user).size
    return tr, te


SYNTHETIC_CATEGORIES = ("Home (private)", "Office", "Coffee Shop", "Restaurant", "Bar", "Gym", "Park",
                        "Subway", "Grocery Store")
CITY_BOX = (40.70, 40.80, -74.02, -73.93)  # lat min, lat max, lon min, lon max (Manhattan-like)


def synthetic_checkins(seed: int = 0, n_users: int = 40, n_pois: int = 150, days: int = 28,
                       p_checkin: float = 0.6, p_explore: float = 0.1) -> CheckIns:
    """Deterministic synthetic check-ins in a city box.

    POIs get a category and a uniform location; each user has a home and an office (random areas), a
    favourite coffee shop, gym, park, subway stop and bars near home, and lunch places near the office. Weekdays run
    home -> coffee -> subway -> office -> lunch -> office -> (gym | bar) -> home; weekends home -> park ->
    restaurant -> bar -> home. Each step is checked in with probability ``p_checkin``; with probability
    ``p_explore`` a visit goes to a random POI of the same category near the user instead.
    """
    rng = np.random.default_rng(seed)
    lat0, lat1, lon0, lon1 = CITY_BOX
    n_cat = len(SYNTHETIC_CATEGORIES)
    cat = np.concatenate([np.arange(n_cat), rng.integers(0, n_cat, max(0, n_pois - n_cat))])[:n_pois]
    plat = rng.uniform(lat0, lat1, n_pois)
    plon = rng.uniform(lon0, lon1, n_pois)
    by_cat = {c: np.flatnonzero(cat == c) for c in range(n_cat)}
    home_c, office_c, coffee_c, rest_c, bar_c, gym_c, park_c, subway_c, _ = range(n_cat)

    def near(c, la, lo, k=3):
        idx = by_cat[c] if len(by_cat[c]) else np.arange(n_pois)
        d = (plat[idx] - la) ** 2 + ((plon[idx] - lo) * 0.76) ** 2
        return idx[np.argsort(d, kind="stable")[:k]]

    start = np.datetime64("2012-11-05T00:00", "m")  # a Monday
    rows = []
    for u in range(n_users):
        hla, hlo = rng.uniform(lat0, lat1), rng.uniform(lon0, lon1)
        wla, wlo = rng.uniform(lat0, lat1), rng.uniform(lon0, lon1)
        home = near(home_c, hla, hlo, 1)[0]
        office = near(office_c, wla, wlo, 1)[0]
        fav = {coffee_c: near(coffee_c, hla, hlo, 2), gym_c: near(gym_c, hla, hlo, 1),
               bar_c: near(bar_c, hla, hlo, 2), park_c: near(park_c, hla, hlo, 2),
               subway_c: near(subway_c, hla, hlo, 1), rest_c: near(rest_c, wla, wlo, 3)}
        weekend_rest = near(rest_c, hla, hlo, 3)
        evening = gym_c if rng.random() < 0.5 else bar_c
        for d in range(days):
            weekday = (d % 7) < 5
            if weekday:
                plan = [(home, 7.5), (fav[coffee_c], 8.2), (fav[subway_c], 8.5), (office, 9.2),
                        (fav[rest_c], 12.5), (office, 13.5), (fav[evening], 19.0), (home, 22.0)]
            else:
                plan = [(home, 10.0), (fav[park_c], 12.0), (weekend_rest, 14.0), (fav[bar_c], 21.0), (home, 23.5)]
            for target, hour in plan:
                if rng.random() >= p_checkin:
                    continue
                p = int(rng.choice(target)) if np.ndim(target) else int(target)
                if rng.random() < p_explore:
                    p = int(rng.choice(near(cat[p], hla, hlo, 6)))
                minute = int((d * 24 + hour) * 60 + rng.integers(-20, 21))
                rows.append((u, p, minute, d))
    arr = np.array(rows, dtype=np.int64).reshape(-1, 4)
    u, p, minute, d = arr.T
    jitter = rng.normal(0.0, 1e-5, (len(p), 2))  # GPS noise on each check-in
    return build_checkins(
        user=np.char.add("u", np.char.zfill(u.astype(str), 4)),
        poi=np.char.add("p", np.char.zfill(p.astype(str), 5)),
        category=np.array(SYNTHETIC_CATEGORIES)[cat[p]],
        lat=plat[p] + jitter[:, 0], lon=plon[p] + jitter[:, 1],
        time=start + minute.astype("timedelta64[m]"),
        trajectory=np.char.add(np.char.add(u.astype(str), "_"), d.astype(str)),
        source=f"synthetic_checkins(seed={seed})",
    )
