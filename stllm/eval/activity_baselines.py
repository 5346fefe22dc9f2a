"""Baselines for daily activity generation, fitted on training days only and sampled for held-out requests.

A request is a chain without steps: user, persona and date (what a prompt gives the model).

* :class:`MarkovBaseline` (``per_user=True``): a Markov chain over (category, time slot) states fitted on the
  user's own training days; the next state is drawn among the training transitions out of the current state
  (with their exact start time and place), a user without that state falls back to the population's.
* :class:`MarkovBaseline` (``per_user=False``): the same fitted on everybody's days.
* :class:`CopyBaseline`: a real training day of the same user (same weekday/weekend kind when there is one),
  resampled: realistic by construction, and 100% copies -- the yardstick for memorisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from stllm.data.activity import Activity, ActivityChain

START, END = ("<start>", -1), ("<end>", -1)
MAX_STEPS = 30


def _state(a: Activity, slot_minutes: int) -> tuple[str, int]:
    return a.category, -1 if a.start is None else a.start // (60 * slot_minutes)


def requests_of(days: Sequence[ActivityChain]) -> list[ActivityChain]:
    """The prompts of held-out days: user, persona and date, no steps."""
    return [replace(c, steps=()) for c in days]


class MarkovBaseline:
    """First-order Markov chain over (category, slot) states with real transitions as emissions."""

    def __init__(self, per_user: bool, slot_minutes: int = 60):
        self.per_user, self.slot_minutes = per_user, slot_minutes
        self.table: dict[tuple, list[Activity | None]] = {}

    @property
    def name(self) -> str:
        return "markov-user" if self.per_user else "markov-pop"

    def fit(self, train: Sequence[ActivityChain]) -> MarkovBaseline:
        for c in train:
            acts = [Activity(a.category, start=a.start, lat=a.lat, lon=a.lon) for a in c.activities]
            states = [START, *(_state(a, self.slot_minutes) for a in acts)]
            for prev, nxt in zip(states, [*acts, None]):
                for owner in ({None, c.user} if self.per_user else {None}):
                    self.table.setdefault((owner, prev), []).append(nxt)
        return self

    def _successors(self, user: str | None, state: tuple) -> list[Activity | None]:
        own = self.table.get((user, state)) if self.per_user else None
        return own or self.table.get((None, state)) or [None]

    def sample(self, request: ActivityChain, rng: np.random.Generator) -> ActivityChain:
        steps: list[Activity] = []
        state, now = START, 0
        while len(steps) < MAX_STEPS:
            options = self._successors(request.user, state)
            nxt = options[int(rng.integers(len(options)))]
            if nxt is None:
                break
            start = None if nxt.start is None else max(nxt.start, now)  # same slot, earlier minute: keep order
            steps.append(replace(nxt, start=start))
            now = start if start is not None else now
            state = _state(nxt, self.slot_minutes)
        return replace(request, steps=tuple(steps))


class CopyBaseline:
    """A random training day of the same user, of the same weekday/weekend kind when possible."""

    name = "copy"

    def __init__(self):
        self.days: dict[tuple[str | None, bool | None], list[ActivityChain]] = {}

    def fit(self, train: Sequence[ActivityChain]) -> CopyBaseline:
        for c in train:
            self.days.setdefault((c.user, c.weekend), []).append(c)
            self.days.setdefault((c.user, None), []).append(c)
        return self

    def sample(self, request: ActivityChain, rng: np.random.Generator) -> ActivityChain:
        pool = self.days.get((request.user, request.weekend)) or self.days.get((request.user, None))
        if not pool:
            raise ValueError(f"copy baseline: field 'user': {request.user!r} has no training day")
        return replace(request, steps=pool[int(rng.integers(len(pool)))].steps)


def generate_days(model, requests: Sequence[ActivityChain], seed: int = 0) -> list[ActivityChain]:
    """One sampled day per request from a fitted baseline."""
    rng = np.random.default_rng(seed)
    return [model.sample(r, rng) for r in requests]


def fitted_baselines(train: Sequence[ActivityChain]) -> list:
    """Copy, per-user Markov and population Markov, fitted on ``train``."""
    return [CopyBaseline().fit(train), MarkovBaseline(per_user=True).fit(train),
            MarkovBaseline(per_user=False).fit(train)]
