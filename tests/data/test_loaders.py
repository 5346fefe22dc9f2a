import numpy as np
import pytest

from stllm.data import CityDataError, load_npz


@pytest.fixture()
def npz(tmp_path):
    path = tmp_path / "city.npz"
    rng = np.random.default_rng(0)
    np.savez(path, flow=rng.poisson(4, (10, 3, 2)).astype(np.int32),
             time=np.array([f"2024-01-01 {h:02d}:00" for h in range(10)]),
             ids=np.array([11, 12, 13]), names=np.array(["A", "B", "C"]),
             lat=np.array([40.7, 40.71, 40.72]), lon=np.array([-74.0, -73.99, -73.98]), adj=np.eye(3, dtype=np.int8))
    return path


KEYS = {"values": "flow", "time": "time", "region_ids": "ids", "names": "names", "lat": "lat", "lon": "lon",
        "adjacency": "adj"}


def test_generic_npz_with_key_mapping(npz):
    c = load_npz(npz, KEYS, channels=("in", "out"), quantity="taxi")
    raw = np.load(npz)
    np.testing.assert_array_equal(c.values, raw["flow"])
    assert c.freq == np.timedelta64(60, "m") and c.region_ids == ("11", "12", "13")
    assert c.regions[1].name == "B" and c.regions[2].lat == 40.72 and c.adjacency.shape == (3, 3)
    assert c.source == str(npz) and c.name == "city"
    c2 = load_npz(npz, {"values": "flow", "time": None}, start="2024-02-01", freq="30min")
    assert c2.timestamps[1] == np.datetime64("2024-02-01T00:30") and c2.regions[0].name == "region 0"


def test_wrong_key_names_file_field_and_key(npz):
    with pytest.raises(CityDataError, match=r"city.npz: field 'values': key 'values' not in file; available keys"):
        load_npz(npz)
    with pytest.raises(CityDataError, match=r"field 'lat': key 'latitude' not in file"):
        load_npz(npz, {**KEYS, "lat": "latitude"})
    with pytest.raises(ValueError, match="unknown field"):
        load_npz(npz, {"vals": "flow"})


def test_shape_mismatch_and_bad_time(tmp_path, npz):
    with pytest.raises(CityDataError, match=r"field 'names'.*shape \(2,\), values have 3 regions"):
        bad = tmp_path / "bad.npz"
        np.savez(bad, **{**dict(np.load(npz)), "names": np.array(["A", "B"])})
        load_npz(bad, KEYS)
    t = np.load(npz)["time"].copy()
    t[[3, 4]] = t[[4, 3]]
    back = tmp_path / "back.npz"
    np.savez(back, **{**dict(np.load(npz)), "time": t})
    with pytest.raises(CityDataError, match=r"back.npz: field 'timestamps': not strictly increasing at index 4"):
        load_npz(back, KEYS)
    neg = tmp_path / "neg.npz"
    np.savez(neg, **{**dict(np.load(npz)), "flow": -np.ones((10, 3, 2))})
    with pytest.raises(CityDataError, match=r"neg.npz: field 'values': negative count"):
        load_npz(neg, KEYS)
    nan = tmp_path / "nan.npz"
    v = np.ones((10, 3, 2))
    v[2, 2, 1] = np.nan
    np.savez(nan, **{**dict(np.load(npz)), "flow": v})
    with pytest.raises(CityDataError, match=r"nan.npz: field 'values': NaN/inf"):
        load_npz(nan, KEYS)


def test_pickled_npz_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, values=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CityDataError, match=r"obj.npz: field 'values': holds Python objects.*need pickle"):
        load_npz(path)
    with pytest.raises(FileNotFoundError, match="missing.npz: no such file"):
        load_npz(tmp_path / "missing.npz")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_npz(tmp_path)


def _npz_bytes(tmp_path) -> bytes:
    good = tmp_path / "good.npz"
    np.savez(good, values=np.ones((10, 3, 2)), time=np.array([f"2024-01-01 {h:02d}:00" for h in range(10)]))
    return good.read_bytes()


@pytest.mark.parametrize("damage,match", [
    (lambda b: b[: len(b) // 2], r"not a readable .npz archive \(truncated or corrupt"),  # cut off mid-file
    (lambda b: b[:-10], r"not a readable .npz archive \(truncated or corrupt"),  # end of the zip directory lost
    (lambda b: b"", r"empty file \(0 bytes\)"),
    (lambda b: b"values,time\n1,2024-01-01\n", r"a text file starting 'values,time', not an .npz"),
    (lambda b: b"\x00\x01\xff\xfe" * 4, r"unknown binary data.*not an .npz"),
])  # fmt: skip
def test_a_file_that_is_not_an_npz_is_named_and_described(tmp_path, damage, match):
    """Truncated, empty or text files are refused as what they are (a text file used to be reported as
    'pickled data'), naming the file and saying how to write a good one."""
    bad = tmp_path / "bad.npz"
    bad.write_bytes(damage(_npz_bytes(tmp_path)))
    with pytest.raises(CityDataError, match=match) as e:
        load_npz(bad)
    assert str(e.value).startswith(f"{bad}: field '<file>'") and "numpy.savez" in str(e.value)


def test_a_single_npy_array_named_npz_is_refused(tmp_path):
    path = tmp_path / "arr.npz"
    with open(path, "wb") as f:  # np.save would append .npy to the name
        np.save(f, np.ones((10, 3, 2)))
    with pytest.raises(CityDataError, match=r"arr.npz: field '<file>': a single .npy array, not an .npz archive"):
        load_npz(path)


def test_a_damaged_array_inside_the_archive_names_its_key(tmp_path):
    path = tmp_path / "damaged.npz"
    np.savez_compressed(path, values=np.random.default_rng(0).random((200, 3, 2)))
    raw = bytearray(path.read_bytes())
    raw[120:200] = bytes(80)  # inside the compressed 'values' member, the zip directory intact
    path.write_bytes(bytes(raw))
    with pytest.raises(CityDataError, match=r"damaged.npz: field 'values': unreadable array"):
        load_npz(path)


def test_missing_values_key_says_which_keys_exist_and_how_to_map_them(tmp_path):
    path = tmp_path / "flows.npz"
    np.savez(path, flow=np.ones((10, 3)), time=np.arange(10))
    with pytest.raises(CityDataError, match=r"flows.npz: field 'values': key 'values' not in file; available keys: "
                                            r"\['flow', 'time'\] \(pass keys=\{'values': <one of them>\}"):
        load_npz(path)
