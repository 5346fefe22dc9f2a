import numpy as np
import pytest
from data_fixtures import make_city

from stllm.data import STInstructionDataset, synthetic_city, window_batches


def test_lazy_indexing_and_views(dataset, city, scaler):
    assert len(dataset) == dataset.n_windows * city.n_regions
    assert dataset.n_windows == city.n_steps - 24 + 1
    s = dataset[dataset.index_of(5, 3)]
    (key, hist), = s["history"]
    assert s["region"] == 3 and key[1] == 5
    assert np.shares_memory(hist, dataset.scaled)  # a view of the once-scaled city, not a copy
    np.testing.assert_allclose(hist, scaler.transform(city.values[5:17]), rtol=1e-6)
    np.testing.assert_allclose(s["target"], scaler.transform(city.values[17:29, 3]), rtol=1e-6)
    assert s["target_mask"].all() and s["task"] == "flow" and s["geo"].shape == (0, 2)
    assert s["id"] == f"{city.name}:{city.timestamps[5]}:{city.regions[3].id}"
    assert dataset[-1]["id"] == dataset[len(dataset) - 1]["id"]
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_region_subset_time_range_and_stride(city):
    ds = STInstructionDataset(city, regions=["5", "2"], time=slice(100, 200), input_len=6, output_len=4, stride=5)
    assert ds.n_regions == 2 and ds.starts[0] == 100 and ds.starts[-1] + 10 <= 200
    assert np.all(np.diff(ds.starts) == 5)
    s = ds[1]
    assert s["region"] == 2 and s["history"][0][1].shape == (6, city.n_regions, 2) and s["target"].shape == (4, 2)
    with pytest.raises(ValueError, match="STInstructionDataset.regions'.*unknown region ids"):
        STInstructionDataset(city, regions=["zz"])
    with pytest.raises(ValueError, match="no complete window"):
        STInstructionDataset(city, time=slice(0, 20))


def test_extra_views_cover_target_slots_a_day_and_week_earlier(city):
    ds = STInstructionDataset(city, extra_views=("week", "day"))
    week, day = 7 * 48, 48
    assert ds.starts[0] == week - 12  # the week view of the first window starts at step 0
    s = ds[ds.index_of(0, 2)]
    starts = [k[1] for k, _ in s["history"]]
    t0 = int(ds.starts[0])
    assert starts == [t0 + 12 - week, t0 + 12 - day, t0]
    target_steps = np.arange(t0 + 12, t0 + 24)
    np.testing.assert_array_equal(s["history"][0][1], city.values[target_steps - week])
    np.testing.assert_array_equal(s["history"][1][1], city.values[target_steps - day])
    assert s["conversation"].user.count("<ST_HIS>") == 3
    with pytest.raises(ValueError, match="unknown extra view"):
        STInstructionDataset(city, extra_views=("month",))


def test_event_targets_are_binary_and_masks_follow_city():
    ev = synthetic_city(seed=4, n_regions=5, days=40, task="event")
    ds = STInstructionDataset(ev, input_len=7, output_len=3)
    s = ds[ds.index_of(4, 1)]
    np.testing.assert_array_equal(s["target"], (ev.values[11:14, 1] > 0).astype(np.float32))
    assert s["task"] == "event" and set(np.unique(s["target"])) <= {0.0, 1.0}
    v = np.ones((6, 3, 2), np.float32)
    v[4, 1, 0] = np.nan
    masked = STInstructionDataset(make_city(values=v, mask=np.isfinite(v)), input_len=2, output_len=2)
    t = masked[masked.index_of(1, 1)]  # target steps 3, 4
    assert t["target_mask"].tolist() == [[True, True], [False, True]]


def test_geo_needs_coordinates(city):
    ds = STInstructionDataset(city, with_geo=True)
    np.testing.assert_allclose(ds[2]["geo"], city.coords[2:3])
    from dataclasses import replace

    from stllm.data import Region

    no_coords = replace(city, regions=tuple(Region(r.id, r.name) for r in city.regions))
    with pytest.raises(ValueError, match="with_geo needs coordinates"):
        STInstructionDataset(no_coords, with_geo=True)


def test_window_batches_cover_everything_once_and_group_windows(dataset):
    batches = window_batches(dataset, batch_size=dataset.n_regions, shuffle=True, seed=0)
    flat = np.concatenate(batches)
    assert np.array_equal(np.sort(flat), np.arange(len(dataset)))
    windows = [{i // dataset.n_regions for i in b} for b in batches]
    assert all(len(w) == 1 for w in windows)
    assert [min(w) for w in windows[:5]] != list(range(5))  # shuffled window order
