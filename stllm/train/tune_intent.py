"""Individual tuning: each held-out user's copy of the student's intent head, tuned on that user's earlier days.

Head-only (the student's backbone stays frozen), so each user's queries are computed once and a user's tuning is a
few dozen full-batch steps of a ~1k-parameter head -- what a phone can afford. The loss is cross-entropy, an L2 pull
to the population head (a user has a few hundred events), and the *unlearning* term (PITuning's adaptive
unlearning, in this form): on the user's samples where the population head's top intent is wrong, push that
intent's probability down, weighted by how confident the population head was, ``-w log(1 - p(pop_top))`` with
``w = p_pop(pop_top)``. Population patterns the user contradicts are thus forgotten faster than cross-entropy alone
would (it only raises the right intent). ``unlearning=0`` is the ablation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from stllm.data.intent import IntentCollator, PreparedIntent
from stllm.models.intent import IntentHead, STLlamaForIntent, run_intent


@dataclass
class TuneConfig:
    steps: int = 80
    lr: float = 1e-2
    unlearning: float = 1.0  # weight of the unlearning term; 0 = ablation
    anchor: float = 1e-2  # L2 pull towards the population head
    seed: int = 0


def unlearning_term(logits: torch.Tensor, pop_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over samples of ``-w log(1 - p(pop_top))``, ``w = p_pop(pop_top)`` where the population's top intent is
    not the target, 0 elsewhere."""
    conf, top = pop_probs.max(dim=-1)
    w = conf * (top != targets).to(conf.dtype)
    p_top = F.softmax(logits, dim=-1).gather(1, top[:, None]).squeeze(1)
    return -(w * torch.log1p(-p_top.clamp(max=1 - 1e-6))).mean()


def tune_head(head: IntentHead, query: torch.Tensor, features: torch.Tensor, targets: torch.Tensor,
              cfg: TuneConfig) -> IntentHead:
    """A tuned copy of ``head`` on one user's samples (full batch)."""
    torch.manual_seed(cfg.seed)
    tuned = copy.deepcopy(head).train()
    start = [p.detach().clone() for p in tuned.parameters()]
    with torch.no_grad():
        pop_probs = F.softmax(head(query, features), dim=-1)
    opt = torch.optim.Adam(tuned.parameters(), lr=cfg.lr)
    for _ in range(cfg.steps):
        logits = tuned(query, features)
        loss = F.cross_entropy(logits, targets)
        if cfg.unlearning:
            loss = loss + cfg.unlearning * unlearning_term(logits, pop_probs, targets)
        if cfg.anchor:
            loss = loss + cfg.anchor * sum(((p - p0) ** 2).sum() for p, p0 in zip(tuned.parameters(), start))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tuned.eval()


def tune_users(student: STLlamaForIntent, tokenizer, data: PreparedIntent, configs: dict[str, TuneConfig],
               history: int = 8) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(test rows, {variant: predictions})``: each held-out user's head tuned on their ``user_train`` targets
    under every config of ``configs``, then predicting their ``user_test`` targets; ``"before"`` is the student
    itself. Users without training targets keep the student's head."""
    collator = IntentCollator(tokenizer)
    train_ds, test_ds = data.dataset("user_train", history=history), data.dataset("user_test", history=history)
    q_train = run_intent(student, collator, train_ds, what="query")
    q_test = run_intent(student, collator, test_ds, what="query")
    f_train, f_test = torch.from_numpy(train_ds.features), torch.from_numpy(test_ds.features)
    y_train = torch.from_numpy(train_ds.targets)
    head = student.intent_head
    with torch.no_grad():
        before = head(q_test, f_test).argmax(-1).numpy()
    preds = {"before": before, **{name: before.copy() for name in configs}}
    for u in np.unique(test_ds.users):
        tr, te = train_ds.users == u, test_ds.users == u
        if not tr.any():
            continue
        for name, cfg in configs.items():
            tuned = tune_head(head, q_train[tr], f_train[tr], y_train[tr], cfg)
            with torch.no_grad():
                preds[name][te] = tuned(q_test[te], f_test[te]).argmax(-1).numpy()
    return test_ds.rows, preds
