"""Prediction heads that read the LLM hidden states at the history and prediction slots.

As in UrbanGPT, slot k of the prediction placeholder (and slot k of the history placeholder it
answers) predicts output channel k over the horizon: both hidden states go through their own
``hidden -> head_dim`` ReLU layer, are concatenated, and a linear layer emits ``horizon`` values.
The regression head's last layer starts at zero: with a scale-free encoder its output is a
correction to the seasonal anchor, so an untrained model forecasts the historical average instead
of noise. Event logits likewise correct the encoder's logistic event logits when it has that path; else
they keep the default initialisation (the anchor reaches them through the tokens).
"""

from __future__ import annotations

import torch
from torch import nn


class SlotHead(nn.Module):
    """``his (P, K, H), pre (P, K, H) -> (P, horizon, K)``."""

    def __init__(self, hidden_size: int, head_dim: int, horizon: int):
        super().__init__()
        self.his_proj = nn.Linear(hidden_size, head_dim)
        self.pre_proj = nn.Linear(hidden_size, head_dim)
        self.out = nn.Linear(2 * head_dim, horizon)

    def forward(self, his_hidden: torch.Tensor, pre_hidden: torch.Tensor) -> torch.Tensor:
        h = torch.cat((self.his_proj(his_hidden).relu(), self.pre_proj(pre_hidden).relu()), dim=-1)
        return self.out(h).transpose(-1, -2)


class RegressionHead(SlotHead):
    """Flow forecasts: a correction to the seasonal anchor in the history's normalised units (scale-free
    encoder), else values in scaled units (the scaler inverts them at the output)."""

    def __init__(self, hidden_size: int, head_dim: int, horizon: int):
        super().__init__(hidden_size, head_dim, horizon)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # in-place, not nn.init: transformers' post_init guards nn.init on parameters it already initialised
        self.out.weight.zero_()
        self.out.bias.zero_()


class ClassificationHead(SlotHead):
    """Event logits (train with ``BCEWithLogitsLoss``; apply sigmoid only at the output). With an encoder that
    has an event-logit path, its output is a correction to those logits and starts at zero
    (:meth:`reset_parameters`, called by the model)."""

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.out.weight.zero_()
        self.out.bias.zero_()
