"""Long-term mobility: choose the cell of each target slot among the user's candidate places.

Why a choice among candidates rather than a head over the 40,000 cells (or factorised x/y heads over the 200-wide
grid): absolute cells do not transfer between cities (zero-shot B -> C), a 40,000-way softmax per slot is most of
the compute of a tiny model, and factorised x/y heads predict x and y independently, which puts mass on cells
(x of work, y of home) where the user never is. A user's places, described by scale-free shares of their
history (:data:`stllm.data.mobility.MOB_FEATURES`), are a vocabulary that means the same in every city.

Score of candidate k for slot q = MLP([features (q, k), query (q)]): the query is the LLM's hidden state at the
slot's ``<mob_pre>`` token projected to ``head_dim``, plus a learned embedding of the slot's (day kind, slot)
(``mob_slot``), so the same place shares can weigh differently at 3 am on a weekday and at noon on a weekend.
Candidates padded out (a user with fewer places) get ``-inf``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stllm.batch_checks import DeviceChecks
from stllm.data.trajectories import SLOTS_PER_DAY


def check_mob_slot(slot: torch.Tensor, checks: DeviceChecks) -> None:
    """``mob_slot`` (day kind * 48 + slot) inside ``[0, 96)``, as a device-side check (see stllm.batch_checks)."""
    if slot.numel():
        checks.fail_if((slot.min() < 0) | (slot.max() >= 2 * SLOTS_PER_DAY),
                       f"mob_slot must be day kind * {SLOTS_PER_DAY} + slot in [0, {2 * SLOTS_PER_DAY})")


class CellChoiceHead(nn.Module):
    """``query (Q, H), features (Q, K, F), slot (Q,), valid (Q, K) -> scores (Q, K)`` (logits over candidates)."""

    def __init__(self, hidden_size: int, n_features: int, head_dim: int = 32):
        super().__init__()
        self.query = nn.Linear(hidden_size, head_dim)
        self.slot = nn.Embedding(2 * SLOTS_PER_DAY, head_dim)
        # the first layer of MLP([features, query]) split in two: the query part is computed once per slot, not
        # once per (slot, candidate) -- the head's cost is then O(Q K F hidden), a few ms for a user's 15 days
        self.from_features = nn.Linear(n_features, 64)
        self.from_query = nn.Linear(head_dim, 64, bias=False)
        self.out = nn.Linear(64, 1)
        self.skip = nn.Linear(n_features, 1)  # a linear path from the shares: starts near the slot baseline's ranking
        self.n_features = n_features

    def forward(self, query: torch.Tensor, features: torch.Tensor, slot: torch.Tensor,
                valid: torch.Tensor | None = None, validate: bool = True) -> torch.Tensor:
        """``validate=False``: the caller checked ``slot``'s range with its other checks (one host read)."""
        q_n, _, f = features.shape
        if f != self.n_features or query.shape[0] != q_n or slot.shape != (q_n,):
            raise ValueError(f"mob_features must be (Q, K, {self.n_features}) with one <mob_pre> and one mob_slot per "
                             f"row: got features {tuple(features.shape)}, {query.shape[0]} <mob_pre> tokens, "
                             f"mob_slot {tuple(slot.shape)}")
        if validate:
            checks = DeviceChecks()
            check_mob_slot(slot, checks)
            checks.resolve()
        dtype = self.query.weight.dtype
        feats = features.to(device=self.query.weight.device, dtype=dtype)
        q = self.query(query.to(dtype)) + self.slot(slot.to(feats.device))
        h = F.gelu(self.from_features(feats) + self.from_query(q)[:, None, :])
        scores = self.out(h).squeeze(-1) + self.skip(feats).squeeze(-1)
        if valid is not None:
            scores = scores.masked_fill(~valid.to(device=scores.device, dtype=torch.bool), float("-inf"))
        return scores
