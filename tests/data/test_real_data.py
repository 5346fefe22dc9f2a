"""Checks against the real files in ../shared/data (skipped when absent)."""

import json

import numpy as np
import pytest

from stllm.data import (
    RegionSplit,
    STDataCollator,
    STInstructionDataset,
    STScaler,
    load_bikenyc,
    load_manhattan_flows,
    load_nyc_crime,
)

MANHATTAN_BOX = ((40.68, 40.89), (-74.05, -73.90))


@pytest.fixture(scope="module")
def taxi(shared_data):
    return load_manhattan_flows("taxi", root=shared_data)


def test_taxi_in_equals_out_per_step(taxi):
    # PROVENANCE: only trips with both ends in Manhattan, both channels binned by pickup time
    np.testing.assert_array_equal(taxi.values[..., 0].sum(1), taxi.values[..., 1].sum(1))
    assert taxi.values.shape == (35088, 69, 2) and taxi.freq == np.timedelta64(30, "m")
    assert taxi.timestamps[0] == np.datetime64("2019-01-01T00:00")
    assert taxi.timestamps[-1] == np.datetime64("2020-12-31T23:30")


def test_zones_named_inside_manhattan_with_pois(taxi, shared_data):
    (lat0, lat1), (lon0, lon1) = MANHATTAN_BOX
    assert all(r.name and r.borough == "Manhattan" for r in taxi.regions)
    lat, lon = taxi.coords.T
    assert ((lat > lat0) & (lat < lat1) & (lon > lon0) & (lon < lon1)).all()
    raw = json.loads((shared_data / "region_metadata/urbangpt_poi/zone_poi.json").read_text())
    for r in taxi.regions:  # the join: same category counts as the file, for every zone
        expected = {}
        for p in raw[r.id]:
            expected[p["category_name"]] = expected.get(p["category_name"], 0) + 1
        assert dict(r.pois) == expected
    covered = sum(bool(r.pois) for r in taxi.regions)
    assert covered == sum(bool(raw[r.id]) for r in taxi.regions) and covered >= 65


def test_bike_loads_with_arrivals_first(shared_data):
    bike = load_manhattan_flows("bike", root=shared_data, with_pois=False)
    assert bike.channels == ("inflow", "outflow") and bike.values.shape == (35088, 69, 2)
    raw = np.load(shared_data / "nyc_manhattan_flows/manhattan_taxi_bike_30min.npz")
    np.testing.assert_array_equal(bike.values, raw["bike"])
    assert bike.adjacency.sum() == raw["adj"].sum()


def test_crime_categories_and_counts_match_file(shared_data):
    zones = load_nyc_crime(root=shared_data)
    raw = np.load(shared_data / "nyc_crime/nyc_crime_daily_manhattan_zones.npz")
    assert zones.channels == tuple(raw["categories"]) and zones.task == "event"
    np.testing.assert_array_equal(zones.values, raw["counts"])
    grid = load_nyc_crime(grid=True, root=shared_data)
    graw = np.load(shared_data / "nyc_crime/nyc_crime_daily.npz")
    assert grid.n_regions == 256 and grid.freq == np.timedelta64(1, "D")
    i, j = 9, 5
    np.testing.assert_array_equal(grid.values[:, i * 16 + j], graw["counts"][i, j])
    assert grid.regions[i * 16 + j].lat == graw["cell_lat_center"][i]
    assert grid.values.sum() == graw["counts"].sum() >= zones.values.sum()


def test_bikenyc(shared_data):
    b = load_bikenyc(root=shared_data)
    assert b.values.shape == (1369, 128, 2) and b.freq == np.timedelta64(60, "m")
    assert b.adjacency.shape == (128, 128) and not b.regions[0].has_coords


def test_aggregation_preserves_sums(taxi):
    hourly = taxi.aggregate(freq="1h")
    daily = hourly.aggregate(freq="1D")
    assert hourly.n_steps == 35088 // 2 and daily.n_steps == 731
    np.testing.assert_array_equal(daily.values.sum(0), taxi.values.sum(0))
    np.testing.assert_array_equal(daily.values[40], taxi.values[40 * 48:41 * 48].sum(0))


def test_real_prompts_dedup_and_scaler(taxi):
    split = RegionSplit.random(taxi, test=0.2, seed=0).validate(taxi)
    scaler = STScaler.fit(taxi, regions=split.train, time=slice(0, 17520))
    x = taxi.values[20000:20100]
    np.testing.assert_allclose(scaler.inverse(scaler.transform(x.astype(np.float64))), x, atol=1e-9)
    train = STInstructionDataset(taxi, scaler, regions=split.train, time=slice(0, 17520))
    test = STInstructionDataset(taxi, scaler, regions=split.test, time=slice(17520, None))
    assert not set(train.region_idx.tolist()) & set(test.region_idx.tolist())
    a = test[test.index_of(100, 2)]
    again = STInstructionDataset(taxi, None, regions=split.test, time=slice(17520, None))[test.index_of(100, 2)]
    assert a["conversation"] == again["conversation"] and "Manhattan borough" in a["conversation"].user


def test_collator_on_all_zones_of_one_window(taxi, tokenizer):
    ds = STInstructionDataset(taxi, time=slice(0, 2000))
    b = STDataCollator(tokenizer, st_slots=2)([ds[ds.index_of(500, r)] for r in range(69)])
    assert b["st_values"].shape == (1, 12, 69, 2) and b["st_region"].tolist() == list(range(69))
    np.testing.assert_array_equal(b["reg_targets"][:, :, 0].numpy(), taxi.values[512:524, :, 0].T)
