"""Daily activity generation on held-out Tokyo (LLMob 2019) and NYC (Foursquare) days: baselines and stllm.

For every held-out test day (user, date, the persona from the user's training days) each method writes one
day; the table shows the Jensen-Shannon divergence to the real test days of activity category, start hour,
activities per day, step distance and radius of gyration (lower is better; the last two NYC only), the share
of generated days passing every validator and the share equal to a training day (memorisation). Baselines:
copy (a real training day of the same user), per-user and population Markov chains over (category, hour).
Each sampled method runs with ``--seeds`` (mean +- std). ``--generated DATA[:ROW]=FILE.jsonl`` adds rows of
days written by ``stllm generate`` / ``stllm eval gen`` for the same requests (``--max_requests`` as they were
generated). Reads ../shared/data (see each PROVENANCE.txt).

    python bench/activity_quality.py [--data tokyo,nyc] [--seeds 0,1,2] [--max_requests 500] \
        [--generated nyc=runs/gen-nyc/eval/generated_seed0.jsonl ...]
"""

from __future__ import annotations

import argparse
import time

from stllm.data.activity import load_activity_split
from stllm.data.activity_checks import BOXES, CheckConfig
from stllm.eval.activity_baselines import fitted_baselines, generate_days, requests_of
from stllm.eval.activity_metrics import format_table, quality_row
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


if __name__ == "__main__":
    main()
