"""Daily activity generation on held-out Tokyo (LLMob 2019) and NYC (Foursquare) days: baselines and stllm.

For every held-out test day (user, date, the persona from the user's training days) each method writes one
day; the table shows the Jensen-Shannon divergence to the real test days of activity category, start hour,
activities per day, step distance and radius of gyration (lower is better; the last two NYC only), the share
of generated days passing every validator and the share equal to a training day (memorisation). Baselines:
copy (a real training day of the same user), per-user and population Markov chains over (category, hour).
Each sampled method runs with ``--seeds`` (mean +- std). ``--generated DATA[:ROW]=FILE.jsonl`` adds rows of
days written by ``stllm generate`` / ``stllm eval gen`` for the same requests (``--max_requests`` as they were
generated). ``--ceiling K`` adds how far real days are from real days (:func:`split_half_jsd`, K random halvings
of the test days): each half against the other, the per-user Markov's days against each half (and how much its JSD
moves between the halves), the chain's days against its own days for the same requests with the next seed (the
noise of two samples of one model at the table's size), and all training days against the test days. Reads
../shared/data (see each PROVENANCE.txt).

    python bench/activity_quality.py [--data tokyo,nyc] [--seeds 0,1,2] [--max_requests 500] [--ceiling 20] \
        [--generated nyc=runs/gen-nyc/eval/generated_seed0.jsonl ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from stllm.data.activity import load_activity_split
from stllm.data.activity_checks import BOXES, CheckConfig
from stllm.eval.activity_baselines import fitted_baselines, generate_days, requests_of
from stllm.eval.activity_metrics import DISTRIBUTIONS, distribution_jsd, format_table, quality_row, split_half_jsd
from stllm.eval.generate import evenly_spaced, read_generated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="tokyo,nyc", help="comma-separated: tokyo, nyc, synthetic")
    ap.add_argument("--seeds", default="0,1,2", help="sampling seeds of the baselines")
    ap.add_argument("--max_requests", type=int, default=None,
                    help="evaluate at most this many held-out days (evenly spaced, as `stllm generate` picks them)")
    ap.add_argument("--generated", action="append", default=[],
                    help="DATA[:ROW]=FILE.jsonl: days written by `stllm generate` (or eval gen) for DATA's held-out "
                         "requests, scored as row ROW (default stllm); repeat for seeds (mean +- std)")
    ap.add_argument("--ceiling", type=int, default=0, help="K > 0: real days against real days (K random halvings "
                    "of the test days), the per-user Markov against each half, training days against the test days")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    extra: dict[str, dict[str, list[str]]] = {}
    for spec in args.generated:
        key, _, path = spec.partition("=")
        name, _, row = key.partition(":")
        extra.setdefault(name, {}).setdefault(row or "stllm", []).append(path)
    for name in args.data.split(","):
        start = time.perf_counter()
        split = load_activity_split(name)
        cfg = CheckConfig(box=BOXES.get(name), time_resolution_s=split.time_resolution_s)
        test = evenly_spaced(split.test, args.max_requests)
        requests = requests_of(test)
        rows: dict[str, list[dict[str, float]]] = {"real test": [quality_row(test, test, split.train, cfg)]}
        for model in fitted_baselines(split.train):
            rows[model.name] = [quality_row(generate_days(model, requests, seed=s), test, split.train, cfg)
                                for s in seeds]
        for row, paths in extra.get(name, {}).items():
            rows[row] = [quality_row(read_generated(p, requests), test, split.train, cfg) for p in paths]
        print(f"\n{name}: {len(split.train)} training days, {len(test)} held-out test days of "
              f"{len({c.user for c in test})} users; JSD lower is better ({time.perf_counter() - start:.1f} s)")
        print(format_table(rows))
        if args.ceiling:
            print_ceiling(test, requests, split.train, seeds, args.ceiling)


def print_ceiling(test: list, requests: list, train: list, seeds: list[int], n_splits: int) -> None:
    """The noise and shift floors of the JSDs (see the module doc); mean (SD) over halvings and seeds."""
    chain = next(m for m in fitted_baselines(train) if m.name == "markov-user")
    real = split_half_jsd(test, n_splits)
    markov = [split_half_jsd(test, n_splits, seed=s, other=generate_days(chain, requests, seed=s)) for s in seeds]
    shift = distribution_jsd(train, test)
    drawn = [generate_days(chain, requests, seed=s) for s in (*seeds, max(seeds) + 1)]
    itself = [distribution_jsd(a, b) for a, b in zip(drawn, drawn[1:])]  # same requests, next seed
    print(f"ceiling ({n_splits} random halvings of the {len(test)} test days; mean (SD)):")
    print(f"{'':<36}" + "".join(f"{d:>17}" for d in DISTRIBUTIONS))
    def mean_sd(x: np.ndarray) -> tuple[float, float]:
        x = x[np.isfinite(x)]
        return (float(x.mean()), float(x.std())) if len(x) else (np.nan, np.nan)

    lines = {
        "real half vs real half": [mean_sd(real[d]) for d in DISTRIBUTIONS],
        "markov-user vs a real half": [mean_sd(np.stack([m[d] for m in markov])) for d in DISTRIBUTIONS],
        "markov-user |half A - half B|": [mean_sd(np.abs(np.diff(np.concatenate([m[d] for m in markov]), axis=1)))
                                          for d in DISTRIBUTIONS],
        "markov-user vs itself (next seed)": [mean_sd(np.array([j[d] for j in itself])) for d in DISTRIBUTIONS],
        "all training days vs test days": [(shift[d], 0.0) for d in DISTRIBUTIONS],
    }
    for name, cells in lines.items():
        print(f"{name:<36}" + "".join(f"{'-':>17}" if np.isnan(m) else f"{m:>10.4f} ({sd:.4f})" for m, sd in cells))


if __name__ == "__main__":
    main()
