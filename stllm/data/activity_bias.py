"""Per-category logit correction for activity generation: pull the categories the model writes towards their
share in the trained days.

The LM (and the user prior it is mixed with) writes frequent categories too often and the long tail too rarely
(Tokyo seed 0: convenience store 10.3% of generated activities vs 9.2% real; categories outside the top 15 56.4%
vs 58.1%). Decoding adds ``b_c`` to the logit of the token that decides category ``c`` (and reweights the
prior's draw by ``exp(b_c)``), with ``b = log(share in trained days) - log(share in the model's own days on
validation requests)``: one fixed-point step of matching the marginal. Both sides are fitted without test days
(:func:`fit_category_bias` refuses them).

The population correction was rejected on validation days (it moves mass to the 480-category tail as a whole,
while each user's days hold few of its categories). :func:`user_category_bias` corrects each user's own mix
instead: ``b_{u,c} = G/(G+k) * clip(log p_u(c) - log q_u(c))``, ``p_u`` the user's trained days and ``q_u`` the
model's days for that user's validation requests, both Dirichlet-smoothed towards the population's trained
share, and shrunk by the ``G`` activities the model wrote for the user (a user with few has a noisy ``q_u``).

:func:`user_share_bias` needs no generated days: ``b_{u,c} = s * min(log(1 + t_{u,c} / (alpha pi_c)), clip)``,
i.e. ``s * log(p_u(c) / pi(c))`` up to a per-user constant (``p_u`` smoothed as above), which tilts each user's
categories from the population's mix towards their own (NYC's categories stayed 0.001-0.004 JSD above the per-user
Markov chain, which replays ``p_u``); ``s`` (``--category_prior``) is chosen on validation days.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

from stllm.data.activity import ActivityChain
from stllm.models.activity_decoding import clean_category

BIAS_ALPHA = 1.0  # pseudo-count per category on both sides (a category absent from the generated days gets a
# finite b)
USER_ALPHA = 5.0  # per-user smoothing: pseudo-activities spread as the population's trained shares
USER_SHRINK = 10.0  # k: b is scaled by G / (G + k), G the generated activities of the user
POP_FLOOR = 1e-6  # share of a category missing from the population's (keeps log finite)
BIAS_CLIP = 2.0  # |b| at most this: a rare category's share is noisy on a few hundred validation days
SHARE_CLIP = 5.0  # user_share_bias: log(1 + t / (alpha pi)) at most this (a user's top category is ~4.4 on NYC);
# at BIAS_CLIP nearly every category a user did hit the clip, and the bias was a flat bonus


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


def _refuse_test_days(trained: Sequence[ActivityChain], generated: Sequence[ActivityChain],
                      test: Sequence[ActivityChain]) -> None:
    test_keys = {(c.user, c.date) for c in test}
    for what, days in (("trained", trained), ("generated", generated)):
        bad = [c for c in days if (c.user, c.date) in test_keys]
        if bad:
            raise ValueError(f"category bias: field '{what}': user {bad[0].user} on {bad[0].date} is a test day; fit "
                             "on trained and validation days only")


def fit_category_bias(trained: Sequence[ActivityChain], generated: Sequence[ActivityChain],
                      test: Sequence[ActivityChain], previous: dict[str, float] | None = None) -> dict[str, float]:
    """:func:`category_bias` of the trained days' categories against the model's days ``generated`` for
    validation requests; refuses a trained or generated day whose (user, date) is a test day."""
    _refuse_test_days(trained, generated, test)
    return category_bias((a.category for c in trained for a in c.activities),
                         (a.category for c in generated for a in c.activities), previous)


def user_category_bias(target: dict[Hashable, Sequence[str]],
                       generated: dict[Hashable, Sequence[str] | Mapping[str, float]],
                       population: dict[str, float], alpha: float = USER_ALPHA, shrink: float = USER_SHRINK,
                       clip: float = BIAS_CLIP) -> dict[Hashable, dict[str, float]]:
    """Per user with generated activities, ``b_c = G/(G+shrink) * clip(log p(c) - log q(c))`` over the categories
    the user's target or generated days hold (the others: 0), ``p(c) = (t_c + alpha pi_c) / (T + alpha)`` and
    ``q(c) = (g_c + alpha pi_c) / (G + alpha)``, ``pi`` = ``population`` shares (at least ``POP_FLOOR``). A
    user's ``generated`` is their generated categories, or a mapping category -> expected count (the decoder's
    probabilities summed over lines; G its total)."""
    if alpha <= 0 or shrink < 0 or clip <= 0:
        raise ValueError(f"user category bias: need alpha > 0, shrink >= 0, clip > 0; got {alpha}, {shrink}, {clip}")
    out = {}
    for user, gen in generated.items():
        t, g = Counter(target.get(user, ())), Counter(gen) if not isinstance(gen, Mapping) else dict(gen)
        if not g or sum(g.values()) <= 0:
            continue
        cats = sorted(set(t) | set(g))
        tn, gn = sum(t.values()), sum(g.values())
        pi = np.array([population.get(c, 0.0) for c in cats])
        pi = np.maximum(pi, POP_FLOOR)
        p = (np.array([t[c] for c in cats]) + alpha * pi) / (tn + alpha)
        q = (np.array([g.get(c, 0.0) for c in cats]) + alpha * pi) / (gn + alpha)
        b = gn / (gn + shrink) * np.clip(np.log(p) - np.log(q), -clip, clip)
        out[user] = {c: float(v) for c, v in zip(cats, b)}
    return out


def fit_user_category_bias(trained: Sequence[ActivityChain], generated: Sequence[ActivityChain],
                           test: Sequence[ActivityChain], expected: dict[Hashable, Mapping[str, float]] | None = None,
                           **kwargs) -> dict[Hashable, dict[str, float]]:
    """:func:`user_category_bias` of each user's trained days against the model's days ``generated`` for that
    user's validation requests (population shares from all trained days); refuses a trained or generated day
    whose (user, date) is a test day. With ``expected`` (per user, the decoder's expected lines per category while
    it wrote ``generated``: grammar names) q_u comes from it instead of the sampled categories: ~4 sampled days
    per user made b fit sampling noise (README)."""
    _refuse_test_days(trained, generated, test)
    key = clean_category if expected is not None else str
    target: dict[Hashable, list[str]] = {}
    gen: dict[Hashable, list[str]] = {}
    for days, into in ((trained, target), (generated, gen)):
        for c in days:
            into.setdefault(c.user, []).extend(key(a.category) for a in c.activities)
    pop = Counter(key(a.category) for c in trained for a in c.activities)
    total = sum(pop.values()) or 1
    return user_category_bias(target, gen if expected is None else {u: expected.get(u, {}) for u in gen},
                              {c: n / total for c, n in pop.items()}, **kwargs)


def user_share_bias(days: Sequence[ActivityChain], strength: float, alpha: float = USER_ALPHA,
                    clip: float = SHARE_CLIP) -> dict[Hashable, dict[str, float]]:
    """Per user of ``days``, ``strength * min(log(1 + t_c / (alpha pi_c)), clip)`` over the categories of their
    days (``t_c`` their activities of category ``c``, ``pi`` the shares over all ``days``): ``strength *
    log(p_u(c) / pi(c))`` shifted so that a category the user never did gets 0 (the decoder's default). A negative
    ``strength`` tilts the other way, from the user's own mix towards the population's."""
    if alpha <= 0 or clip <= 0:
        raise ValueError(f"user share bias: need alpha > 0, clip > 0; got {alpha}, {clip}")
    per_user: dict[Hashable, Counter] = {}
    for c in days:
        per_user.setdefault(c.user, Counter()).update(a.category for a in c.activities)
    pop = Counter()
    for t in per_user.values():
        pop.update(t)
    total = sum(pop.values())
    if not strength or not total:
        return {}
    return {u: {c: float(strength * min(np.log1p(n / (alpha * pop[c] / total)), clip)) for c, n in sorted(t.items())}
            for u, t in per_user.items() if t}
