"""``stllm data check``: the summary of a tiny hand-made city (numbers worked out by hand below), every
problem of a broken file named, warnings without failing, the same error as training, and convert."""

import sys
import types

import numpy as np
import pytest

from stllm.cli import main
from stllm.data import CityData, Region
from stllm.data.check import check_city_file
from stllm.data.city_files import load_city_file, save_city

TIME = np.array(["2024-05-01", "2024-05-02", "2024-05-03", "2024-05-04"])


def hand_city(tmp_path, task: str = "flow"):
    """4 days, regions A (with coordinates) and B (without), channels in/out; 3 of 16 entries missing:
    in:  A 2 4 6 8, B 1 1 1 -   (1 of 8 missing = 12.5%; mean of the 7 observed = 23/7)
    out: A - - 10 10, B 0 0 0 0 (2 of 8 missing = 25%; mean of the 6 observed = 20/6)
    overall 3/16 = 18.75% missing. As events, in has 7 observed cells of which all 7 are > 0, out 2 of 6."""
    values = np.full((4, 2, 2), np.nan)
    values[:, 0, 0], values[:3, 1, 0] = [2, 4, 6, 8], 1
    values[2:, 0, 1], values[:, 1, 1] = 10, 0
    path = tmp_path / "hand.npz"
    np.savez(path, values=values, time=TIME, region_ids=np.array(["A", "B"]), lat=np.array([41.9, np.nan]),
             lon=np.array([-87.6, np.nan]), channels=np.array(["in", "out"]), task=np.array(task))  # fmt: skip
    return path


def test_summary_of_a_hand_made_city(tmp_path, capsys):
    path = hand_city(tmp_path)
    s = check_city_file(path).summary
    assert (s["regions"], s["steps"], s["freq"], s["task"]) == (2, 4, "1D", "flow")
    assert (s["start"], s["end"]) == ("2024-05-01T00:00", "2024-05-04T00:00")
    assert s["missing"] == pytest.approx(3 / 16)
    assert s["missing_per_channel"] == pytest.approx({"in": 1 / 8, "out": 2 / 8})
    assert s["mean"] == pytest.approx({"in": 23 / 7, "out": 20 / 6})
    assert (s["coordinates"], s["adjacency"], s["pois"]) == (1, False, 0)
    assert main(["data", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "missing     18.8% (in 12.5%, out 25.0%)" in out and "mean        in 3.286, out 3.333" in out
    assert "coordinates 1 of 2 regions" in out
    assert "warning:" in out and "1 of 2 regions have no coordinates" in out


def test_event_rate_counts_observed_cells_with_an_event(tmp_path, capsys):
    s = check_city_file(hand_city(tmp_path, "event")).summary
    assert s["event_rate"] == pytest.approx({"in": 7 / 7, "out": 2 / 6}) and "mean" not in s
    assert check_city_file(hand_city(tmp_path), task="event").summary["task"] == "event"  # the flag beats the file


def test_warnings_are_printed_and_exit_0(tmp_path, capsys):
    values = np.ones((4, 3, 2))
    values[:, :, 1] = 0  # channel 'b' is 0 everywhere
    values[:, 2] = np.nan  # region 2 never observed
    values[1] = np.nan  # day 2 has no observation at all
    np.savez(tmp_path / "w.npz", values=values, time=TIME, channels=np.array(["a", "b"]))
    assert main(["data", "check", str(tmp_path / "w.npz")]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3
    assert "field 'values': channel 'b' is 0 everywhere it is observed" in warnings[0]
    assert "field 'mask': 1 of 3 region(s) never observed: ['2']" in warnings[1]
    assert "field 'mask': 1 of 4 time step(s) with no observation at all (gaps), first 2024-05-02" in warnings[2]


def test_every_problem_of_a_broken_file_is_named_and_exits_2(tmp_path, capsys):
    time = TIME.copy()
    time[3] = "2024-05-09"
    np.savez(tmp_path / "broken.npz", values=np.ones((4, 3, 2)), time=time, lat=np.zeros(2),
             mask=np.ones((4, 3), dtype=bool), region_ids=np.array(["x", "y", "x"]))  # fmt: skip
    assert main(["data", "check", str(tmp_path / "broken.npz")]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.out.splitlines() if line.startswith("error:")]
    assert len(errors) == 4, errors
    for field in ("lat", "mask", "timestamps", "regions"):
        assert sum(f"broken.npz: field '{field}'" in e for e in errors) == 1, field
    assert "1 irregular time step(s)" in captured.out and "duplicated: ['x']" in captured.out
    assert captured.err.startswith("stllm data check: error: ") and "(and 3 more above)" in captured.err


def test_missing_values_and_bad_flags_exit_2(tmp_path, capsys):
    np.savez(tmp_path / "nov.npz", counts=np.ones((4, 2)), time=TIME)
    assert main(["data", "check", str(tmp_path / "nov.npz")]) == 2
    assert "field 'values': key 'values' not in file; available keys: ['counts', 'time']" in capsys.readouterr().err
    assert main(["data", "check", str(tmp_path / "nov.npz"), "--keys", "values=counts"]) == 0
    assert main(["data", "check", str(tmp_path / "nov.npz"), "--task", "crime"]) == 2
    assert "--task must be one of flow, event" in capsys.readouterr().err


def test_an_error_check_finds_stops_training_with_the_same_message(tmp_path):
    from stllm.train.arguments import DataArguments
    from stllm.train.train_mem import load_city

    mask = np.ones((4, 2, 1), dtype=bool)
    values = np.ones((4, 2, 1))
    values[2, 0, 0] = np.nan  # NaN where the mask says observed
    np.savez(tmp_path / "nan.npz", values=values, time=TIME, mask=mask)
    report = check_city_file(tmp_path / "nan.npz")
    assert report.summary is None and len(report.errors) == 1
    with pytest.raises(ValueError) as e:
        load_city(DataArguments(data=str(tmp_path / "nan.npz")))
    assert str(e.value) == report.errors[0] and "NaN/inf where mask says observed" in str(e.value)


def test_convert_writes_the_converters_city_and_says_when_there_are_none(tmp_path, monkeypatch, capsys):
    city = CityData(np.arange(8, dtype=np.float32).reshape(4, 2, 1), TIME, "1D", ("n",),
                    (Region("p", "P"), Region("q", "Q")), name="converted")  # fmt: skip
    seen = {}
    fake = types.ModuleType("stllm.data.convert")
    fake.convert = lambda fmt, inputs, **options: seen.update(fmt=fmt, inputs=inputs, options=options) or city
    monkeypatch.setitem(sys.modules, "stllm.data.convert", fake)
    out = tmp_path / "out.npz"
    assert main(["data", "convert", "libcity", "a.dyna", "a.geo", "-o", str(out), "--option", "freq=1h"]) == 0
    assert seen == {"fmt": "libcity", "inputs": ["a.dyna", "a.geo"], "options": {"freq": "1h"}}
    np.testing.assert_array_equal(load_city_file(out).values, city.values)
    monkeypatch.setitem(sys.modules, "stllm.data.convert", None)
    assert main(["data", "convert", "libcity", "a.dyna", "-o", str(tmp_path / "x.npz")]) == 2
    assert "no converters (stllm.data.convert is missing)" in capsys.readouterr().err


def test_check_reads_csv_folders_too(tmp_path, capsys):
    folder = save_city(load_city_file(hand_city(tmp_path)), tmp_path / "folder")
    s = check_city_file(folder).summary
    assert s["missing"] == pytest.approx(3 / 16) and s["mean"] == pytest.approx({"in": 23 / 7, "out": 20 / 6})
