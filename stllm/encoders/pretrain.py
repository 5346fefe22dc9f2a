"""Stage-1 objectives for :class:`STEncoder`: forecast MAE plus masked reconstruction.

* :func:`masked_mae`: mean absolute error over observed positions only (missing values never count).
* :func:`mask_time_steps`: hide a random fraction of the input time steps of every series (window x
  region) by zeroing them (zero = the training mean once scaled).
* :class:`STPretrainObjective`: the encoder plus a small linear reconstruction decoder that reads the
  hidden steps back from the encoder's tokens. One encoder call handles the clean windows (forecast
  loss) and their masked copies (reconstruction loss) together. The decoder is auxiliary: save
  ``objective.encoder`` with :func:`stllm.encoders.io.save_encoder` and the decoder separately
  (:meth:`STPretrainObjective.save_decoder`), so the encoder directory stays what the model loads.
* :class:`WindowSampler`: random (window start, region subset) batches gathered from a ``(T, N, C)``
  array with one fancy-indexing op, never materialising all windows; :func:`gather_windows` is the
  same gather for fixed starts (validation).

Everything is vectorised over windows, regions, steps and channels: no per-sample Python loops.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from stllm.encoders.st_encoder import STEncoder, STEncoderConfig

DECODER_NAME = "recon_decoder.safetensors"


# -- losses and masking ---------------------------------------------------------------------------------
def masked_mae(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean ``|pred - target|`` over positions where ``mask`` is True (all if None).

    ``mask`` broadcasts against ``pred``; an all-False mask gives a zero loss that still carries a
    gradient path (so a batch without observed targets is harmless).
    """
    err = (pred - target).abs()
    if mask is None:
        return err.mean()
    mask = mask.to(dtype=err.dtype).expand_as(err)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


def mask_time_steps(
    x: torch.Tensor, ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero a random ``ratio`` of the time steps of each series of ``x (W, T, N, C)``.

    Exactly ``round(ratio * T)`` steps (at least 1 when ``ratio > 0``) are hidden per (window, region),
    all channels of a hidden step together. Returns ``(x_masked, hidden (W, T, N) bool)``.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    w, t, n, _ = x.shape
    k = 0 if ratio == 0 else max(1, int(round(ratio * t)))
    scores = torch.rand((w, n, t), generator=generator, device="cpu").to(x.device)
    ranks = scores.argsort(dim=-1).argsort(dim=-1)  # a random permutation of 0..T-1 per series
    hidden = (ranks < k).permute(0, 2, 1)  # (W, T, N)
    return x.masked_fill(hidden[..., None], 0.0), hidden


# -- objective ------------------------------------------------------------------------------------------
class PretrainLoss(NamedTuple):
    loss: torch.Tensor  # forecast + recon_weight * recon
    forecast_loss: torch.Tensor
    recon_loss: torch.Tensor
    forecast: torch.Tensor  # (W, N, horizon, C_out) from the clean windows, scaled units


class ReconstructionDecoder(nn.Module):
    """Linear map from the encoder's tokens ``(W, N, K, D)`` to the input window ``(W, N, T, C)``
    (``T = config.main_length``: the whole multi-period context when the encoder reads one, without the
    level block, whose steps the context's recent steps and views mostly repeat)."""

    def __init__(self, config: STEncoderConfig):
        super().__init__()
        self.window, self.channels = config.main_length, config.in_channels
        self.proj = nn.Linear(config.num_tokens * config.token_dim, self.window * config.in_channels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        w, n = tokens.shape[:2]
        return self.proj(tokens.reshape(w, n, -1)).reshape(w, n, self.window, self.channels)


class STPretrainObjective(nn.Module):
    """Forecast MAE (the encoder's own head vs the next ``horizon`` steps) + masked reconstruction.

    ``forward(x, y, y_observed=None, x_observed=None, adj=None)`` with ``x (W, T, N, C)`` scaled
    inputs, ``y (W, horizon, N, C_out)`` scaled targets and optional bool observed-masks of the same
    shapes. Reconstruction is scored only at hidden steps whose value was observed.
    """

    def __init__(self, encoder: STEncoder, mask_ratio: float = 0.25, recon_weight: float = 0.5):
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.encoder = encoder
        self.decoder = ReconstructionDecoder(encoder.config)
        self.mask_ratio, self.recon_weight = float(mask_ratio), float(recon_weight)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        y_observed: torch.Tensor | None = None,
        x_observed: torch.Tensor | None = None,
        adj: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainLoss:
        w = x.shape[0]
        use_recon = self.recon_weight > 0 and self.mask_ratio > 0
        if use_recon:
            x_masked, hidden = mask_time_steps(x, self.mask_ratio, generator)
            out = self.encoder(torch.cat([x, x_masked]), adj)  # one pass: clean + masked windows
            forecast, tokens = out.forecast[:w], out.tokens[w:]
        else:
            out = self.encoder(x, adj)
            forecast, tokens = out.forecast, None
        target = y.permute(0, 2, 1, 3)  # (W, N, horizon, C)
        f_mask = None if y_observed is None else y_observed.permute(0, 2, 1, 3)
        forecast_loss = masked_mae(forecast, target, f_mask)
        if use_recon:
            recon = self.decoder(tokens)  # (W, N, T, C)
            lead = self.encoder.config.level_steps  # the level block is not reconstructed
            r_mask = hidden[:, lead:].permute(0, 2, 1)[..., None]  # (W, N, T, 1)
            if x_observed is not None:
                r_mask = r_mask & x_observed[:, lead:].permute(0, 2, 1, 3)
            recon_loss = masked_mae(recon, x[:, lead:].permute(0, 2, 1, 3), r_mask)
        else:
            recon_loss = forecast_loss.new_zeros(())
        return PretrainLoss(forecast_loss + self.recon_weight * recon_loss, forecast_loss, recon_loss, forecast)

    def save_decoder(self, path: str | os.PathLike) -> Path:
        """Write the auxiliary decoder's weights to ``path/recon_decoder.safetensors`` (not the encoder's file)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.decoder.state_dict().items()}
        save_file(state, str(path / DECODER_NAME))
        return path / DECODER_NAME

    def load_decoder(self, path: str | os.PathLike) -> None:
        self.decoder.load_state_dict(load_file(str(Path(path) / DECODER_NAME)))


# -- window sampling ------------------------------------------------------------------------------------
# (array (T, N, C), target start steps (B,), columns (N_sub,) or (B, N_sub)) -> inputs (B, L, N_sub, C),
# read only before each target start (e.g. stllm.data.context.gather_context)
ContextFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class WindowBatch(NamedTuple):
    x: torch.Tensor  # (B, input_window, N_sub, C) float32 (B, L, N_sub, C) with a context function
    y: torch.Tensor  # (B, horizon, N_sub, C) float32
    x_observed: torch.Tensor | None  # bool, like x (None when the array has no mask)
    y_observed: torch.Tensor | None  # bool, like y
    starts: np.ndarray  # (B,) first input step of each window
    regions: np.ndarray  # (N_sub,) shared or (B, N_sub) per window: column indices into the array


def gather_windows(
    values: np.ndarray,
    starts: np.ndarray,
    regions: np.ndarray | None,
    input_window: int,
    horizon: int,
    mask: np.ndarray | None = None,
    context: ContextFn | None = None,
) -> WindowBatch:
    """Windows starting at ``starts`` of ``values (T, N, C)`` for ``regions`` (``(N_sub,)`` shared by all
    windows, ``(B, N_sub)`` one subset per window, or None = all), gathered with one indexing op.

    ``context`` gathers the inputs the encoder reads before each window's first target (e.g. a
    multi-period context, :func:`stllm.data.context.gather_context`); default: the ``input_window``
    steps right before it."""
    starts = np.asarray(starts, dtype=np.int64)
    if regions is None:
        regions = np.arange(values.shape[1])
    regions = np.asarray(regions, dtype=np.int64)
    cols = regions[None, None, :] if regions.ndim == 1 else regions[:, None, :]  # (1|B, 1, N_sub)
    if context is None:
        steps = starts[:, None] + np.arange(input_window + horizon)[None]  # (B, input + horizon)
        win = values[steps[:, :, None], cols]
        x, y = win[:, :input_window], win[:, input_window:]
        m = None if mask is None else mask[steps[:, :, None], cols]
        xm, ym = (None, None) if m is None else (m[:, :input_window], m[:, input_window:])
    else:
        t0 = starts + input_window
        steps = t0[:, None] + np.arange(horizon)[None]
        x, y = context(values, t0, regions), values[steps[:, :, None], cols]
        xm = None if mask is None else context(mask, t0, regions)
        ym = None if mask is None else mask[steps[:, :, None], cols]
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    xo = None if xm is None else torch.from_numpy(np.ascontiguousarray(xm))
    yo = None if ym is None else torch.from_numpy(np.ascontiguousarray(ym))
    return WindowBatch(x, y, xo, yo, starts, regions)


class WindowSampler:
    """Random (window start, region subset) batches from ``values (T, N, C)``.

    A window is ``input_window`` input steps followed by ``horizon`` target steps, entirely inside
    ``[time_start, time_stop)``. ``regions`` (column indices; all if None) are the only columns ever
    read. Each epoch visits every valid start once in a random order, ``batch_size`` starts per batch;
    ``regions_per_batch`` (all if None) columns are drawn per window, or once per batch when
    ``shared_regions`` (needed with graph mixing, where the subset's adjacency is sliced).
    """

    def __init__(
        self,
        values: np.ndarray,
        input_window: int,
        horizon: int,
        batch_size: int,
        time_start: int = 0,
        time_stop: int | None = None,
        regions: np.ndarray | None = None,
        regions_per_batch: int | None = None,
        shared_regions: bool = False,
        mask: np.ndarray | None = None,
        seed: int | np.random.Generator = 0,
        context: ContextFn | None = None,
    ):
        if values.ndim != 3:
            raise ValueError(f"WindowSampler expects values (T, N, C), got shape {values.shape}")
        if mask is not None and mask.shape != values.shape:
            raise ValueError(f"WindowSampler: mask {mask.shape} does not match values {values.shape}")
        self.values, self.mask = values, mask
        self.input_window, self.horizon, self.batch_size = int(input_window), int(horizon), int(batch_size)
        stop = values.shape[0] if time_stop is None else int(time_stop)
        self.first, self.last = int(time_start), stop - self.input_window - self.horizon  # inclusive range
        if self.last < self.first:
            raise ValueError(
                f"WindowSampler: time range [{time_start}, {stop}) has {stop - time_start} steps, fewer than one "
                f"window of input_window + horizon = {self.input_window + self.horizon}"
            )
        self.regions = np.arange(values.shape[1]) if regions is None else np.asarray(regions, dtype=np.int64)
        self.regions_per_batch = len(self.regions) if regions_per_batch is None else int(regions_per_batch)
        if not 1 <= self.regions_per_batch <= len(self.regions):
            raise ValueError(f"regions_per_batch must be in [1, {len(self.regions)}], got {regions_per_batch}")
        self.shared_regions, self.context = shared_regions, context
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    @property
    def n_windows(self) -> int:
        return self.last - self.first + 1

    def __len__(self) -> int:
        return -(-self.n_windows // self.batch_size)

    def _regions(self, b: int) -> np.ndarray:
        r, k = self.regions, self.regions_per_batch
        if k == len(r):
            return r
        if self.shared_regions:
            return np.sort(self.rng.choice(r, size=k, replace=False))
        # k distinct columns per window: the k smallest of uniform scores (vectorised choice w/o replacement)
        pick = np.argpartition(self.rng.random((b, len(r))), k - 1, axis=1)[:, :k]
        return r[np.sort(pick, axis=1)]

    def batch(self, starts: np.ndarray) -> WindowBatch:
        return gather_windows(self.values, starts, self._regions(len(starts)), self.input_window, self.horizon,
                              self.mask, self.context)

    def sample(self, batch_size: int | None = None) -> WindowBatch:
        """One batch of starts drawn uniformly (with replacement) from the valid range."""
        starts = self.rng.integers(self.first, self.last + 1, size=batch_size or self.batch_size)
        return self.batch(starts)

    def __iter__(self) -> Iterator[WindowBatch]:
        """One epoch: every valid start once, in a random order."""
        order = self.first + self.rng.permutation(self.n_windows)
        for i in range(0, len(order), self.batch_size):
            yield self.batch(order[i : i + self.batch_size])


__all__ = [
    "DECODER_NAME",
    "PretrainLoss",
    "ReconstructionDecoder",
    "STPretrainObjective",
    "WindowBatch",
    "WindowSampler",
    "gather_windows",
    "mask_time_steps",
    "masked_mae",
]
