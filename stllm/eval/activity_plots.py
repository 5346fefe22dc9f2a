"""Map of generated days over real ones: where the model sends people, beside where they went."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stllm.data.activity import ActivityChain
from stllm.eval.plots import plt


def plot_days_map(path: str | Path, real: Sequence[ActivityChain], generated: Sequence[ActivityChain],
                  title: str, max_days: int = 6) -> Path | None:
    """Up to ``max_days`` real days (grey, left) and generated days (coloured, right) as lines between their
    activities; ``None`` when the days have no coordinates."""
    def located(days):
        return [np.array([a.coord for a in d.activities if a.coord is not None]) for d in days][:max_days]

    sets = [located(real), located(generated)]
    if not any(len(xy) for days in sets for xy in days):
        return None
    path = Path(path)
    fig, axes = plt.subplots(1, 2, figsize=(10, 5), sharex=True, sharey=True)
    for ax, days, name in zip(axes, sets, ("real held-out days", "generated days")):
        for k, xy in enumerate(days):
            if len(xy):
                ax.plot(xy[:, 1], xy[:, 0], "-o", ms=3, lw=1, color=plt.cm.tab10(k % 10), alpha=0.8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("longitude")
    axes[0].set_ylabel("latitude")
    lat = np.concatenate([xy[:, 0] for days in sets for xy in days if len(xy)])
    for ax in axes:
        ax.set_aspect(1 / np.cos(np.deg2rad(np.mean(lat))))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
