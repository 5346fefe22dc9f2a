"""The documented city file (npz or CSV folder): exact round trips, flags over the file, key mapping,
NaN as missing, bad files named by file/field/key/line, and an event file evaluated as events."""

import json

import numpy as np
import pytest
from model_fixtures import train_tiny_run

from stllm.data import CityData, CityDataError, Region
from stllm.data.city_files import load_city_file, parse_overrides, save_city
from stllm.data.loaders import load_preset
from stllm.train.arguments import DataArguments

TIME = np.array(["2024-03-01T00:00", "2024-03-01T01:00", "2024-03-01T02:00", "2024-03-01T03:00"])


def tiny_city(task: str = "flow", full: bool = True) -> CityData:
    """4 hourly steps, 3 regions, 2 channels; ``full``: every optional field set, values missing at two entries."""
    values = np.arange(24, dtype=np.float32).reshape(4, 3, 2) / 4  # quarter counts: not integers on purpose
    if task == "event":
        values = (values > 2).astype(np.float32)
    if not full:
        return CityData(values, TIME, "1h", ("a", "b"), tuple(Region(str(i), f"region {i}") for i in range(3)),
                        task=task, name="tiny")  # fmt: skip
    mask = np.ones(values.shape, dtype=bool)
    mask[1, 2, 0] = mask[3, 0, 1] = False
    regions = (Region("r1", "Loop", 41.88, -87.63, borough="Central", pois=(("Food", 3), ("Park", 1))),
               Region("r2", "Hyde, Park", 41.79, -87.59, pois=(("School", 2),)),
               Region("r3", "No coords"))  # fmt: skip
    adj = np.array([[0, 0.5, 0], [0.5, 0, 1 / 3], [0, 1 / 3, 0]], dtype=np.float32)
    return CityData(np.where(mask, values, 0), TIME, "1h", ("in", "out"), regions, task=task, name="chi",
                    quantity="taxi", place="Chicago", adjacency=adj, mask=mask)  # fmt: skip


def assert_same_city(a: CityData, b: CityData) -> None:
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.observed, b.observed)
    assert (a.mask is None) == (b.mask is None)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert (a.freq, a.task, a.channels, a.name, a.place, a.quantity) == (b.freq, b.task, b.channels, b.name, b.place,
                                                                         b.quantity)  # fmt: skip
    for r, s in zip(a.regions, b.regions, strict=True):
        assert (r.id, r.name, r.borough, r.pois) == (s.id, s.name, s.borough, s.pois)
        np.testing.assert_array_equal([r.lat, r.lon], [s.lat, s.lon])
    if a.adjacency is None:
        assert b.adjacency is None
    else:
        np.testing.assert_array_equal(a.adjacency, b.adjacency)


@pytest.mark.parametrize("form", ["city.npz", "city_folder"])
@pytest.mark.parametrize("task", ["flow", "event"])
@pytest.mark.parametrize("full", [True, False], ids=["all-fields", "required-only"])
def test_round_trip_is_exact(tmp_path, form, task, full):
    city = tiny_city(task, full)
    path = save_city(city, tmp_path / form)
    back = load_city_file(path)
    assert_same_city(city, back)
    assert back.source == str(path)


def test_optional_fields_are_written_only_when_they_carry_something(tmp_path):
    with np.load(save_city(tiny_city(full=False), tmp_path / "min.npz")) as f:
        assert set(f.files) == {"values", "time", "freq", "task", "channels", "region_ids", "names", "name"}
    with np.load(save_city(tiny_city(), tmp_path / "full.npz")) as f:
        assert {"mask", "lat", "lon", "adjacency", "poi_categories", "poi_counts", "boroughs", "place"} <= set(f.files)
        assert np.isnan(f["values"][1, 2, 0]) and not f["mask"][1, 2, 0]  # missing = NaN on disk, not a made-up 0
    folder = save_city(tiny_city(), tmp_path / "folder")
    rows = (folder / "values.csv").read_text().splitlines()
    assert rows[0] == "time,region,channel,value" and len(rows) == 1 + 4 * 3 * 2 - 2  # the 2 missing: no row
    assert json.loads((folder / "meta.json").read_text())["channels"] == ["in", "out"]
    save_city(tiny_city(full=False), folder)  # a city without POIs/graph must not inherit the old files
    assert not (folder / "pois.csv").exists() and load_city_file(folder).adjacency is None


def test_hand_written_npz_needs_only_values_and_time(tmp_path):
    path = tmp_path / "counts.npz"
    np.savez(path, values=np.ones((4, 5)), time=TIME)
    city = load_city_file(path)
    assert city.values.shape == (4, 5, 1) and city.task == "flow" and city.freq == np.timedelta64(60, "m")
    assert city.name == "counts" and city.region_ids == ("0", "1", "2", "3", "4") and city.mask is None
    np.savez(path, values=np.ones((4, 5)), start=np.array("2024-03-01"), freq=np.array("30min"))
    assert str(load_city_file(path).timestamps[-1]) == "2024-03-01T01:30"


def test_flags_beat_the_file(tmp_path):
    path = save_city(tiny_city("flow"), tmp_path / "c.npz")
    city = load_city_file(path, task="event", channels=("x", "y"))
    assert city.task == "event" and city.channels == ("x", "y")
    folder = save_city(tiny_city("event"), tmp_path / "f")
    assert load_city_file(folder, task="flow").task == "flow"
    with pytest.raises(CityDataError, match=r"field 'timestamps'.*not the stated freq"):
        load_city_file(path, freq="30min")  # the file's clock is hourly: a wrong --freq is caught, not believed
    with pytest.raises(CityDataError, match=r"field 'channels': 3 names for 2 channels"):
        load_city_file(path, channels=("x", "y", "z"))


def test_keys_map_other_key_names(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, flow=np.full((4, 2), 7.0), timestamps=TIME, values=np.zeros((4, 2)), zone=np.array(["p", "q"]))
    city = load_city_file(path, keys={"values": "flow", "time": "timestamps", "region_ids": "zone"})
    assert (city.values == 7).all() and city.region_ids == ("p", "q")  # the mapped key wins over a same-named one
    assert parse_overrides(keys="values=flow, time=timestamps")["keys"] == {"values": "flow", "time": "timestamps"}
    with pytest.raises(ValueError, match=r"--keys: unknown field\(s\) \['flows'\]"):
        parse_overrides(keys="flows=flow")
    with pytest.raises(ValueError, match="--keys must be field=key pairs"):
        parse_overrides(keys="values")


def test_nan_without_mask_is_missing_and_masked_negatives_are_allowed(tmp_path):
    values = np.ones((4, 2, 1))
    values[2, 1, 0] = np.nan
    np.savez(tmp_path / "nan.npz", values=values, time=TIME)
    city = load_city_file(tmp_path / "nan.npz")
    assert city.mask.sum() == 7 and not city.mask[2, 1, 0] and city.values[2, 1, 0] == 0
    values[2, 1, 0] = -1  # a sentinel under the mask is not a count
    mask = np.ones(values.shape, dtype=bool)
    mask[2, 1, 0] = False
    np.savez(tmp_path / "neg.npz", values=values, time=TIME, mask=mask)
    assert load_city_file(tmp_path / "neg.npz").values.min() == 0
    np.savez(tmp_path / "neg2.npz", values=values, time=TIME)
    with pytest.raises(CityDataError, match=r"neg2.npz: field 'values': negative count -1.0 at \(t, n, c\)=\(2, 1, "):
        load_city_file(tmp_path / "neg2.npz")


WRONG_SHAPES = {"time": TIME[:3], "region_ids": np.arange(2), "names": np.array(["a"]), "lat": np.zeros(4),
                "lon": np.zeros((3, 1)), "boroughs": np.array(["x"] * 2), "channels": np.array(["a", "b", "c"]),
                "mask": np.ones((4, 3), dtype=bool), "adjacency": np.eye(2), "task": np.array(["flow", "event"]),
                "poi_counts": np.ones((2, 1))}  # fmt: skip


@pytest.mark.parametrize("key", sorted(WRONG_SHAPES))
def test_a_wrong_shape_names_file_field_and_key(tmp_path, key):
    arrays = {"values": np.ones((4, 3, 2)), "time": TIME, key: WRONG_SHAPES[key]}
    if key == "poi_counts":
        arrays["poi_categories"] = np.array(["Food"])
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CityDataError, match=rf"bad.npz: field '{key}': key '{key}' (has shape|must be one value)"):
        load_city_file(tmp_path / "bad.npz")


@pytest.mark.parametrize("arrays, match", [
    ({"counts": np.ones((4, 2))}, r"field 'values': key 'values' not in file; available keys: \['counts', 'time'\]"),
    ({"values": np.ones((4, 2)), "task": np.array("forecast")}, r"field 'task': must be one of \('flow', 'event'\)"),
    ({"values": np.ones((4, 2)), "freq": np.array("fortnightly")}, r"field 'freq': cannot parse frequency"),
    ({"values": np.ones((4, 2)), "poi_categories": np.array(["Food"])}, r"field 'poi_counts': 'poi_categories' needs"),
])  # fmt: skip
def test_bad_npz_contents_are_named(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **{"time": TIME, **arrays})
    with pytest.raises(CityDataError, match=match):
        load_city_file(tmp_path / "bad.npz")


def test_irregular_time_is_named(tmp_path):
    time = TIME.copy()
    time[3] = "2024-03-01T05:00"
    np.savez(tmp_path / "irr.npz", values=np.ones((4, 2)), time=time)
    with pytest.raises(CityDataError, match=r"irr.npz: field 'timestamps': step .*02:00 -> .*05:00 at index 3"):
        load_city_file(tmp_path / "irr.npz")


def _csv_city(folder, rows: list[str], regions: str | None = None):
    folder.mkdir()
    (folder / "values.csv").write_text("\n".join(["time,region,channel,value", *rows]) + "\n")
    if regions is not None:
        (folder / "regions.csv").write_text(regions)
    return folder


@pytest.mark.parametrize("rows, regions, match", [
    (["2024-03-01,A,in,1", "2024-03-02,A,in,lots"], None, r"values.csv: field 'value': line 3: 'lots' is not a number"),
    (["2024-03-01,A,in,1", "yesterday,A,in,2"], None, r"values.csv: field 'time': line 3: 'yesterday' is not a date"),
    (["2024-03-01,A,in,1", "2024-03-01,A,in,2"], None, r"values.csv: field 'value': lines 2 and 3 both give"),
    (["2024-03-01,A,in,1", "2024-03-02,A,in"], None, r"values.csv: field '<row>': line 3: 3 cells, the header has 4"),
    (["2024-03-01,A,in,1", "2024-03-01,B,in,1"], "region,name\nA,Alpha\n",
     r"values.csv: field 'region': line 3: region 'B' is not in regions.csv"),
    (["2024-03-01T00:00,A,in,1", "2024-03-01T01:00,A,in,1", "2024-03-01T02:30,A,in,1"], None,
     r"values.csv: field 'time': line 4: .* is not on the 60 minutes grid"),
    (["2024-03-01,A,in,1"], "region,name,lat\nA,Alpha,north\n", r"regions.csv: field 'lat': line 2: 'north'"),
])  # fmt: skip
def test_bad_csv_rows_are_named_by_line(tmp_path, rows, regions, match):
    with pytest.raises(CityDataError, match=match):
        load_city_file(_csv_city(tmp_path / "city", rows, regions))


def test_csv_absent_rows_are_missing_and_regions_csv_sets_the_order(tmp_path):
    rows = ["2024-03-01,B,crime,2", "2024-03-03,B,crime,0", "2024-03-03,A,crime,1"]  # 2024-03-02 has no rows
    folder = _csv_city(tmp_path / "city", rows, "region,name,lat,lon\nA,Alpha,41.9,-87.6\nB,Beta,,\nC,Gamma,,\n")
    (folder / "meta.json").write_text(json.dumps({"task": "event", "place": "Chicago", "freq": "1D"}))  # a gap: say it
    city = load_city_file(folder)
    assert city.region_ids == ("A", "B", "C") and city.n_steps == 3 and city.freq == np.timedelta64(1440, "m")
    assert city.task == "event" and city.regions[0].has_coords and not city.regions[1].has_coords
    expected_mask = np.zeros((3, 3, 1), dtype=bool)
    expected_mask[0, 1] = expected_mask[2, 1] = expected_mask[2, 0] = True
    np.testing.assert_array_equal(city.mask, expected_mask)
    assert city.values[0, 1, 0] == 2 and city.values[2, 0, 0] == 1


def test_train_and_eval_flags_are_checked_and_reach_the_reader(tmp_path):
    for flag, value, match in (("task", "events", "--task must be one of flow, event"),
                               ("freq", "often", "--freq: cannot parse"), ("keys", "values", "--keys must be"),
                               ("channels", "a,,b", "--channels must be")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            DataArguments(**{flag: value})
    from stllm.train.train_mem import load_city

    path = save_city(tiny_city("flow"), tmp_path / "c.npz")
    city = load_city(DataArguments(data=str(path), task="event", channels="x,y"))
    assert city.task == "event" and city.channels == ("x", "y") and city.regions[0].name == "Loop"
    with pytest.raises(ValueError, match=r"--task: only for a city file .* data 'synthetic' is a preset"):
        load_preset("synthetic", file_options={"task": "event"})


def test_an_event_file_is_evaluated_as_events_without_a_flag(tmp_path):
    from stllm.cli import main
    from stllm.data import synthetic_city

    ckpt = train_tiny_run(tmp_path / "ckpt", "--synthetic_regions", "8", "--synthetic_days", "60",
                          "--synthetic_task", "event", "--input_len", "7", "--output_len", "3",
                          "--context_days", "0", "--context_weeks", "1", "--max_steps", "2")
    other = synthetic_city(seed=9, n_regions=5, days=30, task="event")  # another city, as a user would write it
    path = tmp_path / "crime.npz"
    np.savez(path, values=other.values, time=other.timestamps.astype(str), task=np.array("event"),
             channels=np.array(other.channels), place=np.array("Chicago"))  # fmt: skip
    out = tmp_path / "eval"
    assert main(["eval", str(ckpt), "--mode", "cross-city", "--data", str(path), "--output_dir", str(out),
                 "--no_progress", "--no_supervised", "--baselines", "last_value"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert {f"F1/{c}" for c in other.channels} | {"Macro-Recall", "Macro-F1"} <= set(metrics["stllm"])
    assert not any(k.startswith("MAE") for k in metrics["stllm"])
    assert all(0 <= v <= 1 for row in metrics.values() for k, v in row.items() if "F1" in k or "Recall" in k)
