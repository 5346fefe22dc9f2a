"""Per-user history prior for activity generation: the user's own next place (or category) and next start hour.

Constrained decoding (:mod:`stllm.models.activity_decoding`) mixes it with the LM per line: with probability ``w``
a line's place (and, optionally, its start time) is drawn from the user's history (what the per-user Markov
baseline replays) and the LM spells that choice; otherwise the LM chooses (which keeps days coherent and novel).
A product of experts (``+ w log p_user`` per token) was measured worse. Both distributions are nested Dirichlet
back-offs, so a context seen often speaks for itself and a rare one leans on the next:

* choice (place, or category without coordinates): ``user + previous choice + this line's hour`` -> ``user +
  previous choice`` -> ``user + this line's hour`` -> ``user`` -> population;
* start hour: ``user + previous choice + previous hour`` -> ``user + previous hour`` -> ``population + previous
  hour``; within the hour, the population's minutes (or evenly, :meth:`UserPrior.minute_cum`). Every level knows the
  previous hour: a level without it (the user's hours overall) put its mass before the previous line, which
  decoding must cut, so what was left piled up late in the evening (measured on Tokyo validation days).

Fitted on trained days only (never validation or test days); choices are the grammar's keys by rank.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

START = -1  # previous choice / hour before a day's first line
HOURS = 24


@dataclass(frozen=True)
class PriorDay:
    """One trained day as the prior sees it: its user and, per activity, the choice's rank and start minute."""

    user: str | None
    ranks: tuple[int, ...]
    minutes: tuple[int, ...]


class UserPrior:
    """Back-off distributions over choices and start hours per (user, context); ``alpha`` is each level's
    pseudo-count for the level below it. Dense arrays are built on demand and cached (a decode asks for the same
    contexts again and again)."""

    def __init__(self, n_choices: int, alpha: float = 1.0):
        if n_choices < 1 or alpha <= 0:
            raise ValueError(f"user prior: need n_choices >= 1 and alpha > 0; got {n_choices}, {alpha}")
        self.n_choices, self.alpha = n_choices, float(alpha)
        self.counts: dict[tuple, Counter] = {}
        self._cache: dict[tuple, np.ndarray] = {}

    def _add(self, key: tuple, value: int) -> None:
        self.counts.setdefault(key, Counter())[value] += 1

    def fit(self, days: Iterable[PriorDay]) -> UserPrior:
        for d in days:
            prev, prev_hour = START, START
            for rank, minute in zip(d.ranks, d.minutes):
                if not 0 <= rank < self.n_choices:
                    raise ValueError(f"user prior: field 'ranks': {rank} is not one of {self.n_choices} choices")
                hour = min(max(minute // 60, 0), HOURS - 1)
                for key in self._choice_keys(d.user, prev, hour):
                    self._add(key, rank)
                for key in self._hour_keys(d.user, prev, prev_hour):
                    self._add(key, hour)
                self._add(("m", hour), minute % 60)
                prev, prev_hour = rank, hour
        self._cache.clear()
        return self

    @staticmethod
    def _choice_keys(user, prev: int, hour: int) -> list[tuple]:
        return [("c",), ("c", user), ("c", user, hour), ("c", user, prev), ("c", user, prev, hour)]

    @staticmethod
    def _hour_keys(user, prev: int, prev_hour: int) -> list[tuple]:
        return [("t", prev_hour), ("t", user, prev_hour), ("t", user, prev, prev_hour)]

    def _backoff(self, keys: Sequence[tuple], size: int) -> np.ndarray:
        """Uniform, then the population, then each more specific level: ``p = (n + alpha * p_below) / (N + alpha)``."""
        p = np.full(size, 1.0 / size)  # below the population: uniform, so no allowed choice has mass 0
        for key in keys:
            c = self.counts.get(key)
            if not c:
                continue
            n = np.zeros(size)
            n[list(c)] = list(c.values())
            p = (n + self.alpha * p) / (n.sum() + self.alpha)
        return p

    def _cached(self, key: tuple, build) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def choice(self, user: Hashable, prev: int, hour: int) -> np.ndarray:
        """p(choice | user, previous choice, this line's hour), over choice ranks."""
        return self._cached(("c", user, prev, hour), lambda: self._backoff(self._choice_keys(user, prev, hour),
                                                                            self.n_choices))

    def hour(self, user: Hashable, prev: int, prev_hour: int) -> np.ndarray:
        """p(start hour | user, previous choice, previous line's hour), over 24 hours."""
        return self._cached(("t", user, prev, prev_hour), lambda: self._backoff(
            self._hour_keys(user, prev, prev_hour), HOURS))

    def start_minutes(self, user: Hashable, prev: int, prev_hour: int) -> np.ndarray:
        """p(start minute of the day): :meth:`hour` times the population's minutes within that hour (uniform
        where the hour was never seen)."""
        def build() -> np.ndarray:
            within = np.stack([self._backoff([("m", h)], 60) for h in range(HOURS)])
            return (self.hour(user, prev, prev_hour)[:, None] * within).reshape(-1)
        return self._cached(("sm", user, prev, prev_hour), build)

    def choice_cum(self, user: Hashable, prev: int, hour: int) -> np.ndarray:
        """Prefix sums of :meth:`choice` (length ``n_choices + 1``): a rank range's mass is a difference."""
        return self._cached(("cc", user, prev, hour),
                            lambda: np.concatenate([[0.0], np.cumsum(self.choice(user, prev, hour))]))

    def minute_cum(self, user: Hashable, prev: int, prev_hour: int) -> np.ndarray:
        """Prefix sums over the day's 1440 minutes of :meth:`hour` spread evenly within each hour."""
        return self._cached(("mc", user, prev, prev_hour), lambda: np.concatenate(
            [[0.0], np.cumsum(np.repeat(self.hour(user, prev, prev_hour) / 60.0, 60))]))
