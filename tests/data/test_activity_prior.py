"""The user history prior: nested Dirichlet back-off worked by hand, unseen users fall back, bad ranks refused."""

from __future__ import annotations

import numpy as np
import pytest

from stllm.data.activity_prior import START, PriorDay, UserPrior


def test_choice_backoff_matches_the_hand_computation():
    prior = UserPrior(3, alpha=1.0).fit([PriorDay("u", (0, 1), (8 * 60, 10 * 60))])
    # uniform [1/3]; population {0: 1, 1: 1}: ([1, 1, 0] + 1/3) / 3 = [4/9, 4/9, 1/9]; the user has the same counts:
    # ([1, 1, 0] + [4/9, 4/9, 1/9]) / 3 = [13/27, 13/27, 1/27]; user at 8 h {0: 1}: [40/54, 13/54, 1/54];
    # user after START {0: 1}: [94/108, 13/108, 1/108]; user after START at 8 h {0: 1}: [202/216, 13/216, 1/216]
    np.testing.assert_allclose(prior.choice("u", START, 8), np.array([202, 13, 1]) / 216)
    np.testing.assert_allclose(prior.choice("stranger", 5, 3), [4 / 9, 4 / 9, 1 / 9])  # population only
    cum = prior.choice_cum("u", START, 8)
    assert cum[0] == 0 and cum[-1] == pytest.approx(1) and cum[2] - cum[1] == pytest.approx(13 / 216)


def test_hour_prior_conditions_on_the_previous_hour_and_spreads_over_minutes():
    prior = UserPrior(2).fit([PriorDay("u", (0, 1), (8 * 60, 10 * 60)), PriorDay("v", (1,), (9 * 60,))])
    p = prior.hour("u", 0, 8)  # after 08:xx the only transition seen went to 10:xx
    assert p.argmax() == 10 and p.sum() == pytest.approx(1)
    assert p[10] > 0.5 and p[9] < 0.05  # v's 09:xx was a first line, not a move after 08:xx
    first = prior.hour("v", START, START)
    assert first.argmax() == 9
    cum = prior.minute_cum("u", 0, 8)
    assert len(cum) == 24 * 60 + 1 and cum[-1] == pytest.approx(1)
    assert cum[10 * 60 + 30] - cum[10 * 60] == pytest.approx(p[10] / 2)  # half of 10:xx
    m = prior.start_minutes("u", 0, 8)
    assert m.sum() == pytest.approx(1) and m.argmax() == 10 * 60  # 10:00, the only minute seen in 10:xx
    # within 10:xx: population minutes {0: 1} over a uniform floor: (1 + 1/60) / 2 of the hour's mass at :00
    assert m[600] == pytest.approx(p[10] * (1 + 1 / 60) / 2) and m[601] == pytest.approx(p[10] / 120)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="ranks"):
        UserPrior(2).fit([PriorDay("u", (2,), (0,))])
    with pytest.raises(ValueError, match="alpha"):
        UserPrior(2, alpha=0)


def test_day_length_backs_off_from_user_and_day_kind_to_the_population():
    days = [PriorDay("u", (0, 1), (480, 600), weekend=False), PriorDay("u", (0,), (480,), weekend=True),
            PriorDay("v", (0, 1, 1), (480, 600, 700), weekend=False, n_activities=5)]
    prior = UserPrior(2).fit(days)
    # base over 1..4 (0 impossible): [0, 1/4, 1/4, 1/4, 1/4]; population {2: 1, 1: 1, 5 -> 4: 1}:
    # ([0, 1, 1, 0, 1] + base) / 4 = [0, 5, 5, 1, 5] / 16; user u {2: 1, 1: 1}: ([0, 16, 16, 0, 0] + [0, 5, 5, 1, 5])
    # / 48 = [0, 21, 21, 1, 5] / 48; u on weekdays {2: 1}: ([0, 0, 48, 0, 0] + [0, 21, 21, 1, 5]) / 96
    np.testing.assert_allclose(prior.lengths("u", False, 4), np.array([0, 21, 69, 1, 5]) / 96)
    np.testing.assert_allclose(prior.lengths("stranger", None, 4), np.array([0, 5, 5, 1, 5]) / 16)
    assert prior.lengths("v", False, 4)[4] > 0.5  # n_activities (5, longer than max_lines) counts as 4, not len(ranks)


def test_stay_ratio_gaps_and_repeats_match_the_hand_computation():
    days = [PriorDay("u", (0, 0, 1), (10 * 60 + 10, 10 * 60 + 12, 11 * 60 + 50)), PriorDay("v", (1, 0), (530, 545))]
    prior = UserPrior(3).fit(days)
    # moves: 10:10 -> 10:12 (same hour, gap 2, a repeat), 10:12 -> 11:50 (next hour), 08:50 -> 09:05 (next hour):
    # same-hour share 1/3; minute 10: (1 + 10/3) / (1 + 10) / (1/3) = 13/11; minute 50: (0 + 10/3) / 11 * 3
    assert prior.stay_ratio(10) == pytest.approx(13 / 11) and prior.stay_ratio(70) == pytest.approx(13 / 11)
    assert prior.stay_ratio(50) == pytest.approx(10 / 11) and prior.stay_ratio(30) == pytest.approx(1.0)  # unseen
    g = prior.gaps()  # gaps {2: 1} over a uniform 1/60, alpha 1
    assert g[2] == pytest.approx(61 / 120) and g[0] == pytest.approx(1 / 120) and g.sum() == pytest.approx(1)
    # repeats {no: 2, yes: 1} -> ([2, 1] + 1/2) / 4 = [5/8, 3/8]; u {1, 1}: (1 + 3/8) / 3 = 11/24; u after 0
    # {1, 1}: (1 + 11/24) / 3 = 35/72
    assert prior.repeat("u", 0) == pytest.approx(35 / 72) and prior.repeat("stranger", 2) == pytest.approx(3 / 8)
    p, q = prior.choice("u", 0, 11), prior.choice_repeat("u", 0, 11)
    assert q[0] == pytest.approx(35 / 72) and q.sum() == pytest.approx(1)
    assert q[1] / q[2] == pytest.approx(p[1] / p[2])  # the other choices keep their proportions
    np.testing.assert_allclose(prior.choice_repeat("u", START, 10), prior.choice("u", START, 10))  # a first line
    assert UserPrior(2).fit([PriorDay("u", (0,), (600,))]).stay_ratio(5) == 1.0  # no move seen: no change
