"""Baselines for long-term mobility prediction: fill the target ``(uid, d, t)`` slots from the user's history.

Each baseline takes the history rows and the target rows (whose ``(uid, d, t)`` are the slots to fill; their
cells are ignored) and returns the target rows with predicted cells, ready for
:func:`stllm.eval.mobility_metrics.score_users` or :func:`stllm.data.trajectories.write_humob_csv`. All are
vectorised over users: modes come from one sort of ``(group, cell)`` keys. Ties between equally frequent cells
go to the smaller cell id (``x`` first), so results are deterministic.

* :func:`most_frequent_cell_by_slot`: the user's most frequent cell at the same slot ``t`` on the same kind of
  day (weekday / weekend, ``d % 7`` in ``weekend``); falling back to the same slot on any day, then to the
  user's most frequent cell when the history has no row there.
* :func:`most_frequent_cell`: the user's most frequent cell over the whole history.
* :func:`last_observed_cell`: the user's last history cell, held.
* :func:`published_predictions`: a published model's prediction file, checked to cover exactly the target rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from stllm.data.trajectories import HUMOB_WEEKEND, Trajectories, load_humob_csv


def _check_history(history: Trajectories, target: Trajectories) -> None:
    if history.grid != target.grid:
        raise ValueError(f"{target.source}: field 'grid': target grid {target.grid} != history grid {history.grid}")
    lost = np.setdiff1d(target.users, history.users)
    if lost.size:
        raise ValueError(f"{history.source}: field 'uid': {lost.size} target user(s) have no history rows "
                         f"(first: uid {lost[0]}); a history baseline has nothing to predict from")


def _mode(group: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per distinct ``group`` (int64 keys), its most frequent ``cell``; ties -> the smaller cell. Sorted groups."""
    pairs, counts = np.unique(np.stack([group, cell], 1), axis=0, return_counts=True)  # sorted by (group, cell)
    order = np.lexsort((pairs[:, 1], -counts, pairs[:, 0]))  # by group, then count desc, then cell asc
    pairs = pairs[order]
    first = np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]
    return pairs[first, 0], pairs[first, 1]


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(found, value)`` for each query key in the sorted ``keys`` (value undefined where not found)."""
    pos = np.clip(np.searchsorted(keys, query), 0, max(len(keys) - 1, 0))
    found = keys[pos] == query if len(keys) else np.zeros(len(query), bool)
    return found, values[pos] if len(keys) else np.zeros(len(query), np.int64)


def _as_prediction(target: Trajectories, cell: np.ndarray, history: Trajectories) -> Trajectories:
    """Target rows with cells given as ids ``0..grid*grid-1`` (history numbering)."""
    x, y = np.divmod(cell, history.grid)
    pred = target.with_base(history.base).with_cells(x + history.base, y + history.base)
    return pred if target.base == history.base else pred.with_base(target.base)


def most_frequent_cell(history: Trajectories, target: Trajectories) -> Trajectories:
    """Every target slot gets the user's most frequent history cell."""
    _check_history(history, target)
    users, cells = _mode(history.uid, history.cell_index())
    _, cell = _lookup(users, cells, target.uid)
    return _as_prediction(target, cell, history)


def most_frequent_cell_by_slot(history: Trajectories, target: Trajectories,
                               weekend: tuple[int, ...] = HUMOB_WEEKEND) -> Trajectories:
    """The user's most frequent cell at the same slot on the same kind of day (weekday / weekend).

    Fallbacks where the history has no such row: the same slot on any day, then the user's overall mode.
    """
    _check_history(history, target)
    hc = history.cell_index()
    _, cell = _lookup(*_mode(history.uid, hc), target.uid)
    slots = history.uid * 48 + history.t
    found, by_slot = _lookup(*_mode(slots, hc), target.uid * 48 + target.t)
    cell = np.where(found, by_slot, cell)
    h_we, t_we = np.isin(history.d % 7, weekend), np.isin(target.d % 7, weekend)
    found, by_kind = _lookup(*_mode(slots * 2 + h_we, hc), (target.uid * 48 + target.t) * 2 + t_we)
    return _as_prediction(target, np.where(found, by_kind, cell), history)


def last_observed_cell(history: Trajectories, target: Trajectories) -> Trajectories:
    """Every target slot gets the user's last history cell (rows are sorted by user, day, slot)."""
    _check_history(history, target)
    uids, _, ends = history.user_bounds()
    _, cell = _lookup(uids, history.cell_index()[ends - 1], target.uid)
    return _as_prediction(target, cell, history)


def published_predictions(path: str | os.PathLike, target: Trajectories, *, base: int,
                          city: str | None = None) -> Trajectories:
    """A published model's predictions (HuMob CSV), restricted to the target's users, covering its rows exactly."""
    pred = load_humob_csv(path, base=base, city=city)
    pred = pred.subset(np.isin(pred.uid, target.users))
    if not pred.keys_equal(target):
        raise ValueError(f"{path}: fields (uid, d, t) must be exactly the target's rows: {len(pred)} rows for the "
                         f"target's {len(target.users)} users, target has {len(target)}")
    return pred


BASELINES: dict[str, Callable[[Trajectories, Trajectories], Trajectories]] = {
    "most frequent cell (weekday/weekend, slot)": most_frequent_cell_by_slot,
    "most frequent cell": most_frequent_cell,
    "last observed cell": last_observed_cell,
}
