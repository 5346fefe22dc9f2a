"""The level-scaled anchor: the historical average times how busy the last hours were against their usual.

A forecast window's level block (:mod:`stllm.data.context`) holds its last ``level_len`` steps and the same
steps in each of the ``weeks`` earlier weeks. Their count ratios ``r_i`` (the last ``input_window`` steps,
the whole block, its oldest ``horizon`` steps: yesterday's target slots when the block is a day) scale the
historical average by ``exp(sum_i a_i log r_i)``, ``a`` per channel. Counts, because the inputs are
globally scaled: ``level_zero``/``level_unit`` (from the scaler, :func:`level_from_scaler`) undo that.
Used by :class:`~stllm.encoders.st_encoder.STEncoder` (``a`` learned, from zero) and by the
``level_average`` baseline (``a`` fitted on training windows with :func:`fit_level_weights`).
"""

from __future__ import annotations

import torch

LEVEL_RATIOS = 3  # the last input_window steps, the whole level block, its oldest horizon steps


def level_from_scaler(scaler) -> dict:
    """``level_zero`` / ``level_unit`` for an encoder fed ``scaler.transform(counts)`` (an ``STScaler``): the
    scaled value of a zero count and the scaled size of one count, per channel (of ``log1p`` counts when
    the scaler takes logs)."""
    return {"level_zero": [-m / s for m, s in zip(scaler.mean, scaler.std)],
            "level_unit": [1.0 / s for s in scaler.std]}


def level_log_ratios(block: torch.Tensor, config, clamp: float = 3.0) -> torch.Tensor:
    """``block (W, level_steps, N, C)`` scaled values -> ``(W, N, LEVEL_RATIOS, C)`` float32 log ratios of the
    counts in the last steps to their mean over the same steps in the earlier weeks (module docstring),
    each side smoothed with ``level_smoothing`` counts per step, clamped to ``+-clamp``."""
    cfg = config
    w, _, n, c = block.shape
    zero = torch.tensor(cfg.level_zero, dtype=torch.float32, device=block.device)
    unit = torch.tensor(cfg.level_unit, dtype=torch.float32, device=block.device)
    counts = ((block.float() - zero) / unit).clamp_min(0).reshape(w, cfg.weeks + 1, cfg.level_len, n, c)
    now, usual = counts[:, -1], counts[:, :-1].mean(dim=1)  # (W, L, N, C)
    spans = (slice(cfg.level_len - min(cfg.input_window, cfg.level_len), None), slice(None),
             slice(0, min(cfg.horizon, cfg.level_len)))
    ratios = []
    for sl in spans:
        k = cfg.level_smoothing * len(range(cfg.level_len)[sl])
        ratios.append(((now[:, sl].sum(dim=1) + k) / (usual[:, sl].sum(dim=1) + k)).log())
    return torch.stack(ratios, dim=1).permute(0, 2, 1, 3).clamp(-clamp, clamp)  # (W, N, R, C)


def level_gain(log_ratios: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``exp(log_ratios . weights)`` ``(W, N, 1, C)``: how much busier than usual the window is, the factor the
    level anchor scales the historical average by (``log_ratios (W, N, R, C)``, ``weights (R, C)``)."""
    return torch.exp((log_ratios * weights.float()).sum(dim=2, keepdim=True))


def level_anchor(anchor: torch.Tensor, log_ratios: torch.Tensor, weights: torch.Tensor, loc: torch.Tensor,
                 scale: torch.Tensor, config) -> torch.Tensor:
    """The anchor ``(W, N, H, C)`` (normalised units) scaled in counts by ``exp(log_ratios . weights)``
    (``log_ratios (W, N, R, C)``, ``weights (R, C)``), back in normalised units; ``loc``/``scale``
    ``(W, N, 1, C)`` are the window's normalisation statistics."""
    zero = torch.tensor(config.level_zero, dtype=torch.float32, device=anchor.device)
    unit = torch.tensor(config.level_unit, dtype=torch.float32, device=anchor.device)
    gain = level_gain(log_ratios, weights)
    counts = ((anchor * scale + loc - zero) / unit).clamp_min(0)  # the historical average in counts
    return anchor + counts * (gain - 1) * unit / scale


def fit_level_weights(anchor: torch.Tensor, log_ratios: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor,
                      target: torch.Tensor, observed: torch.Tensor | None, config, steps: int = 200,
                      lr: float = 0.05) -> torch.Tensor:
    """Exponents ``(R, C)`` minimising the MAE of the level-scaled anchor against ``target`` (scaled units,
    ``(B, N, H, K)`` for the first ``K`` channels; ``observed`` masks it), from zero by full-batch Adam (a few
    parameters: closed-form-like, not worth SGD at a network's rate). Inputs as :func:`level_anchor`."""
    from stllm.encoders.pretrain import masked_mae  # lazy: pretrain imports the encoder, which imports this

    k = target.shape[-1]
    weights = torch.zeros(log_ratios.shape[2], log_ratios.shape[3], dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([weights], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        pred = level_anchor(anchor, log_ratios, weights, loc, scale, config) * scale + loc
        masked_mae(pred[..., :k], target, observed).backward()
        opt.step()
    return weights.detach()
