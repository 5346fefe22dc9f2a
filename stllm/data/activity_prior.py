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
  decoding must cut, so what was left piled up late in the evening (measured on Tokyo validation days);
* the previous line's hour again: whether the next line stays in it, given the previous line's minute within the
  hour (``stay`` counts: the later the minute, the less room left), and the minutes from one line to the next
  when it stays (``gap`` counts): population only. The LM writes the hour as one token and cannot tell how much
  of it is left after 00:58, so constrained decoding poured its whole hour into the minutes left (NYC: 23% of
  later lines at HH:55-59, real 7%; a same-hour next line as likely after HH:58 as after HH:10, real 0.16 vs
  0.45; same-hour gaps of 0-2 minutes 13%, real 55%);
* repeating the previous choice (:meth:`UserPrior.choice_repeat`): ``user + previous choice`` -> ``user`` ->
  population, as a yes/no apart from which other choice follows. The choice back-off above leans on the user's
  overall shares where a context is rare, and those do not know that a check-in rarely follows one at the same
  place: its draws repeated the previous place on 18% of NYC validation lines (13% after more than 30
  minutes), where the real days repeat 4.4%;
* activities per day: ``user + weekday/weekend`` -> ``user`` -> population. The LM alone never learns when a
  day ends as well as the user's own days say it (Tokyo days have 6 or more activities; the LM wrote 5% of
  days shorter, and NYC's LM wrote 4% of days with 13+ activities where the real days have 1%).

Fitted on trained days only (never validation or test days); choices are the grammar's keys by rank.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

START = -1  # previous choice / hour before a day's first line
HOURS = 24
STAY_ALPHA = 10.0  # pseudo-count of the all-minutes share in each minute's share of same-hour next lines


@dataclass(frozen=True)
class PriorDay:
    """One trained day as the prior sees it: its user and, per activity, the choice's rank and start minute."""

    user: str | None
    ranks: tuple[int, ...]
    minutes: tuple[int, ...]
    weekend: bool | None = None
    n_activities: int | None = None  # activities of the day (default: len(ranks); some may be out of vocabulary)


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
            prev, prev_hour, prev_minute = START, START, START
            for rank, minute in zip(d.ranks, d.minutes):
                if not 0 <= rank < self.n_choices:
                    raise ValueError(f"user prior: field 'ranks': {rank} is not one of {self.n_choices} choices")
                hour = min(max(minute // 60, 0), HOURS - 1)
                for key in self._choice_keys(d.user, prev, hour):
                    self._add(key, rank)
                for key in self._hour_keys(d.user, prev, prev_hour):
                    self._add(key, hour)
                self._add(("m", hour), minute % 60)
                if prev_minute >= 0 and minute >= prev_minute:
                    same = minute // 60 == prev_minute // 60
                    self._add(("stay", prev_minute % 60), int(same))
                    if same:
                        self._add(("gap",), minute - prev_minute)
                if prev >= 0:
                    for key in self._repeat_keys(d.user, prev):
                        self._add(key, int(rank == prev))
                prev, prev_hour, prev_minute = rank, hour, minute
            n = len(d.ranks) if d.n_activities is None else d.n_activities
            if n >= 1:
                for key in self._length_keys(d.user, d.weekend):
                    self._add(key, n)
        self._cache.clear()
        return self

    @staticmethod
    def _choice_keys(user, prev: int, hour: int) -> list[tuple]:
        return [("c",), ("c", user), ("c", user, hour), ("c", user, prev), ("c", user, prev, hour)]

    @staticmethod
    def _repeat_keys(user, prev: int) -> list[tuple]:
        return [("r",), ("r", user), ("r", user, prev)]

    @staticmethod
    def _length_keys(user, weekend: bool | None) -> list[tuple]:
        return [("n",), ("n", user), ("n", user, weekend)]

    @staticmethod
    def _hour_keys(user, prev: int, prev_hour: int) -> list[tuple]:
        return [("t", prev_hour), ("t", user, prev_hour), ("t", user, prev, prev_hour)]

    def _backoff(self, keys: Sequence[tuple], size: int, base: np.ndarray | None = None) -> np.ndarray:
        """``base`` (default uniform, so no allowed choice has mass 0), then each level from the population to the
        most specific: ``p = (n + alpha * p_below) / (N + alpha)``; values >= ``size`` count as ``size - 1``."""
        p = np.full(size, 1.0 / size) if base is None else base
        for key in keys:
            c = self.counts.get(key)
            if not c:
                continue
            n = np.zeros(size)
            np.add.at(n, np.minimum(list(c), size - 1), list(c.values()))
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

    def repeat(self, user: Hashable, prev: int) -> float:
        """p(the next choice is the previous one | user, previous choice)."""
        return float(self._cached(("r", user, prev), lambda: self._backoff(self._repeat_keys(user, prev), 2))[1])

    def choice_repeat(self, user: Hashable, prev: int, hour: int) -> np.ndarray:
        """:meth:`choice` with the previous choice's share set to :meth:`repeat` and the other choices scaled to
        the rest (unchanged before a day's first line)."""
        def build() -> np.ndarray:
            p = self.choice(user, prev, hour).copy()
            if prev < 0:
                return p
            r, p[prev] = self.repeat(user, prev), 0.0
            p *= (1.0 - r) / p.sum()
            p[prev] = r
            return p
        return self._cached(("cr", user, prev, hour), build)

    def hour(self, user: Hashable, prev: int, prev_hour: int) -> np.ndarray:
        """p(start hour | user, previous choice, previous line's hour), over 24 hours."""
        return self._cached(("t", user, prev, prev_hour), lambda: self._backoff(
            self._hour_keys(user, prev, prev_hour), HOURS))

    def lengths(self, user: Hashable, weekend: bool | None, max_lines: int) -> np.ndarray:
        """p(activities in the day | user, weekday/weekend) over ``0..max_lines`` (longer days count as
        ``max_lines``; 0 has no mass)."""
        base = np.r_[0.0, np.full(max_lines, 1.0 / max_lines)]
        build = lambda: self._backoff(self._length_keys(user, weekend), max_lines + 1, base)  # noqa: E731
        return self._cached(("n", user, weekend, max_lines), build)

    def start_minutes(self, user: Hashable, prev: int, prev_hour: int) -> np.ndarray:
        """p(start minute of the day): :meth:`hour` times the population's minutes within that hour (uniform
        where the hour was never seen)."""
        def build() -> np.ndarray:
            within = np.stack([self._backoff([("m", h)], 60) for h in range(HOURS)])
            return (self.hour(user, prev, prev_hour)[:, None] * within).reshape(-1)
        return self._cached(("sm", user, prev, prev_hour), build)

    def stay_ratio(self, prev_minute: int) -> float:
        """P(the next line starts in the previous line's hour | that line's minute within the hour) over the same
        share across all minutes (the per-minute share smoothed towards it with ``STAY_ALPHA``); 1 without data."""
        def build() -> np.ndarray:
            same = np.array([self.counts.get(("stay", m), Counter())[1] for m in range(60)], dtype=np.float64)
            n = same + [self.counts.get(("stay", m), Counter())[0] for m in range(60)]
            if not same.sum():
                return np.ones(60)
            mean = same.sum() / n.sum()
            return (same + STAY_ALPHA * mean) / (n + STAY_ALPHA) / mean
        return float(self._cached(("stay",), build)[prev_minute % 60])

    def gaps(self) -> np.ndarray:
        """p(minutes from the previous line's start | the next line starts in the same hour), over 0..59."""
        return self._cached(("gap",), lambda: self._backoff([("gap",)], 60))

    def choice_cum(self, user: Hashable, prev: int, hour: int) -> np.ndarray:
        """Prefix sums of :meth:`choice` (length ``n_choices + 1``): a rank range's mass is a difference."""
        return self._cached(("cc", user, prev, hour),
                            lambda: np.concatenate([[0.0], np.cumsum(self.choice(user, prev, hour))]))

    def minute_cum(self, user: Hashable, prev: int, prev_hour: int) -> np.ndarray:
        """Prefix sums over the day's 1440 minutes of :meth:`hour` spread evenly within each hour."""
        return self._cached(("mc", user, prev, prev_hour), lambda: np.concatenate(
            [[0.0], np.cumsum(np.repeat(self.hour(user, prev, prev_hour) / 60.0, 60))]))
