"""STEncoder: the UrbanGPT/MTGNN temporal convolution encoder.

Gated dilated-inception convolutions over time, residual connections and multi-level skip
connections ("correlation injection": every layer writes into one skip sum, so the tokens see
short and long temporal patterns at once). Regions are independent unless graph mixing is on,
which is what lets a model trained on some regions be applied zero-shot to others.

Shapes: input ``(W, T, N, C)`` city windows -> ``tokens (W, N, K, D)`` for the LLM and a
``forecast (W, N, horizon, C_out)`` from the encoder's own head (stage-1 pretraining and the
encoder-only baseline).

Multi-period context (``days``/``weeks`` > 0): ``T = (weeks + days) * view + input_window`` steps laid
out as in :mod:`stllm.data.context` (the target slots on each previous week, then day, then the recent
steps; ``view = horizon``, or ``input_window + horizon`` with ``recent_views``, whose views start with
the recent slots: how the last steps compare with the same slots in earlier weeks). The TCN reads the
recent steps; the day and week views and their mean go through a linear map into the same summary,
one input per sample.

Scale-free (``normalize``, RevIN-style): each (window, region, channel) is normalised with the mean
and standard deviation of its own input steps (never a target), the encoder works in that space, and
the forecast is ``anchor + correction`` there, mapped back with the same statistics. The anchor is
the mean of the week views (the historical average; the context mean without week views); the
correction (the convolutional summary's head plus a linear map of the whole normalised input, so the
encoder holds at least a ridge on its context) starts at zero, so an untrained encoder forecasts the
historical average. With a level block (``level_len``, see :mod:`stllm.data.context`) the anchor is the
historical average times ``exp(sum_i a_i log r_i)``: ``r_i`` how busy the last ``input_window`` steps,
the last ``level_len`` steps and the oldest ``horizon`` of them (yesterday's target slots when
``level_len`` is a day) were against the same steps in earlier weeks, in counts (``level_zero`` and
``level_unit`` undo the global scaler), ``a`` learned per channel from zero (so an untrained encoder
still forecasts the historical average). Multiplicative, because a quiet day scales the peak hours
more than the night; no linear map of the normalised context can express that (the log ratios are
also an input). The statistics and the forecast in normalised units (``loc``, ``scale``, ``base``) are
returned for the LLM's heads, which add their own correction to it (so stage 2 starts from the stage-1
forecast); the statistics are also an input (events depend on the absolute level).
Normalisation runs in float32 under autocast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stllm.encoders.level import LEVEL_RATIOS, level_anchor, level_from_scaler, level_gain, level_log_ratios


@dataclass
class STEncoderConfig:
    """Hyper-parameters of :class:`STEncoder`; defaults are UrbanGPT's (about 95K parameters)."""

    in_channels: int = 2
    out_channels: int = 2
    input_window: int = 12
    horizon: int = 12
    layers: int = 3
    residual_channels: int = 32
    conv_channels: int = 32
    skip_channels: int = 64
    end_channels: int = 128
    kernel_set: tuple[int, ...] = (2, 3, 6, 7)
    dilation_exponential: int = 1
    dropout: float = 0.3
    num_tokens: int = 2
    token_dim: int = 64
    graph_mixing: bool = False
    gcn_depth: int = 2
    prop_alpha: float = 0.05
    days: int = 0
    weeks: int = 0
    recent_views: bool = False  # the views hold the recent slots too (stllm.data.context)
    level_len: int = 0  # steps of the level block (stllm.data.context); 0: the anchor is the historical average
    level_zero: tuple[float, ...] = ()  # per input channel: the scaled value of a zero count
    level_unit: tuple[float, ...] = ()  # per input channel: the scaled size of one count
    level_smoothing: float = 0.25  # counts added per step to both sides of a level ratio (quiet regions)
    # at inference the learned correction is multiplied by the level gain too: it is learned in the training
    # period's units and carried to a day of another level (a tenfold quieter day, a tenfold smaller correction)
    level_scales_correction: bool = False
    normalize: bool = True
    residual: bool = True
    norm_eps: float = 0.1
    event_logits: bool = False  # a linear event-logit path (logistic on the normalised context + its statistics)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.kernel_set = tuple(int(k) for k in self.kernel_set)
        if self.conv_channels % len(self.kernel_set):
            raise ValueError(
                f"STEncoderConfig.conv_channels={self.conv_channels} must be divisible by the number of "
                f"kernels ({len(self.kernel_set)})"
            )
        for name in ("in_channels", "out_channels", "input_window", "horizon", "layers", "num_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"STEncoderConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("days", "weeks", "level_len"):
            if getattr(self, name) < 0:
                raise ValueError(f"STEncoderConfig.{name} must be >= 0, got {getattr(self, name)}")
        self.level_zero = tuple(float(v) for v in self.level_zero)
        self.level_unit = tuple(float(v) for v in self.level_unit)
        if self.level_len:
            if not self.weeks:
                raise ValueError("STEncoderConfig.level_len compares the last steps with the same steps in earlier "
                                 "weeks: it needs weeks >= 1")
            if any(u <= 0 for u in self.level_unit) or self.level_smoothing <= 0:
                raise ValueError("STEncoderConfig.level_unit and level_smoothing must be > 0")
        if self.normalize and self.out_channels > self.in_channels:
            raise ValueError(f"STEncoderConfig: normalize forecasts output channel k as a correction to input channel "
                             f"k, so out_channels ({self.out_channels}) must be <= in_channels ({self.in_channels}); "
                             "set normalize=False otherwise")
        if self.norm_eps <= 0:
            raise ValueError(f"STEncoderConfig.norm_eps must be > 0, got {self.norm_eps}")
        if self.event_logits and not self.normalize:
            raise ValueError("STEncoderConfig.event_logits reads the normalised context and its statistics: it needs "
                             "normalize=True")

    @property
    def main_length(self) -> int:
        """Steps after the level block: the recent ``input_window`` plus one :attr:`view_len` per day/week
        view (what the convolutions, the views' map and the linear correction read)."""
        return (self.days + self.weeks) * self.view_len + self.input_window

    @property
    def level_steps(self) -> int:
        """Steps of the level block in front of the context (the last ``level_len`` and their weekly copies)."""
        return (self.weeks + 1) * self.level_len if self.level_len else 0

    @property
    def context_length(self) -> int:
        """Input steps per window: the level block, then :attr:`main_length`."""
        return self.level_steps + self.main_length

    @property
    def view_len(self) -> int:
        """Steps of one day/week view: the ``horizon`` target slots, after the recent ones with ``recent_views``."""
        return self.horizon + (self.input_window if self.recent_views else 0)

    @property
    def n_views(self) -> int:
        return self.days + self.weeks

    @property
    def receptive_field(self) -> int:
        k = max(self.kernel_set)
        if self.dilation_exponential > 1:
            e = self.dilation_exponential
            return int(1 + (k - 1) * (e**self.layers - 1) / (e - 1))
        return self.layers * (k - 1) + 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kernel_set"] = list(self.kernel_set)
        d["level_zero"], d["level_unit"] = list(self.level_zero), list(self.level_unit)
        return d

    @classmethod
    def from_dict(cls, d: dict | STEncoderConfig | None) -> STEncoderConfig:
        if d is None:
            return cls()
        if isinstance(d, cls):
            return d
        if "extra" in d and "normalize" not in d:  # a whole config saved before scale-free encoders: keep its meaning
            d = {**d, "normalize": False}
        return cls(**d)


class DilatedInception(nn.Module):
    """Parallel dilated convolutions with several kernel widths, cropped to a common length."""

    def __init__(self, c_in: int, c_out: int, kernel_set: tuple[int, ...], dilation: int):
        super().__init__()
        per = c_out // len(kernel_set)
        self.convs = nn.ModuleList(nn.Conv2d(c_in, per, (1, k), dilation=(1, dilation)) for k in kernel_set)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [conv(x) for conv in self.convs]
        t = outs[-1].shape[-1]  # the widest kernel gives the shortest output
        return torch.cat([o[..., -t:] for o in outs], dim=1)


class MixProp(nn.Module):
    """Mix-hop graph propagation (MTGNN): h_{k+1} = a*x + (1-a) * A_norm h_k, hops concatenated."""

    def __init__(self, channels: int, depth: int, alpha: float):
        super().__init__()
        self.depth, self.alpha = depth, alpha
        self.mlp = nn.Conv2d((depth + 1) * channels, channels, 1)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        a = adj + torch.eye(adj.shape[0], dtype=adj.dtype, device=adj.device)
        a = a / a.sum(dim=1, keepdim=True)
        h, hops = x, [x]
        for _ in range(self.depth):
            h = self.alpha * x + (1 - self.alpha) * torch.einsum("bcwl,vw->bcvl", h, a)
            hops.append(h)
        return self.mlp(torch.cat(hops, dim=1))


class STEncoderOutput(NamedTuple):
    tokens: torch.Tensor  # (W, N, K, D)
    forecast: torch.Tensor  # (W, N, horizon, C_out), input units
    loc: torch.Tensor | None = None  # (W, N, 1, C) per-sample mean of the inputs (normalize)
    scale: torch.Tensor | None = None  # (W, N, 1, C) per-sample std + eps
    anchor: torch.Tensor | None = None  # (W, N, horizon, C) seasonal anchor, normalised units
    base: torch.Tensor | None = None  # (W, N, horizon, C_out) the forecast in normalised units: anchor + correction
    event_logits: torch.Tensor | None = None  # (W, N, horizon, C_out) logit of P(count > 0) (config.event_logits)
    gain: torch.Tensor | None = None  # (W, N, 1, C) level gain the corrections are scaled by at inference


def normalise_context(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x (W, T, N, C)`` -> ``(x_norm, loc (W, 1, N, C), scale (W, 1, N, C))`` in float32: statistics
    over each series' own input steps only."""
    x = x.float()
    loc = x.mean(dim=1, keepdim=True)
    scale = x.std(dim=1, keepdim=True, correction=0) + eps
    return (x - loc) / scale, loc, scale


def seasonal_anchor(x_norm: torch.Tensor, config: STEncoderConfig) -> torch.Tensor:
    """``(W, horizon, N, C)``: mean of the week views (the historical average), else of the whole input
    (0 in normalised units); zeros when ``residual`` is off (the ablation "without anchor")."""
    w, _, n, c = x_norm.shape
    if not config.residual:
        return x_norm.new_zeros(w, config.horizon, n, c)
    if config.weeks == 0:
        return x_norm.mean(dim=1, keepdim=True).expand(w, config.horizon, n, c)
    span = config.view_len
    weeks = x_norm[:, : config.weeks * span].reshape(w, config.weeks, span, n, c)
    return weeks[:, :, span - config.horizon :].mean(dim=1)  # the target slots of each week


def anchor_parts(x: torch.Tensor, config: STEncoderConfig) -> tuple[torch.Tensor, ...]:
    """``(x_norm, anchor, loc, scale, log_ratios)`` of scaled windows ``x (B, T, N, C)`` as the encoder computes
    them, in float32: the normalised context without the level block ``(B, L, N, C)``, the plain seasonal
    anchor, ``loc`` and ``scale`` as ``(B, N, H|1, C)``; ``log_ratios`` ``(B, N, R, C)``, None without a level
    block. What the closed-form starts and the level baseline fit on."""
    log_ratios = level_log_ratios(x[:, : config.level_steps], config) if config.level_len else None
    xn, loc, scale = normalise_context(x[:, config.level_steps :], config.norm_eps)
    anchor = seasonal_anchor(xn, config).permute(0, 2, 1, 3)
    return xn, anchor, loc.permute(0, 2, 1, 3), scale.permute(0, 2, 1, 3), log_ratios


class STEncoder(nn.Module):
    """Gated dilated-inception TCN with multi-level skip connections (see module docstring)."""

    def __init__(self, config: STEncoderConfig | dict | None = None):
        super().__init__()
        cfg = self.config = STEncoderConfig.from_dict(config)
        if cfg.level_len and (len(cfg.level_zero) != cfg.in_channels or len(cfg.level_unit) != cfg.in_channels):
            raise ValueError(f"STEncoderConfig.level_len needs level_zero and level_unit with one value per input "
                             f"channel ({cfg.in_channels}), got {len(cfg.level_zero)} and {len(cfg.level_unit)}: "
                             "take them from the scaler the inputs are scaled with (level_from_scaler)")
        rf = cfg.receptive_field
        self.start_conv = nn.Conv2d(cfg.in_channels, cfg.residual_channels, 1)
        self.skip0 = nn.Conv2d(cfg.in_channels, cfg.skip_channels, (1, rf))
        self.filter_convs, self.gate_convs = nn.ModuleList(), nn.ModuleList()
        self.residual_convs, self.skip_convs = nn.ModuleList(), nn.ModuleList()
        self.graph_mix = nn.ModuleList()
        length, dilation = rf, 1
        for _ in range(cfg.layers):
            length -= (max(cfg.kernel_set) - 1) * dilation
            self.filter_convs.append(
                DilatedInception(cfg.residual_channels, cfg.conv_channels, cfg.kernel_set, dilation)
            )
            self.gate_convs.append(DilatedInception(cfg.residual_channels, cfg.conv_channels, cfg.kernel_set, dilation))
            self.residual_convs.append(nn.Conv2d(cfg.conv_channels, cfg.residual_channels, 1))
            self.skip_convs.append(nn.Conv2d(cfg.conv_channels, cfg.skip_channels, (1, length)))
            if cfg.graph_mixing:
                self.graph_mix.append(MixProp(cfg.conv_channels, cfg.gcn_depth, cfg.prop_alpha))
            dilation *= cfg.dilation_exponential
        self.skip_end = nn.Conv2d(cfg.residual_channels, cfg.skip_channels, (1, length))
        # day/week views + their week mean, (n_views + 1) * view_len * C values per series -> the skip summary
        self.period_proj = (nn.Conv2d((cfg.n_views + 1) * cfg.view_len * cfg.in_channels, cfg.skip_channels, 1)
                            if cfg.n_views else None)  # fmt: skip
        # the statistics themselves (level and log spread, scaled units): events depend on the absolute level
        self.stats_proj = nn.Conv2d(2 * cfg.in_channels, cfg.skip_channels, 1) if cfg.normalize else None
        # a linear map of the whole normalised input straight to the correction: at least a ridge on it
        self.linear_proj = (nn.Conv2d(cfg.main_length * cfg.in_channels, cfg.horizon * cfg.out_channels, 1)
                            if cfg.normalize else None)  # fmt: skip
        # events: a logistic regression on the same input plus its statistics, the anchor of the LLM's event logits
        self.event_proj = (nn.Conv2d((cfg.main_length + 2) * cfg.in_channels, cfg.horizon * cfg.out_channels, 1)
                           if cfg.event_logits else None)  # fmt: skip
        # the level anchor's exponents (zero: the plain historical average) and the ratios as an input
        scales = cfg.level_len and cfg.normalize and cfg.residual  # else the ratios are an input only (ablations)
        self.level_weights = nn.Parameter(torch.zeros(LEVEL_RATIOS, cfg.in_channels)) if scales else None
        self.level_proj = nn.Conv2d(LEVEL_RATIOS * cfg.in_channels, cfg.skip_channels, 1) if cfg.level_len else None
        self.token_conv = nn.Conv2d(cfg.skip_channels, cfg.num_tokens * cfg.token_dim, 1)
        self.end_conv_1 = nn.Conv2d(cfg.skip_channels, cfg.end_channels, 1)
        self.end_conv_2 = nn.Conv2d(cfg.end_channels, cfg.horizon * cfg.out_channels, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The correction starts at zero when residual: an untrained encoder forecasts the anchor."""
        if self.config.normalize:  # in-place: transformers' post_init guards nn.init on initialised parameters
            with torch.no_grad():
                for conv in (self.end_conv_2, self.linear_proj, self.event_proj):
                    if conv is not None:
                        conv.weight.zero_()
                        conv.bias.zero_()
                if self.level_weights is not None:
                    self.level_weights.zero_()

    @property
    def token_dim(self) -> int:
        return self.config.token_dim

    def match_scaler(self, scaler) -> None:
        """Read the level block's counts through ``scaler`` (an ``STScaler``): the one the inputs now get, e.g.
        a new city's own at cross-city evaluation. The level ratios are count ratios; read through the
        training city's scaler, another city's scaled values give affine-distorted counts and wrong ratios."""
        if self.config.level_len:
            self.config = replace(self.config, **level_from_scaler(scaler))

    def forward(self, x: torch.Tensor, adj: torch.Tensor | None = None,
                scale_correction: bool | None = None) -> STEncoderOutput:
        """Encode city windows ``x (W, T, N, C)`` (``T = config.context_length``); ``adj (N, N)`` is
        required with graph mixing. ``scale_correction`` (default: in eval mode) applies the level gain to the
        correction when ``config.level_scales_correction`` is on: at inference, not while the correction is
        learned (a model calling a frozen encoder passes its own mode)."""
        cfg = self.config
        if x.dim() != 4:
            raise ValueError(f"STEncoder expects st_values of shape (W, T, N, C), got {tuple(x.shape)}")
        w, t, n, c = x.shape
        if c != cfg.in_channels:
            raise ValueError(f"STEncoder was built for {cfg.in_channels} channels, st_values has {c}")
        if t != cfg.context_length:
            what = (f"input_window={cfg.input_window}" if not cfg.n_views else
                    f"a context of {cfg.context_length} steps (days={cfg.days}, weeks={cfg.weeks}, "
                    f"horizon={cfg.horizon}, input_window={cfg.input_window})")
            raise ValueError(f"STEncoder was built for {what}, st_values has T={t}")
        if cfg.graph_mixing:
            if adj is None or adj.shape != (n, n):
                got = None if adj is None else tuple(adj.shape)
                raise ValueError(f"STEncoder with graph_mixing needs st_adj of shape ({n}, {n}), got {got}")
            adj = adj.to(dtype=x.dtype, device=x.device)
        log_ratios = None
        if cfg.level_len:
            with torch.autocast(x.device.type, enabled=False):
                log_ratios = level_log_ratios(x[:, : cfg.level_steps], cfg)  # (W, N, R, C)
            x = x[:, cfg.level_steps :]
            t = cfg.main_length
        loc = scale = anchor = None
        if cfg.normalize:
            with torch.autocast(x.device.type, enabled=False):
                xn, loc, scale = normalise_context(x, cfg.norm_eps)
                anchor = seasonal_anchor(xn, cfg)  # (W, H, N, C)
            x = xn.to(self.start_conv.weight.dtype)
        periodic = x[:, : cfg.n_views * cfg.view_len]
        recent = x[:, cfg.n_views * cfg.view_len :]
        h = recent.permute(0, 3, 2, 1)  # (W, C, N, T): conv over time, regions as the height axis
        h = F.pad(h, (cfg.receptive_field - cfg.input_window, 0))  # left-pad to the receptive field
        skip = self.skip0(F.dropout(h, cfg.dropout, self.training))
        h = self.start_conv(h)
        for i in range(cfg.layers):
            residual = h
            h = torch.tanh(self.filter_convs[i](h)) * torch.sigmoid(self.gate_convs[i](h))
            h = F.dropout(h, cfg.dropout, self.training)
            skip = skip + self.skip_convs[i](h)
            if cfg.graph_mixing:
                h = self.graph_mix[i](h, adj)
            h = self.residual_convs[i](h) + residual[..., -h.shape[-1] :]
        skip = self.skip_end(h) + skip  # (W, skip, N, 1): the multi-level summary
        if self.period_proj is not None:
            views = periodic.reshape(w, cfg.n_views, cfg.view_len, n, c)
            target_only = anchor is not None and cfg.residual and not cfg.recent_views  # anchor: the views. shape
            period_mean = (anchor if target_only else views[:, : max(cfg.weeks, 1)].mean(dim=1)).to(views.dtype)
            feats = torch.cat([views, period_mean[:, None]], dim=1)  # (W, V + 1, view_len, N, C)
            feats = feats.permute(0, 1, 2, 4, 3).reshape(w, -1, n, 1)
            skip = skip + self.period_proj(F.dropout(feats, cfg.dropout, self.training))
        if self.stats_proj is not None:
            stats = torch.cat([loc, scale.log()], dim=-1)[:, 0]  # (W, N, 2C)
            skip = skip + self.stats_proj(stats.permute(0, 2, 1).unsqueeze(-1).to(skip.dtype))
        if log_ratios is not None:
            skip = skip + self.level_proj(log_ratios.reshape(w, n, -1).permute(0, 2, 1).unsqueeze(-1).to(skip.dtype))
        skip = F.relu(skip)
        tokens = self.token_conv(skip).squeeze(-1).permute(0, 2, 1).reshape(w, n, cfg.num_tokens, -1)
        out = self.end_conv_2(F.relu(self.end_conv_1(skip)))  # (W, horizon*C_out, N, 1)
        if self.linear_proj is not None:
            out = out + self.linear_proj(x.permute(0, 1, 3, 2).reshape(w, t * c, n, 1))
        event_logits = None
        if self.event_proj is not None:  # normalize is on (checked in the config): xn and stats exist
            with torch.autocast(x.device.type, enabled=False):  # a closed-form fit: keep its precision
                flat = xn.permute(0, 1, 3, 2).reshape(w, t * c, n, 1)  # (W, T*C, N, 1): step-major, then channel
                feats = torch.cat([flat, stats.float().permute(0, 2, 1).unsqueeze(-1)], dim=1)
                logits = F.conv2d(feats, self.event_proj.weight.float(), self.event_proj.bias.float())
            event_logits = logits.squeeze(-1).permute(0, 2, 1).reshape(w, n, cfg.horizon, cfg.out_channels)
        out = out.squeeze(-1)
        forecast = out.permute(0, 2, 1).reshape(w, n, cfg.horizon, cfg.out_channels)
        if cfg.normalize:
            loc, scale = loc.permute(0, 2, 1, 3), scale.permute(0, 2, 1, 3)  # (W, N, 1, C)
            anchor = anchor.permute(0, 2, 1, 3)  # (W, N, H, C)
            gain = None
            if self.level_weights is not None:
                with torch.autocast(x.device.type, enabled=False):
                    anchor = level_anchor(anchor, log_ratios, self.level_weights, loc, scale, cfg)
                    scaled = not self.training if scale_correction is None else scale_correction
                    if cfg.level_scales_correction and scaled:  # a tenfold quieter day: a tenfold smaller correction
                        gain = level_gain(log_ratios, self.level_weights)
            k = cfg.out_channels
            correction = forecast.float() if gain is None else forecast.float() * gain[..., :k]
            base = anchor[..., :k] + correction
            forecast = denormalise(base, loc, scale, k)
            return STEncoderOutput(tokens=tokens, forecast=forecast, loc=loc, scale=scale, anchor=anchor, base=base,
                                   event_logits=event_logits, gain=gain)
        return STEncoderOutput(tokens=tokens, forecast=forecast)


def denormalise(
    pred: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, channels: int | None = None
) -> torch.Tensor:
    """Normalised predictions ``(..., H, K)`` back to input units with their series' ``loc``/``scale``
    ``(..., 1, C)`` (the first ``K`` channels when the output has fewer), in float32."""
    k = pred.shape[-1] if channels is None else channels
    if loc.shape[-1] != k:
        if loc.shape[-1] < k:
            raise ValueError(f"predictions have {k} channels, the normalisation statistics {loc.shape[-1]}")
        loc, scale = loc[..., :k], scale[..., :k]
    return pred.float() * scale.float() + loc.float()
