"""The order of places within a predicted day: a per-user hidden Markov model over the candidate places.

Why: GEO-BLEU compares a day's predicted 2- and 3-grams of consecutive slots with the true ones, so a day needs
the user's places in a plausible order (long stays, the moves the user makes), not only the right bag of places.
The cell-choice head scores each slot on its own; here each predicted day is an HMM whose states are the user's
candidate places, whose emissions are the head's per-slot log-probabilities, and whose transitions come from the
user's own history: counts of place ``i`` -> ``j`` between consecutive observed rows of a history day, smoothed
towards a distance-decay prior (staying, or moving a short way, is likelier than a long jump). A vectorised
Viterbi (batched over all days; one step per row of the longest day) finds each day's best path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stllm.data.trajectories import Trajectories


@dataclass(frozen=True)
class TransitionConfig:
    """How the history's transitions are smoothed and weighed against the head at decoding.

    ``weight``: the transition log-probabilities' weight beside the emission log-probabilities (0: every slot
    decoded on its own). ``smoothing``: pseudo-transitions of the prior per place (more: the prior counts more
    against a user's few moves). ``scale``: the prior's decay length in cells, ``exp(-distance / scale)``.
    """

    weight: float = 1.0
    smoothing: float = 1.0
    scale: float = 2.0

    def __post_init__(self) -> None:
        if self.weight < 0 or self.smoothing <= 0 or self.scale <= 0:
            raise ValueError(f"TransitionConfig needs weight >= 0, smoothing > 0 and scale > 0, got {self}")


def day_layout(day: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """``(group, pos, n_days, longest)`` of rows grouped into days: ``day`` (Q,) one id per row, a day's rows
    contiguous; ``group`` (Q,) the row's day 0..n_days-1, ``pos`` (Q,) its place in the day."""
    new_day = torch.ones(len(day), dtype=torch.bool, device=day.device)
    new_day[1:] = day[1:] != day[:-1]
    group = new_day.cumsum(0) - 1
    starts = torch.nonzero(new_day)[:, 0]
    pos = torch.arange(len(day), device=day.device) - starts[group]
    return group, pos, len(starts), int(pos.max()) + 1 if len(day) else 0


def candidate_index(history: Trajectories, users: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Each history row's candidate index among its user's ``cells`` (-1: not a candidate, or a user not in
    ``users``); ``users`` (U,) sorted uids, ``cells`` (U, K) their candidate cell ids (-1 pads)."""
    n_cells = history.grid * history.grid
    valid = cells >= 0
    if not valid.any():
        return np.full(len(history), -1, np.int64)
    keys = (np.arange(len(users))[:, None] * n_cells + cells)[valid]
    order = np.argsort(keys)
    keys, cand = keys[order], np.nonzero(valid)[1][order]
    u = np.minimum(np.searchsorted(users, history.uid), len(users) - 1)
    row_key = u * n_cells + history.cell_index()
    at = np.minimum(np.searchsorted(keys, row_key), len(keys) - 1)
    return np.where((users[u] == history.uid) & (keys[at] == row_key), cand[at], -1)


def place_transitions(history: Trajectories, users: np.ndarray, cells: np.ndarray,
                      config: TransitionConfig = TransitionConfig()) -> np.ndarray:
    """``(U, K, K)`` log P(next place ``j`` | place ``i``) of each user of ``users`` (sorted uids) over their
    candidate ``cells`` (U, K) (-1 pads): the counts of ``i`` -> ``j`` between consecutive rows of the same history
    day, plus ``config.smoothing`` pseudo-transitions spread as ``exp(-distance / config.scale)`` over the valid
    places, normalised per row. Rows of padded places are uniform (their emissions are ``-inf`` anyway)."""
    n_users, k = cells.shape
    cand = candidate_index(history, users, cells)
    u = np.searchsorted(users, history.uid)
    same_day = (history.uid[1:] == history.uid[:-1]) & (history.d[1:] == history.d[:-1])
    pair = same_day & (cand[1:] >= 0) & (cand[:-1] >= 0)
    flat = (u[:-1][pair] * k + cand[:-1][pair]) * k + cand[1:][pair]
    counts = np.bincount(flat, minlength=n_users * k * k).reshape(n_users, k, k).astype(np.float64)
    valid = cells >= 0
    xy = np.stack(np.divmod(np.maximum(cells, 0), history.grid), -1).astype(np.float64)
    dist = np.linalg.norm(xy[:, :, None] - xy[:, None, :], axis=-1)
    prior = np.exp(-dist / config.scale) * valid[:, None, :]
    prior /= np.maximum(prior.sum(-1, keepdims=True), 1e-300)
    trans = counts + config.smoothing * prior
    trans = np.where(valid[:, :, None], trans, 1.0)  # a padded place's row: uniform, never reached
    with np.errstate(divide="ignore"):  # moves into a padded place: log 0 = -inf
        return np.log(trans / trans.sum(-1, keepdims=True)).astype(np.float32)


def _day_chains(emission: torch.Tensor, log_trans: torch.Tensor, user: torch.Tensor, day: torch.Tensor,
                weight: float):
    """Rows as padded day chains: ``group``, ``pos`` (:func:`day_layout`), emissions ``(G, L, K)`` (``-inf`` past a
    day's end), day lengths ``(G,)`` and each day's weighted transitions ``(G, K, K)`` (its user's, from its first
    row; an impossible move stays ``-inf`` whatever the weight, also at weight 0)."""
    group, pos, g_n, length = day_layout(day)
    emit = emission.new_full((g_n, length, emission.shape[1]), float("-inf"))
    emit[group, pos] = emission
    trans = log_trans[user[pos == 0]].to(emission.dtype)
    trans = torch.where(torch.isneginf(trans), trans, weight * trans)
    return group, pos, emit, torch.bincount(group, minlength=g_n), trans


def viterbi_days(emission: torch.Tensor, log_trans: torch.Tensor, user: torch.Tensor, day: torch.Tensor,
                 weight: float = 1.0) -> torch.Tensor:
    """Each row's candidate index ``(Q,)`` on its day's most likely path.

    ``emission`` (Q, K) per-row log-scores (``-inf``: not a candidate); ``log_trans`` (U, K, K) per-user
    transition log-probabilities, ``user`` (Q,) each row's index into it; ``day`` (Q,) one id per row, a day's rows
    contiguous and in slot order. A path's score is the sum of its emissions plus ``weight`` times the sum of its
    transitions (the first row has no prior over places: the head's scores already say where a day starts).
    Vectorised over days; one step per row of the longest day.
    """
    q_n, k_n = emission.shape
    if not q_n:
        return torch.zeros(0, dtype=torch.long, device=emission.device)
    group, pos, emit, lengths, trans = _day_chains(emission, log_trans, user, day, weight)
    g_n, length = emit.shape[:2]
    stay = torch.arange(k_n, device=emission.device).expand(g_n, k_n)
    delta = emit[:, 0]
    back = torch.zeros(g_n, length, k_n, dtype=torch.long, device=emission.device)
    for step in range(1, length):
        best, arg = (delta[:, :, None] + trans).max(1)  # (G, K): best predecessor of each place
        active = (step < lengths)[:, None]
        delta = torch.where(active, best + emit[:, step], delta)
        back[:, step] = torch.where(active, arg, stay)  # past a day's end: stay, so the backtrack keeps its last
    path = torch.zeros(g_n, length, dtype=torch.long, device=emission.device)
    cur = delta.argmax(1)
    for step in range(length - 1, -1, -1):
        path[:, step] = cur
        cur = back[:, step].gather(1, cur[:, None])[:, 0]
    return path[group, pos]


def posterior_days(emission: torch.Tensor, log_trans: torch.Tensor, user: torch.Tensor, day: torch.Tensor,
                   weight: float = 1.0) -> torch.Tensor:
    """Each row's log-posterior over places ``(Q, K)`` under the same day chains as :func:`viterbi_days`
    (forward-backward in log space): the head's scores smoothed by the places before and after in the day."""
    if not len(emission):
        return emission.clone()
    group, pos, emit, lengths, trans = _day_chains(emission, log_trans, user, day, weight)
    length = emit.shape[1]
    fwd = torch.empty_like(emit)
    bwd = torch.zeros_like(emit)
    fwd[:, 0] = emit[:, 0]
    for step in range(1, length):
        fwd[:, step] = torch.logsumexp(fwd[:, step - 1, :, None] + trans, 1) + emit[:, step]
    for step in range(length - 2, -1, -1):
        nxt = torch.logsumexp(trans + (emit[:, step + 1] + bwd[:, step + 1])[:, None, :], 2)
        bwd[:, step] = torch.where((step + 1 < lengths)[:, None], nxt, 0.0)
    post = (fwd + bwd)[group, pos]
    return post - torch.logsumexp(post, 1, keepdim=True)
