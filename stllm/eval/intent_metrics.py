"""Intent metrics: accuracy, weighted F1, macro F1 and their gap, overall and per user, from confusion counts.

PITuning's argument is the gap: weighted F1 follows the frequent intents, macro F1 gives a user's rare (long-tail)
intents equal say, so a model that only learned the population's habits shows a large weighted - macro gap. F1
follows sklearn's ``f1_score`` exactly: the classes averaged over are those present in the true or the predicted
labels (of that user, for per-user scores), and a class with no true and no predicted sample never counts; F1 of a
class that is predicted but never true (or the reverse) is 0. All users are scored by one ``bincount``.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def user_changes(y_true: np.ndarray, before: np.ndarray, after: np.ndarray, users: np.ndarray, n_classes: int
                 ) -> dict[str, int]:
    """How many users' macro F1 rises, stays equal (within 1e-12) or falls from ``before`` to ``after``
    predictions: a user with few targets often ties, which "improves for most users" must not hide."""
    _, a = per_user_scores(y_true, before, users, n_classes)
    _, b = per_user_scores(y_true, after, users, n_classes)
    d = b["macro_f1"] - a["macro_f1"]
    return {"improved": int((d > 1e-12).sum()), "tied": int((np.abs(d) <= 1e-12).sum()),
            "worse": int((d < -1e-12).sum())}


def gap_target(rows: dict[str, dict[str, float]], model: str, population: str, baselines: Sequence[str],
               acc_tolerance: float = 0.05) -> tuple[bool, str]:
    """The issue's gap target, read strictly: ``model``'s gap is below every baseline's, *and* its macro F1 is at
    least ``population``'s, *and* its accuracy is within ``acc_tolerance`` of it (a gap shrunk by lowering weighted
    F1 alone does not count). Returns whether it holds and a one-line reason."""
    m, p = rows[model], rows[population]
    smallest = min(baselines, key=lambda b: rows[b]["gap"])
    checks = {f"gap {m['gap']:.4f} < {smallest} {rows[smallest]['gap']:.4f}": m["gap"] < rows[smallest]["gap"],
              f"macro F1 {m['macro_f1']:.4f} >= population {p['macro_f1']:.4f}": m["macro_f1"] >= p["macro_f1"],
              f"accuracy {m['accuracy']:.4f} >= population {p['accuracy']:.4f} - {acc_tolerance:g}":
                  m["accuracy"] >= p["accuracy"] - acc_tolerance}
    return all(checks.values()), "; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items())


def tie_profile(y_true: np.ndarray, before: np.ndarray, after: np.ndarray, users: np.ndarray, n_classes: int,
                others: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per user (sorted ids, as :func:`per_user_scores`): ``tied`` (macro F1 equal within 1e-12, as
    :func:`user_changes`), ``n_test`` (their targets), ``same`` (``after`` predicts exactly what ``before`` does
    on all of them) and ``same_<name>`` for each of ``others`` (``after`` equal to that prediction array): tells
    a tie of a model that never moved from one that moved without changing the user's score."""
    _, a = per_user_scores(y_true, before, users, n_classes)
    _, b = per_user_scores(y_true, after, users, n_classes)
    inv = np.unique(np.asarray(users), return_inverse=True)[1]
    n = np.bincount(inv)
    out = {"tied": np.abs(b["macro_f1"] - a["macro_f1"]) <= 1e-12, "n_test": n}
    for name, other in {"": before, **(others or {})}.items():
        differ = np.bincount(inv, weights=(np.asarray(other) != np.asarray(after)).astype(np.float64),
                             minlength=len(n))
        out["same" + (f"_{name}" if name else "")] = differ == 0
    return out


def oracle_user_gains(y_true: np.ndarray, base: np.ndarray, candidates: np.ndarray, users: np.ndarray,
                      n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(user ids, best gain (U,), best candidate (U,))``: each user's largest macro F1 change from ``base``
    predictions to any of ``candidates`` (G, n) predictions, chosen on these very targets -- an *oracle*, a
    ceiling on what choosing among those candidates per user could do, never a result. A gain of 0 (candidate
    -1) when no candidate beats ``base`` for that user."""
    ids, b = per_user_scores(y_true, base, users, n_classes)
    gains = np.stack([per_user_scores(y_true, c, users, n_classes)[1]["macro_f1"] - b["macro_f1"]
                      for c in candidates]) if len(candidates) else np.zeros((0, len(ids)))
    best = gains.argmax(0) if len(gains) else np.zeros(len(ids), dtype=np.int64)
    gain = gains.max(0) if len(gains) else np.zeros(len(ids))
    up = gain > 1e-12
    return ids, np.where(up, gain, 0.0), np.where(up, best, -1)
