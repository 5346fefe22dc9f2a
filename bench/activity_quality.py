"""Daily activity generation on held-out Tokyo (LLMob 2019) and NYC (Foursquare) days: baselines and stllm.

For every held-out test day (user, date, the persona from the user's training days) each method writes one
day; the table shows the Jensen-Shannon divergence to the real test days of activity category, start hour,
activities per day, step distance and radius of gyration (lower is better; the last two NYC only), the share
of generated days passing every validator and the share equal to a training day (memorisation). Baselines:
copy (a real training day of the same user), per-user and population Markov chains over (category, hour).
Each sampled method runs with ``--seeds`` (mean +- std). Reads ../shared/data (see each PROVENANCE.txt).

    python bench/activity_quality.py [--data tokyo,nyc] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from stllm.data.activity import load_activity_split
from stllm.data.activity_checks import BOXES, CheckConfig
from stllm.eval.activity_baselines import fitted_baselines, generate_days, requests_of
from stllm.eval.activity_metrics import DISTRIBUTIONS, quality_row


def format_rows(rows: dict[str, list[dict[str, float]]]) -> str:
    """One line per method: mean (+- std over seeds) of each column."""
    cols = [*DISTRIBUTIONS, "valid", "copies"]
    lines = [f"{'method':<14}" + "".join(f"{c:>17}" for c in cols)]
    for name, runs in rows.items():
        cells = []
        for c in cols:
            v = np.array([r[c] for r in runs], dtype=np.float64)
            if np.isnan(v).all():
                cells.append(f"{'-':>17}")
            elif len(v) > 1:
                cells.append(f"{np.nanmean(v):>10.4f} +-{np.nanstd(v):.3f}")
            else:
                cells.append(f"{v[0]:>17.4f}")
        lines.append(f"{name:<14}" + "".join(cells))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="tokyo,nyc", help="comma-separated: tokyo, nyc, synthetic")
    ap.add_argument("--seeds", default="0,1,2", help="sampling seeds of the baselines")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in args.data.split(","):
        start = time.perf_counter()
        split = load_activity_split(name)
        cfg = CheckConfig(box=BOXES.get(name), time_resolution_s=split.time_resolution_s)
        requests = requests_of(split.test)
        rows: dict[str, list[dict[str, float]]] = {"real test": [quality_row(split.test, split.test, split.train, cfg)]}
        for model in fitted_baselines(split.train):
            rows[model.name] = [quality_row(generate_days(model, requests, seed=s), split.test, split.train, cfg)
                                for s in seeds]
        print(f"\n{name}: {len(split.train)} training days, {len(split.test)} held-out test days of "
              f"{len({c.user for c in split.test})} users; JSD lower is better ({time.perf_counter() - start:.1f} s)")
        print(format_rows(rows))


if __name__ == "__main__":
    main()
