"""Per-channel z-score scaler (optional log1p first), fitted on training regions and times only.

The model regresses in scaled units; evaluation inverts with the *training* scaler. The scaler is
saved as JSON next to the checkpoint so predictions can be read back in counts later.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stllm.data.city import CityData


@dataclass(frozen=True)
class STScaler:
    """``z = (f(x) - mean) / std`` per channel (last axis), ``f = log1p`` if ``log1p`` else identity."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    log1p: bool = False
    channels: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "channels", tuple(self.channels))
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"STScaler: mean ({len(self.mean)}) and std ({len(self.std)}) need one entry per channel")
        if any(not np.isfinite(s) or s <= 0 for s in self.std):
            raise ValueError(f"STScaler: std must be positive and finite, got {self.std}")

    @classmethod
    def fit(
        cls,
        city: CityData,
        regions: Sequence[str] | None = None,
        time: slice | None = None,
        log1p: bool = False,
        min_std: float = 1e-6,
    ) -> STScaler:
        """Fit on the observed values of ``regions`` (ids; all if None) during ``time`` (steps; all if None).

        Pass the *training* part of your splits here: statistics from evaluation regions or times
        would leak into the inputs the model sees.
        """
        idx = slice(None) if regions is None else city.region_index(regions, field_name="STScaler.fit regions")
        sl = time or slice(None)
        x = city.values[sl][:, idx].astype(np.float64)
        obs = city.observed[sl][:, idx]
        if log1p:
            x = np.log1p(x)
        count = obs.sum(axis=(0, 1))
        if (count == 0).any():
            raise ValueError(f"{city.source}: STScaler.fit: no observed values for channel(s) "
                             f"{[city.channels[i] for i in np.flatnonzero(count == 0)]}")
        x = np.where(obs, x, 0.0)
        mean = x.sum(axis=(0, 1)) / count
        var = (np.where(obs, x - mean, 0.0) ** 2).sum(axis=(0, 1)) / count
        std = np.maximum(np.sqrt(var), min_std)
        return cls(tuple(mean), tuple(std), log1p, city.channels)

    def _params(self, x):
        if isinstance(x, torch.Tensor):
            mean = torch.tensor(self.mean, dtype=torch.float64, device=x.device)
            std = torch.tensor(self.std, dtype=torch.float64, device=x.device)
        else:
            mean, std = np.asarray(self.mean), np.asarray(self.std)
        if x.shape[-1] != len(self.mean):
            raise ValueError(f"STScaler: input has {x.shape[-1]} channels (last axis), scaler has {len(self.mean)}")
        return mean, std

    def transform(self, x):
        """Scale a numpy array or tensor whose last axis is the channel; keeps its float dtype."""
        mean, std = self._params(x)
        if isinstance(x, torch.Tensor):
            y = x.double()
            y = torch.log1p(y) if self.log1p else y
            return ((y - mean) / std).to(x.dtype if x.is_floating_point() else torch.float32)
        y = np.asarray(x, dtype=np.float64)
        y = np.log1p(y) if self.log1p else y
        out_dtype = x.dtype if np.issubdtype(np.asarray(x).dtype, np.floating) else np.float32
        return ((y - mean) / std).astype(out_dtype)

    def inverse(self, z):
        """Back to counts: the exact inverse of :meth:`transform` (up to float rounding)."""
        mean, std = self._params(z)
        if isinstance(z, torch.Tensor):
            y = z.double() * std + mean
            y = torch.expm1(y) if self.log1p else y
            return y.to(z.dtype if z.is_floating_point() else torch.float32)
        y = np.asarray(z, dtype=np.float64) * std + mean
        y = np.expm1(y) if self.log1p else y
        out_dtype = z.dtype if np.issubdtype(np.asarray(z).dtype, np.floating) else np.float32
        return y.astype(out_dtype)

    def to_json(self) -> str:
        return json.dumps({"mean": self.mean, "std": self.std, "log1p": self.log1p, "channels": self.channels})

    @classmethod
    def from_json(cls, text: str) -> STScaler:
        d = json.loads(text)
        missing = {"mean", "std"} - set(d)
        if missing:
            raise ValueError(f"STScaler.from_json: missing field(s) {sorted(missing)}")
        return cls(tuple(d["mean"]), tuple(d["std"]), bool(d.get("log1p", False)), tuple(d.get("channels", ())))

    def save(self, path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path) -> STScaler:
        with open(path, encoding="utf-8") as f:
            try:
                return cls.from_json(f.read())
            except (ValueError, KeyError) as e:
                raise ValueError(f"{path}: {e}") from None
