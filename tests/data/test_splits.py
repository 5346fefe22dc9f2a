import json

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


# -- content: the training data is recognised under another name -----------------------------------------------
def _relabel(city, name, ids=None, shift=None):
    import dataclasses

    from stllm.data.city import Region

    regions = city.regions if ids is None else tuple(Region(i, f"zone {i}") for i in ids)
    ts = city.timestamps if shift is None else city.timestamps + shift
    return dataclasses.replace(city, name=name, regions=regions, timestamps=ts)


@pytest.fixture(scope="module")
def hourly():
    from stllm.data import synthetic_city

    return synthetic_city(seed=4, n_regions=10, days=21, freq="1h")


def test_renamed_copy_is_the_training_city(hourly):
    train = split_record(hourly, hourly.region_ids[:7], slice(0, 14 * 24))
    copy = _relabel(hourly, "my_city")
    with pytest.raises(SplitError, match=r"'my_city' \(the training city .*by content\) was seen in training"):
        assert_zero_shot(train, split_record(copy, hourly.region_ids[7:], slice(16 * 24, None)), require=("city",))
    with pytest.raises(SplitError, match="3 evaluated regions"):
        assert_zero_shot(train, split_record(copy, hourly.region_ids[:3], slice(16 * 24, None)))
    with pytest.raises(SplitError, match="overlaps training time"):
        assert_zero_shot(train, split_record(copy, hourly.region_ids[7:], slice(24, 48)), require=("regions", "time"))
    held_out_later = split_record(copy, hourly.region_ids[7:], slice(16 * 24, None))
    assert_zero_shot(train, held_out_later, require=("regions", "time"))


def test_reordered_renamed_subset_and_relabelled_times_are_mapped_onto_the_training_regions(hourly):
    train = split_record(hourly, hourly.region_ids[:7], slice(0, 14 * 24))
    picked = ["8", "2", "5"]  # one held-out zone, two trained ones, under new ids
    part = _relabel(hourly.select_regions(picked).slice_time(50, None), "elsewhere", ids=["a", "b", "c"],
                    shift=np.timedelta64(14, "D"))  # fmt: skip
    links = train.matches(split_record(part))
    assert {k: v[0] for k, v in links.items()} == {"a": "8", "b": "2", "c": "5"}
    assert {v[1] for v in links.values()} == {np.timedelta64(14, "D")}
    with pytest.raises(SplitError, match=r"2 evaluated regions.*\['b', 'c'\].*'b=2', 'c=5'"):
        assert_zero_shot(train, split_record(part, ["a", "b", "c"], slice(300, None)))
    later = slice(int(np.searchsorted(part.timestamps, np.datetime64("2024-01-29T00:00"))), None)  # after training
    earlier = slice(0, 48)  # 2024-01-03, relabelled to the 17th: inside the training time once mapped back
    assert_zero_shot(train, split_record(part, ["a"], later), require=("regions", "time"))
    with pytest.raises(SplitError, match=r"overlaps training time .*relabelled by 20160 minutes"):
        assert_zero_shot(train, split_record(part, ["a"], earlier), require=("regions", "time"))


def test_other_cities_do_not_match_even_with_sparse_event_data(hourly):
    from stllm.data import synthetic_city

    other = synthetic_city(seed=5, n_regions=10, days=21, freq="1h")
    assert split_record(hourly).matches(split_record(other)) == {}
    events = [synthetic_city(seed=s, n_regions=20, days=200, task="event") for s in (1, 2)]
    train = split_record(events[0])
    assert train.matches(split_record(events[1])) == {}  # weeks with one event coincide by chance: not a match
    copy = _relabel(events[0], "crime_copy")
    assert len(train.matches(split_record(copy))) >= 18  # all but regions whose weeks are constant or repeated


def test_fingerprint_round_trips_and_an_old_record_falls_back_to_names(hourly, caplog):
    r = split_record(hourly, hourly.region_ids[:3], slice(0, 100))
    back = SplitRecord.from_json(r.to_json())
    assert back == r and back.content is not None and json.loads(r.to_json())["city"] == hourly.name
    old = SplitRecord.from_json(json.dumps({"city": hourly.name, "regions": ["0"], "time_range": r.time_range}))
    assert old.content is None
    with caplog.at_level("WARNING", logger="stllm"):
        assert old.matches(split_record(_relabel(hourly, "renamed"))) == {}  # names only: a renamed copy passes
        assert set(old.matches(split_record(hourly))) == set(hourly.region_ids)
    assert "compared by name only" in caplog.text


@pytest.mark.parametrize("damage", ["truncate", "not_an_object", "missing_field", "bad_content"])
def test_a_damaged_split_json_is_named(hourly, tmp_path, damage):
    path = tmp_path / "split.json"
    text = split_record(hourly, hourly.region_ids[:3], slice(0, 100)).to_json()
    d = json.loads(text)
    text = {"truncate": text[: len(text) // 2], "not_an_object": "[1, 2]",
            "missing_field": json.dumps({k: v for k, v in d.items() if k != "regions"}),
            "bad_content": json.dumps({**d, "content": {**d["content"], "hashes": "%%%"}})}[damage]  # fmt: skip
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"{path}: corrupt or truncated split record"):
        SplitRecord.load(path)
    with pytest.raises(FileNotFoundError, match="split record not found"):
        SplitRecord.load(tmp_path / "nope.json")
