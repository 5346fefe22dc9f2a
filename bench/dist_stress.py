"""Run the 2-process torchrun training of ``tests/train/test_distributed.py`` many times, several at once.

A rank that aborts at exit 1 run in 40 fails CI at random; this script measures the failure rate under
load and keeps the stderr of every failed run. ``python bench/dist_stress.py --runs 100 --parallel 2
--stages zero3`` prints one line per run and a summary (failures / runs per stage); exit 1 if any failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "train" / "dist_probe.py"


def one_run(stage: str, workdir: Path, timeout: float) -> tuple[int, float, str]:
    """``(returncode, seconds, stderr tail)`` of one torchrun training of 3 steps on 2 CPU processes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(PROBE),
           str(workdir / "rep"), "--output_dir", str(workdir / "out"), "--synthetic_regions", "8",
           "--synthetic_days", "6", "--context_days", "1", "--context_weeks", "0", "--val_fraction", "0",
           "--max_steps", "3", "--per_device_train_batch_size", "4", "--disable_tqdm", "true",
           "--save_strategy", "steps", "--save_steps", "3"]  # fmt: skip
    if stage != "ddp":
        cmd += ["--deepspeed", str(ROOT / "ds_configs" / f"{stage}.json")]
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env,
                              start_new_session=True)  # fmt: skip
        code, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:
        code, err = -999, f"timeout after {timeout} s\n{(e.stderr or b'')[-20000:]!r}"
    return code, time.perf_counter() - t0, err[-20000:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=100, help="runs per stage")
    p.add_argument("--parallel", type=int, default=2, help="runs at the same time (the load)")
    p.add_argument("--stages", default="zero3", help="comma list of ddp, zero2, zero3")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before a run counts as hung")
    p.add_argument("--budget_s", type=float, default=None, help="stop starting runs after this many seconds")
    p.add_argument("--log_dir", default=None, help="where the stderr of failed runs is written")
    args = p.parse_args(argv)
    if args.runs < 1 or args.parallel < 1:
        p.error("--runs and --parallel must be >= 1")
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="dist-stress-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary = {}
    for stage in args.stages.split(","):
        results = []

        def job(k: int, stage: str = stage):
            if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
                return None
            with tempfile.TemporaryDirectory() as tmp:
                code, secs, err = one_run(stage, Path(tmp), args.timeout)
            print(f"{stage} run {k}: rc {code} in {secs:.1f} s", flush=True)
            if code != 0:
                (log_dir / f"{stage}-run{k}.stderr.txt").write_text(err)
            return code

        with ThreadPoolExecutor(args.parallel) as pool:
            results = [r for r in pool.map(job, range(args.runs)) if r is not None]
        summary[stage] = (sum(r != 0 for r in results), len(results))
    for stage, (bad, n) in summary.items():
        print(f"{stage}: {bad} failed of {n} runs ({args.parallel} at a time); stderr of failures in {log_dir}")
    return int(any(bad for bad, _ in summary.values()))


if __name__ == "__main__":
    sys.exit(main())
