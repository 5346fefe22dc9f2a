"""The order of places within a predicted day: a per-user hidden Markov model over the candidate places.

Why: GEO-BLEU compares a day's predicted 2- and 3-grams of consecutive slots with the true ones, so a day needs
the user's places in a plausible order (long stays, the moves the user makes), not only the right bag of places.
The cell-choice head scores each slot on its own; here each predicted day is an HMM whose states are the user's
candidate places, whose emissions are the head's per-slot log-probabilities, and whose transitions come from the
user's own history days: between two consecutive rows the user stays with a probability that depends on the slot
(nights are long stays, mornings and evenings are moves), and a move goes from place ``i`` to ``j`` as the history's
moves did, smoothed towards a distance-decay prior (a short move is likelier than a long jump). A vectorised
Viterbi finds each day's best path and forward-backward each slot's posterior (batched over all days; one step per
row of the longest day).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stllm.data.trajectories import SLOTS_PER_DAY, Trajectories


@dataclass(frozen=True)
class TransitionConfig:
    """How the history's transitions are smoothed and weighed against the head at decoding.

    ``weight``: the transition log-probabilities' weight beside the emission log-probabilities (0: every slot
    decoded on its own). ``smoothing``: pseudo-moves of the prior per place (more: the prior counts more against a
    user's few moves). ``scale``: the prior's decay length in cells, ``exp(-distance / scale)``. ``stay_prior``:
    pseudo-pairs per slot of the user's overall stay rate in the stay rate by slot.
    """

    weight: float = 0.5  # chosen on held-out training-city users (stllm.eval.mobility.TRANSITIONS)
    smoothing: float = 1.0
    scale: float = 5.0
    stay_prior: float = 5.0

    def __post_init__(self) -> None:
        if self.weight < 0 or self.smoothing <= 0 or self.scale <= 0 or self.stay_prior <= 0:
            raise ValueError(f"TransitionConfig needs weight >= 0 and smoothing, scale, stay_prior > 0, got {self}")


@dataclass(frozen=True)
class UserTransitions:
    """Per-user chain parameters over the candidate places: ``log_move`` (U, K, K) log P(``j`` | leaving ``i``)
    (diagonal ``-inf``) and ``log_stay`` (U, 48) log P(the row at slot ``t`` is at the previous row's place)."""

    log_move: torch.Tensor
    log_stay: torch.Tensor

    def step(self, user: torch.Tensor, slot: torch.Tensor, weight: float) -> torch.Tensor:
        """``(N, K, K)`` weighted log-transitions into a row at ``slot`` (N,) of ``user`` (N,): the diagonal is the
        stay, the rest ``P(leave) * P(move)``. An impossible move stays ``-inf`` whatever the weight."""
        log_stay = self.log_stay[user, slot][:, None, None]
        leave = torch.log1p(-log_stay.exp().clamp(max=1 - 1e-6)) + self.log_move[user]
        k_n = self.log_move.shape[-1]
        trans = torch.where(torch.eye(k_n, dtype=torch.bool, device=leave.device), log_stay, leave)
        return torch.where(torch.isneginf(trans), trans, weight * trans)


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
                      config: TransitionConfig = TransitionConfig()) -> UserTransitions:
    """The chain parameters of each user of ``users`` (sorted uids) over their candidate ``cells`` (U, K) (-1 pads)
    from consecutive rows of the same history day. Moves ``i`` -> ``j`` (``i != j``, both candidates) are counted,
    plus ``config.smoothing`` pseudo-moves spread as ``exp(-distance / config.scale)`` over the other valid places,
    normalised per place (a padded place's row: uniform, never reached). The stay rate of a slot ``t`` is the share
    of row pairs ending at ``t`` whose two cells are equal, with ``config.stay_prior`` pseudo-pairs at the user's
    overall rate (itself with one stay and one move added)."""
    n_users, k = cells.shape
    cand = candidate_index(history, users, cells)
    u = np.minimum(np.searchsorted(users, history.uid), n_users - 1)
    known = users[u] == history.uid  # rows of other users count nowhere
    pair = (history.uid[1:] == history.uid[:-1]) & (history.d[1:] == history.d[:-1]) & known[1:]
    move = pair & (cand[1:] >= 0) & (cand[:-1] >= 0) & (cand[1:] != cand[:-1])
    flat = (u[:-1][move] * k + cand[:-1][move]) * k + cand[1:][move]
    counts = np.bincount(flat, minlength=n_users * k * k).reshape(n_users, k, k).astype(np.float64)
    valid = cells >= 0
    other = valid[:, None, :] & ~np.eye(k, dtype=bool)[None]
    xy = np.stack(np.divmod(np.maximum(cells, 0), history.grid), -1).astype(np.float64)
    prior = np.exp(-np.linalg.norm(xy[:, :, None] - xy[:, None, :], axis=-1) / config.scale) * other
    prior /= np.maximum(prior.sum(-1, keepdims=True), 1e-300)
    moves = np.where(valid[:, :, None], counts + config.smoothing * prior, ~np.eye(k, dtype=bool)[None])
    moves /= np.maximum(moves.sum(-1, keepdims=True), 1e-300)
    cell = history.cell_index()
    slot = u[1:][pair] * SLOTS_PER_DAY + history.t[1:][pair]
    stays = (cell[1:] == cell[:-1])[pair].astype(np.float64)
    n = np.bincount(slot, minlength=n_users * SLOTS_PER_DAY).reshape(n_users, SLOTS_PER_DAY)
    stayed = np.bincount(slot, weights=stays, minlength=n_users * SLOTS_PER_DAY).reshape(n_users, SLOTS_PER_DAY)
    overall = (stayed.sum(1, keepdims=True) + 1.0) / (n.sum(1, keepdims=True) + 2.0)
    stay = (stayed + config.stay_prior * overall) / (n + config.stay_prior)
    with np.errstate(divide="ignore"):  # moves into a padded place or to the same place: log 0 = -inf
        log_move = np.log(moves)
    return UserTransitions(torch.from_numpy(log_move).float(), torch.from_numpy(np.log(stay)).float())


def _day_chains(emission: torch.Tensor, day: torch.Tensor):
    """Rows as padded day chains: ``group``, ``pos`` (:func:`day_layout`), emissions ``(G, L, K)`` (``-inf`` past a
    day's end) and day lengths ``(G,)``."""
    group, pos, g_n, length = day_layout(day)
    emit = emission.new_full((g_n, length, emission.shape[1]), float("-inf"))
    emit[group, pos] = emission
    return group, pos, emit, torch.bincount(group, minlength=g_n)


def _padded(values: torch.Tensor, group: torch.Tensor, pos: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    out = values.new_zeros(shape)
    out[group, pos] = values
    return out


def viterbi_days(emission: torch.Tensor, chains: UserTransitions, user: torch.Tensor, slot: torch.Tensor,
                 day: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Each row's candidate index ``(Q,)`` on its day's most likely path.

    ``emission`` (Q, K) per-row log-scores (``-inf``: not a candidate); ``chains`` the users' transitions,
    ``user`` (Q,) each row's index into them, ``slot`` (Q,) its slot 0..47; ``day`` (Q,) one id per row, a day's
    rows contiguous and in slot order. A path's score is the sum of its emissions plus ``weight`` times the sum of
    its transitions (the first row has no prior over places: the head's scores already say where a day starts).
    Vectorised over days; one step per row of the longest day.
    """
    q_n, k_n = emission.shape
    if not q_n:
        return torch.zeros(0, dtype=torch.long, device=emission.device)
    group, pos, emit, lengths = _day_chains(emission, day)
    g_n, length = emit.shape[:2]
    day_user, slots = user[pos == 0], _padded(slot, group, pos, (g_n, length))
    stay = torch.arange(k_n, device=emission.device).expand(g_n, k_n)
    delta = emit[:, 0]
    back = torch.zeros(g_n, length, k_n, dtype=torch.long, device=emission.device)
    for step in range(1, length):
        trans = chains.step(day_user, slots[:, step], weight).to(emission.dtype)
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


def posterior_days(emission: torch.Tensor, chains: UserTransitions, user: torch.Tensor, slot: torch.Tensor,
                   day: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Each row's log-posterior over places ``(Q, K)`` under the same day chains as :func:`viterbi_days`
    (forward-backward): the head's scores smoothed by the places before and after in the day.

    Why not in log space like the Viterbi: a weighted transition is ``stay^w`` on the diagonal and
    ``(1 - stay)^w move^w`` elsewhere, so a step is ``stay^w a + (1 - stay)^w (a @ move^w)``: one batched
    matrix-vector product per step on probabilities rescaled by their maximum, instead of a log-sum-exp over
    ``(G, K, K)`` (several times faster on CPU).
    """
    if not len(emission):
        return emission.clone()
    group, pos, emit, lengths = _day_chains(emission, day)
    g_n, length = emit.shape[:2]
    day_user, slots = user[pos == 0], _padded(slot, group, pos, (g_n, length))

    def weighted(log_p: torch.Tensor) -> torch.Tensor:  # p^w, an impossible step stays impossible at weight 0
        return torch.where(torch.isneginf(log_p), log_p, weight * log_p).exp().to(emission.dtype)

    move = weighted(chains.log_move[day_user])  # (G, K, K)
    log_stay = chains.log_stay[day_user.view(-1, 1), slots]  # (G, L)
    stay = weighted(log_stay)
    leave = weighted(torch.log1p(-log_stay.exp().clamp(max=1 - 1e-6)))

    def rescaled(log_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top = log_a.max(1, keepdim=True).values
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # a row past a day's end: all -inf
        return (log_a - top).exp(), top

    fwd = torch.empty_like(emit)
    bwd = torch.zeros_like(emit)
    fwd[:, 0] = emit[:, 0]
    for step in range(1, length):
        a, top = rescaled(fwd[:, step - 1])
        mixed = stay[:, step, None] * a + leave[:, step, None] * torch.bmm(a[:, None, :], move)[:, 0]
        fwd[:, step] = mixed.log() + top + emit[:, step]
    for step in range(length - 2, -1, -1):
        b, top = rescaled(emit[:, step + 1] + bwd[:, step + 1])
        mixed = stay[:, step + 1, None] * b + leave[:, step + 1, None] * torch.bmm(move, b[:, :, None])[:, :, 0]
        bwd[:, step] = torch.where((step + 1 < lengths)[:, None], mixed.log() + top, 0.0)
    post = (fwd + bwd)[group, pos]
    return post - torch.logsumexp(post, 1, keepdim=True)
