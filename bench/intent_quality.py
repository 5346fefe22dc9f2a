"""On-device intent prediction (issue 18): baselines and the stllm population / student / tuned models on the
held-out users' later days.

Split: 30% of users held out (never seen by the population model or the student), in every user the last 20% of
active days are test days; the table scores the held-out users' test days (checked in code). Baselines need no
training; ``--models`` runs the pipeline of :mod:`stllm.train.intent_pipeline` per seed (population model =
``--tiny_preset small`` Llama trained by ``stllm train-intent``, distilled student, per-user head tuning with and
without the unlearning term, history sizing and per-user logit adjustment with ``k``/``tau`` chosen on validation
days inside the users' earlier days, the tuned rows' validation gap held below every baseline's validation gap minus
``--gap_margin``, and their ablations) and reports each seed's table, mean ± std over seeds, the per-seed count of
users whose macro F1 rises and the chosen ``(k, tau, alpha)``, then the footprint of teacher and student. ``--reuse``
loads the population model and student a previous run of the same seed left in ``--out`` (training is
deterministic on CPU: the same seed trains the same models).

    python bench/intent_quality.py [--data tokyo|nyc|synthetic] [--models] [--seeds 0,1,2] [--steps 300] [--reuse]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from stllm.data.intent import INTENTS, prepare_intent, resolve_events
from stllm.eval.intent_baselines import baseline_table
from stllm.eval.intent_metrics import format_intent_table, per_user_scores, score_table


def seed_rows(r) -> dict[str, dict[str, float]]:
    """One seed's scores of each model."""
    y, users = r.data.log.intent[r.rows], r.data.log.user[r.rows]
    return {name: score_table(y, pred, users, len(INTENTS)) for name, pred in r.preds.items()}


def model_rows(results) -> dict[str, dict[str, float]]:
    """Mean over seeds of each model's scores, with the spread of the per-user macro F1 mean."""
    rows: dict[str, dict[str, float]] = {}
    seeds = [seed_rows(r) for r in results]
    for name in results[0].preds:
        per_seed = [s[name] for s in seeds]
        row = {k: float(np.mean([s[k] for s in per_seed])) for k in per_seed[0]}
        row["user_macro_f1_std"] = float(np.std([s["user_macro_f1"] for s in per_seed]))
        rows[name] = row
    return rows


def improved_users(result, before: str, after: str) -> tuple[int, int]:
    """How many held-out users have a higher macro F1 after than before (of how many)."""
    r = result
    y, users = r.data.log.intent[r.rows], r.data.log.user[r.rows]
    _, a = per_user_scores(y, r.preds[before], users, len(INTENTS))
    _, b = per_user_scores(y, r.preds[after], users, len(INTENTS))
    return int((b["macro_f1"] > a["macro_f1"]).sum()), len(a["macro_f1"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="tokyo", help="tokyo | nyc | synthetic | an LLMob-format CSV")
    ap.add_argument("--split_seed", type=int, default=0)
    ap.add_argument("--models", action="store_true", help="also train population model, student, tuned students")
    ap.add_argument("--seeds", default="0", help="comma list of training seeds (--models)")
    ap.add_argument("--steps", type=int, default=300, help="population model training steps (batch 32)")
    ap.add_argument("--preset", default="small", help="population model size (--tiny_preset)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/intent_quality"))
    ap.add_argument("--select_on", default="pooled", choices=("pooled", "user"),
                    help="validation objective of k/tau/alpha: pooled or mean per-user macro F1")
    ap.add_argument("--gap_margin", type=float, default=0.02,
                    help="tuned rows: validation gap below every baseline's minus this (negative: no bound)")
    ap.add_argument("--reuse", action="store_true", help="load population/ and student/ of --out/seedK when there")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    data = prepare_intent(resolve_events(args.data), seed=args.split_seed)
    rows = baseline_table(data)
    title = (f"{args.data}: {len(data.split.heldout_users)} held-out users, {len(data.rows_of('user_test'))} "
             f"later-day targets ({len(data.split.population_users)} population users)")
    if args.models:
        from stllm.train.intent_pipeline import (
            BEFORE,
            PLAIN,
            POPULATION,
            POPULATION_ADJUSTED,
            TUNED,
            PipelineConfig,
            run_pipeline,
        )

        results = []
        for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
            cfg = PipelineConfig(data=args.data, seed=seed, split_seed=args.split_seed, teacher_steps=args.steps,
                                 teacher_preset=args.preset, reuse=args.reuse,
                                 select_on=args.select_on, gap_margin=args.gap_margin if args.gap_margin >= 0 else None)
            r = run_pipeline(cfg, args.out / f"seed{seed}")
            results.append(r)
            pairs = ((TUNED, POPULATION), (TUNED, POPULATION_ADJUSTED), (TUNED, BEFORE), (PLAIN, POPULATION))
            up = {f"{a} over {b}": improved_users(r, b, a) for a, b in pairs}
            np.savez(args.out / f"seed{seed}" / "predictions.npz", rows=r.rows, **r.preds)
            print(f"seed {seed}: " + ", ".join(f"{k} {v:.0f} s" for k, v in r.seconds.items()) + "; users whose "
                  "macro F1 rises: " + ", ".join(f"{n} {a}/{b}" for n, (a, b) in up.items()), flush=True)
            print(f"seed {seed}: chosen on validation: " + ", ".join(
                f"{n} k={c.k:g} tau={c.tau:g} alpha={c.alpha:g} (val macro F1 {r.val_scores[n]['macro_f1']:.4f}, gap "
                f"{r.val_scores[n]['gap']:.4f})" for n, c in r.choices.items()), flush=True)
            print("seed {}: validation gaps of the baselines: {}".format(seed, ", ".join(
                f"{n} {v['gap']:.4f}" for n, v in r.val_scores.items() if n not in r.choices)), flush=True)
            print(format_intent_table({**seed_rows(r), **rows}, f"seed {seed}") + "\n", flush=True)
        r = results[0]
        _, first = np.unique(r.data.log.user[r.rows], return_index=True)
        print(f"held-out users' training targets: median {np.median(r.n_train[first]):.0f} per user")
        rows = {**model_rows(results), **rows}
        title += f"; models: mean over seeds {args.seeds} (user macro F1 ± std over seeds)"
        print(format_intent_table(rows, title))
        for who in ("teacher", "student"):
            print(f"\n{who}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in results[-1].sizes[who].items()))
        t, s = results[-1].sizes["teacher"]["parameters"], results[-1].sizes["student"]["parameters"]
        print(f"student / teacher parameters: 1/{t / s:.1f}")
    else:
        print(format_intent_table(rows, title))
    print(f"\n({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
