"""Next-POI baselines: most popular, user's most frequent, nearest to the last visit, first-order Markov.

Each baseline is fitted on training :class:`~stllm.data.checkins.CheckIns` and returns a score matrix
(N, P) over the training POI table for samples from :func:`~stllm.data.checkins.next_poi_samples`
(``hist`` row indices into the evaluated check-ins, last column = last visit). The evaluated check-ins must
share the training POI table (:func:`~stllm.data.checkins.align_checkins` does that). Fallbacks (unseen user,
unknown last POI, no outgoing transitions) use training popularity, added as a tie-breaker below 1 so it
never overrides a real count.
"""

from __future__ import annotations

import numpy as np
import torch

from stllm.data.checkins import CheckIns, user_trajectories
from stllm.data.next_poi import next_poi_eval_task
from stllm.encoders.geo_encoder import haversine_m
from stllm.eval.ranking import metrics_from_ranks, target_ranks


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km, broadcasting over its arguments (degrees); numpy in, numpy out."""
    a = torch.stack(torch.broadcast_tensors(torch.as_tensor(lat1, dtype=torch.float64),
                                            torch.as_tensor(lon1, dtype=torch.float64)), dim=-1)
    b = torch.stack(torch.broadcast_tensors(torch.as_tensor(lat2, dtype=torch.float64),
                                            torch.as_tensor(lon2, dtype=torch.float64)), dim=-1)
    return (haversine_m(a, b) / 1000.0).numpy()


class POIBaseline:
    name = "baseline"

    def fit(self, train: CheckIns) -> POIBaseline:
        self.poi_ids = train.poi_ids
        known = train.poi[train.poi >= 0]
        self.counts = np.bincount(known, minlength=train.n_pois).astype(np.float64)
        # popularity squeezed into [0, 1): a tie-breaker that never outweighs one real count
        self.popular = self.counts / (self.counts.max() + 1.0) if len(self.counts) else self.counts
        return self

    def _check(self, checkins: CheckIns, hist: np.ndarray) -> np.ndarray:
        if not hasattr(self, "poi_ids"):
            raise RuntimeError(f"{type(self).__name__}: call fit(train) first")
        if checkins.poi_ids.shape != self.poi_ids.shape or not np.array_equal(checkins.poi_ids, self.poi_ids):
            raise ValueError(f"{type(self).__name__}: evaluated check-ins use a different POI table "
                             f"({checkins.n_pois} POIs vs {len(self.poi_ids)} in training); "
                             "re-index them with align_checkins(eval, train)")
        hist = np.asarray(hist, dtype=np.int64)
        if hist.ndim != 2 or hist.shape[1] < 1:
            raise ValueError(f"hist must be (N, H) row indices, got shape {hist.shape}")
        last = hist[:, -1]
        if (last < 0).any():
            raise ValueError("hist: the last column (last visit) must be a valid row for every sample")
        return last

    def scores(self, checkins: CheckIns, hist: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class MostPopular(POIBaseline):
    """The same ranking for everyone: training check-in counts per POI."""

    name = "most popular"

    def scores(self, checkins, hist):
        last = self._check(checkins, hist)
        return np.broadcast_to(self.counts.astype(np.float32), (len(last), len(self.counts))).copy()


class UserMostFrequent(POIBaseline):
    """The user's own visit counts per POI over the sample's history window (every earlier check-in of the
    user the model may see, training file included); popularity breaks ties and covers empty histories."""

    name = "user most frequent"

    def scores(self, checkins, hist):
        self._check(checkins, hist)
        out = np.broadcast_to(self.popular, (len(hist), len(self.popular))).astype(np.float32)
        poi = np.where(hist >= 0, checkins.poi[np.clip(hist, 0, None)], -1)
        rows, cols = np.nonzero(poi >= 0)
        np.add.at(out, (rows, poi[rows, cols]), 1.0)
        return out


class NearestPOI(POIBaseline):
    """Negative haversine distance from the last visit's coordinates to every POI in the table (the last
    visit's own POI is at distance ~0, so it ranks first: a revisit guess, then its neighbours)."""

    name = "nearest to last"

    def fit(self, train):
        super().fit(train)
        self.lat, self.lon = train.poi_lat, train.poi_lon
        return self

    def scores(self, checkins, hist):
        last = self._check(checkins, hist)
        d = haversine_km(checkins.lat[last][:, None], checkins.lon[last][:, None], self.lat[None, :], self.lon[None, :])
        return (-d).astype(np.float32)


class MarkovTransition(POIBaseline):
    """First-order Markov chain: counts of consecutive (POI -> next POI) visits of one user in training.

    Rows with no outgoing transition (unknown last POI included) fall back to popularity.
    """

    name = "markov"

    def fit(self, train):
        super().fit(train)
        trajs, _ = user_trajectories(train, min_visits=2)
        prev, nxt = [], []
        for rows in trajs.values():
            prev.append(train.poi[rows[:-1]])
            nxt.append(train.poi[rows[1:]])
        p = train.n_pois
        if prev:
            a, b = np.concatenate(prev), np.concatenate(nxt)
            ok = (a >= 0) & (b >= 0)
            pair, cnt = np.unique(a[ok] * p + b[ok], return_counts=True)  # sorted by prev, then next
        else:
            pair, cnt = np.zeros(0, np.int64), np.zeros(0, np.int64)
        self.src, self.dst, self.cnt = pair // max(p, 1), pair % max(p, 1), cnt.astype(np.float64)
        self.start = np.searchsorted(self.src, np.arange(p + 1))  # transitions of POI i: [start[i], start[i+1])
        return self

    def scores(self, checkins, hist):
        last = self._check(checkins, hist)
        return self.scores_after(checkins.poi[last])

    def scores_after(self, lp: np.ndarray) -> np.ndarray:
        """Scores (N, P) after last POIs ``lp`` (N,) given as table indices (-1: unknown -> popularity)."""
        if not hasattr(self, "start"):
            raise RuntimeError("MarkovTransition: call fit(train) first")
        lp = np.asarray(lp, dtype=np.int64)
        out = np.broadcast_to(self.popular, (len(lp), len(self.popular))).astype(np.float32)
        known = np.flatnonzero(lp >= 0)
        lo, hi = self.start[lp[known]], self.start[lp[known] + 1]
        n_each = hi - lo
        sample = np.repeat(known, n_each)
        idx = np.repeat(lo - np.concatenate([[0], np.cumsum(n_each)[:-1]]), n_each) + np.arange(n_each.sum())
        out[sample, self.dst[idx]] += self.cnt[idx].astype(np.float32)
        return out


BASELINES = (MostPopular, UserMostFrequent, NearestPOI, MarkovTransition)


def poi_baseline_ranks(train: CheckIns, task, batch_size: int = 2048) -> dict[str, np.ndarray]:
    """Fit every baseline on ``train``; 0-based rank of each target of ``task`` (a
    :class:`~stllm.data.next_poi.NextPOITask` over check-ins sharing ``train``'s POI table), ``inf`` when the
    target POI is not in the table. Scores are computed ``batch_size`` samples at a time to bound memory."""
    hist, target = task.hist, task.target
    out = {}
    for cls in BASELINES:
        model = cls().fit(train)
        parts = [target_ranks(model.scores(task.checkins, hist[i:i + batch_size]), target[i:i + batch_size])
                 for i in range(0, len(target), batch_size)]
        out[model.name] = np.concatenate(parts) if parts else np.zeros(0)
    return out


def evaluate_poi_baselines(train: CheckIns, test: CheckIns, history: int = 100) -> dict[str, dict[str, float]]:
    """Ranking metrics of every baseline on the next-POI targets of ``test``, history reaching into ``train``
    (see :func:`~stllm.data.next_poi.next_poi_eval_task`). Unknown target POIs count as misses (``n_unknown``)."""
    task = next_poi_eval_task(train, test, history=history)
    return {name: metrics_from_ranks(r) for name, r in poi_baseline_ranks(train, task).items()}
