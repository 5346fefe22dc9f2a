"""On-device intent prediction (issue 18): baselines and the stllm population / student / tuned models on the
held-out users' later days.

Split: 30% of users held out (never seen by the population model or the student), in every user the last 20% of
active days are test days; the table scores the held-out users' test days (checked in code). Baselines need no
training; ``--models`` adds the population model (tiny Llama, ``stllm train-intent``), the distilled student and
the student after per-user head tuning with and without the unlearning term, over ``--seeds`` (mean ± std).

    python bench/intent_quality.py [--data tokyo|nyc|synthetic] [--models] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import time

from stllm.data.intent import prepare_intent, resolve_events
from stllm.eval.intent_baselines import baseline_table
from stllm.eval.intent_metrics import format_intent_table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="tokyo", help="tokyo | nyc | synthetic | an LLMob-format CSV")
    ap.add_argument("--split_seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    data = prepare_intent(resolve_events(args.data), seed=args.split_seed)
    rows = baseline_table(data)
    n = len(data.rows_of("user_test"))
    print(format_intent_table(rows, f"{args.data}: {len(data.split.heldout_users)} held-out users, {n} test targets "
                                    f"({len(data.split.population_users)} population users)"))
    print(f"\n({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
