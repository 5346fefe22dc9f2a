"""Next-POI candidate scoring: the hidden state at ``<poi_pre>`` against every candidate POI at once.

Why a head over candidate embeddings rather than the LM's likelihood of POI-id tokens: a city has
thousands of POIs; the likelihood route needs one forward (or one beam) per candidate, or ids
tokenised into several tokens each, and it cannot rank a POI the LM never saw. Here a candidate is
described by what any POI has -- its coordinates (through the model's GeoEncoder and geo projector)
and its category name (the mean of the LLM's own input embeddings of the name's tokens) -- so the
table can be swapped for another city's without retraining. One LLM pass gives the query; all P
candidates are scored by one matrix product, plus a small MLP over per-(sample, candidate) relation
features computed from the sample's own history: how often and how recently the user visited the
candidate, whether it was the last visit, and the distance from the last visit. These are the
signals the classic baselines live on (user's most frequent POI, nearest POI, Markov), given to the
model explicitly instead of hoping a small LLM recovers them through attention.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from stllm.encoders.geo_encoder import haversine_m

RELATION_FEATURES = ("log_count", "is_last", "recency", "log_distance", "log_transition")


def relation_features(
    history: torch.Tensor,
    n_candidates: int,
    cand_coords: torch.Tensor,
    anchor: torch.Tensor,
    transition: torch.Tensor | None = None,
    decay: float = 0.8,
    validate: bool = True,
) -> torch.Tensor:
    """``(B, P, 5)`` features of each candidate for each sample (:data:`RELATION_FEATURES`).

    ``history`` (B, H) candidate indices of the sample's past visits, right-aligned (last column = last
    visit), -1 for padding or a POI outside the table; ``anchor`` (B, 2) the last visit's (lat, lon);
    ``cand_coords`` (P, 2). Recency weighs a visit ``decay ** age`` (age 0 = last visit). ``transition``
    (B, P), optional, counts how often training users went from the sample's last POI to each candidate
    (:meth:`~stllm.eval.poi_baselines.MarkovTransition.scores_after`); zeros when not given. ``validate=False``:
    the caller has checked the history's indices already (with its other checks, in one host synchronisation).
    """
    if history.dim() != 2:
        raise ValueError(f"poi_history must be (B, H) candidate indices, got shape {tuple(history.shape)}")
    b, h = history.shape
    if anchor.shape != (b, 2):
        raise ValueError(f"poi_anchor must be ({b}, 2): (lat, lon) of each last visit; got {tuple(anchor.shape)}")
    if validate and history.numel() and int(history.max()) >= n_candidates:
        raise ValueError(f"poi_history holds index {int(history.max())}, outside the {n_candidates} candidates")
    dtype = cand_coords.dtype if cand_coords.is_floating_point() else torch.float32
    valid = history >= 0
    idx = history.clamp_min(0)
    age = torch.arange(h - 1, -1, -1, device=history.device, dtype=dtype)
    zeros = torch.zeros(b, n_candidates, device=history.device, dtype=dtype)
    count = zeros.scatter_add(1, idx, valid.to(dtype))
    recency = zeros.scatter_add(1, idx, valid.to(dtype) * decay**age)
    is_last = zeros.scatter_add(1, idx[:, -1:], valid[:, -1:].to(dtype))
    dist_km = haversine_m(anchor[:, None, :], cand_coords[None, :, :]).to(dtype) / 1000.0
    log_dist = torch.log(dist_km + 0.05)  # 50 m floor: GPS noise
    if transition is None:
        trans = zeros
    elif transition.shape != (b, n_candidates):
        raise ValueError(f"poi_transition must be ({b}, {n_candidates}), got {tuple(transition.shape)}")
    else:
        trans = transition.to(dtype).clamp_min(0).log1p()
    return torch.stack((count.log1p(), is_last, recency, log_dist, trans), dim=-1)


class CandidateHead(nn.Module):
    """``query (B, H), candidates (P, H), relations (B, P, F) -> scores (B, P)``.

    Score = scaled dot product of a query projection and a candidate MLP, plus an MLP of the relation
    features. Each candidate's score depends only on the query, that candidate and its relation
    features, so scoring the whole table in one pass equals scoring candidates one at a time.
    """

    def __init__(self, hidden_size: int, head_dim: int, n_features: int = len(RELATION_FEATURES)):
        super().__init__()
        self.query = nn.Linear(hidden_size, head_dim)
        self.key = nn.Sequential(nn.Linear(hidden_size, head_dim), nn.GELU(), nn.Linear(head_dim, head_dim))
        self.relation = nn.Sequential(nn.Linear(n_features, 32), nn.GELU(), nn.Linear(32, 1))
        self.scale = 1.0 / math.sqrt(head_dim)

    def forward(self, query: torch.Tensor, candidates: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
        dtype = self.query.weight.dtype
        q = self.query(query.to(dtype))
        k = self.key(candidates.to(dtype))
        return (q @ k.T) * self.scale + self.relation(relations.to(dtype)).squeeze(-1)
