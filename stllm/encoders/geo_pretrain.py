"""Stage-1 objective for :class:`GeoEncoder`: nearby points close, multi-scale structure kept.

Two terms, both vectorised over the batch:

* **Hierarchical cells.** For each level (default cells of ~0.5, 2, 8, 32 km) every point gets a grid
  cell computed from its lat/lon (:func:`cell_ids`), hashed into ``n_buckets`` ids; one linear
  classifier per level predicts the cell from the embedding (cross-entropy). The coarse levels make
  points of the same district/borough share linearly decodable structure, the fine levels separate
  blocks.
* **InfoNCE.** The positive of a point is a jittered copy of it (uniform in a disc of ``jitter_m``,
  ~100 m); negatives are the other points of the batch. Symmetric cross-entropy over the cosine
  similarity matrix divided by ``temperature``.

``GeoPretrainObjective(encoder)(coords, generator)`` returns a :class:`GeoPretrainLoss` with the
total and its parts; :func:`near_far_similarity` is the check that the training did what it says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stllm.encoders.geo_encoder import EARTH_RADIUS_M, GeoEncoder, check_coordinates, haversine_m

KM_PER_DEG_LAT = math.pi * EARTH_RADIUS_M / 180.0 / 1000.0  # ~111.19 km
_MIN_COS_LAT = 1e-3  # lon step cap near the poles (cells stay finite)

# large odd 63-bit constants for the integer hash (splitmix64-style mixing)
_H1 = 0x9E3779B97F4A7C15 - (1 << 64)  # as a signed int64
_H2 = 0x3C6EF372FE94F82B
_H3 = 0x2545F4914F6CDD1D


class GeoPretrainLoss(NamedTuple):
    total: torch.Tensor  # scalar, what backward() is called on
    cell: torch.Tensor  # scalar, mean cross-entropy over levels
    contrastive: torch.Tensor  # scalar, symmetric InfoNCE
    cell_per_level: torch.Tensor  # (L,) cross-entropy per level
    cell_acc: torch.Tensor  # (L,) top-1 accuracy per level (no grad)
    contrastive_acc: torch.Tensor  # scalar, fraction whose jittered copy is the nearest embedding (no grad)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """Integer avalanche on int64 (wrap-around multiplication; logical shifts emulated by masking)."""
    mask33 = (1 << 31) - 1  # keep the shifted value non-negative
    x = x ^ ((x >> 33) & mask33)
    x = x * _H2
    x = x ^ ((x >> 29) & ((1 << 35) - 1))
    x = x * _H3
    return x ^ ((x >> 32) & ((1 << 32) - 1))


def cell_indices(coords: torch.Tensor, cell_km: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(..., 2)`` degrees -> integer (row, col) of a ~``cell_km`` grid cell, each ``(...)`` int64.

    Rows are latitude bands of ``cell_km``; within a band the longitude step is ``cell_km`` at the
    band's central latitude, so cells are roughly square everywhere and a point's cell depends only
    on the point (not on the batch).
    """
    c = coords.double()
    lat, lon = c[..., 0], c[..., 1]
    dlat = cell_km / KM_PER_DEG_LAT
    row = torch.floor((lat + 90.0) / dlat)
    band_lat = torch.deg2rad(row * dlat + dlat / 2 - 90.0)
    dlon = cell_km / (KM_PER_DEG_LAT * band_lat.cos().clamp_min(_MIN_COS_LAT))
    col = torch.floor((lon + 180.0) / dlon)
    return row.long(), col.long()


def cell_ids(coords: torch.Tensor, levels_km: Sequence[float], n_buckets: int) -> torch.Tensor:
    """``(..., 2)`` degrees -> ``(..., L)`` hashed cell ids in ``[0, n_buckets)``, one per level."""
    out = []
    for level, km in enumerate(levels_km):
        row, col = cell_indices(coords, km)
        h = _mix64(row * _H1 + col * _H2 + (level + 1) * _H3)
        out.append(torch.remainder(h, n_buckets))
    return torch.stack(out, dim=-1)


def jitter(coords: torch.Tensor, radius_m: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Move each point uniformly within a disc of ``radius_m`` metres; latitude is clamped to +-90."""
    shape = coords.shape[:-1]
    r = radius_m * torch.rand(shape, generator=generator, dtype=torch.float64).sqrt()
    theta = 2 * math.pi * torch.rand(shape, generator=generator, dtype=torch.float64)
    r, theta = r.to(coords.device), theta.to(coords.device)
    c = coords.double()
    dlat = torch.rad2deg(r * theta.sin() / EARTH_RADIUS_M)
    cos_lat = torch.deg2rad(c[..., 0]).cos().clamp_min(_MIN_COS_LAT)
    dlon = torch.rad2deg(r * theta.cos() / (EARTH_RADIUS_M * cos_lat))
    lat = (c[..., 0] + dlat).clamp(-90.0, 90.0)
    lon = torch.remainder(c[..., 1] + dlon + 180.0, 360.0) - 180.0
    return torch.stack((lat, lon), dim=-1).to(coords.dtype)


class GeoPretrainObjective(nn.Module):
    """Hierarchical cell classification + jitter InfoNCE around a :class:`GeoEncoder`.

    Only ``encoder`` is kept after stage 1; the per-level classifiers are auxiliary.
    """

    def __init__(
        self,
        encoder: GeoEncoder,
        levels_km: Sequence[float] = (0.5, 2.0, 8.0, 32.0),
        n_buckets: int = 4096,
        temperature: float = 0.1,
        jitter_m: float = 100.0,
        cell_weight: float = 1.0,
        contrastive_weight: float = 1.0,
    ):
        super().__init__()
        if not levels_km or any(k <= 0 for k in levels_km):
            raise ValueError(f"levels_km must be non-empty and positive, got {tuple(levels_km)}")
        if n_buckets < 2:
            raise ValueError(f"n_buckets must be >= 2, got {n_buckets}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.encoder = encoder
        self.levels_km = tuple(float(k) for k in levels_km)
        self.n_buckets = int(n_buckets)
        self.temperature = float(temperature)
        self.jitter_m = float(jitter_m)
        self.cell_weight = float(cell_weight)
        self.contrastive_weight = float(contrastive_weight)
        d = encoder.token_dim
        self.classifiers = nn.ModuleList(nn.Linear(d, self.n_buckets) for _ in self.levels_km)

    def settings(self) -> dict:
        return {
            "levels_km": list(self.levels_km),
            "n_buckets": self.n_buckets,
            "temperature": self.temperature,
            "jitter_m": self.jitter_m,
            "cell_weight": self.cell_weight,
            "contrastive_weight": self.contrastive_weight,
        }

    def cell_ids(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` -> ``(..., L)`` hashed cell ids (see :func:`cell_ids`)."""
        return cell_ids(coords, self.levels_km, self.n_buckets)

    def forward(self, coords: torch.Tensor, generator: torch.Generator | None = None) -> GeoPretrainLoss:
        """``coords`` (B, 2) degrees, B >= 2 -> :class:`GeoPretrainLoss`."""
        check_coordinates(coords, "coords")
        if coords.dim() != 2 or coords.shape[0] < 2:
            raise ValueError(f"coords must be (B, 2) with B >= 2, got shape {tuple(coords.shape)}")
        b = coords.shape[0]
        positives = jitter(coords, self.jitter_m, generator)
        z = self.encoder(torch.cat((coords, positives), dim=0))  # one encoder pass
        za, zp = z[:b], z[b:]

        # hierarchical cells, on the anchors only (the n_buckets-wide logits dominate the step's cost)
        targets = self.cell_ids(coords).to(z.device)  # (B, L)
        ce, acc = [], []
        for level, head in enumerate(self.classifiers):
            logits = head(za)  # (B, n_buckets)
            t = targets[:, level]
            ce.append(F.cross_entropy(logits, t))
            acc.append((logits.detach().argmax(-1) == t).float().mean())
        cell_per_level = torch.stack(ce)
        cell = cell_per_level.mean()

        # InfoNCE: anchor i <-> its jittered copy i, the other B-1 copies are negatives (both directions)
        na, np_ = F.normalize(za, dim=-1), F.normalize(zp, dim=-1)
        sim = na @ np_.T / self.temperature  # (B, B)
        labels = torch.arange(b, device=z.device)
        contrastive = 0.5 * (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels))
        contrastive_acc = (sim.detach().argmax(-1) == labels).float().mean()

        total = self.cell_weight * cell + self.contrastive_weight * contrastive
        return GeoPretrainLoss(total, cell, contrastive, cell_per_level, torch.stack(acc), contrastive_acc)


@torch.no_grad()
def near_far_similarity(
    encoder: GeoEncoder,
    coords: torch.Tensor,
    near_m: float = 200.0,
    far_m: float = 5000.0,
    n_pairs: int = 2000,
    seed: int = 0,
) -> dict:
    """Mean cosine similarity of embeddings for near pairs (< ``near_m``) vs far pairs (> ``far_m``).

    Near pairs: a point of ``coords`` and a copy moved uniformly within ``near_m``. Far pairs: two
    points of ``coords`` more than ``far_m`` apart. Returns ``{"near_cos", "far_cos", "margin",
    "n_near", "n_far"}`` (floats/ints; cosines are NaN where no pair qualified).
    """
    coords = torch.as_tensor(coords, dtype=torch.float64)
    check_coordinates(coords, "coords")
    g = torch.Generator().manual_seed(seed)
    m = coords.shape[0]
    was_training = encoder.training
    encoder.eval()
    try:
        idx = torch.randint(m, (n_pairs,), generator=g)
        anchor = coords[idx]
        near = jitter(anchor, near_m * 0.999, g)
        other = coords[torch.randint(m, (n_pairs,), generator=g)]
        far_mask = haversine_m(anchor, other) > far_m
        dev = next(encoder.parameters()).device
        z = F.normalize(encoder(torch.cat((anchor, near, other)).to(dev)).double(), dim=-1)
        za, zn, zo = z[:n_pairs], z[n_pairs : 2 * n_pairs], z[2 * n_pairs :]
        near_cos = (za * zn).sum(-1).mean().item()
        far = (za * zo).sum(-1)[far_mask.to(dev)]
        far_cos = far.mean().item() if far.numel() else float("nan")
    finally:
        encoder.train(was_training)
    return {
        "near_cos": near_cos,
        "far_cos": far_cos,
        "margin": near_cos - far_cos,
        "n_near": int(n_pairs),
        "n_far": int(far_mask.sum().item()),
        "near_m": float(near_m),
        "far_m": float(far_m),
    }
