"""Intent metrics: accuracy, weighted F1, macro F1 and their gap, overall and per user, from confusion counts.

PITuning's argument is the gap: weighted F1 follows the frequent intents, macro F1 gives a user's rare (long-tail)
intents equal say, so a model that only learned the population's habits shows a large weighted - macro gap. F1
follows sklearn's ``f1_score`` exactly: the classes averaged over are those present in the true or the predicted
labels (of that user, for per-user scores), and a class with no true and no predicted sample never counts; F1 of a
class that is predicted but never true (or the reverse) is 0. All users are scored by one ``bincount``.
"""

from __future__ import annotations

import numpy as np

SCORES = ("accuracy", "weighted_f1", "macro_f1", "gap")


def _scores_from_confusion(conf: np.ndarray) -> dict[str, np.ndarray]:
    """``conf (..., C, C)`` (true, predicted) counts -> each score ``(...)``."""
    conf = conf.astype(np.float64)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    support, predicted = conf.sum(-1), conf.sum(-2)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = denom > 0
    total = support.sum(-1)
    macro = np.divide((f1 * present).sum(-1), present.sum(-1), out=np.zeros_like(total), where=present.sum(-1) > 0)
    weighted = np.divide((f1 * support).sum(-1), total, out=np.zeros_like(total), where=total > 0)
    acc = np.divide(tp.sum(-1), total, out=np.zeros_like(total), where=total > 0)
    return {"accuracy": acc, "weighted_f1": weighted, "macro_f1": macro, "gap": weighted - macro}


def _check(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D of one length, got {y_true.shape} and {y_pred.shape}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"{name} holds labels outside [0, {n_classes})")
    return y_true, y_pred


def intent_scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """Scores of all samples pooled."""
    y_true, y_pred = _check(y_true, y_pred, n_classes)
    conf = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    return {k: float(v) for k, v in _scores_from_confusion(conf).items()}


def per_user_scores(y_true: np.ndarray, y_pred: np.ndarray, users: np.ndarray, n_classes: int
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(user ids, {score: (U,)})``: each user's scores on their own samples (users in sorted order)."""
    y_true, y_pred = _check(y_true, y_pred, n_classes)
    ids, u = np.unique(np.asarray(users), return_inverse=True)
    cc = n_classes * n_classes
    conf = np.bincount(u * cc + y_true * n_classes + y_pred, minlength=len(ids) * cc).reshape(-1, n_classes,
                                                                                               n_classes)
    return ids, _scores_from_confusion(conf)


def score_table(y_true: np.ndarray, y_pred: np.ndarray, users: np.ndarray, n_classes: int) -> dict[str, float]:
    """One table row: pooled scores and the per-user means (``user_macro_f1``...)."""
    row = intent_scores(y_true, y_pred, n_classes)
    _, per = per_user_scores(y_true, y_pred, users, n_classes)
    row.update({f"user_{k}": float(v.mean()) for k, v in per.items()})
    return row


def format_intent_table(rows: dict[str, dict[str, float]], title: str) -> str:
    """Markdown table: pooled accuracy / weighted F1 / macro F1 / gap, then the per-user means of macro F1 and gap."""
    lines = [title, "", "| model | acc | weighted F1 | macro F1 | gap | user macro F1 | user gap |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        spread = r.get("user_macro_f1_std")
        user_macro = f"{r['user_macro_f1']:.4f}" + (f" ± {spread:.4f}" if spread is not None else "")
        lines.append(f"| {name} | {r['accuracy']:.4f} | {r['weighted_f1']:.4f} | {r['macro_f1']:.4f} | "
                     f"{r['gap']:.4f} | {user_macro} | {r['user_gap']:.4f} |")
    return "\n".join(lines)
