"""Linear solvers shared by the baselines and the encoder's warm starts: closed-form ridge regression,
accumulated in chunks (the scale-free ridge baseline and the encoder's linear correction), and L2-penalised
logistic regression (the scale-free logistic baseline and the encoder's event-logit path), so each baseline
and the model's start solve the same problem with the same code."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


class RidgeAccumulator:
    """Accumulate ``X'X`` and ``X'Y`` over chunks of rows (float64), then solve
    ``(X'X + alpha * n * I) W = X'Y`` with the last feature (a constant 1, the bias) unpenalised.

    Memory is ``D x D + D x K`` whatever the number of rows; ``alpha = 0`` is least squares.
    """

    def __init__(self, n_features: int, n_outputs: int):
        self.xtx = np.zeros((n_features, n_features))
        self.xty = np.zeros((n_features, n_outputs))
        self.n = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Rows ``x (B, D)`` (last column the constant 1) and their targets ``y (B, K)``."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape[1] != self.xtx.shape[0] or y.shape[1] != self.xty.shape[1] or len(x) != len(y):
            raise ValueError(f"RidgeAccumulator: got x {x.shape}, y {y.shape}; expected (B, {self.xtx.shape[0]}) "
                             f"and (B, {self.xty.shape[1]})")
        self.xtx += x.T @ x
        self.xty += x.T @ y
        self.n += len(x)

    def solve(self, alpha: float) -> np.ndarray:
        """Weights ``(D, K)``."""
        if alpha < 0 or not np.isfinite(alpha):
            raise ValueError(f"ridge alpha must be >= 0, got {alpha}")
        if self.n == 0:
            raise ValueError("RidgeAccumulator: no rows added")
        penalty = np.full(self.xtx.shape[0], alpha * self.n)
        penalty[-1] = 0.0  # the bias is not penalised
        a = self.xtx + np.diag(penalty)
        return np.linalg.lstsq(a, self.xty, rcond=None)[0] if alpha == 0 else np.linalg.solve(a, self.xty)


MAX_DESIGN_ENTRIES = 30_000_000  # rows x inputs of one logistic fit: 240 MB per float64 copy of the inputs


def logistic_rows(n_inputs: int, max_rows: int) -> int:
    """How many rows a logistic fit on ``n_inputs`` inputs may take: ``max_rows``, or fewer so the design matrix
    stays within :data:`MAX_DESIGN_ENTRIES` (a long hourly context of many channels has thousands of inputs)."""
    return max(1, min(int(max_rows), MAX_DESIGN_ENTRIES // max(1, int(n_inputs))))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, max_iter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Independent logistic regressions of each column of ``y (n, K)`` (0/1) on ``x (n, D)`` -> ``(W (D, K),
    b (K,))`` float64 with ``sigmoid(x @ W + b)`` the fitted probabilities.

    The inputs are standardised on these rows for the fit (a constant input stays 0), the loss is the mean
    binary cross-entropy + ``l2 * ||W_std||^2`` (bias unpenalised, so ``l2`` means the same whatever the
    inputs' units), minimised by L-BFGS (``max_iter``, strong Wolfe) in float64 from each output's base rate;
    the standardisation is folded back into ``W`` and ``b``. Deterministic."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"fit_logistic: expected x (n, D) and y (n, K) with n >= 1, got {x.shape} and {y.shape}")
    if l2 < 0 or not np.isfinite(l2) or int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"fit_logistic: l2 must be >= 0 and max_iter a positive integer, got {l2}, {max_iter}")
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    xt, yt = torch.from_numpy((x - mu) / sd), torch.from_numpy(y)
    w = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.logit(yt.mean(dim=0).clamp(1e-4, 1 - 1e-4)).detach().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], max_iter=int(max_iter), line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w_std, b_std = w.detach().numpy(), b.detach().numpy()
    weights = w_std / sd[:, None]
    return weights, b_std - mu @ weights
