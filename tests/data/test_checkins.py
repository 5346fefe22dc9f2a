"""Check-in loader, validation, trajectories, splits and next-POI samples."""

import numpy as np
import pytest

from stllm.data.checkins import (
    CheckInError,
    align_checkins,
    chronological_split,
    load_checkins,
    next_poi_samples,
    synthetic_checkins,
    unseen_user_split,
    user_trajectories,
)
from stllm.data.loaders import data_root

HEADER = "user_id,POI_id,POI_catname,latitude,longitude,local_time,trajectory_id"
ROWS = [
    "2,pB,Bar,40.75,-73.99,2012-11-09 20:00:00+00:00,2_1",
    "1,pA,Cafe,40.70,-74.00,2012-11-09 09:00:00+00:00,1_1",
    "1,pB,Bar,40.75,-73.99,2012-11-09 08:00:00+00:00,1_1",
    "3,pC,Gym,40.80,-73.95,2012-11-10 10:00:00+00:00,3_1",
    "1,pC,Gym,40.80,-73.95,2012-11-10 07:30:00,1_2",
    "2,pA,Cafe,40.70,-74.00,2012-11-09 18:00:00+00:00,2_1",
]


def write(tmp_path, rows, header=HEADER, name="c.csv"):
    p = tmp_path / name
    p.write_text("\n".join([header, *rows]) + "\n")
    return p


def test_load_sorts_by_user_then_time_and_builds_poi_table(tmp_path):
    c = load_checkins(write(tmp_path, ROWS))
    assert len(c) == 6 and c.time.dtype == np.dtype("datetime64[m]")
    assert c.user_ids[c.user].tolist() == ["1", "1", "1", "2", "2", "3"]
    assert c.poi_ids[c.poi].tolist() == ["pB", "pA", "pC", "pA", "pB", "pC"]
    assert str(c.time[0]) == "2012-11-09T08:00"
    assert c.categories[c.poi_category].tolist() == ["Cafe", "Bar", "Gym"]  # table order pA, pB, pC
    np.testing.assert_allclose(c.poi_lat, [40.70, 40.75, 40.80])
    assert c.trajectory_ids[c.trajectory].tolist()[:3] == ["1_1", "1_1", "1_2"]


def test_missing_column_names_file_and_column(tmp_path):
    p = write(tmp_path, [r.rsplit(",", 3)[0] for r in ROWS], header="user_id,POI_id,POI_catname,latitude")
    with pytest.raises(CheckInError, match=r"c\.csv.*longitude.*local_time"):
        load_checkins(p)


def test_unparsable_time_names_file_row_and_value(tmp_path):
    rows = list(ROWS)
    rows[2] = rows[2].replace("2012-11-09 08:00:00+00:00", "yesterday")
    with pytest.raises(CheckInError, match=r"c\.csv: row 4: unparsable local_time 'yesterday'"):
        load_checkins(write(tmp_path, rows))


def test_swapped_coordinates_hint(tmp_path):
    rows = list(ROWS)
    rows[1] = "1,pA,Cafe,-118.24,34.05,2012-11-09 09:00:00+00:00,1_1"  # (lon, lat) of Los Angeles
    with pytest.raises(CheckInError, match=r"c\.csv: row 3: latitude -118.24 out of range.*swapped"):
        load_checkins(write(tmp_path, rows))
    rows[1] = "1,pA,Cafe,40.7,-200,2012-11-09 09:00:00+00:00,1_1"
    with pytest.raises(CheckInError, match="longitude"):
        load_checkins(write(tmp_path, rows))


def test_trajectory_column_optional(tmp_path):
    rows = [r.rsplit(",", 1)[0] for r in ROWS]
    c = load_checkins(write(tmp_path, rows, header=HEADER.rsplit(",", 1)[0]))
    assert c.trajectory_ids[c.trajectory][:3].tolist() == ["1_2012-11-09", "1_2012-11-09", "1_2012-11-10"]


def test_user_trajectories_skip_and_count_short_users(tmp_path):
    c = load_checkins(write(tmp_path, ROWS))
    trajs, skipped = user_trajectories(c)
    assert skipped == 1  # user 3 has one visit
    assert {c.user_ids[u] for u in trajs} == {"1", "2"}
    assert [c.poi_ids[c.poi[r]] for r in trajs[0]] == ["pB", "pA", "pC"]


def test_next_poi_samples_windows(tmp_path):
    c = load_checkins(write(tmp_path, ROWS))
    hist, target = next_poi_samples(c, history=2)
    # user 1: B -> A -> C ; user 2: A -> B ; user 3 skipped
    np.testing.assert_array_equal(hist, [[-1, 0], [0, 1], [-1, 3]])
    assert c.poi_ids[target].tolist() == ["pA", "pC", "pB"]
    hist, target = next_poi_samples(c, history=3, target_mask=np.arange(len(c)) == 2)
    np.testing.assert_array_equal(hist, [[-1, 0, 1]])


def test_align_marks_unknown_pois_and_keeps_users(tmp_path):
    train = load_checkins(write(tmp_path, ROWS[:3]))
    test = load_checkins(write(tmp_path, ROWS[3:], name="t.csv"))
    a = align_checkins(test, train)
    assert a.poi_ids.tolist() == train.poi_ids.tolist()
    assert a.user_ids[a.user].tolist() == ["1", "2", "3"]
    assert a.poi.tolist() == [-1, 0, -1]  # pC is not in the training table


def test_synthetic_deterministic_and_in_box():
    a, b = synthetic_checkins(seed=1, n_users=8, n_pois=40, days=7), synthetic_checkins(seed=1, n_users=8, n_pois=40,
                                                                                          days=7)
    for f in ("user", "poi", "time", "lat"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(synthetic_checkins(seed=2, n_users=8, n_pois=40, days=7).poi[:50], a.poi[:50])
    assert (a.lat > 40.69).all() and (a.lat < 40.81).all() and (a.lon < -73.92).all()
    assert np.all(np.diff(a.user) >= 0)
    same_user = np.diff(a.user) == 0
    assert np.all(np.diff(a.time.astype(np.int64))[same_user] >= 0)


def test_splits():
    c = synthetic_checkins(seed=0, n_users=10, n_pois=40, days=14)
    tr, te = chronological_split(c, 0.75)
    assert len(tr) + len(te) == len(c) and tr.time.max() < te.time.min()
    assert abs(len(tr) / len(c) - 0.75) < 0.05
    tr, te = unseen_user_split(c, 0.7, seed=3)
    assert len(tr) + len(te) == len(c)
    assert not set(tr.user.tolist()) & set(te.user.tolist())
    assert len(np.unique(tr.user)) == 7
    tr2, _ = unseen_user_split(c, 0.7, seed=3)
    np.testing.assert_array_equal(tr.user, tr2.user)
    with pytest.raises(ValueError):
        chronological_split(c, 1.0)


@pytest.fixture(scope="module")
def nyc():
    root = data_root() / "foursquare_nyc"
    if not (root / "NYC_val.csv").is_file():
        pytest.skip(f"real data not found at {root} (../shared/data); set STLLM_DATA_ROOT to run these tests")
    return load_checkins(root / "NYC_val.csv"), load_checkins(root / "NYC_test.csv")


def test_real_nyc_files(nyc):
    val, test = nyc
    assert len(val) > 10000 and len(test) > 10000
    assert (np.abs(val.lat - 40.75) < 1).all() and (np.abs(val.lon + 74) < 1).all()
    assert val.time.max() <= test.time.min()
    trajs, skipped = user_trajectories(val)
    hist, target = next_poi_samples(val)
    assert len(target) == sum(len(r) - 1 for r in trajs.values()) and hist.shape == (len(target), 10)
    valid = hist >= 0
    assert (val.user[hist][valid] == np.broadcast_to(val.user[hist[:, -1]][:, None], hist.shape)[valid]).all()
    a = align_checkins(test, val)
    assert 0 < (a.poi < 0).mean() < 0.5
