"""Per-category logit correction for activity generation: pull the categories the model writes towards their
share in the trained days.

The LM (and the user prior it is mixed with) writes frequent categories too often and the long tail too rarely
(Tokyo seed 0: convenience store 10.3% of generated activities vs 9.2% real; categories outside the top 15 56.4%
vs 58.1%). Decoding adds ``b_c`` to the logit of the token that decides category ``c`` (and reweights the
prior's draw by ``exp(b_c)``), with ``b = log(share in trained days) - log(share in the model's own days on
validation requests)``: one fixed-point step of matching the marginal. Both sides are fitted without test days
(:func:`fit_category_bias` refuses them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from stllm.data.activity import ActivityChain

BIAS_ALPHA = 1.0  # pseudo-count per category on both sides (a category absent from the generated days gets a
# finite b)
BIAS_CLIP = 2.0  # |b| at most this: a rare category's share is noisy on a few hundred validation days


def category_bias(target: Iterable[str], generated: Iterable[str], previous: dict[str, float] | None = None,
                  alpha: float = BIAS_ALPHA, clip: float = BIAS_CLIP) -> dict[str, float]:
    """``b_c = previous_c + log(share_c in target) - log(share_c in generated)`` over the target's categories
    (``alpha`` added to every count, clipped to ``[-clip, clip]``); ``generated`` written under ``previous``."""
    t, g = Counter(target), Counter(generated)
    cats = sorted(t)
    if not cats:
        raise ValueError("category bias: no activity in the target days")
    tc = np.array([t[c] for c in cats], dtype=np.float64) + alpha
    gc = np.array([g[c] for c in cats], dtype=np.float64) + alpha
    prev = np.array([(previous or {}).get(c, 0.0) for c in cats])
    b = np.clip(prev + np.log(tc / tc.sum()) - np.log(gc / gc.sum()), -clip, clip)
    return {c: float(v) for c, v in zip(cats, b)}


def fit_category_bias(trained: Sequence[ActivityChain], generated: Sequence[ActivityChain],
                      test: Sequence[ActivityChain], previous: dict[str, float] | None = None) -> dict[str, float]:
    """:func:`category_bias` of the trained days' categories against the model's days ``generated`` for
    validation requests; refuses a trained or generated day whose (user, date) is a test day."""
    test_keys = {(c.user, c.date) for c in test}
    for what, days in (("trained", trained), ("generated", generated)):
        bad = [c for c in days if (c.user, c.date) in test_keys]
        if bad:
            raise ValueError(f"category bias: field '{what}': user {bad[0].user} on {bad[0].date} is a test day; fit "
                             "on trained and validation days only")
    return category_bias((a.category for c in trained for a in c.activities),
                         (a.category for c in generated for a in c.activities), previous)
