"""Mobility baselines on a hand-worked tiny history, and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from stllm.data.trajectories import Trajectories, synthetic_trajectories
from stllm.eval.mobility_baselines import (
    last_observed_cell,
    most_frequent_cell,
    most_frequent_cell_by_slot,
    published_predictions,
)

# user 1: weekday mornings (t=10) at (5,5) twice, (9,9) once; weekend (d=6) morning at (7,7); last row (3,3)
# user 2: only (2,2) and (4,4), once each (a tie -> the smaller cell)
HISTORY = Trajectories(
    uid=[1, 1, 1, 1, 1, 1, 2, 2],
    d=[1, 2, 3, 6, 6, 8, 1, 2],
    t=[10, 10, 10, 10, 20, 30, 5, 5],
    x=[5, 5, 9, 7, 3, 3, 4, 2],
    y=[5, 5, 9, 7, 3, 3, 4, 2],
    base=1,
)
# targets: user 1 on a weekday slot 10 (d=9), a weekend slot 10 (d=13), an unseen slot 40 (d=9); user 2 slot 5
TARGET = Trajectories(uid=[1, 1, 1, 2], d=[9, 13, 9, 10], t=[10, 10, 40, 5], x=[1] * 4, y=[1] * 4, base=1)


def test_hand_worked_modes_and_last_cell():
    assert most_frequent_cell(HISTORY, TARGET).x.tolist() == [3, 3, 3, 2]  # user 1: (5,5) x2 vs (3,3) x2 -> smaller
    by_slot = most_frequent_cell_by_slot(HISTORY, TARGET, weekend=(0, 6))
    # sorted target rows: (1,9,10), (1,9,40), (1,13,10), (2,10,5)
    assert by_slot.d.tolist() == [9, 9, 13, 10]
    assert by_slot.x.tolist() == [5, 3, 7, 2]  # weekday slot mode, fallback to overall mode, weekend slot mode, tie
    assert last_observed_cell(HISTORY, TARGET).x.tolist() == [3, 3, 3, 2]  # user 2's last row is d=2 -> (2,2)
    assert np.array_equal(by_slot.x, by_slot.y) and by_slot.keys_equal(TARGET)


def test_zero_based_target_gets_zero_based_cells():
    pred = most_frequent_cell_by_slot(HISTORY, TARGET.with_base(0), weekend=(0, 6))
    assert pred.base == 0 and pred.x.tolist() == [4, 2, 6, 1]


def test_user_without_history_is_refused():
    target = Trajectories(uid=[1, 3], d=[9, 9], t=[0, 0], x=[1, 1], y=[1, 1], base=1)
    for fn in (most_frequent_cell, most_frequent_cell_by_slot, last_observed_cell):
        with pytest.raises(ValueError, match=r"field 'uid': 1 target user\(s\) have no history rows \(first: uid 3\)"):
            fn(HISTORY, target)


def test_slot_mode_beats_overall_mode_on_a_weekly_rhythm():
    from stllm.data.trajectories import split_by_day
    from stllm.eval.mobility_metrics import score_users

    sp = split_by_day(synthetic_trajectories(seed=0, n_users=20, days=28), (0, 20), (21, 27))
    gb_slot = score_users(most_frequent_cell_by_slot(sp.history, sp.target), sp.target, "giscup25").mean()[0]
    gb_all = score_users(most_frequent_cell(sp.history, sp.target), sp.target, "giscup25").mean()[0]
    assert gb_slot > gb_all + 0.1


def test_published_file_must_cover_the_target(tmp_path):
    p = tmp_path / "pred.csv"
    p.write_text("uid,d,t,x,y\n1,9,10,5,5\n1,9,40,5,5\n1,13,10,5,5\n2,10,5,2,2\n3,10,5,2,2\n")
    assert published_predictions(p, TARGET, base=1).x.tolist() == [5, 5, 5, 2]  # user 3 is not in the target
    p.write_text("uid,d,t,x,y\n1,9,10,5,5\n2,10,5,2,2\n")
    with pytest.raises(ValueError, match=r"pred\.csv: fields \(uid, d, t\) must be exactly the target's rows"):
        published_predictions(p, TARGET, base=1)
