import itertools
import math

import numpy as np
import pytest
import torch

from stllm.data.trajectories import Trajectories
from stllm.eval.mobility_transitions import (
    TransitionConfig,
    candidate_index,
    day_layout,
    place_transitions,
    posterior_days,
    viterbi_days,
)


def _path_score(emission, log_trans, path, weight):
    return sum(emission[i, p] for i, p in enumerate(path)) + weight * sum(
        log_trans[a, b] for a, b in zip(path[:-1], path[1:]))


def test_viterbi_hand_worked_three_places():
    # rows 0..2 prefer A, B, A on their own (A B A: 0 + 0 + 0); staying costs log 0.8 a step, moving log 0.1.
    # With the transitions: A A A = -2 + 2 log 0.8 = -2.446, A B A = 0 + 2 log 0.1 = -4.605,
    # B B B = -1.5 + 0 - 1 + 2 log 0.8 = -2.946: A A A wins. Without them (weight 0): A B A.
    emission = torch.tensor([[0.0, -1.5, -5.0], [-2.0, 0.0, -5.0], [0.0, -1.0, -5.0]])
    log_trans = torch.full((3, 3), math.log(0.1)).fill_diagonal_(math.log(0.8))[None]
    user, day = torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long)
    assert viterbi_days(emission, log_trans, user, day, 1.0).tolist() == [0, 0, 0]
    assert viterbi_days(emission, log_trans, user, day, 0.0).tolist() == [0, 1, 0]
    # two days of two users in one batch: user 1 never stays (its diagonal is -inf), the second day is longer
    both = torch.cat([emission, emission, emission[:1]])
    never_stay = torch.zeros(3, 3).fill_diagonal_(float("-inf"))[None]
    trans = torch.cat([log_trans, never_stay])
    user = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    day = torch.tensor([5, 5, 5, 9, 9, 9, 9])
    path = viterbi_days(both, trans, user, day, 1.0).tolist()
    assert path[:3] == [0, 0, 0]
    assert path[3:] == [0, 1, 0, 1]  # A B A B: the best path without a stay (0 + 0 + 0 - 1.5)


def test_viterbi_equals_brute_force_on_random_days():
    gen = torch.Generator().manual_seed(0)
    k, lengths = 3, [4, 1, 3]
    emission = torch.randn(sum(lengths), k, generator=gen)
    emission[0, 2] = float("-inf")  # a place the head rules out
    log_trans = torch.randn(2, k, k, generator=gen).log_softmax(-1)
    user = torch.tensor([0] * 4 + [1] + [1] * 3)
    day = torch.tensor([0] * 4 + [1] + [2] * 3)
    for weight in (0.5, 2.0):
        path = viterbi_days(emission, log_trans, user, day, weight)
        post = posterior_days(emission, log_trans, user, day, weight)
        start = 0
        for n, u in zip(lengths, (0, 1, 1)):
            e, t = emission[start:start + n].double(), log_trans[u].double()
            paths = list(itertools.product(range(k), repeat=n))
            scores = torch.tensor([_path_score(e, t, p, weight) for p in paths])
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


def test_place_transitions_counts_moves_within_days_only():
    # user 7: day 0 A A B, day 1 B A (the B -> B across the night is not a move); A = (1, 1), B = (1, 4)
    hist = _history([(7, 0, 0, 1, 1), (7, 0, 1, 1, 1), (7, 0, 5, 1, 4), (7, 1, 2, 1, 4), (7, 1, 3, 1, 1),
                     (8, 0, 0, 1, 1), (8, 0, 1, 1, 4)])  # user 8 is not asked for
    cells = np.array([[11, 14, -1]])  # candidates A, B and a pad
    log_t = place_transitions(hist, np.array([7]), cells, TransitionConfig(smoothing=1e-9))
    np.testing.assert_allclose(np.exp(log_t[0, :2, :2]), [[0.5, 0.5], [1.0, 0.0]], atol=1e-6)
    assert np.isneginf(log_t[0, 0, 2]) and np.isneginf(log_t[0, 1, 2])  # never into a pad
    np.testing.assert_allclose(np.exp(log_t[0, 2]), [1 / 3] * 3, rtol=1e-6)  # a pad's row: uniform


def test_place_transitions_prior_alone_prefers_staying_then_near_places():
    hist = _history([(1, 0, 0, 0, 0), (1, 1, 0, 0, 3), (1, 2, 0, 0, 9)])  # one row a day: no moves counted
    log_t = place_transitions(hist, np.array([1]), np.array([[0, 3, 9]]), TransitionConfig(scale=2.0))
    p = np.exp(log_t[0])
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
    # from (0, 0): stay 1, (0, 3) exp(-1.5), (0, 9) exp(-4.5), normalised
    expected = np.array([1.0, math.exp(-1.5), math.exp(-4.5)])
    np.testing.assert_allclose(p[0], expected / expected.sum(), rtol=1e-5)


def test_candidate_index_is_per_user():
    hist = _history([(1, 0, 0, 0, 5), (1, 0, 1, 0, 6), (2, 0, 0, 0, 5), (3, 0, 0, 0, 5)])
    idx = candidate_index(hist, np.array([1, 2]), np.array([[6, 5], [-1, -1]]))
    assert idx.tolist() == [1, 0, -1, -1]  # user 2 has no places; user 3 is not asked for


def test_transition_config_rejects_bad_values():
    with pytest.raises(ValueError, match="smoothing"):
        TransitionConfig(smoothing=0.0)
