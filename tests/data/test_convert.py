"""Converters: each format from small hand-written files, values checked at named (time, region, channel) cells."""

import importlib.util
import json

import numpy as np
import pytest

from stllm.data import CityDataError
from stllm.data.convert import FORMATS, convert

HAS_CITY_FILES = importlib.util.find_spec("stllm.data.city_files") is not None


def _write(path, text):
    path.write_text(text.strip() + "\n")
    return path


def _at(city, when, region, channel):
    """The value and observed flag at a (time, region id, channel name) cell."""
    t = int(np.flatnonzero(city.timestamps == np.datetime64(when, "m"))[0])
    r, c = city.region_ids.index(region), city.channels.index(channel)
    return float(city.values[t, r, c]), bool(city.observed[t, r, c])


def _roundtrip(city, tmp_path):
    """Through the other agent's city files when they exist, so what convert returns is also what is saved."""
    if not HAS_CITY_FILES:
        return city
    from stllm.data.city_files import load_city_file, save_city

    path = tmp_path / "city.npz"
    save_city(city, path)
    back = load_city_file(path)
    np.testing.assert_array_equal(back.values, city.values)
    np.testing.assert_array_equal(back.observed, city.observed)
    assert back.channels == city.channels and back.region_ids == city.region_ids
    return back


def test_libcity_geo_dyna_points_and_polygon_centroid(tmp_path):
    _write(tmp_path / "city.geo", '''
geo_id,type,coordinates
7,Point,"[-73.98, 40.75]"
3,Polygon,"[[[-74.0, 40.0], [-73.0, 40.0], [-73.0, 41.0], [-74.0, 41.0], [-74.0, 40.0]]]"
''')
    _write(tmp_path / "city.dyna", '''
dyna_id,type,time,entity_id,inflow,outflow
0,state,2016-01-01T00:00:00Z,7,5,1
1,state,2016-01-01T00:30:00Z,7,6,2
2,state,2016-01-01T01:00:00Z,7,7,
3,state,2016-01-01T00:00:00Z,3,10,11
4,state,2016-01-01T00:30:00Z,3,12,13
5,state,2016-01-01T01:00:00Z,3,14,15
''')
    city = _roundtrip(convert("libcity", [str(tmp_path)]), tmp_path)
    assert city.region_ids == ("7", "3") and city.channels == ("inflow", "outflow")
    assert city.freq == np.timedelta64(30, "m") and city.n_steps == 3
    assert _at(city, "2016-01-01T00:30", "3", "outflow") == (13.0, True)
    assert _at(city, "2016-01-01T01:00", "7", "inflow") == (7.0, True)
    assert _at(city, "2016-01-01T01:00", "7", "outflow")[1] is False  # an empty cell is missing, not zero
    lat, lon = city.coords[1]
    assert (lat, lon) == pytest.approx((40.5, -73.5))  # the square's centre
    assert tuple(city.coords[0]) == pytest.approx((40.75, -73.98))  # GeoJSON is [lon, lat]


def test_libcity_grid_cells_and_channel_choice(tmp_path):
    _write(tmp_path / "g.geo", '''
geo_id,type,coordinates,row_id,column_id
0,Point,"[10.0, 50.0]",0,0
1,Point,"[10.1, 50.0]",0,1
2,Point,"[10.0, 50.1]",1,0
3,Point,"[10.1, 50.1]",1,1
''')
    rows = ["dyna_id,type,time,row_id,column_id,inflow,outflow"]
    for h in range(3):
        for k, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            rows.append(f"{h * 4 + k},state,2016-01-01T0{h}:00:00Z,{r},{c},{100 * h + 10 * r + c},{h}")
    _write(tmp_path / "g.grid", "\n".join(rows))
    city = convert("libcity", [str(tmp_path / "g.geo"), str(tmp_path / "g.grid")], channels="outflow,inflow",
                   name="grid-city")  # fmt: skip
    assert city.name == "grid-city" and city.channels == ("outflow", "inflow")
    assert city.region_ids == ("0_0", "0_1", "1_0", "1_1") and city.freq == np.timedelta64(1, "h")
    assert _at(city, "2016-01-01T02:00", "1_0", "inflow") == (210.0, True)
    assert _at(city, "2016-01-01T01:00", "0_1", "outflow") == (1.0, True)
    assert city.mask is None
    with pytest.raises(CityDataError, match=r"g.grid: field 'value columns': no \['speed'\]"):
        convert("libcity", [str(tmp_path)], channels="speed")


def test_libcity_unknown_entity_and_gap_are_named(tmp_path):
    _write(tmp_path / "a.geo", 'geo_id,type,coordinates\n1,Point,"[0.0, 1.0]"')
    _write(tmp_path / "a.dyna", "dyna_id,type,time,entity_id,speed\n0,state,2016-01-01T00:00:00Z,1,3\n"
                                "1,state,2016-01-01T00:05:00Z,9,3")  # fmt: skip
    with pytest.raises(CityDataError, match=r"a.dyna: field 'entity_id': row 3: '9' is not one of the regions"):
        convert("libcity", [str(tmp_path)])
    _write(tmp_path / "a.dyna", "dyna_id,type,time,entity_id,speed\n0,state,2016-01-01T00:00:00Z,1,3\n"
                                "1,state,2016-01-01T00:05:00Z,1,3\n2,state,2016-01-01T00:20:00Z,1,3")  # fmt: skip
    with pytest.raises(CityDataError, match=r"a.dyna: field 'time': irregular .* first gap at 2016-01-01T00:10"):
        convert("libcity", [str(tmp_path)])


def _basicts_legacy(folder, data, features):
    folder.mkdir()
    fp = np.memmap(folder / "data.dat", dtype="float32", mode="w+", shape=data.shape)
    fp[:] = data
    fp.flush()
    del fp
    desc = {"name": "PEMS-mini", "domain": "traffic flow", "shape": list(data.shape), "num_time_steps": data.shape[0],
            "num_nodes": data.shape[1], "num_features": data.shape[2], "feature_description": features,
            "has_graph": False, "frequency (minutes)": 5, "regular_settings": {"NULL_VAL": 0.0}}  # fmt: skip
    (folder / "desc.json").write_text(json.dumps(desc))
    return folder


def test_basicts_legacy_memmap_drops_time_features(tmp_path):
    t, n = 6, 3
    flow = np.arange(t * n, dtype=np.float32).reshape(t, n, 1) * 2
    tod = np.broadcast_to((np.arange(t) / 288.0)[:, None, None], (t, n, 1))
    dow = np.zeros((t, n, 1))
    folder = _basicts_legacy(tmp_path / "PEMS", np.concatenate([flow, tod, dow], -1).astype(np.float32),
                             ["traffic flow", "time of day", "day of week"])  # fmt: skip
    with pytest.raises(ValueError, match=r"desc.json: field 'start_time': BasicTS stores no dates.*--start"):
        convert("basicts", [str(folder)])
    city = _roundtrip(convert("basicts", [str(folder)], start="2018-01-01"), tmp_path)
    assert city.channels == ("traffic flow",) and city.n_regions == 3 and city.name == "PEMS-mini"
    assert city.freq == np.timedelta64(5, "m") and city.timestamps[-1] == np.datetime64("2018-01-01T00:25")
    assert _at(city, "2018-01-01T00:10", "1", "traffic flow") == (2.0 * (2 * n + 1), True)
    (folder / "data.dat").write_bytes(b"\0" * 12)
    with pytest.raises(CityDataError, match=r"data.dat: field '<file>': 12 bytes, but desc.json 'shape'"):
        convert("basicts", [str(folder)], start="2018-01-01")


def test_basicts_current_layout_joins_train_val_test(tmp_path):
    folder = tmp_path / "METR"
    folder.mkdir()
    series = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    series[7, 1] = np.nan
    for part, sl in (("train", slice(0, 6)), ("val", slice(6, 8)), ("test", slice(8, 10))):
        np.save(folder / f"{part}_data.npy", series[sl])
    (folder / "meta.json").write_text(json.dumps({"name": "METR", "domain": "traffic speed", "shape": [10, 2],
                                                  "frequency (minutes)": 5, "num_vars": 2}))  # fmt: skip
    city = convert("basicts", [str(folder / "meta.json")], start="2012-03-01", freq="10min", task="flow")
    assert city.channels == ("traffic speed",) and city.freq == np.timedelta64(10, "m")
    assert _at(city, "2012-03-01T01:00", "0", "traffic speed") == (12.0, True)  # step 6 = the first of val
    assert _at(city, "2012-03-01T01:10", "1", "traffic speed")[1] is False  # NaN -> masked
    (folder / "val_data.npy").unlink()
    with pytest.raises(FileNotFoundError, match="val_data.npy: missing"):
        convert("basicts", [str(folder)], start="2012-03-01")


def test_urbangpt_npz_regions_first_and_grid(tmp_path):
    n, t = 3, 5
    data = np.zeros((n, t, 2), dtype=np.float32)
    data[2, 4, 1] = 9.0
    data[1, 0, 0] = 4.0
    path = tmp_path / "2021-CHI_taxi_77x17520x2.npz"  # a released name: its start and step are known
    np.savez(path, data=data)
    city = _roundtrip(convert("urbangpt-npz", [str(path)]), tmp_path)
    assert city.timestamps[0] == np.datetime64("2021-01-01T00:00") and city.freq == np.timedelta64(30, "m")
    assert city.channels == ("inflow", "outflow") and city.n_regions == 3 and city.n_steps == 5
    assert _at(city, "2021-01-01T02:00", "2", "outflow") == (9.0, True)
    assert _at(city, "2021-01-01T00:00", "1", "inflow") == (4.0, True)
    other = tmp_path / "mine.npz"
    grid = np.zeros((2, 3, 4, 1), dtype=np.float32)
    grid[1, 2, 3, 0] = 5.0
    np.savez(other, values=grid)
    with pytest.raises(ValueError, match=r"mine.npz: not one of UrbanGPT's released files.*pass start and freq"):
        convert("urbangpt-npz", [str(other)])
    city = convert("urbangpt-npz", [str(other)], start="2016-01-01", freq="1D", channels=["crimes"])
    assert city.region_ids[-1] == "1_2" and city.n_steps == 4
    assert _at(city, "2016-01-04", "1_2", "crimes") == (5.0, True)
    with pytest.raises(CityDataError, match=r"mine.npz: field 'key': no array 'data'.*\['values'\]"):
        convert("urbangpt-npz", [str(other)], key="data", start="2016-01-01", freq="1D")


LONG = """
time,region,channel,value
2020-01-01 00:00,b,pickup,1
2020-01-01 00:00,b,dropoff,2
2020-01-01 00:00,a,pickup,3
2020-01-01 00:00,a,dropoff,4
2020-01-01 01:00,b,pickup,5
2020-01-01 01:00,a,pickup,7
2020-01-01 01:00,a,dropoff,8
"""


def test_long_table_pivots_and_masks_a_missing_row(tmp_path):
    table = _write(tmp_path / "t.csv", LONG)
    regions = _write(tmp_path / "r.csv", "region,name,lat,lon\na,Alpha,40.7,-74.0\nb,Beta,40.8,-73.9")
    city = _roundtrip(convert("long-table", [str(table), str(regions)], name="mine"), tmp_path)
    assert city.region_ids == ("a", "b") and city.channels == ("pickup", "dropoff")  # region table order
    assert city.regions[1].name == "Beta" and tuple(city.coords[1]) == pytest.approx((40.8, -73.9))
    assert _at(city, "2020-01-01T01:00", "b", "dropoff") == (0.0, False)  # no row: masked
    assert _at(city, "2020-01-01T01:00", "a", "dropoff") == (8.0, True)
    assert _at(city, "2020-01-01T00:00", "b", "pickup") == (1.0, True)
    assert int((~city.observed).sum()) == 1


def test_long_table_column_names_one_channel_and_duplicates(tmp_path):
    text = "when,zone,count\n2020-01-01,10,1\n2020-01-02,10,2\n2020-01-01,2,3\n2020-01-02,2,4\n"
    city = convert("long-table", [str(_write(tmp_path / "d.csv", text))], time_col="when", region_col="zone",
                   value_col="count")  # fmt: skip
    assert city.channels == ("count",) and city.region_ids == ("2", "10")  # ids sorted as numbers
    assert city.freq == np.timedelta64(1, "D") and _at(city, "2020-01-02", "10", "count") == (2.0, True)
    dup = _write(tmp_path / "dup.csv", LONG.strip() + "\n2020-01-01 00:00,a,dropoff,9")
    with pytest.raises(CityDataError, match=r"dup.csv: field 'time, region, channel': duplicated row: line 9 "
                                            r"repeats .* of line 5"):  # fmt: skip
        convert("long-table", [str(dup)])
    with pytest.raises(CityDataError, match=r"field 'kind': no such column \(channel_col\)"):
        convert("long-table", [str(dup)], channel_col="kind")
    with pytest.raises(CityDataError, match=r"t.csv: field 'value': row 3: 'x' is not a number"):
        convert("long-table", [str(_write(tmp_path / "t.csv", "time,region,value\n2020-01-01,a,1\n2020-01-02,a,x"))])


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path):
    if importlib.util.find_spec("pyarrow") is not None:
        pytest.skip("pyarrow is installed")
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match=r"t.parquet: reading parquet needs pyarrow"):
        convert("long-table", [str(tmp_path / "t.parquet")])


def test_convert_refuses_unknown_formats_and_options(tmp_path):
    assert set(FORMATS) == {"libcity", "basicts", "urbangpt-npz", "long-table"}
    with pytest.raises(ValueError, match="format 'csv' is not one of libcity"):
        convert("csv", [str(tmp_path)])
    table = _write(tmp_path / "t.csv", LONG)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['key'\]"):
        convert("long-table", [str(table)], key="data")
    city = convert("long-table", [str(table)], task="event", freq=None)  # unset flags are ignored
    assert city.task == "event"
