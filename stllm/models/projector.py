"""STProjector: encoder token width -> LLM hidden width, one per modality."""

from __future__ import annotations

from torch import nn

PROJECTOR_KINDS = ("linear", "mlp2x_gelu")


class STProjector(nn.Module):
    """Linear (UrbanGPT) or two-layer GELU MLP (LLaVA-1.5 ``mlp2x_gelu``) projection."""

    def __init__(self, in_dim: int, out_dim: int, kind: str = "linear"):
        super().__init__()
        if kind == "linear":
            self.net = nn.Linear(in_dim, out_dim)
        elif kind == "mlp2x_gelu":
            self.net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        else:
            raise ValueError(f"unknown projector kind {kind!r}; choose one of {PROJECTOR_KINDS}")

    def forward(self, x):
        return self.net(x)
