import numpy as np
import pytest

from stllm.data import POI_CATEGORIES, REGION_TYPES, synthetic_city
from stllm.data.synthetic import holiday_day


@pytest.fixture(scope="module")
def big():
    return synthetic_city(seed=1, n_regions=40, days=21)


def test_deterministic_per_seed():
    a, b, c = synthetic_city(5, 10, 9), synthetic_city(5, 10, 9), synthetic_city(6, 10, 9)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.regions == b.regions
    assert not np.array_equal(a.values, c.values)


def test_shapes_types_and_city_box(big):
    assert big.values.shape == (21 * 48, 40, 2) and big.task == "flow"
    assert {r.kind for r in big.regions} == set(REGION_TYPES)
    lat, lon = big.coords.T
    assert ((lat > 40.69) & (lat < 40.83) & (lon > -74.03) & (lon < -73.92)).all()
    assert len(set(r.name for r in big.regions)) == 40
    hourly = synthetic_city(1, 5, 3, freq="1h")
    assert hourly.n_steps == 72 and hourly.freq == np.timedelta64(60, "m")


def _poi_share(city):
    counts = np.array([[dict(r.pois).get(c, 0) for c in POI_CATEGORIES] for r in city.regions], float)
    return counts / counts.sum(1, keepdims=True), counts.sum(1)


def test_poi_mix_identifies_region_type(big):
    """Leave-one-out nearest centroid on POI shares recovers the type: metadata carries signal."""
    share, _ = _poi_share(big)
    kinds = np.array([REGION_TYPES.index(r.kind) for r in big.regions])
    correct = 0
    for i in range(len(kinds)):
        keep = np.arange(len(kinds)) != i
        cents = np.stack([share[keep & (kinds == k)].mean(0) for k in range(len(REGION_TYPES))])
        correct += int(np.argmin(((cents - share[i]) ** 2).sum(1)) == kinds[i])
    assert correct / len(kinds) >= 0.8


def test_type_sets_daily_profile_and_size_sets_volume(big):
    prof = big.values.reshape(21, 48, 40, 2).mean(0)  # (48, N, 2) mean day
    prof = np.concatenate([prof[..., 0], prof[..., 1]]).T  # (N, 96)
    prof = prof / prof.sum(1, keepdims=True)
    corr = np.corrcoef(prof)
    kinds = np.array([r.kind for r in big.regions])
    same = kinds[:, None] == kinds[None]
    off = ~np.eye(40, dtype=bool)
    assert corr[same & off].mean() > corr[~same].mean() + 0.2
    _, n_pois = _poi_share(big)
    volume = big.values.sum((0, 2))
    rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    assert np.corrcoef(rank(n_pois), rank(volume))[0, 1] > 0.5


def test_weekly_rhythm_and_holiday(big):
    daily = big.values.reshape(21, 48, 40, 2).sum((1, 3))  # (day, region)
    office = np.array([r.kind == "office" for r in big.regions])
    weekday = np.array([d % 7 < 5 for d in range(21)])  # starts on Monday 2024-01-01
    h = holiday_day(21)
    weekday[h] = False
    office_day = daily[:, office].sum(1)
    assert office_day[~weekday].mean() < 0.5 * office_day[weekday].mean()
    other_mondays = [d for d in range(0, 21, 7) if d != h]
    assert office_day[h] < 0.5 * office_day[other_mondays].mean()
    night = np.array([r.kind == "nightlife" for r in big.regions])
    assert daily[:, night].sum(1)[~weekday].mean() > daily[:, night].sum(1)[weekday].mean()


def test_events_depend_on_type():
    ev = synthetic_city(seed=2, n_regions=40, days=120, task="event")
    assert ev.task == "event" and ev.freq == np.timedelta64(1, "D") and ev.n_channels == 4
    happen = (ev.values > 0).mean((0, 1))
    assert ((happen > 0.02) & (happen < 0.6)).all()
    kinds = np.array([r.kind for r in ev.regions])
    assault = ev.values[..., ev.channels.index("assault")].mean(0)
    assert assault[kinds == "nightlife"].mean() > 3 * assault[kinds == "park"].mean()


def test_bad_arguments():
    with pytest.raises(ValueError, match="divide a day"):
        synthetic_city(0, 4, 2, freq="7h")
    with pytest.raises(ValueError, match="n_regions"):
        synthetic_city(0, 0, 2)
