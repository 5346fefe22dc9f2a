"""Intent baselines on the same transition tables the model reads (:class:`stllm.data.intent.TransitionTables`).

- user's most frequent intent (their own training targets),
- user's Markov transition: the intent that most often followed the last event's intent in the user's own
  history (ties and unseen rows fall back to the user's most frequent, then to the population),
- population Markov: the same transition counted over population users.
Each returns ``(n, C)`` scores whose argmax is the prediction; the small fallback terms only break ties.
"""

from __future__ import annotations

import numpy as np

from stllm.data.intent import INTENTS, EventLog, PreparedIntent, TransitionTables, check_heldout
from stllm.eval.intent_metrics import score_table


def _pop_prior(tables: TransitionTables) -> np.ndarray:
    freq = tables.pop_intent.sum(0)
    return freq / max(freq.sum(), 1.0)


def user_most_frequent(tables: TransitionTables, log: EventLog, rows: np.ndarray) -> np.ndarray:
    return tables.user_freq[log.user[rows]] + 1e-3 * _pop_prior(tables)


def user_markov(tables: TransitionTables, log: EventLog, rows: np.ndarray) -> np.ndarray:
    u, last = log.user[rows], log.intent[rows - 1]
    return tables.user_intent[u, last] + 1e-3 * user_most_frequent(tables, log, rows)


def population_markov(tables: TransitionTables, log: EventLog, rows: np.ndarray) -> np.ndarray:
    return tables.pop_intent[log.intent[rows - 1]] + 1e-3 * _pop_prior(tables)


INTENT_BASELINES = {"user most frequent": user_most_frequent, "user Markov": user_markov,
                    "population Markov": population_markov}


def baseline_table(data: PreparedIntent, part: str = "user_test") -> dict[str, dict[str, float]]:
    """Each baseline's scores on ``data``'s targets of ``part`` (checked held out first)."""
    rows = data.rows_of(part)
    check_heldout(data.log, rows, data.split, allow_population=part == "population_test")
    y, users = data.log.intent[rows], data.log.user[rows]
    return {name: score_table(y, fn(data.tables, data.log, rows).argmax(-1), users, len(INTENTS))
            for name, fn in INTENT_BASELINES.items()}
