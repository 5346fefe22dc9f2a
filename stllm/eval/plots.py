"""Plots where people look after an evaluation: forecasts against truth, and error on the map."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _series(a: np.ndarray, r: int, c: int) -> np.ndarray:
    """Windows of one region/channel laid end to end: (W, R, H, C) -> (W*H,)."""
    return a[:, r, :, c].reshape(-1)


def plot_forecasts(
    path: str | Path,
    truth: np.ndarray,
    preds: dict[str, np.ndarray],
    region_names: list[str],
    channels: list[str],
    regions: list[int] | None = None,
) -> Path:
    """True vs predicted series for a few regions (rows) and every channel (columns)."""
    path = Path(path)
    regions = list(range(min(4, truth.shape[1]))) if regions is None else regions
    fig, axes = plt.subplots(len(regions), len(channels), figsize=(5 * len(channels), 2.4 * len(regions)),
                             squeeze=False)  # fmt: skip
    for row, r in enumerate(regions):
        for col, ch in enumerate(channels):
            ax = axes[row, col]
            ax.plot(_series(truth, r, col), color="black", lw=1.4, label="truth")
            for name, p in preds.items():
                ax.plot(_series(p, r, col), lw=1.0, label=name)
            ax.set_title(f"{region_names[r]} - {ch}", fontsize=9)
            ax.tick_params(labelsize=7)
    axes[0, -1].legend(fontsize=7, loc="upper right")
    fig.supxlabel("forecast steps (windows end to end)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_error_map(
    path: str | Path, lat: np.ndarray, lon: np.ndarray, error: np.ndarray, names: list[str], title: str
) -> Path:
    """Per-region error as coloured points at the region centroids."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    sc = ax.scatter(lon, lat, c=error, cmap="viridis", s=80, edgecolors="black", linewidths=0.4)
    worst = np.argsort(error)[-3:]
    for i in worst:
        ax.annotate(names[i], (lon[i], lat[i]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    fig.colorbar(sc, ax=ax, label="MAE")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(title, fontsize=10)
    ax.set_aspect(1 / np.cos(np.deg2rad(np.nanmean(lat))))  # degrees of lon shrink with latitude
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_acc_at_k(path: str | Path, ranks: dict[str, np.ndarray], groups: dict[str, np.ndarray],
                  max_k: int = 20) -> Path:
    """Next-POI Acc@k for k = 1..``max_k``, one line per method, one panel per user group.

    ``ranks``: 0-based target ranks per method (``inf`` = unknown target, a miss); ``groups``: boolean
    sample masks (e.g. seen / unseen users); empty groups are left out."""
    path = Path(path)
    groups = {g: m for g, m in groups.items() if m.any()}
    ks = np.arange(1, max_k + 1)
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
    for ax, (g, m) in zip(axes[0], groups.items()):
        for name, r in ranks.items():
            ax.plot(ks, (r[m][:, None] < ks[None, :]).mean(axis=0), marker="o", ms=2.5, lw=1.2, label=name)
        reachable = float(np.isfinite(next(iter(ranks.values()))[m]).mean())  # targets in the table
        ax.axhline(reachable, color="grey", ls="--", lw=0.8, label="reachable (target in the table)")
        ax.set_title(f"{g} (n = {int(m.sum())})", fontsize=9)
        ax.set_xticks([k for k in (1, 5, 10, 15, 20, 30, 50) if k <= max_k])
        ax.set_xlabel("k")
        ax.set_ylabel("Acc@k")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
