"""HuMob'24 cities B and C: baselines and the published models on days 60-74 from history days 0-59.

Prints one table per city: GEO-BLEU (higher is better) and DTW (lower is better), each the mean over the city's
100 users, with the official HuMob'24 metric (``--variant giscup25`` for the 2025 one), for the history baselines
of :mod:`stllm.eval.mobility_baselines` and for Llama-3-8B-Mob and LP-BERT scored from their prediction files,
with the published means beside. Reads ../shared/data/humob24 (see its PROVENANCE.txt); about a second on 2 cores.

    python bench/humob_baselines.py [--data DIR] [--variant humob24|giscup25]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from stllm.data.loaders import data_root
from stllm.data.trajectories import load_humob_csv, split_by_city, split_by_day
from stllm.eval.mobility_baselines import BASELINES, published_predictions
from stllm.eval.mobility_metrics import score_users

PUBLISHED = {  # (model, city): (GEO-BLEU, DTW) means reported with the HuMob'24 metric
    ("Llama-3-8B-Mob", "B"): (0.3541, 25.39), ("Llama-3-8B-Mob", "C"): (0.2969, 20.57),
    ("LP-BERT", "B"): (0.3093, 23.30), ("LP-BERT", "C"): (0.2682, 23.82),
}
FILES = {"Llama-3-8B-Mob": "pred_llama3_8b_mob_days60-74_cityBC.csv", "LP-BERT": "pred_lpbert_days60-74_cityBC.csv"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_root() / "humob24", help="folder with the HuMob'24 files")
    ap.add_argument("--variant", default="humob24", choices=["humob24", "giscup25"], help="metric version")
    args = ap.parse_args()
    start = time.perf_counter()
    gt = load_humob_csv(args.data / "groundtruth_days0-74_cityBC.csv", base=1)
    for city, traj in split_by_city(gt).items():
        split = split_by_day(traj, (0, 59), (60, 74))
        rows = [(name, fn(split.history, split.target), None) for name, fn in BASELINES.items()]
        rows += [(m, published_predictions(args.data / f, split.target, base=1, city=city), PUBLISHED[m, city])
                 for m, f in FILES.items()]
        print(f"\ncity {city}: {len(split.target.users)} users, {len(split.target)} target slots (days 60-74), "
              f"history days 0-59, metric {args.variant}")
        print(f"{'method':44s} {'GEO-BLEU':>9s} {'DTW':>8s}   {'published GEO-BLEU / DTW':>24s}")
        for name, pred, pub in rows:
            gb, dt = score_users(pred, split.target, args.variant).mean()
            ref = f"{pub[0]:.4f} / {pub[1]:.2f}" if pub and args.variant == "humob24" else ""
            print(f"{name:44s} {gb:9.4f} {dt:8.2f}   {ref:>24s}")
    print(f"\ntotal time {time.perf_counter() - start:.2f} s (load, baselines, scoring)")


if __name__ == "__main__":
    main()
