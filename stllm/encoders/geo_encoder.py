"""GeoEncoder: GPS coordinates -> vectors, multi-scale and continuous on the sphere.

(lat, lon) is first mapped to the 3-D unit vector, so the features are continuous across the
antimeridian and at the poles (raw longitude is not). Sinusoids of that vector at wavelengths
geometrically spaced from ``min_wavelength_m`` (~100 m: a block) to ``max_wavelength_m``
(~1000 km: a region of a country) resolve both "which street" and "which city"; an MLP mixes them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from stllm.batch_checks import DeviceChecks

EARTH_RADIUS_M = 6_371_000.0


@dataclass
class GeoEncoderConfig:
    """Hyper-parameters of :class:`GeoEncoder`."""

    num_scales: int = 16
    min_wavelength_m: float = 100.0
    max_wavelength_m: float = 1_000_000.0
    hidden_dim: int = 128
    out_dim: int = 64
    dropout: float = 0.0

    def __post_init__(self):
        if not 0 < self.min_wavelength_m < self.max_wavelength_m:
            raise ValueError("GeoEncoderConfig needs 0 < min_wavelength_m < max_wavelength_m")
        if self.num_scales < 1:
            raise ValueError(f"GeoEncoderConfig.num_scales must be >= 1, got {self.num_scales}")

    @property
    def feature_dim(self) -> int:
        return 3 + 6 * self.num_scales

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | GeoEncoderConfig | None) -> GeoEncoderConfig:
        if d is None:
            return cls()
        return d if isinstance(d, cls) else cls(**d)


def check_coordinates(coords: torch.Tensor, name: str = "geo_coords", checks: DeviceChecks | None = None) -> None:
    """Raise a clear error for out-of-range coordinates; |lat| > 90 usually means (lon, lat) order. With ``checks``
    the value checks join the caller's single host synchronisation (:mod:`stllm.batch_checks`)."""
    if coords.shape[-1] != 2:
        raise ValueError(f"{name} must end in a (lat, lon) pair, got shape {tuple(coords.shape)}")
    own = checks is None
    checks = DeviceChecks() if own else checks
    checks.fail_if(~torch.isfinite(coords).all(), f"{name} contains NaN or inf")
    lat, lon = coords[..., 0], coords[..., 1]
    checks.fail_if((lat.abs() > 90).any(), lambda: (
        f"{name}: latitude outside [-90, 90] (max |lat| = {lat.abs().max().item():.3f}); "
        "coordinates must be (lat, lon) -- were they given as (lon, lat)?"))
    checks.fail_if((lon.abs() > 180).any(),
                   lambda: f"{name}: longitude outside [-180, 180] (max |lon| = {lon.abs().max().item():.3f})")
    if own:
        checks.resolve()


def multiscale_features(coords: torch.Tensor, config: GeoEncoderConfig) -> torch.Tensor:
    """``(..., 2)`` degrees -> ``(..., 3 + 6 * num_scales)`` sinusoidal features (float64 inside)."""
    rad = torch.deg2rad(coords.double())
    lat, lon = rad[..., 0], rad[..., 1]
    xyz = torch.stack((lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()), dim=-1)
    wavelengths = torch.logspace(
        math.log10(config.min_wavelength_m),
        math.log10(config.max_wavelength_m),
        config.num_scales,
        dtype=torch.float64,
        device=coords.device,
    )
    freq = 2 * math.pi * EARTH_RADIUS_M / wavelengths  # radians per unit of the unit vector
    phase = (xyz.unsqueeze(-1) * freq).flatten(-2)  # (..., 3 * S)
    return torch.cat((xyz, phase.sin(), phase.cos()), dim=-1)


def haversine_m(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Great-circle distance in metres between ``(..., 2)`` degree tensors (broadcasting)."""
    a, b = torch.deg2rad(a.double()), torch.deg2rad(b.double())
    dlat, dlon = b[..., 0] - a[..., 0], b[..., 1] - a[..., 1]
    h = (dlat / 2).sin() ** 2 + a[..., 0].cos() * b[..., 0].cos() * (dlon / 2).sin() ** 2
    return 2 * EARTH_RADIUS_M * h.clamp(0, 1).sqrt().asin()


class GeoEncoder(nn.Module):
    """``(..., 2)`` (lat, lon) in degrees -> ``(..., out_dim)``."""

    def __init__(self, config: GeoEncoderConfig | dict | None = None):
        super().__init__()
        cfg = self.config = GeoEncoderConfig.from_dict(config)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.feature_dim, cfg.hidden_dim),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden_dim, cfg.out_dim),
        )

    @property
    def token_dim(self) -> int:
        return self.config.out_dim

    def forward(self, coords: torch.Tensor, validate: bool = True) -> torch.Tensor:
        """``validate=False``: the caller checked ``coords`` with :func:`check_coordinates` already."""
        if validate:
            check_coordinates(coords)
        feats = multiscale_features(coords, self.config)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))
