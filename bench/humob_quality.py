"""HuMob'24 zero-shot quality on CPU: train stllm (tiny Llama, cell-choice head) on one city's days 0-59, predict
days 60-74 of the other city, and print the table beside the baselines and the published models.

    python bench/humob_quality.py [--data DIR] [--steps 250] [--pairs B:C C:B] [--seeds 0,1,2]
                                  [--train_flags "--lm_loss_weight 0.1"] [--out /tmp/humob_quality]

Each pair and seed trains from scratch (about 40 s of 250 steps on 2 idle cores) and evaluates with
``stllm eval mobility`` (a few seconds for 100 users); with several seeds a last table gives stllm's mean and
spread per pair.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import numpy as np

from stllm.cli import main as stllm
from stllm.data.loaders import data_root
from stllm.data.mobility import MOBILITY_DATA_FILE
from stllm.eval.mobility import QUOTA_TEMPERATURE, evaluate_mobility

FILE = "groundtruth_days0-74_cityBC.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_root() / "humob24", help="folder with the HuMob'24 files")
    ap.add_argument("--steps", type=int, default=250, help="training steps per city (batch 8)")
    ap.add_argument("--pairs", nargs="+", default=["B:C", "C:B"], help="TRAIN:EVAL city pairs")
    ap.add_argument("--seeds", default="0", help="comma list of training seeds")
    ap.add_argument("--train_flags", default="", help="extra stllm train-mobility flags, e.g. '--lm_loss_weight 0.1'")
    ap.add_argument("--out", type=Path, default=Path("/tmp/humob_quality"))
    ap.add_argument("--select_temperatures", default="",
                    help="comma list, e.g. 0.4,0.55,0.7,1.0: leave --heldout_users of the training city out of "
                         "training, choose quota decoding's temperature by their GEO-BLEU on days 45-59 (from 0-44), "
                         "then evaluate the other city with it (no test data in the choice)")
    ap.add_argument("--heldout_users", type=int, default=20, help="users left out for --select_temperatures")
    ap.add_argument("--decodes", default="quota,geo,argmax",
                    help="comma list of stllm eval mobility --decode rules, each scored on the same checkpoint")
    args = ap.parse_args()
    data = args.data / FILE
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    scores: dict[str, list[tuple[float, float]]] = {}
    select = [float(t) for t in args.select_temperatures.split(",") if t.strip()]
    held = ["--heldout_users", str(args.heldout_users)] if select else []
    for pair in args.pairs:
        train_city, eval_city = pair.split(":")
        for seed in seeds:
            ckpt = args.out / f"train-{train_city}-seed{seed}"
            start = time.perf_counter()
            code = stllm(["train-mobility", "--data", str(data), "--base", "1", "--city", train_city, "--output_dir",
                          str(ckpt), "--max_steps", str(args.steps), "--per_device_train_batch_size", "8",
                          "--learning_rate", "3e-3", "--save_strategy", "no", "--disable_tqdm", "true", "--report_to",
                          "none", "--logging_steps", "50", "--seed", str(seed), "--overwrite_output_dir", "true",
                          *held, *shlex.split(args.train_flags)])  # fmt: skip
            if code:
                raise SystemExit(code)
            trained = time.perf_counter() - start
            temperature = QUOTA_TEMPERATURE
            if select:
                heldout = json.loads((ckpt / MOBILITY_DATA_FILE).read_text())["heldout_users"]
                valid = {}
                for t in select:
                    r = evaluate_mobility(ckpt, args.out / f"select-{train_city}-seed{seed}-T{t}", data=str(data),
                                          base=1, city=train_city, history_days=(0, 44), target_days=(45, 59),
                                          decode="quota", temperature=t, users=np.array(heldout))
                    valid[t] = (r.metrics["stllm"]["geobleu"], r.metrics["stllm"]["dtw"])
                temperature = max(valid, key=lambda t: valid[t][0])
                print(f"\n== seed {seed}: quota temperature on {len(heldout)} held-out users of {train_city} (days "
                      f"45-59 from 0-44): " + ", ".join(f"T {t}: {g:.4f} / {d:.2f}" for t, (g, d) in valid.items())
                      + f" -> T {temperature}")
            for decode in args.decodes.split(","):
                result = evaluate_mobility(ckpt, args.out / f"{train_city}-to-{eval_city}-seed{seed}-{decode}",
                                           data=str(data), base=1, city=eval_city, decode=decode,
                                           temperature=temperature)
                print(f"\n== seed {seed}: trained on {train_city} ({trained:.0f} s), zero-shot on {eval_city}, "
                      f"decode {decode}{f' (T {temperature})' if decode == 'quota' else ''} ==\n{result.table}")
                m = result.metrics["stllm"]
                scores.setdefault(f"{pair} decode {decode}", []).append((m["geobleu"], m["dtw"]))
    if scores:
        print(f"\nstllm over seeds {args.seeds} ({args.train_flags or 'default flags'}): mean +- std")
        for pair, rows in scores.items():
            a = np.array(rows)
            print(f"{pair}  GEO-BLEU {a[:, 0].mean():.4f} +- {a[:, 0].std():.4f}  DTW {a[:, 1].mean():.2f} +- "
                  f"{a[:, 1].std():.2f}")


if __name__ == "__main__":
    main()
