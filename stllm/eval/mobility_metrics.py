"""GEO-BLEU and DTW for long-term mobility prediction (HuMob), written from their definitions, vectorised.

Definitions (Shimizu et al., "GEO-BLEU", SIGSPATIAL 2022; the yahoojapan/geobleu reference code):

* **GEO-BLEU** of a generated sequence ``s`` against a reference ``r`` of cells: for ``n = 1..N'`` with
  ``N' = min(N, len(s), len(r))``, every n-gram pair gets the proximity ``prod_k exp(-beta * |s_{i+k} - r_{j+k}|)``
  (Euclidean distance in cells); pairs are matched greedily, best proximity first (ties: the earlier generated
  n-gram, then the earlier reference n-gram), each n-gram used once; ``p_n`` = sum of matched proximities /
  a denominator. GEO-BLEU = brevity penalty (1 if ``len(s) > len(r)`` else ``exp(1 - len(r)/len(s))``) times the
  geometric mean of ``p_1..p_N'``.
* **DTW**: dynamic time warping with the Euclidean cell distance divided by ``scale`` (2 in the task: cells of
  500 m -> km), steps (i-1, j), (i, j-1), (i-1, j-1).
* **The task** (per user): generated and reference rows share the same ``(d, t)``; both metrics are computed per
  day on that day's cells in slot order, and averaged over the reference's days. A table reports the mean over
  users.

The two variants (:data:`HUMOB24`, :data:`GISCUP25`) differ as the official code did: HuMob'23/'24 uses ``N = 3``,
divides ``p_n`` by the number of matched pairs, and initialises DTW's whole first row to 0 (a free start along the
reference); the 2025 code uses ``N = 5``, divides by the number of generated n-grams and starts DTW at (0, 0) only.

Vectorisation: sequences are grouped by their (generated, reference) lengths; each group is one dense batch.
The greedy matching takes the best remaining pair of every problem of a group at once (``argmax`` over the
flattened pair matrix, whose row-major first maximum is exactly the reference code's stable-sort tie-break),
so a group of length ``L`` costs ``L`` numpy steps whatever its size; DTW runs along anti-diagonals. Sums are
accumulated in the reference's order, so results agree to the last bits with the official code under the same
numpy (exp is the only platform-dependent step; see ../shared/data/geobleu_reference/PROVENANCE.txt).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stllm.data.trajectories import Trajectories


@dataclass(frozen=True)
class MetricVariant:
    """The parameters that distinguish one official version of GEO-BLEU / DTW from another."""

    name: str
    max_n: int  # longest n-gram
    beta: float  # proximity exp(-beta * distance in cells)
    p_n_denominator: str  # "matched" (pairs matched, 2023/24) or "generated" (generated n-grams, 2025)
    dtw_free_start: bool  # 2023/24: dtw[0, :] = 0 (start anywhere along the reference); 2025: dtw[0, 0] = 0
    dtw_scale: float = 2.0  # cells -> km in the per-user task


HUMOB24 = MetricVariant("humob24", max_n=3, beta=0.5, p_n_denominator="matched", dtw_free_start=True)
GISCUP25 = MetricVariant("giscup25", max_n=5, beta=0.5, p_n_denominator="generated", dtw_free_start=False)
VARIANTS = {v.name: v for v in (HUMOB24, GISCUP25)}


def get_variant(variant: str | MetricVariant) -> MetricVariant:
    """A :class:`MetricVariant` from itself or its name: ``"humob24"`` (the official HuMob'24 one) or ``"giscup25"``."""
    if isinstance(variant, MetricVariant):
        return variant
    if variant not in VARIANTS:
        raise ValueError(f"unknown metric variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    return VARIANTS[variant]


# -- batched cores over many sequence pairs ----------------------------------------------------------
def _groups(gen_len: np.ndarray, ref_len: np.ndarray):
    """Yield ``(a, b, problems)``: the problem indices whose generated / reference lengths are ``a`` / ``b``."""
    key = gen_len.astype(np.int64) * (int(ref_len.max(initial=0)) + 1) + ref_len
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(key[order]) != 0, True])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        idx = order[lo:hi]
        yield int(gen_len[idx[0]]), int(ref_len[idx[0]]), idx


def _dense(xy: np.ndarray, starts: np.ndarray, idx: np.ndarray, length: int) -> np.ndarray:
    """``(B, length, 2)`` float cells of the problems ``idx`` (rows ``starts[idx] + 0..length-1`` of ``xy``)."""
    return xy[starts[idx][:, None] + np.arange(length)].astype(np.float64)


def _distance(gen: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``(B, a, b)`` Euclidean distances in cells between every generated and every reference point."""
    diff = ref[:, None, :, :] - gen[:, :, None, :]
    return np.sqrt(diff[..., 0] ** 2.0 + diff[..., 1] ** 2.0)


def _greedy_sum(prox: np.ndarray) -> np.ndarray:
    """Sum of greedily matched proximities, best first, of each ``(B, a, b)`` problem; ``min(a, b)`` matches each."""
    bsz, a, b = prox.shape
    work = prox.reshape(bsz, a * b).copy()
    rows = np.arange(bsz)
    total = np.zeros(bsz)
    for _ in range(min(a, b)):
        k = work.argmax(axis=1)  # first maximum in row-major order = the stable sort's tie-break
        total += work[rows, k]
        i, j = np.divmod(k, b)
        w3 = work.reshape(bsz, a, b)
        w3[rows, i, :] = -np.inf
        w3[rows, :, j] = -np.inf
    return total


def geobleu_batch(gen_xy: np.ndarray, ref_xy: np.ndarray, gen_len: np.ndarray, ref_len: np.ndarray,
                  variant: str | MetricVariant = HUMOB24) -> np.ndarray:
    """GEO-BLEU of many sequence pairs at once.

    ``gen_xy`` / ``ref_xy`` are ``(rows, 2)`` cells of all sequences concatenated; sequence ``k`` has ``gen_len[k]``
    generated and ``ref_len[k]`` reference rows (each >= 1). Returns ``(len(gen_len),)`` float64.
    """
    v = get_variant(variant)
    gen_len, ref_len = np.asarray(gen_len, np.int64), np.asarray(ref_len, np.int64)
    if len(gen_len) != len(ref_len) or (gen_len < 1).any() or (ref_len < 1).any():
        raise ValueError("geobleu: gen_len and ref_len must have one entry per sequence pair, each >= 1")
    gs, rs = np.r_[0, np.cumsum(gen_len)[:-1]], np.r_[0, np.cumsum(ref_len)[:-1]]
    out = np.empty(len(gen_len))
    for a, b, idx in _groups(gen_len, ref_len):
        prox1 = np.exp(-v.beta * _distance(_dense(gen_xy, gs, idx, a), _dense(ref_xy, rs, idx, b)))
        top = min(v.max_n, a, b)
        log_p = np.empty((len(idx), top))
        prox = prox1
        for n in range(1, top + 1):
            if n > 1:  # n-gram proximity: running product along the diagonal, left to right as the definition
                prox = prox[:, :-1, :-1] * prox1[:, n - 1:, n - 1:]
            an, bn = a - n + 1, b - n + 1
            denom = min(an, bn) if v.p_n_denominator == "matched" else an
            log_p[:, n - 1] = np.log(_greedy_sum(prox) / float(denom))
        brevity = 1.0 if a > b else np.exp(1.0 - b / float(a))
        out[idx] = brevity * np.exp(np.mean(log_p, axis=1))
    return out


def dtw_batch(gen_xy: np.ndarray, ref_xy: np.ndarray, gen_len: np.ndarray, ref_len: np.ndarray,
              variant: str | MetricVariant = HUMOB24, scale: float | None = None) -> np.ndarray:
    """DTW of many sequence pairs at once (same layout as :func:`geobleu_batch`); distances divided by ``scale``
    (default: the variant's, 2 = km for 500 m cells)."""
    v = get_variant(variant)
    scale = v.dtw_scale if scale is None else float(scale)
    gen_len, ref_len = np.asarray(gen_len, np.int64), np.asarray(ref_len, np.int64)
    if len(gen_len) != len(ref_len) or (gen_len < 1).any() or (ref_len < 1).any():
        raise ValueError("dtw: gen_len and ref_len must have one entry per sequence pair, each >= 1")
    gs, rs = np.r_[0, np.cumsum(gen_len)[:-1]], np.r_[0, np.cumsum(ref_len)[:-1]]
    out = np.empty(len(gen_len))
    for a, b, idx in _groups(gen_len, ref_len):
        cost = _distance(_dense(gen_xy, gs, idx, a), _dense(ref_xy, rs, idx, b)) / scale
        acc = np.full((len(idx), a + 1, b + 1), np.inf)
        if v.dtw_free_start:
            acc[:, 0, :] = 0.0
        else:
            acc[:, 0, 0] = 0.0
        for k in range(2, a + b + 1):  # anti-diagonal i + j = k: depends only on diagonals k-1 and k-2
            i = np.arange(max(1, k - b), min(a, k - 1) + 1)
            j = k - i
            best = np.minimum(np.minimum(acc[:, i - 1, j], acc[:, i, j - 1]), acc[:, i - 1, j - 1])
            acc[:, i, j] = cost[:, i - 1, j - 1] + best
        out[idx] = acc[:, a, b]
    return out


# -- single pairs (the reference code's calc_geobleu_orig / calc_dtw_orig) -----------------------------
def geobleu(generated: np.ndarray, reference: np.ndarray, variant: str | MetricVariant = HUMOB24) -> float:
    """GEO-BLEU of one generated ``(n, 2)`` cell sequence against one reference ``(m, 2)`` sequence."""
    g, r = np.asarray(generated).reshape(-1, 2), np.asarray(reference).reshape(-1, 2)
    return float(geobleu_batch(g, r, [len(g)], [len(r)], variant)[0])


def dtw(generated: np.ndarray, reference: np.ndarray, variant: str | MetricVariant = HUMOB24,
        scale: float = 1.0) -> float:
    """DTW of one generated ``(n, 2)`` cell sequence against one reference ``(m, 2)`` one, distances / ``scale``."""
    g, r = np.asarray(generated).reshape(-1, 2), np.asarray(reference).reshape(-1, 2)
    return float(dtw_batch(g, r, [len(g)], [len(r)], variant, scale=scale)[0])


# -- the per-user task ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class UserScores:
    """Per-user GEO-BLEU and DTW (each the mean over the user's reference days), users sorted by id."""

    uid: np.ndarray
    geobleu: np.ndarray
    dtw: np.ndarray
    variant: str

    def mean(self) -> tuple[float, float]:
        """(GEO-BLEU, DTW) averaged over users, as the challenge reports them."""
        return float(np.mean(self.geobleu)), float(np.mean(self.dtw))


def _check_aligned(generated: Trajectories, reference: Trajectories) -> None:
    if not len(reference):
        raise ValueError(f"{reference.source}: the reference has no rows to score")
    if generated.keys_equal(reference):
        return
    key_g = np.stack([generated.uid, generated.d, generated.t], 1)
    key_r = np.stack([reference.uid, reference.d, reference.t], 1)
    n = min(len(key_g), len(key_r))
    diff = np.flatnonzero((key_g[:n] != key_r[:n]).any(1))
    i = int(diff[0]) if diff.size else n
    got = tuple(key_g[i].tolist()) if i < len(key_g) else "no row"
    want = tuple(key_r[i].tolist()) if i < len(key_r) else "no row"
    raise ValueError(f"{generated.source}: fields (uid, d, t) must be exactly the reference's ({reference.source}): "
                     f"{len(generated)} vs {len(reference)} rows; first difference at sorted row {i}: "
                     f"generated {got}, reference {want}")


def score_users(generated: Trajectories, reference: Trajectories,
                variant: str | MetricVariant = HUMOB24) -> UserScores:
    """Per-user GEO-BLEU and DTW of a prediction: per day on the day's cells in slot order, mean over the days.

    ``generated`` must hold exactly the reference's ``(uid, d, t)`` rows (both are sorted by construction).
    """
    v = get_variant(variant)
    _check_aligned(generated, reference)
    if generated.base != reference.base:
        generated = generated.with_base(reference.base)
    day_start = np.flatnonzero(np.r_[True, (np.diff(reference.uid) != 0) | (np.diff(reference.d) != 0)])
    day_len = np.diff(np.r_[day_start, len(reference)])
    gen_xy = np.stack([generated.x, generated.y], 1)
    ref_xy = np.stack([reference.x, reference.y], 1)
    g = geobleu_batch(gen_xy, ref_xy, day_len, day_len, v)
    w = dtw_batch(gen_xy, ref_xy, day_len, day_len, v)
    day_uid = reference.uid[day_start]
    uids, first = np.unique(day_uid, return_index=True)
    cut = np.r_[first, len(day_uid)]
    # np.mean per user (a loop over users) keeps the reference's summation order over days
    gb = np.array([np.mean(g[cut[k]:cut[k + 1]]) for k in range(len(uids))])
    dt = np.array([np.mean(w[cut[k]:cut[k + 1]]) for k in range(len(uids))])
    return UserScores(uids, gb, dt, v.name)
