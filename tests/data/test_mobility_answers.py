"""Text answers of the generate-based mobility mode: render and parse are inverse, a day's changes are capped, each
asked slot takes the last change at or before it, and a bad answer is an error naming its line and field."""

import numpy as np
import pytest

from stllm.data.mobility import MobilityDataset, MobilityWindow
from stllm.data.mobility_answers import (
    AnswerError,
    day_headers,
    day_runs,
    nearest_named,
    parse_answer,
    place_legend,
    render_answer,
    runs_to_rows,
)
from stllm.data.trajectories import synthetic_trajectories


def test_render_parse_round_trip():
    headers = day_headers(np.array([60, 61, 62]))
    assert headers == ["60 weekday: ", "61 weekday: ", "62 weekend: "]  # 62 % 7 = 6: a HuMob'24 weekend
    runs = [[(0, 0), (1, 16), (0, 36)], [(2, 0)], [(1, 0), (0, 1), (3, 47)]]
    text = render_answer(headers, runs)
    assert text.splitlines()[0] == "60 weekday: A B@16 A@36"
    assert parse_answer(text, headers, 4) == runs


def test_weekend_headers():
    assert day_headers(np.array([62, 63, 64]), weekend=(0, 6)) == ["62 weekend: ", "63 weekend: ", "64 weekday: "]


def test_day_runs_merge_and_cap():
    t = np.array([3, 4, 10, 11, 12, 20, 30])
    label = np.array([1, 1, 0, 0, 2, 2, 1])
    assert day_runs(label, t, max_runs=8) == [(1, 0), (0, 10), (2, 12), (1, 30)]  # first run from midnight
    # cap 2: the single-row run (1 @30) joins the run before it (2 @12, now 3 rows), then the first of the two-row
    # runs (1 @0) joins the one after it, which then starts at midnight
    assert day_runs(label, t, max_runs=2) == [(0, 0), (2, 12)]


def test_runs_to_rows_takes_last_change():
    runs = [[(0, 0), (1, 16), (0, 36)], [(2, 0)]]
    d = np.array([60, 60, 60, 60, 61])
    t = np.array([0, 15, 16, 40, 47])
    assert runs_to_rows(runs, np.array([60, 61]), d, t).tolist() == [0, 0, 1, 0, 2]


def test_nearest_named_and_legend():
    named = np.array([10 * 200 + 10, 50 * 200 + 50])
    assert nearest_named(np.array([12 * 200 + 11, 49 * 200 + 40, 10 * 200 + 10]), named, 200).tolist() == [0, 1, 0]
    assert place_legend(np.array([10 * 200 + 10, -1]), 200, base=1) == "A=(11,11)"


GOOD = "60 weekday: A B@16\n61 weekday: A\n62 weekend: A"


@pytest.mark.parametrize("edit", [
    ("\n62 weekend: A", "", "2 lines for 3 asked days"),  # a day missing
    ("61 weekday", "62 weekend", "line 2: field 'day'"),  # the wrong day
    ("61 weekday: A", "61 weekday: Z", "line 2: field 'place'"),  # an unknown place
    ("B@16", "B@16 C@10", "line 1: field 'change': half-hour 10"),  # changes go forward
    ("B@16", "B@48", "line 1: field 'change'"),  # past the last half-hour
    ("B@16", "B16", "line 1: field 'change'"),  # not place@half-hour
])
def test_bad_answer_names_line_and_field(edit):
    old, new, match = edit
    parse_answer(GOOD, day_headers(np.array([60, 61, 62])), 4)
    with pytest.raises(AnswerError, match=match):
        parse_answer(GOOD.replace(old, new), day_headers(np.array([60, 61, 62])), 4, source="gen.txt")


def test_text_samples_parse_to_nearest_named_places():
    """The dataset's text answer, read back, gives each target row its nearest named place where no day was capped."""
    traj = synthetic_trajectories(seed=1, n_users=2, days=60)
    ds = MobilityDataset(traj, [MobilityWindow((0, 44), (45, 59))], candidates=16, text_answers=8, max_runs=48)
    assert len(ds) == 2 * len(ds.items) and ds.kinds == ["slots", "text"]
    sample = ds[len(ds.items)]
    assert len(sample["slot"]) == 0 and "<MOB_PRE>" not in sample["conversation"].answer
    hist, target = ds.rows(len(ds.items))
    runs = parse_answer(sample["conversation"].answer, sample["headers"], sample["n_places"])
    got = sample["cells"][runs_to_rows(runs, sample["days"], target.d, target.t)]
    want = sample["cells"][:8][nearest_named(target.cell_index(), sample["cells"][:8], 200)]
    assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="text_answers in 0..16"):
        MobilityDataset(traj, [MobilityWindow((0, 44), (45, 59))], candidates=16, text_answers=17)
