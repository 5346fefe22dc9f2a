"""STEncoder: the UrbanGPT/MTGNN temporal convolution encoder.

Gated dilated-inception convolutions over time, residual connections and multi-level skip
connections ("correlation injection": every layer writes into one skip sum, so the tokens see
short and long temporal patterns at once). Regions are independent unless graph mixing is on,
which is what lets a model trained on some regions be applied zero-shot to others.

Shapes: input ``(W, T, N, C)`` city windows -> ``tokens (W, N, K, D)`` for the LLM and a
``forecast (W, N, horizon, C_out)`` from the encoder's own head (stage-1 pretraining and the
encoder-only baseline).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


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
        return d

    @classmethod
    def from_dict(cls, d: dict | STEncoderConfig | None) -> STEncoderConfig:
        if d is None:
            return cls()
        if isinstance(d, cls):
            return d
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
    forecast: torch.Tensor  # (W, N, horizon, C_out)


class STEncoder(nn.Module):
    """Gated dilated-inception TCN with multi-level skip connections (see module docstring)."""

    def __init__(self, config: STEncoderConfig | dict | None = None):
        super().__init__()
        cfg = self.config = STEncoderConfig.from_dict(config)
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
        self.token_conv = nn.Conv2d(cfg.skip_channels, cfg.num_tokens * cfg.token_dim, 1)
        self.end_conv_1 = nn.Conv2d(cfg.skip_channels, cfg.end_channels, 1)
        self.end_conv_2 = nn.Conv2d(cfg.end_channels, cfg.horizon * cfg.out_channels, 1)

    @property
    def token_dim(self) -> int:
        return self.config.token_dim

    def forward(self, x: torch.Tensor, adj: torch.Tensor | None = None) -> STEncoderOutput:
        """Encode city windows ``x (W, T, N, C)``; ``adj (N, N)`` is required with graph mixing."""
        cfg = self.config
        if x.dim() != 4:
            raise ValueError(f"STEncoder expects st_values of shape (W, T, N, C), got {tuple(x.shape)}")
        w, t, n, c = x.shape
        if c != cfg.in_channels:
            raise ValueError(f"STEncoder was built for {cfg.in_channels} channels, st_values has {c}")
        if t != cfg.input_window:
            raise ValueError(f"STEncoder was built for input_window={cfg.input_window}, st_values has T={t}")
        if cfg.graph_mixing:
            if adj is None or adj.shape != (n, n):
                got = None if adj is None else tuple(adj.shape)
                raise ValueError(f"STEncoder with graph_mixing needs st_adj of shape ({n}, {n}), got {got}")
            adj = adj.to(dtype=x.dtype, device=x.device)
        h = x.permute(0, 3, 2, 1)  # (W, C, N, T): conv over time, regions as the height axis
        h = F.pad(h, (cfg.receptive_field - t, 0))  # left-pad to the receptive field
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
        skip = F.relu(self.skip_end(h) + skip)  # (W, skip, N, 1): the multi-level summary
        tokens = self.token_conv(skip).squeeze(-1).permute(0, 2, 1).reshape(w, n, cfg.num_tokens, -1)
        out = self.end_conv_2(F.relu(self.end_conv_1(skip))).squeeze(-1)  # (W, horizon*C_out, N)
        forecast = out.permute(0, 2, 1).reshape(w, n, cfg.horizon, cfg.out_channels)
        return STEncoderOutput(tokens=tokens, forecast=forecast)
