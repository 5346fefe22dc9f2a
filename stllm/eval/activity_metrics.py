"""Distribution metrics of generated activity days against real held-out days.

Generation is judged as a population: Jensen-Shannon divergence (base 2, so in [0, 1]) between the generated
and the real distributions of activity category, start hour, activities per day, step distance and radius
of gyration (the last two only where coordinates exist), plus the share of generated days passing every
validator (:mod:`stllm.data.activity_checks`) and the share that equal a training day (memorisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stllm.data.activity import ActivityChain
from stllm.data.activity_checks import CheckConfig, haversine_m, passes, run_checks

DISTANCE_EDGES_KM = np.array([0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, np.inf])
MAX_ACTIVITIES = 30  # activities/day above this share the last bin
DISTRIBUTIONS = ("category", "start", "n_activities", "step_km", "gyration_km")


def jsd(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits between two histograms (normalised here; empty -> nan)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.0, (kl(p) + kl(q)) / 2)


def _haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    return haversine_m(lat1, lon1, lat2, lon2) / 1000.0


@dataclass(frozen=True)
class DaySamples:
    """Flat per-activity and per-day values of a set of days (what the histograms count)."""

    category: list[str]
    start_hour: np.ndarray
    n_activities: np.ndarray
    step_km: np.ndarray
    gyration_km: np.ndarray


def day_samples(chains: Sequence[ActivityChain]) -> DaySamples:
    cats, hours, counts, steps, gyr = [], [], [], [], []
    for c in chains:
        acts = c.activities
        counts.append(len(acts))
        cats.extend(a.category for a in acts)
        hours.extend(a.start // 3600 % 24 for a in acts if a.start is not None)
        xy = np.array([a.coord for a in acts if a.coord is not None], dtype=np.float64).reshape(-1, 2)
        if len(xy) >= 2:
            steps.append(_haversine_km(xy[:-1, 0], xy[:-1, 1], xy[1:, 0], xy[1:, 1]))
            centre = xy.mean(0)  # fine at city scale: degrees are locally linear
            gyr.append(float(np.sqrt(np.mean(_haversine_km(xy[:, 0], xy[:, 1], centre[0], centre[1]) ** 2))))
    return DaySamples(cats, np.array(hours, dtype=np.int64), np.array(counts, dtype=np.int64),
                      np.concatenate(steps) if steps else np.zeros(0), np.array(gyr))


def _hist(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.histogram(values, bins=edges)[0].astype(np.float64)


def distribution_jsd(generated: Sequence[ActivityChain], real: Sequence[ActivityChain]) -> dict[str, float]:
    """JSD per distribution (:data:`DISTRIBUTIONS`); nan where either side has no value (no coordinates)."""
    g, r = day_samples(generated), day_samples(real)
    vocab = sorted(set(g.category) | set(r.category))
    index = {c: i for i, c in enumerate(vocab)}

    def cat_hist(cats: list[str]) -> np.ndarray:
        return np.bincount([index[c] for c in cats], minlength=len(vocab)).astype(np.float64)

    count_edges = np.arange(0.5, MAX_ACTIVITIES + 1.5)
    return {
        "category": jsd(cat_hist(g.category), cat_hist(r.category)),
        "start": jsd(np.bincount(g.start_hour, minlength=24), np.bincount(r.start_hour, minlength=24)),
        "n_activities": jsd(_hist(np.minimum(g.n_activities, MAX_ACTIVITIES), count_edges),
                            _hist(np.minimum(r.n_activities, MAX_ACTIVITIES), count_edges)),
        "step_km": jsd(_hist(g.step_km, DISTANCE_EDGES_KM), _hist(r.step_km, DISTANCE_EDGES_KM)),
        "gyration_km": jsd(_hist(g.gyration_km, DISTANCE_EDGES_KM), _hist(r.gyration_km, DISTANCE_EDGES_KM)),
    }


def day_histograms(chains: Sequence[ActivityChain], vocab: dict[str, int]) -> dict[str, np.ndarray]:
    """Per day (rows), its counts in each distribution's bins (``vocab``: category -> column): the histogram of
    any weighted multiset of these days is ``weights @ rows``, so resampling days costs no recount."""
    edges = np.arange(0.5, MAX_ACTIVITIES + 1.5)
    n, nd = len(chains), len(DISTANCE_EDGES_KM) - 1
    out = {"category": np.zeros((n, len(vocab))), "start": np.zeros((n, 24)),
           "n_activities": np.zeros((n, len(edges) - 1)), "step_km": np.zeros((n, nd)),
           "gyration_km": np.zeros((n, nd))}
    for i, c in enumerate(chains):
        s = day_samples([c])
        np.add.at(out["category"][i], [vocab[x] for x in s.category], 1.0)
        out["start"][i] = np.bincount(s.start_hour, minlength=24)
        out["n_activities"][i] = _hist(np.minimum(s.n_activities, MAX_ACTIVITIES), edges)
        out["step_km"][i] = _hist(s.step_km, DISTANCE_EDGES_KM)
        out["gyration_km"][i] = _hist(s.gyration_km, DISTANCE_EDGES_KM)
    return out


def histogram_jsd(generated: dict[str, np.ndarray], real: dict[str, np.ndarray]) -> dict[str, float]:
    """:func:`jsd` per distribution between two sets of summed histograms (:func:`day_histograms` rows summed)."""
    return {d: jsd(generated[d], real[d]) for d in DISTRIBUTIONS}


def split_half_jsd(days: Sequence[ActivityChain], n_splits: int = 20, seed: int = 0,
                   other: Sequence[ActivityChain] | None = None) -> dict[str, np.ndarray]:
    """Per distribution, the JSD of each of ``n_splits`` random halvings of ``days`` (one order each): the first
    half against the second. With ``other`` (one day per day of ``days``, e.g. a baseline's days for the same
    requests) the two values per halving are ``other``'s first half against ``days``' first half, and the same for
    the second halves (shape ``(n_splits, 2)``). How much of a JSD is the noise of a few hundred days: real days
    against real days of the same requests are not 0."""
    if len(days) < 2 or n_splits < 1 or (other is not None and len(other) != len(days)):
        raise ValueError(f"split-half JSD: need >= 2 days, n_splits >= 1 and as many other days; got {len(days)}, "
                         f"{n_splits}, {None if other is None else len(other)}")
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {d: [] for d in DISTRIBUTIONS}
    for _ in range(n_splits):
        order = rng.permutation(len(days))
        a, b = order[:len(days) // 2], order[len(days) // 2:]
        if other is None:
            pairs = [distribution_jsd([days[i] for i in a], [days[i] for i in b])]
        else:
            pairs = [distribution_jsd([other[i] for i in h], [days[i] for i in h]) for h in (a, b)]
        for d in DISTRIBUTIONS:
            out[d].append([j[d] for j in pairs] if other is not None else pairs[0][d])
    return {d: np.array(v) for d, v in out.items()}


def validity(chains: Sequence[ActivityChain], cfg: CheckConfig) -> tuple[float, dict[str, float]]:
    """Share of days passing every check, and the pass share per check."""
    if not chains:
        return float("nan"), {}
    results = [run_checks(c, cfg) for c in chains]
    per = {r.name: float(np.mean([res[i].ok for res in results])) for i, r in enumerate(results[0])}
    return float(np.mean([passes(res) for res in results])), per


def day_key(chain: ActivityChain, minutes: int = 10, digits: int = 3) -> tuple:
    """What makes two days 'the same': categories, start times on a ``minutes`` grid, coordinates rounded."""
    return tuple((a.category, None if a.start is None else a.start // (60 * minutes),
                  None if a.lat is None else round(a.lat, digits), None if a.lon is None else round(a.lon, digits))
                 for a in chain.activities)


def copy_share(generated: Sequence[ActivityChain], train: Sequence[ActivityChain]) -> float:
    """Share of generated days equal (:func:`day_key`) to some training day: memorisation, not generation."""
    if not generated:
        return float("nan")
    seen = {day_key(c) for c in train}
    return float(np.mean([day_key(c) in seen for c in generated]))


def quality_row(generated: Sequence[ActivityChain], real: Sequence[ActivityChain], train: Sequence[ActivityChain],
                cfg: CheckConfig) -> dict[str, float]:
    """One table row: the JSDs, the validity share and the copy share."""
    valid, _ = validity(generated, cfg)
    return {**distribution_jsd(generated, real), "valid": valid, "copies": copy_share(generated, train)}


TABLE_COLUMNS = (*DISTRIBUTIONS, "valid", "copies")


def format_table(rows: dict[str, list[dict[str, float]]]) -> str:
    """One line per method: the mean (+- std over runs, when several) of each column; '-' where undefined."""
    lines = [f"{'method':<14}" + "".join(f"{c:>17}" for c in TABLE_COLUMNS)]
    for name, runs in rows.items():
        cells = []
        for c in TABLE_COLUMNS:
            v = np.array([r[c] for r in runs], dtype=np.float64)
            if np.isnan(v).all():
                cells.append(f"{'-':>17}")
            elif len(v) > 1:
                cells.append(f"{np.nanmean(v):>10.4f} +-{np.nanstd(v):.3f}")
            else:
                cells.append(f"{v[0]:>17.4f}")
        lines.append(f"{name:<14}" + "".join(cells))
    return "\n".join(lines)
