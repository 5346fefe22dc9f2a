"""Stage 1: pretrain :class:`STEncoder` on the training regions and training time range only.

``pretrain_st_encoder(city, split_regions, time_slice, ...)`` fits (or takes) an :class:`STScaler` on the
training regions x training time range, trains the encoder on forecast MAE + masked reconstruction
(:mod:`stllm.encoders.pretrain`) over random (window, region subset) batches from those regions and
steps only, early-stops on a validation slice (the last part of the training time range, same
regions) and writes an encoder directory::

    encoder_config.json, model.safetensors   save_encoder: what STLlamaForCausalLM loads by path
    recon_decoder.safetensors                the auxiliary reconstruction decoder (not part of the encoder)
    scaler.json                              the fitted STScaler
    split.json                               SplitRecord of the regions / time range trained on (+ step indices)
    metrics.json                             train/val MAE per channel in original units, the last-value
                                             baseline on the same windows, the per-epoch history

Command line: ``python -m stllm.train.pretrain_encoder --help`` (``stllm pretrain-encoder``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from stllm.data.city import CityData
from stllm.data.context import ContextSpec, gather_context
from stllm.data.scaler import STScaler
from stllm.data.splits import RegionSplit, SplitRecord, TimeSplit, hold_out_regions, split_record
from stllm.encoders.io import save_encoder
from stllm.encoders.level import fit_level_weights, level_from_scaler
from stllm.encoders.linear import RidgeAccumulator, fit_logistic, logistic_rows
from stllm.encoders.pretrain import ContextFn, STPretrainObjective, WindowSampler, gather_windows
from stllm.encoders.st_encoder import (
    STEncoder,
    STEncoderConfig,
    anchor_parts,
    level_anchor,
)
from stllm.train.checks import (
    claims_output_dir,
    fraction_half_open,
    fraction_open,
    fraction_upper,
    non_negative_float,
    non_negative_int,
    positive_int,
)

logger = logging.getLogger(__name__)

SCALER_NAME, SPLIT_NAME, METRICS_NAME = "scaler.json", "split.json", "metrics.json"
MAX_TRAIN_EVAL_WINDOWS = 1024  # training-set MAE is measured on at most this many evenly spaced windows


@dataclass
class PretrainResult:
    """What :func:`pretrain_st_encoder` produced; ``output_dir`` is None when nothing was saved."""

    encoder: STEncoder  # the best (lowest validation MAE) weights, in eval mode
    scaler: STScaler
    split: SplitRecord
    metrics: dict
    history: list[dict] = field(default_factory=list)
    output_dir: Path | None = None


# -- helpers ---------------------------------------------------------------------------------------------
def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _steps(sl: slice | None, n: int, what: str) -> tuple[int, int]:
    if sl is None:
        return 0, n
    start, stop, step = sl.indices(n)
    if step != 1:
        raise ValueError(f"{what} must be a contiguous slice (step 1), got {sl}")
    if stop <= start:
        raise ValueError(f"{what} {sl} is empty for a city of {n} steps")
    return start, stop


def encoder_context(cfg: STEncoderConfig, city: CityData) -> ContextFn | None:
    """What an encoder built for ``cfg`` reads before each target start: its multi-period context
    (None: the plain ``input_window`` steps)."""
    if not cfg.n_views:
        return None
    spec = ContextSpec.of_encoder(cfg)
    spec.min_history(city.freq, city.source)  # a step that does not divide a day/week fails here, by name
    return lambda values, t0, cols: gather_context(values, spec, city.freq, t0, cols, city.source)


def _encoder_config(config, city: CityData) -> STEncoderConfig:
    c = city.n_channels
    if config is None:
        # one token per channel: the LLM's heads predict channel k from slot k (UrbanGPT: in/out flow)
        return STEncoderConfig(in_channels=c, out_channels=c, num_tokens=c)
    cfg = STEncoderConfig.from_dict(config)
    if cfg.in_channels != c or cfg.out_channels != c:
        raise ValueError(
            f"{city.source}: the city has {c} channels {list(city.channels)} but the encoder config has "
            f"in_channels={cfg.in_channels}, out_channels={cfg.out_channels}; stage 1 forecasts every input channel"
        )
    return cfg


@torch.no_grad()
def evaluate_windows(
    encoder: STEncoder,
    scaled: np.ndarray,
    raw: np.ndarray,
    observed: np.ndarray | None,
    starts: np.ndarray,
    scaler: STScaler,
    adj: torch.Tensor | None = None,
    chunk: int = 256,
    device: torch.device | str = "cpu",
    context: ContextFn | None = None,
) -> dict[str, np.ndarray]:
    """MAE per channel in original units of ``encoder`` and of the last value, on windows ``starts``.

    ``scaled`` (encoder inputs) and ``raw`` (targets, last value) are the same ``(T, N, C)`` steps;
    targets that are not ``observed`` are ignored. Returns sums so callers can report per channel.
    """
    cfg = encoder.config
    was_training = encoder.training
    encoder.eval()
    c = raw.shape[-1]
    err = np.zeros(c)
    err_last = np.zeros(c)
    count = np.zeros(c)
    for i in range(0, len(starts), chunk):
        s = starts[i : i + chunk]
        xb = gather_windows(scaled, s, None, cfg.input_window, cfg.horizon, context=context)
        rb = gather_windows(raw, s, None, cfg.input_window, cfg.horizon, observed)
        forecast = encoder(xb.x.to(device), adj).forecast  # (W, N, H, C) scaled
        pred = scaler.inverse(forecast.double()).permute(0, 2, 1, 3).cpu().numpy()  # (W, H, N, C)
        y = rb.y.double().numpy()
        last = rb.x[:, -1:].double().numpy()  # (W, 1, N, C): the last observed step, held flat
        m = np.ones(y.shape, dtype=bool) if rb.y_observed is None else rb.y_observed.numpy()
        err += np.where(m, np.abs(pred - y), 0.0).sum(axis=(0, 1, 2))
        err_last += np.where(m, np.abs(last - y), 0.0).sum(axis=(0, 1, 2))
        count += m.sum(axis=(0, 1, 2))
    encoder.train(was_training)
    count = np.maximum(count, 1)
    return {"mae": err / count, "last_value_mae": err_last / count, "count": count}


def warm_start_level(encoder: STEncoder, sampler: WindowSampler, max_windows: int = 2048, steps: int = 200,
                     lr: float = 0.05, chunk: int = 64) -> int:
    """Fit the level anchor's exponents (``level_weights``) alone on training windows, the rest of the
    encoder at its start (correction zero): the level-scaled historical average as the starting point
    (a few parameters, so SGD at the encoder's rate would take thousands of steps to get there). Full-batch
    Adam on the forecast MAE in scaled units. Returns the number of windows used (0 without a level block)."""
    cfg = encoder.config
    if encoder.level_weights is None or max_windows <= 0:
        return 0
    starts = np.unique(np.linspace(sampler.first, sampler.last, num=min(sampler.n_windows, max_windows)).astype(int))
    parts = []
    with torch.no_grad():
        for i in range(0, len(starts), chunk):
            b = sampler.batch(starts[i : i + chunk])
            _, anchor, loc, scale, log_ratios = anchor_parts(b.x, cfg)
            obs = None if b.y_observed is None else b.y_observed.permute(0, 2, 1, 3)[..., : cfg.out_channels]
            parts.append((anchor, loc, scale, log_ratios, b.y.permute(0, 2, 1, 3)[..., : cfg.out_channels], obs))
    anchor, loc, scale, log_ratios, y = (torch.cat([p[j] for p in parts]) for j in range(5))
    obs = None if parts[0][5] is None else torch.cat([p[5] for p in parts])
    weights = fit_level_weights(anchor, log_ratios, loc, scale, y, obs, cfg, steps, lr)
    with torch.no_grad():
        encoder.level_weights.copy_(weights)
    return len(starts)


def _context_rows(b, xn: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One row per (window, region) of a batch: the normalised context ``xn (B, L, N, C)`` flattened step-major
    as the encoder's linear paths read it ``(B*N, L*C)``, and which rows have all ``k`` target channels observed
    over the horizon ``(B*N,)`` (what the closed-form starts fit on)."""
    rows = xn.shape[0] * xn.shape[2]
    keep = torch.ones(rows, dtype=torch.bool)
    if b.y_observed is not None:
        keep = b.y_observed[..., :k].permute(0, 2, 1, 3).reshape(rows, -1).all(dim=1)
    return xn.permute(0, 2, 1, 3).reshape(rows, -1), keep


@torch.no_grad()
def warm_start_linear(encoder: STEncoder, sampler: WindowSampler, max_windows: int = 2048, alpha: float = 0.01,
                      chunk: int = 64) -> int:
    """Fit the encoder's linear correction (``linear_proj``) in closed form on training windows: a ridge
    from the whole normalised context to ``normalised target - anchor`` (the scale-free ridge baseline's
    problem), so SGD starts from the linear model and only has to improve on it. Windows with a missing
    target are left out. Returns the number of rows fitted (0 when the encoder has no linear path)."""
    cfg = encoder.config
    if encoder.linear_proj is None or max_windows <= 0:
        return 0
    starts = np.unique(np.linspace(sampler.first, sampler.last, num=min(sampler.n_windows, max_windows)).astype(int))
    k = cfg.out_channels
    acc = RidgeAccumulator(cfg.main_length * cfg.in_channels + 1, cfg.horizon * k)
    for i in range(0, len(starts), chunk):
        b = sampler.batch(starts[i : i + chunk])
        xn, anchor, loc, scale, log_ratios = anchor_parts(b.x, cfg)  # the level block left out of xn
        if encoder.level_weights is not None:  # the anchor the correction is added to: level-scaled
            anchor = level_anchor(anchor, log_ratios, encoder.level_weights, loc, scale, cfg)
        y = b.y.permute(0, 2, 1, 3)[..., :k]
        target = ((y - loc[..., :k]) / scale[..., :k] - anchor[..., :k]).permute(0, 2, 1, 3)  # (B, H, N, k)
        context, keep = _context_rows(b, xn, k)
        rows = len(keep)
        feats = torch.cat([context, torch.ones(rows, 1)], dim=1)
        acc.add(feats[keep].numpy(), target.permute(0, 2, 1, 3).reshape(rows, -1)[keep].numpy())
    if acc.n == 0:
        return 0
    w = torch.from_numpy(acc.solve(alpha)).to(encoder.linear_proj.weight)
    encoder.linear_proj.weight.copy_(w[:-1].T.reshape(encoder.linear_proj.weight.shape))
    encoder.linear_proj.bias.copy_(w[-1])
    return acc.n


@torch.no_grad()
def warm_start_event_logits(encoder: STEncoder, sampler: WindowSampler, zero: np.ndarray, max_rows: int = 60_000,
                            l2: float = 1e-3, chunk: int = 64, seed: int = 0) -> int:
    """Fit the encoder's event-logit path (``event_proj``) as a logistic regression of ``count > 0`` at each
    target step on the normalised context and its statistics: the scale-free logistic baseline's problem
    (:func:`stllm.eval.logistic.scale_free_logistic`, same solver), so the LLM's event head starts from the
    linear classifier and only learns what it misses. ``zero (C,)`` is a zero count in the sampler's scaled
    units. Up to ``max_rows`` (window, region) rows of the sampler's range, drawn with ``seed``; rows with a
    missing target are left out. Returns the number of rows fitted (0 without the path)."""
    cfg = encoder.config
    if encoder.event_proj is None or max_rows <= 0:
        return 0
    starts = np.arange(sampler.first, sampler.last + 1)
    rng = np.random.default_rng(seed)
    per_window = int(sampler.regions_per_batch)  # regions per window
    max_rows = logistic_rows((cfg.main_length + 2) * cfg.in_channels, max_rows)  # the design matrix's memory
    if len(starts) * per_window > max_rows:  # whole windows, so every region of a drawn window is a row
        starts = np.sort(rng.choice(starts, max(1, max_rows // per_window), replace=False))
    k, xs, ys = cfg.out_channels, [], []
    zero_t = torch.as_tensor(np.asarray(zero, dtype=np.float32)[:k])
    for i in range(0, len(starts), chunk):
        b = sampler.batch(starts[i : i + chunk])
        xn, _, loc, scale, _ = anchor_parts(b.x, cfg)  # xn (B, L, N, C); loc, scale (B, N, 1, C)
        context, keep = _context_rows(b, xn, k)
        rows = len(keep)
        stats = torch.cat([loc, scale.log()], dim=-1)[:, :, 0].reshape(rows, -1)
        feats = torch.cat([context, stats], dim=1)
        y = (b.y[..., :k] > zero_t + 1e-6).permute(0, 2, 1, 3).reshape(rows, -1)  # (rows, H*k): step-major
        xs.append(feats[keep].double().numpy())
        ys.append(y[keep].numpy())
    x, y = np.concatenate(xs), np.concatenate(ys)
    if not len(x):
        return 0
    weights, bias = fit_logistic(x, y, l2)
    w = torch.from_numpy(weights.T.copy()).to(encoder.event_proj.weight)
    encoder.event_proj.weight.copy_(w.reshape(encoder.event_proj.weight.shape))
    encoder.event_proj.bias.copy_(torch.from_numpy(bias).to(encoder.event_proj.bias))
    return len(x)


def _metrics_block(res: dict, channels: Sequence[str], n_windows: int, n_regions: int) -> dict:
    return {
        "mae": {ch: float(v) for ch, v in zip(channels, res["mae"])},
        "mae_mean": float(np.mean(res["mae"])),
        "last_value_mae": {ch: float(v) for ch, v in zip(channels, res["last_value_mae"])},
        "last_value_mae_mean": float(np.mean(res["last_value_mae"])),
        "windows": int(n_windows),
        "regions": int(n_regions),
    }


# -- training --------------------------------------------------------------------------------------------
@claims_output_dir("st encoder")
def pretrain_st_encoder(
    city: CityData,
    split_regions: Sequence[str | int] | None = None,
    time_slice: slice | None = None,
    val_fraction: float = 0.2,
    val_slice: slice | None = None,
    val_region_fraction: float = 0.0,
    encoder_config: STEncoderConfig | dict | None = None,
    epochs: int = 20,
    max_steps: int | None = None,
    steps_per_epoch: int | None = None,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 32,
    regions_per_batch: int | None = None,
    mask_ratio: float = 0.25,
    recon_weight: float = 0.5,
    patience: int = 5,
    seed: int = 0,
    output_dir: str | os.PathLike | None = None,
    scaler: STScaler | None = None,
    log1p: bool = False,
    val_stride: int = 1,
    grad_clip: float | None = 5.0,
    warm_start_windows: int = 2048,
    device: str | torch.device | None = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> PretrainResult:
    """Pretrain an :class:`STEncoder` on ``split_regions`` (ids; all if None) x ``time_slice`` (steps; all if None).

    The validation slice is ``val_slice`` (absolute steps inside ``time_slice``) or the last
    ``val_fraction`` of ``time_slice``; training windows (inputs and targets) end before it, validation
    windows have their targets inside it (their inputs may reach back into the training part). Targets
    outside ``split_regions`` x ``time_slice`` are never read, nor is anything after it, the scaler
    included (unless ``scaler`` is given); an encoder with a multi-period context (``days``/``weeks``)
    reads the training regions' own past before ``time_slice`` as input.
    An epoch is one pass over all training window starts (or ``steps_per_epoch`` batches); ``max_steps``
    caps the total; training stops after ``patience`` epochs without a better validation MAE and the
    best weights are kept. A scale-free encoder's linear correction is first fitted in closed form on up to
    ``warm_start_windows`` training windows (:func:`warm_start_linear`; 0: off), and an event encoder's logistic
    event-logit path on the training part (:func:`warm_start_event_logits`). Deterministic for a
    ``seed`` on one device.
    """
    t_begin = time.time()
    dev = _resolve_device(device)
    out = None if output_dir is None else Path(output_dir)  # claimed by the decorator (lock, artefact kind)
    cfg = _encoder_config(encoder_config, city)
    train_ids = city.region_ids if split_regions is None else tuple(str(r) for r in split_regions)
    if len(set(train_ids)) != len(train_ids):
        raise ValueError("split_regions contains duplicated region ids")
    fit_ids, val_ids = hold_out_regions(train_ids, val_region_fraction, seed)
    region_idx = city.region_index(fit_ids, field_name="split_regions")
    t0, t1 = _steps(time_slice, city.n_steps, "time_slice")
    window = cfg.input_window + cfg.horizon
    if val_slice is not None:
        v0, v1 = _steps(val_slice, city.n_steps, "val_slice")
        if not t0 < v0 < v1 <= t1:
            raise ValueError(f"val_slice [{v0}, {v1}) must lie inside the training time range [{t0}, {t1}) "
                             f"and leave steps before it for training")
    else:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        v0, v1 = t1 - max(cfg.horizon, int(round(val_fraction * (t1 - t0)))), t1
    if v0 - t0 < window:
        raise ValueError(
            f"training part [{t0}, {v0}) has {v0 - t0} steps, fewer than one window (input_window + horizon = "
            f"{window}); use a longer time_slice or a smaller validation part"
        )
    if v1 - v0 < cfg.horizon:
        raise ValueError(f"validation slice [{v0}, {v1}) is shorter than the horizon {cfg.horizon}")

    # Only the training regions x training steps are ever touched from here on.
    if scaler is None:
        scaler = STScaler.fit(city, regions=fit_ids, time=slice(t0, t1), log1p=log1p)
    elif len(scaler.mean) != city.n_channels:
        raise ValueError(f"scaler has {len(scaler.mean)} channels, the city has {city.n_channels}")
    if cfg.level_len:  # the level anchor compares counts: undo the scaler the inputs get (this one)
        cfg = replace(cfg, **level_from_scaler(scaler))
    # steps [0, t1): windows start inside [t0, ...); a multi-period context may read the past before t0
    context = encoder_context(cfg, city)
    first = t0 if context is None else max(
        t0, ContextSpec.of_encoder(cfg).min_history(city.freq, city.source) - cfg.input_window)
    if v0 - first < window:
        raise ValueError(
            f"training part [{first}, {v0}) after the context's warm-up has {v0 - first} steps, fewer than one "
            f"window ({window}); use a longer time_slice or fewer context weeks"
        )

    def scaled_values(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, torch.Tensor | None]:
        """``(scaled, raw, observed, adjacency)`` of regions ``idx`` over steps [0, t1)."""
        raw_i = city.values[:t1][:, idx]  # (T', N', C) original units
        obs_i = None if city.mask is None else city.mask[:t1][:, idx]
        scaled_i = scaler.transform(raw_i).astype(np.float32)
        if obs_i is not None:
            scaled_i = np.where(obs_i, scaled_i, np.float32(0))  # missing inputs read as the training mean
        adj_i = None
        if cfg.graph_mixing:
            if city.adjacency is None:
                raise ValueError(f"{city.source}: graph_mixing needs city adjacency, the city has none")
            adj_i = torch.from_numpy(city.adjacency[np.ix_(idx, idx)]).to(dev)
        return scaled_i, raw_i, obs_i, adj_i

    scaled, raw, observed, adj = scaled_values(region_idx)
    # validation: the fitting regions' last part of the time range, or with val_region_fraction other training
    # regions over that part (a zero-shot model is chosen on regions it never fitted)
    v_scaled, v_raw, v_observed, v_adj = (scaled_values(city.region_index(val_ids, field_name="split_regions"))
                                          if val_ids
                                          else (scaled, raw, observed, adj))  # fmt: skip
    record = split_record(city, train_ids, slice(t0, t1))  # validation regions count as seen: never evaluated

    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        encoder = STEncoder(cfg)
        objective = STPretrainObjective(encoder, mask_ratio=mask_ratio, recon_weight=recon_weight).to(dev)
        sampler = WindowSampler(
            scaled, cfg.input_window, cfg.horizon, batch_size, time_start=first, time_stop=v0,
            regions_per_batch=regions_per_batch, shared_regions=cfg.graph_mixing, mask=observed, seed=rng,
            context=context,
        )  # fmt: skip
        val_starts = np.arange(max(first, v0 - cfg.input_window), v1 - window + 1, max(1, int(val_stride)))

        def validate() -> dict:
            return evaluate_windows(encoder, v_scaled, v_raw, v_observed, val_starts, scaler, v_adj, device=dev,
                                    context=context)

        def validation_mae() -> float:
            return float(np.mean(validate()["mae"]))

        def warm_sampler(stop: int) -> WindowSampler:  # its own generator: the training stream is untouched
            return WindowSampler(scaled, cfg.input_window, cfg.horizon, batch_size, time_start=first, time_stop=stop,
                                 regions_per_batch=regions_per_batch, mask=observed, seed=seed, context=context)

        # the closed-form start (fitted on the training part) is kept only if it beats the anchor on validation
        start_mae, warm_rows, level_windows = validation_mae(), 0, 0
        if encoder.level_weights is not None and warm_start_windows > 0:  # likewise the level exponents
            level_windows = warm_start_level(encoder, warm_sampler(v0), warm_start_windows)
            if validation_mae() >= start_mae:
                encoder.reset_parameters()
                level_windows = 0
            else:
                level_windows = warm_start_level(encoder, warm_sampler(v1), warm_start_windows)
                start_mae = validation_mae()
        if encoder.linear_proj is not None and warm_start_windows > 0:
            warm_rows = warm_start_linear(encoder, warm_sampler(v0), warm_start_windows)
            if validation_mae() >= start_mae:
                with torch.no_grad():  # the linear start does not help here: back to the (level) anchor
                    encoder.linear_proj.weight.zero_()
                    encoder.linear_proj.bias.zero_()
                warm_rows = 0
            else:  # it helps: refit on the whole training time range, as the ridge baseline is fitted
                warm_rows = warm_start_linear(encoder, warm_sampler(v1), warm_start_windows)
                start_mae = validation_mae()
        event_rows = 0
        if encoder.event_proj is not None and warm_start_windows > 0:  # fitted before the validation part only
            zero = scaler.transform(np.zeros((1, 1, city.n_channels)))[0, 0]
            event_rows = warm_start_event_logits(encoder, warm_sampler(v0), zero, seed=seed)
        n_train_eval = min(sampler.n_windows, MAX_TRAIN_EVAL_WINDOWS)
        train_starts = np.unique(np.linspace(first, sampler.last, n_train_eval).round().astype(np.int64))
        optimizer = torch.optim.AdamW(objective.parameters(), lr=lr, weight_decay=weight_decay)

        spe = int(steps_per_epoch) if steps_per_epoch else len(sampler)
        total = epochs * spe if max_steps is None else min(epochs * spe, int(max_steps))
        n_epochs = math.ceil(total / spe) if total else 0

        def batches():
            while True:
                yield from sampler

        stream = batches()
        history: list[dict] = []
        # the starting point (anchor, or anchor + ridge) is a candidate too: training must beat it
        best_val, best_epoch, bad_epochs, step = start_mae, 0, 0, 0
        best_state = {k: v.detach().clone() for k, v in objective.state_dict().items()}
        bar = tqdm(total=total, desc="stage-1 STEncoder", unit="step", disable=not progress, dynamic_ncols=True)
        stopped_early = False
        objective.train()
        for epoch in range(1, n_epochs + 1):
            sums = np.zeros(3)
            n_ep = min(spe, total - step)
            for _ in range(n_ep):
                b = next(stream)
                sub_adj = None
                if adj is not None:
                    r = torch.as_tensor(b.regions, device=dev)
                    sub_adj = adj[r][:, r]
                yo = None if b.y_observed is None else b.y_observed.to(dev)
                xo = None if b.x_observed is None else b.x_observed.to(dev)
                losses = objective(b.x.to(dev), b.y.to(dev), yo, xo, adj=sub_adj, generator=gen)
                optimizer.zero_grad(set_to_none=True)
                losses.loss.backward()
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(objective.parameters(), grad_clip)
                optimizer.step()
                step += 1
                sums += [losses.loss.item(), losses.forecast_loss.item(), losses.recon_loss.item()]
                bar.update(1)
            val_mae = validation_mae()
            entry = {"epoch": epoch, "step": step, "loss": sums[0] / n_ep, "forecast_loss": sums[1] / n_ep,
                     "recon_loss": sums[2] / n_ep, "val_mae": val_mae}
            history.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", val_mae=f"{val_mae:.3f}", best=f"{min(best_val, val_mae):.3f}")
            if val_mae < best_val - 1e-9:
                best_val, best_epoch, bad_epochs = val_mae, epoch, 0
                best_state = {k: v.detach().clone() for k, v in objective.state_dict().items()}
            else:
                bad_epochs += 1
                if bad_epochs >= patience:
                    stopped_early = True
                    break
        bar.close()
        if best_state is not None:
            objective.load_state_dict(best_state)
        objective.eval()

        val = validate()
        train = evaluate_windows(encoder, scaled, raw, observed, train_starts, scaler, adj, device=dev,
                                 context=context)

    channels = list(city.channels)
    metrics = {
        "units": "original (inverse-scaled) counts; masked MAE over observed targets",
        "channels": channels,
        "val": _metrics_block(val, channels, len(val_starts), len(val_ids or fit_ids)),
        "train": _metrics_block(train, channels, len(train_starts), len(fit_ids)),
        "best_epoch": best_epoch,
        "warm_start_rows": warm_rows,
        "event_logit_rows": event_rows,
        "level_start_windows": level_windows,
        "level_weights": None if encoder.level_weights is None else encoder.level_weights.tolist(),
        "epochs_run": len(history),
        "steps": step,
        "stopped_early": stopped_early,
        "seconds": round(time.time() - t_begin, 2),
        "history": history,
        "settings": {
            "seed": seed, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
            "regions_per_batch": regions_per_batch, "mask_ratio": mask_ratio, "recon_weight": recon_weight,
            "epochs": epochs, "max_steps": max_steps, "steps_per_epoch": spe, "patience": patience,
            "val_stride": val_stride, "train_steps": [first, v0], "val_steps": [v0, v1],
            "val_regions": list(val_ids),
        },
    }  # fmt: skip
    metrics["val"]["beats_last_value"] = metrics["val"]["mae_mean"] < metrics["val"]["last_value_mae_mean"]
    encoder = encoder.cpu().eval()

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        save_encoder(encoder, out, extra={"stage": "stllm-pretrain-encoder", "scaler": SCALER_NAME,
                                          "split": SPLIT_NAME})
        objective.cpu().save_decoder(out)
        _write_atomic(out / SCALER_NAME, scaler.to_json())
        split = json.loads(record.to_json())
        split.update({
            "time_steps": [t0, t1],
            "train_steps": [t0, v0],
            "val_steps": [v0, v1],
            "val_time_range": [str(city.timestamps[v0]), str(city.timestamps[v1 - 1] + city.freq)],
        })  # fmt: skip
        _write_atomic(out / SPLIT_NAME, json.dumps(split, indent=2, sort_keys=True))
        _write_atomic(out / METRICS_NAME, json.dumps(metrics, indent=2))
    return PretrainResult(encoder, scaler, record, metrics, history, out)


# -- command line ----------------------------------------------------------------------------------------
def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add stage-1 options to ``parser`` (a new one if None); ``stllm pretrain-encoder`` reuses this."""
    if parser is None:
        parser = argparse.ArgumentParser(
            allow_abbrev=False,
            prog="python -m stllm.train.pretrain_encoder",
            description="Stage 1: pretrain the STEncoder on the training regions x training time range "
            "(forecast MAE + masked reconstruction), early-stop on the last part of the training time range, "
            "and save an encoder directory (config, weights, scaler.json, split.json, metrics.json).",
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
    d = parser.add_argument_group("data")
    d.add_argument("--data", choices=("synthetic", "manhattan", "bikenyc"), default="synthetic",
                   help="synthetic city, Manhattan taxi/bike flows, or BikeNYC (files under --data_root)")
    d.add_argument("--mode", choices=("taxi", "bike"), default="taxi", help="which Manhattan flow (--data manhattan)")
    d.add_argument("--data_root", default=None,
                   help="folder of the real data files; unset: $STLLM_DATA_ROOT, else ../shared/data")
    d.add_argument("--synthetic_regions", type=positive_int, default=24, help="regions of the synthetic city")
    d.add_argument("--synthetic_days", type=positive_int, default=28, help="days of the synthetic city")
    d.add_argument("--synthetic_freq", default="1h", help="time step of the synthetic city")
    d.add_argument("--synthetic_seed", type=int, default=0, help="seed of the synthetic city")
    d.add_argument("--test_regions", type=fraction_half_open, default=0.2,
                   help="fraction of regions held out (never read) for zero-shot evaluation")
    d.add_argument("--split_seed", type=int, default=0, help="seed of the random region split")
    d.add_argument("--train_regions", default=None,
                   help="comma-separated training region ids (overrides --test_regions)")
    d.add_argument("--train_frac", type=fraction_upper, default=0.7,
                   help="first fraction of the time steps that is the training time range")
    d.add_argument("--val_frac", type=fraction_open, default=0.2,
                   help="last fraction of the training time range used for early stopping")
    d.add_argument("--val_region_fraction", type=float, default=0.0,
                   help="validate (early stopping, best epoch) on this fraction of the training regions, never fitted, "
                        "instead of on the fitted ones: choose a zero-shot encoder on regions it did not fit")
    d.add_argument("--log1p", action="store_true", help="scale log1p(counts) instead of counts")
    m = parser.add_argument_group("encoder")
    m.add_argument("--encoder_config", default=None,
                   help="JSON file of STEncoderConfig fields (channels are taken from the data)")
    m.add_argument("--input_window", type=positive_int, default=12, help="input steps per window")
    m.add_argument("--horizon", type=positive_int, default=12, help="forecast steps per window")
    m.add_argument("--graph_mixing", action="store_true", help="mix regions over the city adjacency")
    m.add_argument("--context_days", type=non_negative_int, default=7,
                   help="also read the target slots on each of this many previous days")
    m.add_argument("--context_weeks", type=non_negative_int, default=8,
                   help="also read the target slots on each of this many previous weeks (their mean is the anchor)")
    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=positive_int, default=20, help="epochs (one pass over all training window starts)")
    t.add_argument("--max_steps", type=positive_int, default=None, help="cap on optimizer steps (no cap if unset)")
    t.add_argument("--steps_per_epoch", type=positive_int, default=None,
                   help="batches per epoch; unset: one pass over all training window starts")
    t.add_argument("--lr", type=non_negative_float, default=1e-3, help="AdamW learning rate")
    t.add_argument("--weight_decay", type=non_negative_float, default=1e-4, help="AdamW weight decay")
    t.add_argument("--batch_size", type=positive_int, default=32, help="windows per batch")
    t.add_argument("--regions_per_batch", type=positive_int, default=None,
                   help="regions drawn per window; unset: all training regions")
    t.add_argument("--mask_ratio", type=fraction_half_open, default=0.25,
                   help="fraction of input steps hidden per series")
    t.add_argument("--recon_weight", type=non_negative_float, default=0.5,
                   help="weight of the masked reconstruction loss")
    t.add_argument("--patience", type=positive_int, default=5,
                   help="epochs without a better validation MAE before stopping")
    t.add_argument("--val_stride", type=positive_int, default=1, help="step between validation window starts")
    t.add_argument("--seed", type=int, default=0, help="seed of initialisation, sampling and masking")
    t.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... or auto")
    t.add_argument("--num_threads", type=non_negative_int, default=0,
                   help="torch CPU threads; 0 keeps torch's choice (1 is often fastest for small encoders)")
    t.add_argument("--output_dir", default="checkpoints/st_encoder", help="where the encoder directory is written")
    t.add_argument("--overwrite_output_dir", action="store_true", help="replace a run already in --output_dir")
    t.add_argument("--no_progress", action="store_true", help="no tqdm progress bar")
    return parser


def load_city(args: argparse.Namespace) -> CityData:
    from stllm.data.loaders import load_preset

    name = f"manhattan-{args.mode}" if args.data == "manhattan" else args.data
    return load_preset(name, args.data_root, seed=args.synthetic_seed, n_regions=args.synthetic_regions,
                       days=args.synthetic_days, freq=args.synthetic_freq)  # fmt: skip


def _random_train_regions(city: CityData, test: float, seed: int) -> tuple[str, ...]:
    """The training part of a random split holding out ``test`` of the regions (at least one each side)."""
    n_test = round(test * city.n_regions)
    if not 1 <= n_test < city.n_regions:
        raise ValueError(
            f"--test_regions {test} holds out {n_test} of the {city.n_regions} regions of {city.source}; it must hold "
            "out at least one and leave at least one for training (0: hold out none)"
        )
    return RegionSplit.random(city, test=test, seed=seed).train


def run(args: argparse.Namespace) -> PretrainResult:
    """Run stage 1 from parsed arguments (the body of ``main`` and of ``stllm pretrain-encoder``)."""
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    city = load_city(args)
    if args.train_regions:
        train_ids = tuple(r.strip() for r in args.train_regions.split(",") if r.strip())
    elif args.test_regions > 0:
        train_ids = _random_train_regions(city, args.test_regions, args.split_seed)
    else:
        train_ids = city.region_ids
    t_end = city.n_steps if args.train_frac == 1 else TimeSplit.by_fraction(city, args.train_frac, 0.0).train_end
    cfg = {}
    if args.encoder_config:
        cfg = json.loads(Path(args.encoder_config).read_text())
    cfg.update(in_channels=city.n_channels, out_channels=city.n_channels)
    cfg.setdefault("input_window", args.input_window)
    cfg.setdefault("horizon", args.horizon)
    cfg.setdefault("days", args.context_days)
    cfg.setdefault("weeks", args.context_weeks)
    cfg.setdefault("event_logits", city.task == "event" and cfg.get("normalize", True))  # the logistic event path
    if args.graph_mixing:
        cfg["graph_mixing"] = True
    result = pretrain_st_encoder(
        city, train_ids, slice(0, t_end), val_fraction=args.val_frac, val_region_fraction=args.val_region_fraction,
        encoder_config=cfg, epochs=args.epochs,
        max_steps=args.max_steps, steps_per_epoch=args.steps_per_epoch, lr=args.lr, weight_decay=args.weight_decay,
        batch_size=args.batch_size, regions_per_batch=args.regions_per_batch, mask_ratio=args.mask_ratio,
        recon_weight=args.recon_weight, patience=args.patience, seed=args.seed, output_dir=args.output_dir,
        log1p=args.log1p, val_stride=args.val_stride, device=args.device, overwrite=args.overwrite_output_dir,
        progress=not args.no_progress,
    )  # fmt: skip
    val = result.metrics["val"]
    print(f"city {city.name}: {len(train_ids)}/{city.n_regions} training regions, steps "
          f"{result.metrics['settings']['train_steps']} train / {result.metrics['settings']['val_steps']} val; "
          f"{result.metrics['steps']} steps, best epoch {result.metrics['best_epoch']}")
    print(f"{'channel':<12} {'val MAE':>10} {'last value':>11}")
    for ch in result.metrics["channels"]:
        print(f"{ch:<12} {val['mae'][ch]:>10.3f} {val['last_value_mae'][ch]:>11.3f}")
    print(f"{'mean':<12} {val['mae_mean']:>10.3f} {val['last_value_mae_mean']:>11.3f}")
    print(f"saved encoder directory: {result.output_dir}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
