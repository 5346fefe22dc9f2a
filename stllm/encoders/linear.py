"""Closed-form ridge regression, accumulated in chunks: the scale-free linear baseline and the warm start
of the encoder's linear correction (stage 1) solve the same problem with this one solver."""

from __future__ import annotations

import numpy as np


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
