"""Individual tuning: each held-out user's copy of the student's intent head, tuned on that user's earlier days.

Head-only (the student's backbone stays frozen), so each user's queries are computed once and a user's tuning is a
few dozen full-batch steps of a ~1k-parameter head -- what a phone can afford. The loss is cross-entropy, an L2 pull
to the population head (a user has a few hundred events), and the *unlearning* term (PITuning's adaptive
unlearning, in this form): on the user's samples where the population head's top intent is wrong, push that
intent's probability down, weighted by how confident the population head was, ``-w log(1 - p(pop_top))`` with
``w = p_pop(pop_top)``. Population patterns the user contradicts are thus forgotten faster than cross-entropy alone
would (it only raises the right intent). ``unlearning=0`` is the ablation.

Post-hoc (:class:`Posthoc`, chosen on validation days by :func:`select_posthoc`): a user with ``n`` training
targets keeps only ``n / (n + k)`` of the move from the student's logits to their tuned head's (thin histories
overfit a head; NYC users have a median of 17 targets), and the logits are adjusted by ``tau`` times the log of the
user's own intent prior (Menon et al. 2021's logit adjustment, per user: a user's rare intents are what macro F1
and the weighted - macro gap are about), then shifted by one offset per intent (:func:`fit_class_bias`: the
macro-F1-optimal decision is a threshold per class, Narasimhan et al. 2015, which a frequency prior alone does not
place), fitted on validation targets under an accuracy floor so macro F1 is not bought with accuracy.
Optionally (``Posthoc.mix_m``, :func:`mix_user`) the sized probabilities are first mixed with the user's own
smoothed transition table, weight ``n / (n + m)``: a closed-form step that moves users with a handful of targets,
whom a tuned head barely moves once validation shrinks it.

Neighbour tuning (:class:`Neighbours`, :func:`tune_users` ``neighbours=``): a user's head is tuned on their own
samples plus, weighted ``w < 1``, the samples of the ``K`` population users most like them (:func:`nearest_users`:
cosine of smoothed intent-share and transition profiles, :func:`user_profiles`, counted on the user's training days
only) -- population-to-individual through similar users, so a user with 6-9 targets borrows the habits of users
like them instead of keeping the population head. All users are tuned at once (:func:`tune_heads_batched`: one
stacked head per user under ``torch.func.vmap``; Adam is elementwise, so this equals tuning each alone).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from stllm.data.intent import INTENTS, IntentCollator, IntentDataset, PreparedIntent
from stllm.eval.intent_metrics import intent_scores, per_user_scores
from stllm.models.intent import IntentHead, STLlamaForIntent, run_intent


@dataclass
class TuneConfig:
    steps: int = 80
    lr: float = 1e-2
    unlearning: float = 1.0  # weight of the unlearning term; 0 = ablation
    anchor: float = 1e-2  # L2 pull towards the population head
    loss_tau: float = 0.0  # logit-adjusted cross-entropy: + loss_tau * log(user's prior) inside the loss; 0 = plain
    loss_alpha: float = 1.0  # pseudo-counts per intent of that prior (spread by the population's shares when given)
    seed: int = 0


def unlearning_term(logits: torch.Tensor, pop_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over samples of ``-w log(1 - p(pop_top))``, ``w = p_pop(pop_top)`` where the population's top intent is
    not the target, 0 elsewhere."""
    conf, top = pop_probs.max(dim=-1)
    w = conf * (top != targets).to(conf.dtype)
    p_top = F.softmax(logits, dim=-1).gather(1, top[:, None]).squeeze(1)
    return -(w * torch.log1p(-p_top.clamp(max=1 - 1e-6))).mean()


def tuning_prior(counts: np.ndarray, alpha: float, population: np.ndarray | None = None) -> np.ndarray:
    """A user's intent prior from their training ``counts`` (C,): ``alpha`` pseudo-counts per intent, ``alpha * C``
    in all, spread by the ``population`` intent shares (None: evenly, i.e. add-``alpha``). A user has a median of
    ~10 NYC training targets: smoothed evenly, an intent they never chose gets as much prior as one the population
    chooses daily; towards the population, a thin history keeps the population's frequent-vs-rare structure and a
    long one is the user's own."""
    counts = np.asarray(counts, dtype=np.float64)
    if population is None:
        return user_prior(counts, alpha)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    pop = np.asarray(population, dtype=np.float64)
    if pop.shape != counts.shape[-1:] or (pop <= 0).any():
        raise ValueError(f"population shares must be ({counts.shape[-1]},) and > 0 everywhere")
    c = counts + alpha * len(pop) * pop / pop.sum()
    return c / c.sum(-1, keepdims=True)


def tune_head(head: IntentHead, query: torch.Tensor, features: torch.Tensor, targets: torch.Tensor,
              cfg: TuneConfig, population: np.ndarray | None = None) -> IntentHead:
    """A tuned copy of ``head`` on one user's samples (full batch). With ``cfg.loss_tau`` the cross-entropy is
    logit-adjusted (Menon et al. 2021's loss, per user): it scores ``logits + loss_tau * log prior``, the prior being
    :func:`tuning_prior` of the user's targets (smoothed towards ``population`` shares when given), so the head's
    raw logits -- what it predicts with -- need not spend their margin on the user's frequent intents."""
    torch.manual_seed(cfg.seed)
    tuned = copy.deepcopy(head).train()
    start = [p.detach().clone() for p in tuned.parameters()]
    with torch.no_grad():
        pop_probs = F.softmax(head(query, features), dim=-1)
    shift = 0.0
    if cfg.loss_tau:
        counts = np.bincount(targets.numpy(), minlength=pop_probs.shape[-1])
        shift = cfg.loss_tau * torch.from_numpy(np.log(tuning_prior(counts, cfg.loss_alpha, population))).to(pop_probs)
    opt = torch.optim.Adam(tuned.parameters(), lr=cfg.lr)
    for _ in range(cfg.steps):
        logits = tuned(query, features)
        loss = F.cross_entropy(logits + shift, targets)
        if cfg.unlearning:
            loss = loss + cfg.unlearning * unlearning_term(logits, pop_probs, targets)
        if cfg.anchor:
            loss = loss + cfg.anchor * sum(((p - p0) ** 2).sum() for p, p0 in zip(tuned.parameters(), start))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tuned.eval()


@dataclass
class UserLogits:
    """Intent logits of the held-out users' test targets (of the split ``tune_users`` was given), one array per
    variant, aligned with ``rows``; ``n_train`` is each row's user's number of training targets."""

    rows: np.ndarray
    n_train: np.ndarray
    logits: dict[str, np.ndarray]


def population_shares(data: PreparedIntent) -> np.ndarray:
    """Intent shares of the population users' training targets (what the population model was trained on), +1
    count per intent so every share is > 0."""
    targets = data.log.intent[data.rows_of("population_train")]
    counts = np.bincount(targets, minlength=len(INTENTS)).astype(np.float64)
    return (counts + 1.0) / (counts.sum() + len(counts))


def tune_users(student: STLlamaForIntent, tokenizer, data: PreparedIntent, configs: dict[str, TuneConfig],
               history: int = 8, population: np.ndarray | None = None,
               neighbours: dict[str, tuple[TuneConfig, Neighbours]] | None = None, chunk: int = 32) -> UserLogits:
    """Each held-out user's head tuned on their ``user_train`` targets under every config of ``configs``, then
    scoring their ``user_test`` targets; ``"before"`` is the student itself. Users without training targets keep
    the student's head. ``population``: intent shares the logit-adjusted loss's user prior is smoothed towards.
    ``neighbours``: more variants, each tuned on the user's samples plus their nearest population users'
    (:class:`Neighbours`), all users at once (``chunk`` users per batch)."""
    collator = IntentCollator(tokenizer)
    train_ds, test_ds = data.dataset("user_train", history=history), data.dataset("user_test", history=history)
    q_train = run_intent(student, collator, train_ds, what="query")
    q_test = run_intent(student, collator, test_ds, what="query")
    f_train, f_test = torch.from_numpy(train_ds.features), torch.from_numpy(test_ds.features)
    y_train = torch.from_numpy(train_ds.targets)
    head = student.intent_head
    with torch.no_grad():
        before = head(q_test, f_test).numpy()
    logits = {"before": before, **{name: before.copy() for name in configs}}
    n_train = np.bincount(train_ds.users, minlength=len(data.log.user_ids))[test_ds.users]
    for u in np.unique(test_ds.users):
        tr, te = train_ds.users == u, test_ds.users == u
        if not tr.any():
            continue
        for name, cfg in configs.items():
            tuned = tune_head(head, q_train[tr], f_train[tr], y_train[tr], cfg, population)
            with torch.no_grad():
                logits[name][te] = tuned(q_test[te], f_test[te]).numpy()
    if neighbours:
        own = (q_train, f_train, y_train, train_ds.users)
        logits.update(_neighbour_logits(student, collator, data, history, own, (q_test, f_test, test_ds.users),
                                        neighbours, before, chunk))
    return UserLogits(test_ds.rows, n_train.astype(np.int64), logits)


def _neighbour_logits(student: STLlamaForIntent, collator, data: PreparedIntent, history: int, own: tuple,
                      test: tuple, neighbours: dict[str, tuple[TuneConfig, Neighbours]], before: np.ndarray,
                      chunk: int) -> dict[str, np.ndarray]:
    """Test logits of each neighbour variant (see :func:`tune_users`); the pool users' samples are their latest
    ``cap`` population-training targets, with the features they have there (leave-one-out)."""
    q_train, f_train, y_train, train_users = own
    q_test, f_test, test_users = test
    users = np.unique(test_users)
    users = users[np.isin(users, train_users)]
    out = {name: before.copy() for name in neighbours}
    if not len(users):
        return out
    pool_users, pool_profiles = neighbour_pool(data)
    t = data.tables
    k_max = min(max(nb.k for _, nb in neighbours.values()), len(pool_users))
    near = pool_users[nearest_users(user_profiles(t.user_freq[users], t.user_intent[users], t.pop_intent),
                                    pool_profiles, k_max)] if k_max else np.zeros((len(users), 0), dtype=np.int64)
    prow = data.rows_of("population_train")
    puser = data.log.user[prow]
    _, first, counts = np.unique(puser, return_index=True, return_counts=True)
    from_end = np.repeat(counts, counts) - 1 - (np.arange(len(prow)) - np.repeat(first, counts))
    keep = np.isin(puser, near) & (from_end < max(nb.cap for _, nb in neighbours.values()))
    q, f, y, pool_of = q_train, f_train, y_train, {}
    if keep.any():
        pool = IntentDataset(data.log, prow[keep], data.split, data.tables, history)
        q = torch.cat([q_train, run_intent(student, collator, pool, what="query")])
        f = torch.cat([f_train, torch.from_numpy(pool.features)])
        y = torch.cat([y_train, torch.from_numpy(pool.targets)])
        pool_at = len(y_train) + np.arange(len(pool))
        pool_of = {v: pool_at[pool.users == v] for v in np.unique(pool.users)}
    own_of = [np.flatnonzero(train_users == u) for u in users]
    test_of = [np.flatnonzero(test_users == u) for u in users]
    for name, (cfg, nb) in neighbours.items():
        groups = [np.concatenate([o, *(pool_of[v][-nb.cap:] for v in near[i, :nb.k])]) for i, o in enumerate(own_of)]
        weights = [np.r_[np.ones(len(o)), np.full(len(g) - len(o), nb.w)] for o, g in zip(own_of, groups)]
        order = np.argsort([len(g) for g in groups], kind="stable")  # chunks of like sizes: little padding
        for s in range(0, len(users), chunk):
            part = order[s:s + chunk]
            index, weight = _padded([groups[i] for i in part], [weights[i] for i in part])
            params = tune_heads_batched(student.intent_head, q, f, y, index, weight, cfg)
            t_index, _ = _padded([test_of[i] for i in part], [np.ones(len(test_of[i])) for i in part])
            z = batched_head_logits(student.intent_head, params, q_test, f_test, t_index).numpy()
            for j, i in enumerate(part):
                out[name][test_of[i]] = z[j, :len(test_of[i])]
    return out


@dataclass(frozen=True)
class Neighbours:
    """Tune on the user's samples plus those of the ``k`` nearest population users, each weighted ``w``; each
    neighbour brings at most its ``cap`` latest training samples (bounds the cost when a neighbour has thousands)."""

    k: int
    w: float
    cap: int = 128


def user_profiles(user_freq: np.ndarray, user_intent: np.ndarray, pop_intent: np.ndarray,
                  alpha: float = 1.0) -> np.ndarray:
    """``(U, C + C*C)`` each user's intent shares and (last, next) transition shares, each smoothed by ``alpha * C``
    pseudo-counts spread by the population's (``pop_intent`` (C, C) transition counts): a user with 6-9 targets gets
    a profile near the population's, with their own counts on top, so similarity is not decided by empty cells."""
    c = pop_intent.shape[0]
    joint = np.asarray(pop_intent, dtype=np.float64).reshape(-1) + 1.0
    joint /= joint.sum()
    freq = joint.reshape(c, c).sum(0)

    def shares(counts: np.ndarray, prior: np.ndarray) -> np.ndarray:
        s = np.asarray(counts, dtype=np.float64) + alpha * c * prior
        return s / s.sum(-1, keepdims=True)

    return np.concatenate([shares(user_freq, freq), shares(user_intent.reshape(len(user_intent), -1), joint)], -1)


def nearest_users(query: np.ndarray, pool: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` indices into ``pool`` (m, D) of each ``query`` (n, D) profile's ``k`` most cosine-similar rows,
    most similar first (ties: lower index first)."""
    if not 0 < k <= len(pool):
        raise ValueError(f"k must be in 1..{len(pool)}, got {k}")
    qn = query / np.linalg.norm(query, axis=-1, keepdims=True).clip(1e-12)
    pn = pool / np.linalg.norm(pool, axis=-1, keepdims=True).clip(1e-12)
    return np.argsort(-(qn @ pn.T), axis=-1, kind="stable")[:, :k]


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (values * weight).sum(-1) / weight.sum(-1).clamp(min=1e-12)


def tune_heads_batched(head: IntentHead, query: torch.Tensor, features: torch.Tensor, targets: torch.Tensor,
                       index: torch.Tensor, weight: torch.Tensor, cfg: TuneConfig) -> dict[str, torch.Tensor]:
    """One tuned copy of ``head`` per row of ``index`` (U, M): the samples (into ``query``/``features``/``targets``)
    it is tuned on, ``weight`` (U, M) each one's weight (0: padding). The loss of :func:`tune_head` with weighted
    means in place of means, summed over users; Adam is elementwise, so each user's head moves as if tuned alone.
    Returns the stacked parameters ``{name: (U, ...)}`` (:func:`batched_head_logits`)."""
    if cfg.loss_tau:
        raise ValueError("batched tuning has no logit-adjusted loss (loss_tau must be 0)")
    from torch.func import functional_call, vmap

    torch.manual_seed(cfg.seed)
    u = index.shape[0]
    start = {n: p.detach() for n, p in head.named_parameters()}
    params = {n: p.expand(u, *p.shape).clone().requires_grad_(True) for n, p in start.items()}
    q, x, y = query[index], features[index], targets[index]
    w = weight.to(q.dtype)
    with torch.no_grad():
        pop_probs = F.softmax(head(q.flatten(0, 1), x.flatten(0, 1)), -1).view(*index.shape, -1)
    conf, top = pop_probs.max(-1)
    w_unl = conf * (top != y).to(conf.dtype)

    def forward(p: dict[str, torch.Tensor], qu: torch.Tensor, xu: torch.Tensor) -> torch.Tensor:
        return functional_call(head, p, (qu, xu))

    step = vmap(forward)
    opt = torch.optim.Adam(params.values(), lr=cfg.lr)
    for _ in range(cfg.steps):
        logits = step(params, q, x)
        ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
        loss = _weighted_mean(ce, w)
        if cfg.unlearning:
            p_top = F.softmax(logits, -1).gather(-1, top[..., None]).squeeze(-1)
            loss = loss + cfg.unlearning * _weighted_mean(-w_unl * torch.log1p(-p_top.clamp(max=1 - 1e-6)), w)
        if cfg.anchor:
            loss = loss + cfg.anchor * sum(((params[n] - start[n]) ** 2).flatten(1).sum(-1) for n in params)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    return {n: p.detach() for n, p in params.items()}


def batched_head_logits(head: IntentHead, params: dict[str, torch.Tensor], query: torch.Tensor,
                        features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``(U, M, C)`` logits of each user's stacked head (``params`` of :func:`tune_heads_batched`) on the samples
    ``index`` (U, M) names (padding entries are computed too; the caller drops them)."""
    from torch.func import functional_call, vmap

    with torch.no_grad():
        return vmap(lambda p, qu, xu: functional_call(head, p, (qu, xu)))(params, query[index], features[index])


def _padded(groups: list[np.ndarray], weights: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, M)`` index and weight tensors of ragged per-user sample lists (padding: index 0, weight 0)."""
    m = max(1, max(len(g) for g in groups))
    index, weight = np.zeros((len(groups), m), dtype=np.int64), np.zeros((len(groups), m))
    for i, (g, w) in enumerate(zip(groups, weights)):
        index[i, :len(g)], weight[i, :len(g)] = g, w
    return torch.from_numpy(index), torch.from_numpy(weight)


def neighbour_pool(data: PreparedIntent) -> tuple[np.ndarray, np.ndarray]:
    """``(pool users, their profiles)``: the population users with training targets, profiled by
    :func:`user_profiles` of ``data``'s tables (the same in the validation and the real split)."""
    rows = data.rows_of("population_train")
    users = np.unique(data.log.user[rows])
    t = data.tables
    return users, user_profiles(t.user_freq[users], t.user_intent[users], t.pop_intent)


def history_weight(n: np.ndarray, k: float) -> np.ndarray:
    """``n / (n + k)``: how far a user with ``n`` training targets moves from the student's head to their own tuned
    head (``k = 0``: all the way, as plain tuning does; a user without training targets stays put)."""
    n = np.asarray(n, dtype=np.float64)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return np.divide(n, n + k, out=np.zeros_like(n), where=n + k > 0)


def sized_logits(before: np.ndarray, tuned: np.ndarray, n: np.ndarray, k: float) -> np.ndarray:
    """The tuned logits shrunk towards the student's by :func:`history_weight` of each row's user."""
    w = history_weight(n, k)[:, None]
    return w * tuned + (1.0 - w) * before


def adjust_logits(logits: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """Post-hoc logit adjustment (Menon et al., ICLR 2021): ``logits - tau log prior``. The argmax then trades the
    frequent intents' accuracy for the rare ones' recall (``tau = 1`` targets the balanced error when the logits
    are calibrated log-probabilities); ``prior`` is (C,) or per row (n, C), every entry > 0."""
    prior = np.asarray(prior, dtype=np.float64)
    if (prior <= 0).any():
        raise ValueError("prior must be > 0 everywhere (smooth the counts)")
    return logits - tau * np.log(prior / prior.sum(-1, keepdims=True))


SELECTION_OBJECTIVES = ("user", "pooled")


@dataclass(frozen=True)
class Posthoc:
    """How tuned logits become predictions: the heads tuned with ``loss_tau`` (:class:`TuneConfig`), shrinkage ``k``
    of :func:`history_weight`, adjustment ``tau`` by the user's prior smoothed with ``alpha`` pseudo-counts per
    intent (:func:`user_prior`), then ``bias`` added per intent (empty: none). With ``mix_m`` the sized logits'
    probabilities are first mixed with the user's own table (:func:`mix_user`)."""

    k: float = 0.0
    tau: float = 0.0
    alpha: float = 1.0
    bias: tuple[float, ...] = ()
    loss_tau: float = 0.0
    mix_m: float | None = None  # mix in the user's own table with weight n / (n + mix_m) (:func:`mix_user`); None = off
    neighbours: tuple[int, float] | None = None  # heads tuned with (K, w) neighbours (:class:`Neighbours`); None = own

    @property
    def head(self) -> float | tuple[float, int, float]:
        """The key of the tuned logits this choice reads in :func:`select_posthoc`'s ``tuned``."""
        return self.loss_tau if self.neighbours is None else (self.loss_tau, *self.neighbours)


BIAS_VALUES = tuple(float(v) for v in np.round(np.arange(-1.5, 1.51, 0.1), 2))


def fit_class_bias(logits: np.ndarray, y: np.ndarray, min_accuracy: float | None = None,
                   values: tuple[float, ...] = BIAS_VALUES, sweeps: int = 3) -> tuple[np.ndarray, dict[str, float]]:
    """``(bias (C,), scores)``: one offset per intent added to ``logits`` (validation targets ``y``), by coordinate
    ascent over ``values`` on pooled macro F1, among offsets whose accuracy stays at or above ``min_accuracy`` (a
    start below it climbs accuracy first). Starts at zero; a change is kept only when it strictly improves."""
    c = logits.shape[-1]
    bias = np.zeros(c)

    def key(scores: dict[str, float]) -> tuple[bool, float]:
        return min_accuracy is None or scores["accuracy"] >= min_accuracy, (
            scores["macro_f1"] if min_accuracy is None or scores["accuracy"] >= min_accuracy else scores["accuracy"])

    best = intent_scores(y, logits.argmax(-1), c)
    for _ in range(sweeps):
        changed = False
        for j in range(c):
            for v in values:
                trial = bias.copy()
                trial[j] = v
                scores = intent_scores(y, (logits + trial).argmax(-1), c)
                if key(scores) > key(best):
                    best, bias, changed = scores, trial, True
        if not changed:
            break
    return bias, best


def user_prior(counts: np.ndarray, alpha: float) -> np.ndarray:
    """``(n, C)`` intent shares of each row's user's training ``counts``, add-``alpha`` smoothed (``alpha > 0``)."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    c = np.asarray(counts, dtype=np.float64) + alpha
    return c / c.sum(-1, keepdims=True)


def user_table_probs(user_intent: np.ndarray, user_freq: np.ndarray, population: np.ndarray, users: np.ndarray,
                     last: np.ndarray, beta: float = 1.0) -> np.ndarray:
    """``(n, C)`` each row's user's own ``P_u(intent | last intent)``: the counts of their transition row
    (``user_intent`` (U, C, C)) plus ``beta`` pseudo-counts spread by ``P_u(intent)``, itself their intent counts
    (``user_freq`` (U, C)) plus one pseudo-count per intent spread by the ``population`` shares
    (:func:`tuning_prior`). A user with 6-9 training targets has rows of 0-3 counts: the back-off keeps their
    own frequent intents, then the population's order, and every entry > 0."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    freq = tuning_prior(user_freq[users], 1.0, population)
    row = np.asarray(user_intent[users, last], dtype=np.float64)
    return (row + beta * freq) / (row.sum(-1, keepdims=True) + beta)


def user_table_of(data: PreparedIntent, rows: np.ndarray, population: np.ndarray, beta: float = 1.0) -> np.ndarray:
    """:func:`user_table_probs` of target ``rows`` from ``data``'s own user tables: for
    :func:`stllm.data.intent.validation_data` those count only the days before the validation days, for the real
    split all training days."""
    return user_table_probs(data.tables.user_intent, data.tables.user_freq, population, data.log.user[rows],
                            data.log.intent[rows - 1], beta)


def mix_user(logits: np.ndarray, user_probs: np.ndarray, n: np.ndarray, m: float | None) -> np.ndarray:
    """Log of ``(1 - lam) softmax(logits) + lam user_probs``, ``lam = n / (n + m)`` per row (``n``: the row's user's
    training targets): a closed-form personal step that moves a user with few targets by a share gradient tuning
    of a head cannot (a Dirichlet-style posterior mean with ``m`` as the model's prior strength). ``m`` None: the
    logits unchanged."""
    if m is None:
        return logits
    lam = history_weight(n, m)[:, None]
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(-1, keepdims=True)
    return np.log((1.0 - lam) * p + lam * user_probs)


def posthoc_logits(before: np.ndarray, tuned: np.ndarray, n: np.ndarray, counts: np.ndarray, p: Posthoc,
                   user_probs: np.ndarray | None = None) -> np.ndarray:
    if p.mix_m is not None and user_probs is None:
        raise ValueError("this choice mixes in the user's table: pass user_probs")
    sized = mix_user(sized_logits(before, tuned, n, p.k), user_probs, n, p.mix_m)
    out = adjust_logits(sized, user_prior(counts, p.alpha), p.tau)
    return out + np.asarray(p.bias) if p.bias else out


def select_posthoc(y: np.ndarray, users: np.ndarray, before: np.ndarray, tuned: np.ndarray | dict[float, np.ndarray],
                   n: np.ndarray, counts: np.ndarray, ks: tuple[float, ...], taus: tuple[float, ...],
                   alphas: tuple[float, ...] = (1.0,), objective: str = "user", max_gap: float | None = None,
                   min_macro: float | None = None, min_accuracy: float | None = None, class_bias: bool = False,
                   user_probs: np.ndarray | None = None, mix_ms: tuple[float | None, ...] = (None,)
                   ) -> tuple[Posthoc, dict[str, float]]:
    """The ``(k, tau, alpha)`` of the grid with the best macro F1 on *validation* targets ``y`` (the caller passes
    validation rows only; ``counts``: each row's user's training intent counts), and its pooled validation scores:
    the mean of per-user macro F1s (``objective="user"``) or the macro F1 of all targets pooled (``"pooled"``:
    steadier when users have only a few validation targets each). With ``max_gap`` only grid points whose pooled
    validation gap (weighted - macro F1) is below it and (``min_macro``) whose pooled macro F1 is at least
    ``min_macro`` compete -- macro F1 can be bought with a wider gap, and the gap alone by predicting rare intents
    everywhere, so both are constraints, not terms; when no point meets them, the objective alone decides (the
    bound is dropped, never bought with a useless model). ``min_accuracy`` is a floor above both: a point below it
    competes only when no point reaches it (then the most accurate wins). With ``class_bias`` every grid point
    also gets its :func:`fit_class_bias` offsets (under ``min_accuracy``). ``tuned`` as ``{loss_tau: logits}``
    (heads tuned with each logit-adjusted loss) adds ``loss_tau`` to the grid, outermost; a key ``(loss_tau, K, w)``
    names heads tuned with neighbours (:class:`Neighbours`; ``Posthoc.neighbours``). Ties go to the first in
    grid order. ``mix_ms`` (with ``user_probs``, each row's user's table) adds :func:`mix_user`'s ``m`` right after
    ``k`` (None: no mix; put it first so ties go to it)."""
    if objective not in SELECTION_OBJECTIVES:
        raise ValueError(f"objective must be one of {SELECTION_OBJECTIVES}, got {objective!r}")
    heads = tuned if isinstance(tuned, dict) else {0.0: tuned}
    c = next(iter(heads.values())).shape[-1]
    best, best_key, best_scores = Posthoc(), None, {}
    if any(m is not None for m in mix_ms) and user_probs is None:
        raise ValueError("mix_ms needs user_probs")
    for (key, logits), k, m in ((h, k, m) for h in heads.items() for k in ks for m in mix_ms):
        loss_tau, nb = (key[0], (int(key[1]), float(key[2]))) if isinstance(key, tuple) else (key, None)
        sized = mix_user(sized_logits(before, logits, n, k), user_probs, n, m)
        for alpha in alphas:
            log_prior = np.log(user_prior(counts, alpha))
            for tau in taus:
                z = sized - tau * log_prior
                bias = fit_class_bias(z, y, min_accuracy)[0] if class_bias else np.zeros(c)
                pred = (z + bias).argmax(-1)
                scores = intent_scores(y, pred, c)
                score = (float(per_user_scores(y, pred, users, c)[1]["macro_f1"].mean()) if objective == "user"
                         else scores["macro_f1"])
                ok = (max_gap is None or scores["gap"] < max_gap) and (min_macro is None or
                                                                       scores["macro_f1"] >= min_macro)
                floor = min_accuracy is None or scores["accuracy"] >= min_accuracy
                key = (floor, ok, score if floor else scores["accuracy"])
                if best_key is None or key > best_key:
                    best = Posthoc(float(k), float(tau), float(alpha), tuple(bias.tolist()) if class_bias else (),
                                   float(loss_tau), None if m is None else float(m), nb)
                    best_key, best_scores = key, scores
    return best, best_scores
