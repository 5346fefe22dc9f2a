import itertools
import math

import numpy as np
import pytest
import torch

from stllm.data.trajectories import Trajectories
from stllm.eval.mobility_transitions import (
    TransitionConfig,
    UserTransitions,
    candidate_index,
    day_layout,
    place_transitions,
    posterior_days,
    viterbi_days,
)


def _chains(stay: float | torch.Tensor, move: torch.Tensor) -> UserTransitions:
    """Chains of users with ``move`` (U, K, K) move probabilities and stay probabilities (U, 48) (or one number)."""
    log_move = move.log().masked_fill(torch.eye(move.shape[-1], dtype=torch.bool), float("-inf"))
    stay = torch.as_tensor(stay, dtype=torch.float).expand(move.shape[0], 48)
    return UserTransitions(log_move, stay.log())


def _path_score(emission, stay, move, slots, path, weight):
    """A path's score written out: emissions, then per step log P(stay at this slot) or log P(leave) P(move)."""
    total = sum(emission[i, p] for i, p in enumerate(path))
    for step in range(1, len(path)):
        a, b, s = path[step - 1], path[step], stay[slots[step]]
        total += weight * (math.log(s) if a == b else math.log(1 - s) + math.log(move[a, b]))
    return total


def test_viterbi_hand_worked_three_places():
    # rows 0..2 prefer A, B, A on their own (A B A: 0 + 0 + 0); staying has probability 0.8, leaving 0.2 split
    # equally over the two other places: a move costs log 0.1.
    # With the transitions: A A A = -2 + 2 log 0.8 = -2.446, A B A = 0 + 2 log 0.1 = -4.605,
    # B B B = -1.5 + 0 - 1 + 2 log 0.8 = -2.946: A A A wins. Without them (weight 0): A B A.
    emission = torch.tensor([[0.0, -1.5, -5.0], [-2.0, 0.0, -5.0], [0.0, -1.0, -5.0]])
    half = torch.full((1, 3, 3), 0.5)
    chains = _chains(0.8, half)
    user, day, slot = torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), torch.tensor([3, 4, 9])
    assert viterbi_days(emission, chains, user, slot, day, 1.0).tolist() == [0, 0, 0]
    assert viterbi_days(emission, chains, user, slot, day, 0.0).tolist() == [0, 1, 0]
    # the same rows where the user always moves into slot 4 (stay 0 there): A A A and B B B are ruled out;
    # A B B = 0 + 0 - 1 + log(1 * 0.5) + log 0.8 = -1.916 beats A B A = 0 + log 0.5 + log(0.2 * 0.5) = -2.996
    # and B A A = -1.5 - 2 + 0 + log 0.5 + log 0.8 = -4.416 (C costs 5 a row)
    stay = torch.full((48,), 0.8)
    stay[4] = 0.0
    assert viterbi_days(emission, _chains(stay[None], half), user, slot, day, 1.0).tolist() == [0, 1, 1]
    # two days of two users in one batch: user 1 never stays, the second day is longer
    both = torch.cat([emission, emission, emission[:1]])
    chains = UserTransitions(torch.cat([_chains(0.8, half).log_move] * 2),
                             torch.cat([_chains(0.8, half).log_stay, _chains(0.0, half).log_stay]))
    user = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    day = torch.tensor([5, 5, 5, 9, 9, 9, 9])
    path = viterbi_days(both, chains, user, torch.arange(7), day, 1.0).tolist()
    assert path[:3] == [0, 0, 0]
    assert path[3:] == [0, 1, 0, 1]  # A B A B: the best path without a stay (0 + 0 + 0 - 1.5)


def test_viterbi_and_posterior_equal_brute_force_on_random_days():
    gen = torch.Generator().manual_seed(0)
    k, lengths = 3, [4, 1, 3]
    emission = torch.randn(sum(lengths), k, generator=gen)
    emission[0, 2] = float("-inf")  # a place the head rules out
    move = torch.rand(2, k, k, generator=gen).masked_fill(torch.eye(k, dtype=torch.bool), 0.0)
    move = move / move.sum(-1, keepdim=True)
    stay = torch.rand(2, 48, generator=gen) * 0.9 + 0.05
    chains = _chains(stay, move)
    user = torch.tensor([0] * 4 + [1] + [1] * 3)
    day = torch.tensor([0] * 4 + [1] + [2] * 3)
    slot = torch.tensor([0, 1, 5, 6, 7, 20, 21, 30])
    for weight in (0.0, 0.5, 2.0):
        path = viterbi_days(emission, chains, user, slot, day, weight)
        post = posterior_days(emission, chains, user, slot, day, weight)
        start = 0
        for n, u in zip(lengths, (0, 1, 1)):
            e, rows = emission[start:start + n].double(), slot[start:start + n].tolist()
            paths = list(itertools.product(range(k), repeat=n))
            scores = torch.tensor([_path_score(e, stay[u].double(), move[u].double(), rows, p, weight)
                                   for p in paths])
            assert list(path[start:start + n].tolist()) == list(paths[int(scores.argmax())])
            weights = (scores - scores.logsumexp(0)).exp()
            marginal = torch.zeros(n, k, dtype=torch.double)
            for p, w in zip(paths, weights):
                marginal[torch.arange(n), torch.tensor(p)] += w
            torch.testing.assert_close(post[start:start + n].double().exp(), marginal, atol=1e-5, rtol=0)
            start += n


def test_day_layout_groups_contiguous_days():
    group, pos, n, longest = day_layout(torch.tensor([3, 3, 7, 7, 7, 3]))
    assert group.tolist() == [0, 0, 1, 1, 1, 2] and pos.tolist() == [0, 1, 0, 1, 2, 0]
    assert (n, longest) == (3, 3)


def _history(rows):
    uid, d, t, x, y = (np.array(c) for c in zip(*rows))
    return Trajectories(uid, d, t, x, y, base=0, grid=10)


def test_place_transitions_counts_moves_and_stays_within_days_only():
    # user 7: day 0 A A B (slots 0, 1, 5), day 1 B A (slots 2, 3); the B -> B across the night is no pair.
    # A = (1, 1), B = (1, 4). Pairs end at slot 1 (stay), 5 (move A -> B), 3 (move B -> A): overall stay rate
    # (1 + 1) / (3 + 2) = 0.4; with 5 pseudo-pairs: slot 1 (1 + 2) / 6 = 0.5, slots 3 and 5 (0 + 2) / 6, others 0.4
    hist = _history([(7, 0, 0, 1, 1), (7, 0, 1, 1, 1), (7, 0, 5, 1, 4), (7, 1, 2, 1, 4), (7, 1, 3, 1, 1),
                     (8, 0, 0, 1, 1), (8, 0, 1, 1, 4)])  # user 8 is not asked for
    cells = np.array([[11, 14, -1]])  # candidates A, B and a pad
    chains = place_transitions(hist, np.array([7]), cells, TransitionConfig(smoothing=1e-9, stay_prior=5.0))
    move = chains.log_move[0].exp().numpy()
    np.testing.assert_allclose(move[:2], [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], atol=1e-6)  # never into a pad
    np.testing.assert_allclose(move[2], [0.5, 0.5, 0.0], rtol=1e-6)  # a pad's row: uniform, never reached
    stay = chains.log_stay[0].exp().numpy()
    np.testing.assert_allclose(stay[[1, 3, 5, 0, 47]], [0.5, 1 / 3, 1 / 3, 0.4, 0.4], rtol=1e-6)


def test_place_transitions_prior_alone_prefers_near_places():
    hist = _history([(1, 0, 0, 0, 0), (1, 1, 0, 0, 3), (1, 2, 0, 0, 9)])  # one row a day: no pairs
    chains = place_transitions(hist, np.array([1]), np.array([[0, 3, 9]]), TransitionConfig(scale=2.0))
    move = chains.log_move[0].exp().numpy()
    np.testing.assert_allclose(move.sum(1), 1.0, rtol=1e-6)
    # from (0, 0): to (0, 3) exp(-1.5), to (0, 9) exp(-4.5), normalised; no pairs: stay rate (0 + 1) / (0 + 2)
    np.testing.assert_allclose(move[0, 1:], np.array([1.0, math.exp(-3.0)]) / (1.0 + math.exp(-3.0)), rtol=1e-5)
    np.testing.assert_allclose(chains.log_stay.exp().numpy(), 0.5, rtol=1e-6)


def test_candidate_index_is_per_user():
    hist = _history([(1, 0, 0, 0, 5), (1, 0, 1, 0, 6), (2, 0, 0, 0, 5), (3, 0, 0, 0, 5)])
    idx = candidate_index(hist, np.array([1, 2]), np.array([[6, 5], [-1, -1]]))
    assert idx.tolist() == [1, 0, -1, -1]  # user 2 has no places; user 3 is not asked for


def test_transition_config_rejects_bad_values():
    with pytest.raises(ValueError, match="smoothing"):
        TransitionConfig(smoothing=0.0)
