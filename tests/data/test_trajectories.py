"""Trajectories: validation errors naming file and field, the HuMob CSV round trip, splits, the synthetic city."""

from __future__ import annotations

import numpy as np
import pytest

from stllm.data.loaders import data_root
from stllm.data.trajectories import (
    HUMOB_WEEKEND,
    Trajectories,
    TrajectoryError,
    load_humob_csv,
    split_by_city,
    split_by_day,
    split_by_user,
    synthetic_trajectories,
    write_humob_csv,
)


def _csv(tmp_path, text: str, name: str = "t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_rows_are_sorted_and_read_only():
    t = Trajectories([2, 1, 1], [0, 3, 0], [5, 0, 47], [1, 2, 3], [4, 5, 6], base=1)
    assert t.uid.tolist() == [1, 1, 2] and t.d.tolist() == [0, 3, 0] and t.t.tolist() == [47, 0, 5]
    assert t.x.tolist() == [3, 2, 1]  # cells travel with their rows
    with pytest.raises(ValueError):
        t.x[0] = 9
    # cell ids: (x - base) * grid + (y - base), 0-based whatever the file's numbering
    assert t.cell_index().tolist() == [2 * 200 + 5, 1 * 200 + 4, 0 * 200 + 3]
    assert t.with_base(0).cell_index().tolist() == t.cell_index().tolist()


@pytest.mark.parametrize(
    ("text", "base", "match"),
    [
        ("uid,d,t,x,y\n1,0,0,5,5\n1,0,1,0,5\n", 1, r"t\.csv: field 'x' must be a 1-based .*1\.\.200\); line 3 has x=0"),
        ("uid,d,t,x,y\n1,0,0,5,201\n", 1, r"field 'y' .*in 1\.\.200.*line 2 has y=201"),
        ("uid,d,t,x,y\n1,0,0,5,200\n", 0, r"field 'y' must be a 0-based cell .*in 0\.\.199.*y=200"),
        ("uid,d,t,x,y\n1,0,48,5,5\n", 1, r"field 't' must be a 30-minute slot \(in 0\.\.47\); line 2 has t=48"),
        ("uid,d,t,x,y\n1,-1,4,5,5\n", 1, r"field 'd' must be a day index \(>= 0\)"),
        ("uid,d,t,x,y\n1,0,4,5,5\n2,0,4,5,5\n1,0,4,6,6\n", 1, r"duplicate \(uid, d, t\) = \(1, 0, 4\) at line 2 and 4"),
        ("", 1, r"t\.csv: empty file"),
        ("uid,d,t,x,y\n", 1, r"t\.csv: no rows after the header"),
        ("uid,d,t,lon,lat\n1,0,0,5,5\n", 1, r"missing column\(s\) x, y; the header has uid, d, t, lon, lat"),
        ("uid,d,t,x,y\n1,0,0,5.5,5\n", 1, r"t\.csv: columns uid,d,t,x,y must hold integers"),
        ("city,uid,d,t,x,y\nB,1,0,0,5,5\nC,1,0,1,5,5\n", 1, r"field 'city': user 1 appears in cities 'B' and 'C'"),
    ],
)
def test_bad_files_name_the_file_field_and_line(tmp_path, text, base, match):
    with pytest.raises(TrajectoryError, match=match):
        load_humob_csv(_csv(tmp_path, text), base=base)


def test_base_must_be_stated_and_missing_files(tmp_path):
    p = _csv(tmp_path, "uid,d,t,x,y\n1,0,0,5,5\n")
    with pytest.raises(TypeError):
        load_humob_csv(p)  # no default: 0- or 1-based cells are never guessed
    with pytest.raises(TrajectoryError, match="base must be 0 .* or 1"):
        load_humob_csv(p, base=2)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_humob_csv(tmp_path / "nope.csv", base=1)
    with pytest.raises(TrajectoryError, match="city='B' asked for but the file has no 'city' column"):
        load_humob_csv(p, base=1, city="B")


def test_round_trip_with_and_without_city(tmp_path):
    t = synthetic_trajectories(seed=1, n_users=4, days=10, city="Z")
    back = load_humob_csv(write_humob_csv(t, tmp_path / "sub.csv"), base=1)
    assert (tmp_path / "sub.csv").read_text().splitlines()[0] == "uid,d,t,x,y"
    assert back.city is None and back.keys_equal(t)
    assert np.array_equal(back.x, t.x) and np.array_equal(back.y, t.y)
    back = load_humob_csv(write_humob_csv(t, tmp_path / "c.csv", with_city=True), base=1, city="Z")
    assert back.city.tolist() == t.city.tolist() and np.array_equal(back.y, t.y)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv", "sub.csv"]  # no temp file left behind


def test_splits():
    t = synthetic_trajectories(seed=2, n_users=10, days=14)
    train, test = split_by_user(t, test_fraction=0.3, seed=0)
    assert len(test.users) == 3 and not np.intersect1d(train.users, test.users).size
    assert len(train) + len(test) == len(t)
    sp = split_by_day(t, (0, 9), (10, 13))
    assert sp.history.d.max() == 9 and sp.target.d.min() == 10 and len(sp.history) + len(sp.target) == len(t)
    with pytest.raises(TrajectoryError, match="overlap"):
        split_by_day(t, (0, 10), (10, 13))
    late = Trajectories([1, 2, 2], [12, 3, 12], [0, 0, 0], [5, 5, 5], [5, 5, 5], base=1, source="x.csv")
    msg = r"x\.csv: field 'd': 1 user\(s\) .*no history rows in days 0\.\.9 .*uid 1"
    with pytest.raises(TrajectoryError, match=msg):
        split_by_day(late, (0, 9), (10, 13))
    assert len(split_by_day(late, (0, 9), (10, 13), require_history=False).target) == 2
    both = Trajectories(np.r_[t.uid, t.uid + 100], np.r_[t.d, t.d], np.r_[t.t, t.t], np.r_[t.x, t.x],
                        np.r_[t.y, t.y], base=1, city=np.r_[np.full(len(t), "B"), np.full(len(t), "C")])
    cities = split_by_city(both)
    assert list(cities) == ["B", "C"] and cities["C"].users.min() == 100 and len(cities["B"]) == len(t)
    with pytest.raises(TrajectoryError, match="needs the 'city' field"):
        split_by_city(late)


def test_synthetic_has_a_weekly_rhythm_and_is_reproducible():
    t = synthetic_trajectories(seed=0, n_users=30, days=28)
    assert np.array_equal(t.x, synthetic_trajectories(seed=0, n_users=30, days=28).x)
    assert not np.array_equal(t.x, synthetic_trajectories(seed=1, n_users=30, days=28).x)
    assert set(np.unique(t.d // 1)) == set(range(28)) and t.x.min() >= 1 and t.x.max() <= 200
    # home = the user's most frequent night cell; daytime at home is rare on weekdays, common on weekends
    cell = t.cell_index()
    night = (t.t < 12) | (t.t >= 44)
    home = {u: np.bincount(cell[night & (t.uid == u)]).argmax() for u in t.users}
    at_home = cell == np.array([home[u] for u in t.uid])
    day = (t.t >= 20) & (t.t < 28)
    weekend = np.isin(t.d % 7, HUMOB_WEEKEND)
    assert at_home[day & ~weekend].mean() < 0.2 < 0.3 < at_home[day & weekend].mean()


@pytest.fixture(scope="module")
def humob():
    path = data_root() / "humob24" / "groundtruth_days0-74_cityBC.csv"
    if not path.is_file():
        pytest.skip(f"HuMob data not found at {path}")
    return load_humob_csv(path, base=1)


def test_real_file_counts_match_provenance(humob):
    assert len(humob) == 178_855 and humob.x.max() == 200 and humob.x.min() >= 1
    b, c = split_by_city(humob).values()
    assert b.users.tolist() == list(range(17600, 17700)) and c.users.tolist() == list(range(13600, 13700))
    for city, (hist, targ) in ((b, (72_990, 17_895)), (c, (70_572, 17_398))):
        sp = split_by_day(city, (0, 59), (60, 74))
        assert (len(sp.history), len(sp.target)) == (hist, targ)
        assert np.bincount(np.searchsorted(sp.target.users, sp.target.uid)).min() >= 52
    with pytest.raises(TrajectoryError, match=r"groundtruth_days0-74_cityBC\.csv: field 'x' must be a 0-based"):
        load_humob_csv(data_root() / "humob24" / "groundtruth_days0-74_cityBC.csv", base=0)
