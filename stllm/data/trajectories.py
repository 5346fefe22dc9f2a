"""Long-term mobility trajectories (HuMob): a validated columnar type, the CSV format, splits, a synthetic city.

A :class:`Trajectories` holds one row per observed 30-minute slot of a user as parallel int64 numpy arrays
``uid, d, t, x, y`` (plus an optional ``city`` label per row), always sorted by ``(uid, d, t)``. Cells are
positions on a ``grid x grid`` lattice of 500 m cells; whether they are numbered ``1..grid`` (the HuMob'24
files and the official validator) or ``0..grid-1`` (the Llama-3-8B-Mob prompt) is never guessed: ``base`` is a
required argument everywhere a file is read, and :meth:`Trajectories.with_base` converts.

The model built on this type predicts the cells of known ``(uid, d, t)`` slots: :func:`split_by_day` gives the
history and the target rows (whose ``x, y`` a predictor overwrites), :meth:`Trajectories.cell_index` maps cells
to one vocabulary ``0..grid*grid-1`` for a classification head, and :func:`write_humob_csv` writes the answer in
the submission format.
"""

from __future__ import annotations

import csv
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SLOTS_PER_DAY = 48  # 30-minute slots, t = 0..47
GRID = 200  # HuMob'24: 200 x 200 cells of 500 m
HUMOB_COLUMNS = ("uid", "d", "t", "x", "y")
# days with d % 7 in HUMOB_WEEKEND behave as weekends in the HuMob'24 cities B and C: measured on
# ../shared/data/humob24, daytime rows (t 18..34) at the user's night-time home cell are 20% and 18% on
# d % 7 = 0 and 6 against 12-15% on the other five (and those two have the fewest rows).
HUMOB_WEEKEND = (0, 6)


class TrajectoryError(ValueError):
    """Bad trajectory input; the message names the file (or ``<memory>``), the field and what was expected."""


def _as_int(values: object, name: str, source: str) -> np.ndarray:
    """Columns are integers; floats are accepted only when they hold whole numbers (a CSV written by pandas)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise TrajectoryError(f"{source}: field {name!r} must be a 1-D array, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    if arr.dtype.kind == "f" and not arr.size:
        return arr.astype(np.int64)
    raise TrajectoryError(f"{source}: field {name!r} must hold integers, got dtype {arr.dtype}")


@dataclass(frozen=True, eq=False)
class Trajectories:
    """Rows ``(uid, d, t, x, y[, city])`` of observed slots, validated and sorted by ``(uid, d, t)`` on creation.

    ``base`` (0 or 1) states how cells are numbered: ``x, y`` lie in ``base..base+grid-1``. ``source`` names the
    file in error messages; ``line_offset`` (1 for a CSV with a header) turns a row index into a file line.
    """

    uid: np.ndarray
    d: np.ndarray
    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    base: int
    city: np.ndarray | None = None
    grid: int = GRID
    source: str = "<memory>"
    line_offset: int = field(default=-1, repr=False)

    def __post_init__(self) -> None:
        src = self.source
        if self.base not in (0, 1):
            raise TrajectoryError(f"{src}: base must be 0 (cells 0..{self.grid - 1}) or 1 (cells 1..{self.grid}), "
                                  f"got {self.base!r}")
        if not isinstance(self.grid, int | np.integer) or self.grid < 1:
            raise TrajectoryError(f"{src}: grid must be a positive integer, got {self.grid!r}")
        cols = {name: _as_int(getattr(self, name), name, src) for name in HUMOB_COLUMNS}
        n = len(cols["uid"])
        for name, arr in cols.items():
            if len(arr) != n:
                raise TrajectoryError(f"{src}: field {name!r} has {len(arr)} rows, field 'uid' has {n}")
        city = None
        if self.city is not None:
            city = np.asarray(self.city).astype(str)
            if city.shape != (n,):
                raise TrajectoryError(f"{src}: field 'city' has shape {city.shape}, expected ({n},) like 'uid'")
        hi = self.base + self.grid - 1
        self._check_range(cols["t"], "t", 0, SLOTS_PER_DAY - 1, "a 30-minute slot")
        self._check_range(cols["d"], "d", 0, None, "a day index")
        for name in ("x", "y"):
            self._check_range(cols[name], name, self.base, hi, f"a {self.base}-based cell of the {self.grid}-grid")
        order = np.lexsort((cols["t"], cols["d"], cols["uid"]))
        if n and not np.all(order[:-1] < order[1:]):
            cols = {k: v[order] for k, v in cols.items()}
            city = None if city is None else city[order]
        else:
            order = np.arange(n)
        key = (cols["uid"], cols["d"], cols["t"])
        dup = np.flatnonzero((np.diff(key[0]) == 0) & (np.diff(key[1]) == 0) & (np.diff(key[2]) == 0))
        if dup.size:
            i = dup[0]
            rows = sorted((int(order[i]), int(order[i + 1])))
            second = self._where(rows[1]).split()[-1]
            raise TrajectoryError(f"{src}: duplicate (uid, d, t) = ({key[0][i]}, {key[1][i]}, {key[2][i]}) at "
                                  f"{self._where(rows[0])} and {second}; one row per slot of a user")
        if city is not None and n:
            change = np.flatnonzero((np.diff(cols["uid"]) == 0) & (city[1:] != city[:-1]))
            if change.size:
                i = change[0]
                raise TrajectoryError(f"{src}: field 'city': user {cols['uid'][i]} appears in cities {str(city[i])!r} "
                                      f"and {str(city[i + 1])!r}; a user belongs to one city")
        for name, arr in cols.items():
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        if city is not None:
            city.setflags(write=False)
        object.__setattr__(self, "city", city)

    def _where(self, i: int) -> str:
        return f"line {i + 1 + self.line_offset}" if self.line_offset >= 0 else f"row {i}"

    def _check_range(self, arr: np.ndarray, name: str, lo: int, hi: int | None, what: str) -> None:
        bad = (arr < lo) if hi is None else ((arr < lo) | (arr > hi))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            expected = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise TrajectoryError(f"{self.source}: field {name!r} must be {what} ({expected}); {self._where(i)} has "
                                  f"{name}={arr[i]} ({int(bad.sum())} such rows)")

    # -- views -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.uid)

    @property
    def users(self) -> np.ndarray:
        """Sorted distinct user ids."""
        return np.unique(self.uid)

    def user_bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(uids, starts, ends)``: user ``uids[k]`` owns rows ``starts[k]:ends[k]`` (rows are sorted by user)."""
        if not len(self):
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        starts = np.flatnonzero(np.r_[True, self.uid[1:] != self.uid[:-1]])
        ends = np.r_[starts[1:], len(self)]
        return self.uid[starts], starts, ends

    def cell_index(self) -> np.ndarray:
        """One id per cell, ``0..grid*grid-1`` (``(x - base) * grid + (y - base)``): the vocabulary of a cell head."""
        return (self.x - self.base) * self.grid + (self.y - self.base)

    def subset(self, mask: np.ndarray) -> Trajectories:
        """The rows where ``mask`` is true (a boolean mask or row indices), still sorted."""
        return Trajectories(self.uid[mask], self.d[mask], self.t[mask], self.x[mask], self.y[mask], base=self.base,
                            city=None if self.city is None else self.city[mask], grid=self.grid, source=self.source)

    def with_cells(self, x: np.ndarray, y: np.ndarray) -> Trajectories:
        """The same ``(uid, d, t)`` rows with new cells (a prediction for these slots), validated on the grid."""
        return Trajectories(self.uid, self.d, self.t, x, y, base=self.base, city=self.city, grid=self.grid,
                            source=self.source)

    def with_base(self, base: int) -> Trajectories:
        """The same rows with cells renumbered to start at ``base`` (0 or 1)."""
        shift = base - self.base
        return Trajectories(self.uid, self.d, self.t, self.x + shift, self.y + shift, base=base, city=self.city,
                            grid=self.grid, source=self.source)

    def keys_equal(self, other: Trajectories) -> bool:
        """Whether both hold exactly the same ``(uid, d, t)`` rows (the condition for scoring one against the other)."""
        return len(self) == len(other) and all(np.array_equal(getattr(self, k), getattr(other, k))
                                               for k in ("uid", "d", "t"))


# -- files -----------------------------------------------------------------------------------------
def load_humob_csv(path: str | os.PathLike, *, base: int, grid: int = GRID, city: str | None = None) -> Trajectories:
    """Read a HuMob CSV (header ``uid,d,t,x,y``, optionally with a ``city`` column, in any column order).

    ``base`` must be given: 1 for the HuMob'24 files (cells 1..200), 0 for 0-based files. ``city`` keeps only
    that city's rows (the file must then have a ``city`` column).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such trajectory file")
    with path.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise TrajectoryError(f"{path}: empty file; expected a header {','.join(HUMOB_COLUMNS)}[,city] and rows")
    header = [h.strip() for h in header]
    missing = [c for c in HUMOB_COLUMNS if c not in header]
    if missing:
        raise TrajectoryError(f"{path}: missing column(s) {', '.join(missing)}; the header has {', '.join(header)} "
                              f"but needs {','.join(HUMOB_COLUMNS)} (city optional)")
    has_city = "city" in header
    if city is not None and not has_city:
        raise TrajectoryError(f"{path}: city={city!r} asked for but the file has no 'city' column")
    idx = [header.index(c) for c in HUMOB_COLUMNS]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="loadtxt: input contained no data")  # our own error below
        try:
            with path.open(encoding="utf-8") as f:
                num = np.loadtxt(f, delimiter=",", skiprows=1, usecols=idx, dtype=np.int64, ndmin=2)
            if has_city:
                with path.open(encoding="utf-8") as f:
                    cities = np.loadtxt(f, delimiter=",", skiprows=1, usecols=header.index("city"), dtype=str,
                                        ndmin=1)
            else:
                cities = None
        except ValueError as e:
            raise TrajectoryError(f"{path}: columns {','.join(HUMOB_COLUMNS)} must hold integers: {e}") from e
    if not len(num):
        raise TrajectoryError(f"{path}: no rows after the header")
    traj = Trajectories(*num.T, base=base, city=cities, grid=grid, source=str(path), line_offset=1)
    if city is not None:
        traj = traj.subset(traj.city == city)
        if not len(traj):
            raise TrajectoryError(f"{path}: field 'city' has no rows for city {city!r}; "
                                  f"cities present: {', '.join(np.unique(cities))}")
    return traj


def write_humob_csv(traj: Trajectories, path: str | os.PathLike, *, with_city: bool = False) -> Path:
    """Write ``uid,d,t,x,y`` (the HuMob submission format; ``city`` first when asked), atomically."""
    path = Path(path)
    if with_city and traj.city is None:
        raise TrajectoryError(f"{path}: with_city=True but the trajectories have no 'city' field")
    cols = [traj.uid, traj.d, traj.t, traj.x, traj.y]
    header = ",".join(HUMOB_COLUMNS)
    body = np.column_stack(cols).astype(str)
    if with_city:
        header = "city," + header
        body = np.column_stack([traj.city, body])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(header + "\n")
            if len(body):
                f.write("\n".join(",".join(r) for r in body) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -- splits ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DaySplit:
    """History rows (days before) and target rows (the days to predict) of the same users."""

    history: Trajectories
    target: Trajectories
    history_days: tuple[int, int]  # inclusive range
    target_days: tuple[int, int]


def split_by_day(traj: Trajectories, history_days: tuple[int, int], target_days: tuple[int, int],
                 require_history: bool = True) -> DaySplit:
    """Split into history days ``[h0, h1]`` and target days ``[t0, t1]`` (inclusive; the ranges may not overlap).

    Only users with target rows are kept in the target; with ``require_history`` every such user must have at
    least one history row (a predictor has nothing to go on otherwise), else a :class:`TrajectoryError` names them.
    """
    (h0, h1), (t0, t1) = history_days, target_days
    if h0 > h1 or t0 > t1:
        raise TrajectoryError(f"{traj.source}: day ranges must be (first, last) with first <= last, got "
                              f"history {history_days}, target {target_days}")
    if not (h1 < t0 or t1 < h0):
        raise TrajectoryError(f"{traj.source}: history days {history_days} overlap target days {target_days}")
    hist = traj.subset((traj.d >= h0) & (traj.d <= h1))
    targ = traj.subset((traj.d >= t0) & (traj.d <= t1))
    if require_history:
        lost = np.setdiff1d(targ.users, hist.users)
        if lost.size:
            raise TrajectoryError(f"{traj.source}: field 'd': {lost.size} user(s) have target rows in days {t0}..{t1} "
                                  f"but no history rows in days {h0}..{h1} (first: uid {lost[0]})")
    return DaySplit(hist, targ, (h0, h1), (t0, t1))


def split_by_user(traj: Trajectories, test_fraction: float = 0.2, seed: int = 0) -> tuple[Trajectories, Trajectories]:
    """Disjoint users: ``(train, test)`` with about ``test_fraction`` of the users (at least one) in the test part."""
    users = traj.users
    if len(users) < 2:
        raise TrajectoryError(f"{traj.source}: field 'uid': a split by user needs >= 2 users, got {len(users)}")
    if not 0 < test_fraction < 1:
        raise TrajectoryError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = min(len(users) - 1, max(1, round(test_fraction * len(users))))
    test_users = np.random.default_rng(seed).choice(users, size=n_test, replace=False)
    is_test = np.isin(traj.uid, test_users)
    return traj.subset(~is_test), traj.subset(is_test)


def split_by_city(traj: Trajectories) -> dict[str, Trajectories]:
    """One :class:`Trajectories` per city label, in sorted order of the labels."""
    if traj.city is None:
        raise TrajectoryError(f"{traj.source}: a split by city needs the 'city' field (a CSV with a city column)")
    return {str(c): traj.subset(traj.city == c) for c in np.unique(traj.city)}


# -- synthetic -------------------------------------------------------------------------------------
def synthetic_trajectories(seed: int = 0, n_users: int = 50, days: int = 75, grid: int = GRID, base: int = 1,
                           city: str | None = "S", observe: float = 0.35, first_uid: int = 0) -> Trajectories:
    """Users with a home, a work place and a few leisure spots, a weekly rhythm and noise; an embedded default.

    Weekdays (``d % 7`` not in :data:`HUMOB_WEEKEND`): home at night, work from a per-user start slot to an end
    slot, sometimes a leisure stop in the evening. Weekends: home, with a leisure outing around midday. Each slot
    is observed with probability ``observe`` (at least one row per user-day), and 5% of the observed cells are
    jittered to a neighbouring cell (GPS noise). Everything is drawn from ``numpy.random.default_rng(seed)``.
    """
    rng = np.random.default_rng(seed)
    u, dd, tt = np.meshgrid(np.arange(n_users), np.arange(days), np.arange(SLOTS_PER_DAY), indexing="ij")
    centre = rng.uniform(0.25 * grid, 0.75 * grid, size=(1, 2))
    home = np.clip(np.round(centre + rng.normal(0, grid / 10, (n_users, 2))), 0, grid - 1)
    work = np.clip(np.round(home + rng.normal(0, grid / 20, (n_users, 2))), 0, grid - 1)
    leisure = np.clip(np.round(home[:, None] + rng.normal(0, grid / 30, (n_users, 3, 2))), 0, grid - 1)
    start = rng.integers(14, 20, n_users)[:, None, None]  # 7:00..9:30
    end = start + rng.integers(14, 20, n_users)[:, None, None]
    weekend = np.isin(dd % 7, HUMOB_WEEKEND)
    spot = rng.integers(0, 3, (n_users, days))[:, :, None]  # the day's leisure spot
    at_work = ~weekend & (tt >= start) & (tt < end) & (rng.random((n_users, days, 1)) > 0.05)  # 5% days off
    evening = ~weekend & (tt >= end + 1) & (tt < end + 4) & (rng.random((n_users, days, 1)) < 0.3)
    outing = weekend & (tt >= 22) & (tt < 30) & (rng.random((n_users, days, 1)) < 0.7)
    leis = evening | outing
    xy = np.broadcast_to(home[:, None, None], (*u.shape, 2)).copy()
    xy[at_work] = np.broadcast_to(work[:, None, None], xy.shape)[at_work]
    lxy = np.take_along_axis(leisure[:, None], np.broadcast_to(spot[..., None], (n_users, days, 1, 2)), axis=2)
    xy[leis] = np.broadcast_to(lxy, xy.shape)[leis]
    seen = rng.random(u.shape) < observe
    seen[np.arange(n_users)[:, None], np.arange(days)[None], rng.integers(0, SLOTS_PER_DAY, (n_users, days))] = True
    jitter = (rng.random(u.shape + (2,)) < 0.05) * rng.choice([-1, 1], u.shape + (2,))
    xy = np.clip(xy + jitter, 0, grid - 1).astype(np.int64) + base
    labels = None if city is None else np.full(int(seen.sum()), city)
    return Trajectories(u[seen] + first_uid, dd[seen], tt[seen], xy[..., 0][seen], xy[..., 1][seen], base=base,
                        city=labels, grid=grid, source=f"synthetic_trajectories(seed={seed})")
