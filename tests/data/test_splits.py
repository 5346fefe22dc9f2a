import numpy as np
import pytest

from stllm.data import CitySplit, RegionSplit, SplitError, SplitRecord, TimeSplit, assert_zero_shot, make_records
from stllm.data.splits import split_record


def test_region_split_random_is_disjoint_complete_and_deterministic(city):
    s = RegionSplit.random(city, test=0.25, val=0.25, seed=1)
    parts = [set(s.train), set(s.val), set(s.test)]
    assert sum(map(len, parts)) == city.n_regions and set().union(*parts) == set(city.region_ids)
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert s == RegionSplit.random(city, test=0.25, val=0.25, seed=1)
    assert s != RegionSplit.random(city, test=0.25, val=0.25, seed=2)


def test_overlapping_zero_shot_split_raises_with_ids():
    with pytest.raises(SplitError, match=r"'test'.*\['2'\]"):
        RegionSplit(train=("1", "2"), test=("2", "3"))
    assert RegionSplit(train=("1", "2"), test=("2",), zero_shot=False).test == ("2",)


def test_unknown_region_in_split_raises(city):
    with pytest.raises(ValueError, match=r"RegionSplit.test'.*unknown region ids \['nope'\]"):
        RegionSplit(train=("0",), test=("nope",)).validate(city)


def test_time_split_parts_disjoint_with_gap(city):
    t = TimeSplit.by_fraction(city, 0.6, 0.2, gap=12)
    idx = [np.arange(city.n_steps)[t.slice(p)] for p in ("train", "val", "test")]
    assert idx[0].max() + 12 < idx[1].min() and idx[1].max() + 12 < idx[2].min()
    assert idx[2].max() == city.n_steps - 1
    with pytest.raises(SplitError):
        TimeSplit(10, 5, 20)


def test_records_and_zero_shot_assertion(city):
    rs = RegionSplit.random(city, test=0.25, seed=0)
    ts = TimeSplit.by_fraction(city, 0.7, 0.1)
    train, test = make_records(city, rs, ts, "train"), make_records(city, rs, ts, "test")
    assert set(train.regions) == set(rs.train) and train.city == city.name
    assert train.time_range[1] <= test.time_range[0]
    assert_zero_shot(train, test, require=("regions", "time"))  # passes
    leaked = split_record(city, rs.test[:1] + rs.train[:2], ts.slice("test"))
    with pytest.raises(SplitError, match=rf"2 evaluated regions.*'{rs.train[0]}', '{rs.train[1]}'"):
        assert_zero_shot(train, leaked)
    same_time = split_record(city, rs.test, ts.slice("train"))
    assert_zero_shot(train, same_time)  # cross-region only by default
    with pytest.raises(SplitError, match="overlaps training time"):
        assert_zero_shot(train, same_time, require=("regions", "time"))
    other_city = SplitRecord("elsewhere", rs.train, train.time_range)
    assert_zero_shot(train, other_city, require=("city",))
    with pytest.raises(SplitError, match="was seen in training"):
        assert_zero_shot([other_city, train], test, require=("city",))


def test_record_json_round_trip(city):
    r = split_record(city, city.region_ids[:3], slice(5, 50))
    assert SplitRecord.from_json(r.to_json()) == r
    assert r.time_range == (str(city.timestamps[5]), str(city.timestamps[49] + city.freq))


def test_city_split_rejects_overlap():
    assert CitySplit(("nyc",), ("chi",)).test == ("chi",)
    with pytest.raises(SplitError, match="nyc"):
        CitySplit(("nyc", "chi"), ("nyc",))
