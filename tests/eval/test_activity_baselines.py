"""Activity baselines: Markov chains reproduce what they were fitted on, fall back to the population, copy
returns a day of the same user and kind."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from stllm.data.activity import Activity, ActivityChain
from stllm.eval.activity_baselines import CopyBaseline, MarkovBaseline, fitted_baselines, generate_days, requests_of

H = 3600


def _day(user, date, *acts) -> ActivityChain:
    return ActivityChain(date=date, weekday=None, steps=tuple(acts), user=user)


MON, SAT = dt.date(2024, 1, 1), dt.date(2024, 1, 6)
ALICE = _day("a", MON, Activity("Home", start=7 * H, lat=1.0, lon=1.0), Activity("Office", start=9 * H, lat=2.0,
                                                                                  lon=2.0))
BOB = [_day("b", MON, Activity("Park", start=10 * H), Activity("Bar", start=22 * H)),
       _day("b", SAT, Activity("Park", start=11 * H), Activity("Home", start=23 * H))]


def test_per_user_markov_with_one_deterministic_day_reproduces_it():
    m = MarkovBaseline(per_user=True).fit([ALICE, *BOB])
    out = generate_days(m, requests_of([ALICE] * 5), seed=3)
    assert all(o.steps == ALICE.steps for o in out)  # Home@7 -> Office@9 -> end is the only path


def test_population_markov_mixes_users_and_keeps_times_in_order():
    m = MarkovBaseline(per_user=False).fit([ALICE, *BOB])
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        day = m.sample(ALICE, rng)
        starts = [a.start for a in day.steps]
        assert starts == sorted(starts) and 1 <= len(day.steps) <= 2
        seen.add(tuple(a.category for a in day.steps))
    # from <start>: Home (alice), Park@10 or Park@11 (bob); Park@10 -> Bar, Park@11 -> Home
    assert seen == {("Home", "Office"), ("Park", "Bar"), ("Park", "Home")}


def test_per_user_markov_falls_back_to_the_population_for_an_unseen_state():
    m = MarkovBaseline(per_user=True).fit([ALICE, *BOB])
    stranger = _day("nobody", MON)
    days = {tuple(a.category for a in m.sample(stranger, np.random.default_rng(s)).steps) for s in range(60)}
    assert ("Home", "Office") in days and ("Park", "Bar") in days


def test_copy_baseline_returns_a_same_kind_day_of_the_same_user():
    c = CopyBaseline().fit([ALICE, *BOB])
    rng = np.random.default_rng(0)
    assert all(c.sample(_day("b", SAT), rng).steps == BOB[1].steps for _ in range(10))
    assert c.sample(_day("a", SAT), rng).steps == ALICE.steps  # no weekend day: any day of hers
    with pytest.raises(ValueError, match="field 'user': 'x' has no training day"):
        c.sample(_day("x", MON), rng)
    assert [b.name for b in fitted_baselines([ALICE])] == ["copy", "markov-user", "markov-pop"]
