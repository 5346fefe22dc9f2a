"""Ranking metrics for next-POI recommendation: Acc@k, MRR, NDCG@k from a score matrix, vectorised.

``scores`` is (N, P): one row per sample, one column per candidate POI, higher is better. ``targets`` is
(N,) candidate indices; a target of -1 (or outside [0, P)) is a POI the model could not rank (unknown at
evaluation): it counts as a miss in every metric and is reported in ``n_unknown``.

Ties: by default the rank is that of a stable descending sort (equal scores keep column order), so a
constant score matrix is not a free win. ``ties="pessimistic"`` puts the target after every equal score,
``ties="optimistic"`` before.
"""

from __future__ import annotations

import numpy as np

DEFAULT_KS = (1, 5, 10)
DEFAULT_NDCG_KS = (5, 10)


def target_ranks(scores, targets, ties: str = "stable") -> np.ndarray:
    """0-based rank of each target in its row (float64); ``inf`` for unknown targets. NaN scores rank last."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets).astype(np.int64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, P), got shape {scores.shape}")
    if targets.shape != (scores.shape[0],):
        raise ValueError(f"targets must be ({scores.shape[0]},) to match scores {scores.shape}, got {targets.shape}")
    if ties not in ("stable", "pessimistic", "optimistic"):
        raise ValueError(f"ties must be 'stable', 'pessimistic' or 'optimistic', got {ties!r}")
    n, p = scores.shape
    known = (targets >= 0) & (targets < p)
    ranks = np.full(n, np.inf)
    if not known.any():
        return ranks
    s = np.where(np.isnan(scores[known]), -np.inf, scores[known])
    t = targets[known]
    st = s[np.arange(len(t)), t][:, None]
    greater = (s > st).sum(axis=1)
    if ties == "optimistic":
        r = greater
    elif ties == "pessimistic":
        r = greater + (s == st).sum(axis=1) - 1
    else:
        r = greater + ((s == st) & (np.arange(p)[None, :] < t[:, None])).sum(axis=1)
    ranks[known] = r
    return ranks


def metrics_from_ranks(ranks, ks=DEFAULT_KS, ndcg_ks=DEFAULT_NDCG_KS) -> dict[str, float]:
    """Acc@k, MRR and NDCG@k (one relevant item: 1 / log2(rank + 2) inside the cut-off) from 0-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    n = int(ranks.shape[0])
    out: dict[str, float] = {}
    if n == 0:
        out.update({f"acc@{k}": float("nan") for k in ks})
        out["mrr"] = float("nan")
        out.update({f"ndcg@{k}": float("nan") for k in ndcg_ks})
    else:
        for k in ks:
            out[f"acc@{k}"] = float((ranks < k).mean())
        out["mrr"] = float((1.0 / (ranks + 1.0)).mean())  # inf rank -> 0
        for k in ndcg_ks:
            gain = np.where(ranks < k, 1.0 / np.log2(np.minimum(ranks, k) + 2.0), 0.0)
            out[f"ndcg@{k}"] = float(gain.mean())
    out["n"] = n
    out["n_unknown"] = int(np.isinf(ranks).sum())
    return out


def ranking_metrics(scores, targets, ks=DEFAULT_KS, ndcg_ks=DEFAULT_NDCG_KS, ties: str = "stable",
                    batch_size: int | None = 4096) -> dict[str, float]:
    """Acc@k, MRR, NDCG@k, ``n`` (samples) and ``n_unknown`` (unknown targets, counted as misses).

    ``batch_size`` bounds the temporary memory (rows per chunk); results do not depend on it.
    """
    ranks = target_ranks_batched(scores, targets, ties=ties, batch_size=batch_size)
    return metrics_from_ranks(ranks, ks=ks, ndcg_ks=ndcg_ks)


def target_ranks_batched(scores, targets, ties: str = "stable", batch_size: int | None = 4096) -> np.ndarray:
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, P), got shape {scores.shape}")
    if targets.shape != (scores.shape[0],):
        raise ValueError(f"targets must be ({scores.shape[0]},) to match scores {scores.shape}, got {targets.shape}")
    n = scores.shape[0]
    if not batch_size or n <= batch_size:
        return target_ranks(scores, targets, ties=ties)
    return np.concatenate([target_ranks(scores[i:i + batch_size], targets[i:i + batch_size], ties=ties)
                           for i in range(0, n, batch_size)])


def format_ranking_table(rows: dict[str, dict[str, float]], keys=("acc@1", "acc@5", "acc@10", "mrr", "ndcg@5",
                                                                  "ndcg@10")) -> str:
    """A plain-text table: one line per method, metric columns, then n and n_unknown."""
    name_w = max([6] + [len(k) for k in rows])
    head = f"{'method':<{name_w}}  " + "  ".join(f"{k:>7}" for k in keys) + f"  {'n':>6}  {'unknown':>7}"
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        lines.append(f"{name:<{name_w}}  " + "  ".join(f"{m[k]:7.4f}" for k in keys)
                     + f"  {int(m['n']):>6}  {int(m['n_unknown']):>7}")
    return "\n".join(lines)
