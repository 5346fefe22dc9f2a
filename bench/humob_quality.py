"""HuMob'24 zero-shot quality on CPU: train stllm (tiny Llama, cell-choice head) on one city's days 0-59, predict
days 60-74 of the other city, and print the table beside the baselines and the published models.

    python bench/humob_quality.py [--data DIR] [--steps 250] [--pairs B:C C:B] [--out /tmp/humob_quality]

Each pair trains from scratch (about 4-5 minutes of 250 steps on 2 shared cores) and evaluates with
``stllm eval mobility`` (about 5 s for 100 users).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from stllm.cli import main as stllm
from stllm.data.loaders import data_root
from stllm.eval.mobility import evaluate_mobility

FILE = "groundtruth_days0-74_cityBC.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_root() / "humob24", help="folder with the HuMob'24 files")
    ap.add_argument("--steps", type=int, default=250, help="training steps per city (batch 8)")
    ap.add_argument("--pairs", nargs="+", default=["B:C", "C:B"], help="TRAIN:EVAL city pairs")
    ap.add_argument("--out", type=Path, default=Path("/tmp/humob_quality"))
    args = ap.parse_args()
    data = args.data / FILE
    for pair in args.pairs:
        train_city, eval_city = pair.split(":")
        ckpt = args.out / f"train-{train_city}"
        start = time.perf_counter()
        code = stllm(["train-mobility", "--data", str(data), "--base", "1", "--city", train_city, "--output_dir",
                      str(ckpt), "--max_steps", str(args.steps), "--per_device_train_batch_size", "8",
                      "--learning_rate", "3e-3", "--save_strategy", "no", "--disable_tqdm", "true", "--report_to",
                      "none", "--logging_steps", "50", "--seed", "0", "--overwrite_output_dir", "true"])
        if code:
            raise SystemExit(code)
        trained = time.perf_counter() - start
        result = evaluate_mobility(ckpt, args.out / f"{train_city}-to-{eval_city}", data=str(data), base=1,
                                   city=eval_city)
        print(f"\n== trained on {train_city} ({trained:.0f} s), zero-shot on {eval_city} ==\n{result.table}")


if __name__ == "__main__":
    main()
