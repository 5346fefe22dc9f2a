import numpy as np
import pytest
from data_fixtures import make_city

from stllm.data import CityDataError, Region, parse_freq


def test_valid_city_properties():
    c = make_city()
    assert (c.n_steps, c.n_regions, c.n_channels) == (6, 3, 2)
    assert c.values.dtype == np.float32 and c.timestamps.dtype == np.dtype("datetime64[m]")
    assert c.freq == np.timedelta64(30, "m")
    np.testing.assert_allclose(c.coords[:, 0], [40.70, 40.71, 40.72], rtol=1e-6)
    assert c.observed.all()


@pytest.mark.parametrize(
    "overrides, field, words",
    [
        (dict(regions=(Region("a", "A"), Region("b", "B"))), "regions", "2 regions for 3"),
        (dict(regions=(Region("a", "A"), Region("a", "B"), Region("c", "C"))), "regions", "duplicated"),
        (dict(channels=("inflow",)), "channels", "1 names for 2"),
        (dict(values=np.zeros((6, 3))), "values", "(T, N, C)"),
        (dict(timestamps=np.datetime64("2024-01-01") + np.arange(5) * np.timedelta64(30, "m")), "timestamps", "(6,)"),
        (dict(freq="1h"), "timestamps", "not the stated freq"),
        (dict(freq="fortnightly"), "freq", "cannot parse"),
        (dict(task="regression"), "task", "must be one of"),
        (dict(adjacency=np.zeros((2, 2))), "adjacency", "(3, 3)"),
    ],
)
def test_bad_fields_name_file_and_field(overrides, field, words):
    with pytest.raises(CityDataError) as e:
        make_city(**overrides)
    assert e.value.source == "tiny.npz" and e.value.field == field
    assert str(e.value).startswith(f"tiny.npz: field '{field}'") and words in str(e.value)


def test_non_monotonic_timestamps_rejected_with_index():
    ts = np.datetime64("2024-01-01T00:00") + np.arange(6) * np.timedelta64(30, "m")
    ts[3], ts[4] = ts[4], ts[3]
    with pytest.raises(CityDataError, match=r"timestamps'.*not strictly increasing at index 4"):
        make_city(timestamps=ts)


def test_nan_needs_mask_and_masked_values_are_zeroed():
    v = np.ones((6, 3, 2), np.float32)
    v[2, 1, 0] = np.nan
    with pytest.raises(CityDataError, match=r"values'.*NaN/inf at \(t, n, c\)=\(2, 1, 0\)"):
        make_city(values=v)
    mask = np.isfinite(v)
    c = make_city(values=v, mask=mask)
    assert c.values[2, 1, 0] == 0 and np.isfinite(c.values).all() and not c.observed[2, 1, 0]
    with pytest.raises(CityDataError, match="where mask says observed"):
        make_city(values=v, mask=np.ones_like(mask))
    with pytest.raises(CityDataError, match="mask"):
        make_city(values=v, mask=mask.astype(np.float32))


def test_negative_counts_rejected():
    v = np.ones((6, 3, 2), np.float32)
    v[5, 2, 1] = -1
    with pytest.raises(CityDataError, match=r"negative count -1.0 at \(t, n, c\)=\(5, 2, 1\)"):
        make_city(values=v)


def test_region_lookup_and_unknown_ids():
    c = make_city()
    assert c.region_index(["2", 0]).tolist() == [2, 0]
    with pytest.raises(CityDataError, match=r"unknown region ids \['7'\]"):
        c.region_index(["1", "7"])
    sub = c.select_regions(["2", "0"])
    assert sub.region_ids == ("2", "0")
    np.testing.assert_array_equal(sub.values, c.values[:, [2, 0]])


def test_region_pois_sorted_by_count_then_name():
    r = Region(1, "x", pois=(("b", 2), ("c", 5), ("a", 2)))
    assert r.id == "1" and r.pois == (("c", 5), ("a", 2), ("b", 2))


def test_aggregate_by_factor_preserves_sums_and_masks():
    v = np.random.default_rng(0).poisson(3, (6, 3, 2)).astype(np.float32)
    mask = np.ones(v.shape, bool)
    mask[1, 0, 0] = False
    c = make_city(values=v, mask=mask)
    a = c.aggregate(2)
    assert a.freq == np.timedelta64(60, "m") and a.n_steps == 3
    expected = c.values.reshape(3, 2, 3, 2).sum(1)
    np.testing.assert_array_equal(a.values[a.observed], expected[a.observed])
    assert not a.observed[0, 0, 0] and a.values[0, 0, 0] == 0 and a.observed.sum() == a.observed.size - 1
    assert a.timestamps[1] == c.timestamps[2]


def test_aggregate_to_freq_aligns_to_calendar():
    ts = np.datetime64("2024-01-01T23:00") + np.arange(6) * np.timedelta64(30, "m")
    c = make_city(timestamps=ts)
    with pytest.raises(CityDataError, match="fewer than 48 steps"):  # 4 steps after midnight: no full day
        c.aggregate(freq="1D")
    h = make_city(timestamps=ts + np.timedelta64(30, "m")).aggregate(freq="1h")  # starts 23:30 -> drop 1
    assert h.timestamps[0] == np.datetime64("2024-01-02T00:00") and h.n_steps == 2
    np.testing.assert_array_equal(h.values[0], c.values[1:3].sum(0))
    with pytest.raises(CityDataError, match="not a whole multiple"):
        c.aggregate(freq="45min")


def test_parse_freq():
    assert parse_freq("30min") == np.timedelta64(30, "m")
    assert parse_freq("h") == np.timedelta64(60, "m")
    assert parse_freq("1D") == np.timedelta64(1440, "m")
    with pytest.raises(ValueError):
        parse_freq("0min")


def _regions(coords):
    return tuple(Region(str(i), f"r{i}", lat, lon) for i, (lat, lon) in enumerate(coords))


NYC = [(40.71, -74.00), (40.78, -73.97), (40.85, -73.93)]  # Lower Manhattan, Central Park, Washington Heights


@pytest.mark.parametrize("place", ["", "New York City"])
def test_latitudes_beyond_90_are_refused_as_swapped(place):
    beijing = [(116.40, 39.90), (116.30, 39.99), (116.45, 39.93)]  # (lon, lat) given as (lat, lon)
    with pytest.raises(CityDataError, match=r"tiny.npz: field 'lat': region '0' has lat 116.4 .*swapped") as e:
        make_city(regions=_regions(beijing), place=place)
    assert e.value.field == "lat"
    with pytest.raises(CityDataError, match=r"field 'lon': region '1' has lon 200"):
        make_city(regions=_regions([(40.7, -74.0), (40.7, 200.0), (40.7, -74.0)]))


def test_swapped_coordinates_of_a_declared_city_are_refused_though_in_range():
    make_city(regions=_regions(NYC), place="New York City")  # the right order passes
    swapped = [(lon, lat) for lat, lon in NYC]  # lat -74.0 .. -73.9, lon 40.7 ..: valid numbers, wrong place
    with pytest.raises(CityDataError, match=r"field 'lat': region '0' at \(lat, lon\) = \(-74, 40.71\): lat and lon "
                                            r"are swapped"):
        make_city(regions=_regions(swapped), place="New York City")
    with pytest.raises(CityDataError, match="lies outside New York City"):  # wrong, but not the swap: say so
        make_city(regions=_regions([*NYC[:2], (51.5, -0.12)]), place="New York City")


@pytest.mark.parametrize("coords", [
    [(-33.87, 151.21), (-33.80, 151.28), (-33.95, 151.10)],  # Sydney: southern, eastern
    [(-34.60, -58.38), (-34.55, -58.45), (-34.65, -58.50)],  # Buenos Aires: southern, western
    [(-73.9, 40.7), (-73.8, 40.8), (-73.7, 40.9)],  # in range, no declared city: nothing to compare with
    [(float("nan"), float("nan"))] * 3,  # unknown coordinates
])
def test_legitimate_cities_anywhere_and_unknown_coordinates_pass(coords):
    city = make_city(regions=_regions(coords), place="Some City")
    assert city.coords.shape == (3, 2)
