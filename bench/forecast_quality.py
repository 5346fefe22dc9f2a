"""Forecast quality against honest baselines: the table a user sees, over several seeds, with ratios.

Runs the real pipeline (``stllm.demo.run_demo``: stage-1 encoder, stage-2 tiny LLM, the "stllm without
LLM" ablation, cross-region zero-shot evaluation with every baseline on the same windows) once per
seed and preset, then prints mean +- std per method and metric, the ratios the targets are stated
in, and PASS / MISS per target (issue: forecasts that beat honest baselines zero-shot):

* manhattan (taxi, 14 held-out zones, 2020-01-01..14): stllm MAE <= 0.85 x historical average on both
  channels and below the ridge; seed std <= 5% of the mean;
* manhattan-bike: stllm MAE <= 0.95 x historical average;
* crime (daily events): Macro-F1 >= best baseline + 0.05;
* synthetic: stllm beats every baseline on both channels;
* bikenyc (cross-dataset: the Manhattan taxi model on BikeNYC): stllm MAE <= historical average.

``--ablations PRESETS`` adds seed-0 runs without the long context, without normalisation, without the anchor
(the "without LLM" row is in every table). Each run's files stay under ``--output_dir``; the summary is
written to ``summary.json`` there.

    python bench/forecast_quality.py --presets synthetic --seeds 0,1,2
    python bench/forecast_quality.py --presets manhattan,manhattan-bike,crime,bikenyc --ablations manhattan --jobs 12
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from stllm.demo import run_demo
from stllm.eval.zero_shot import VAL_F1, aggregate_seeds, evaluate, format_seed_table

ABLATIONS = {
    "without long context": ("--context_days", "0", "--context_weeks", "0"),
    "without normalisation": ("--st_normalize", "false"),
    "without anchor": ("--st_residual", "false"),
}
TARGETS = {"manhattan": 0.85, "manhattan-bike": 0.95, "bikenyc": 1.0}


def _mae_cols(metrics: dict) -> list[str]:
    return [c for c in next(iter(metrics.values())) if c.startswith("MAE/")]


def _run(preset: str, seed: int, out: Path, progress: bool, steps: int | None, flags=(), device: str = "auto",
         dtype: str = "auto") -> dict:
    """Metrics ``{method: {column: value}}`` of one run (``bikenyc``: the Manhattan model, cross-dataset)."""
    placed = {"device": device, "dtype": dtype}
    if preset == "bikenyc":
        model_dir = out.parent.parent / "manhattan" / out.name
        if not (model_dir / "model" / "config.json").is_file():
            run_demo(model_dir, data="manhattan", seed=seed, progress=progress, steps=steps, extra_flags=flags,
                     **placed)
        return evaluate(model_dir / "model", out / "eval", mode="cross-dataset", data="bikenyc", progress=progress,
                        compare={"stllm without LLM": model_dir / "model-no-llm"}, **placed).metrics  # fmt: skip
    return run_demo(out, data=preset, seed=seed, progress=progress, steps=steps, extra_flags=flags, **placed).metrics


def _ratios(preset: str, agg: dict) -> list[str]:
    lines = []
    if preset == "crime":
        for col, how in (("Macro-F1", "threshold 0.5, the protocol's"),
                         (VAL_F1, "each method's validation thresholds")):
            if col not in agg["stllm"]:
                continue
            best = max((m for m in agg if not m.startswith("stllm") and "not zero-shot" not in m),
                       key=lambda m: agg[m][col][0])  # fmt: skip
            gain = agg["stllm"][col][0] - agg[best][col][0]
            lines.append(f"{col} ({how}): stllm - best baseline ({best}) = {gain:+.4f} (target >= +0.05): "
                         f"{'PASS' if gain >= 0.05 else 'MISS'}")  # fmt: skip
        return lines
    cols = [c for c in agg["stllm"] if c.startswith("MAE/")]
    for c in cols:
        m, s = agg["stllm"][c]
        ha = agg["historical_average"][c][0]
        line = f"{c}: stllm / historical_average = {m / ha:.3f}"
        for strong in ("level_average", "ridge"):  # the strong simple baselines, on the same fit set
            if strong in agg:
                line += f", stllm / {strong} = {m / agg[strong][c][0]:.3f}"
        if "stllm without LLM" in agg:
            line += f", stllm / without LLM = {m / agg['stllm without LLM'][c][0]:.3f}"
        line += f", seed std / mean = {s / m:.3f}"
        if preset in TARGETS:
            ok = m / ha <= TARGETS[preset] and (preset != "manhattan" or (m < agg["ridge"][c][0] and s / m <= 0.05))
            line += f"  (target <= {TARGETS[preset]} x HA{', < ridge, std <= 5%' if preset == 'manhattan' else ''}):"
            line += " PASS" if ok else " MISS"
        if preset == "synthetic":
            others = [k for k in agg if not k.startswith("stllm") and "not zero-shot" not in k]
            beaten = all(m < agg[k][c][0] for k in others)
            line += f"  (beats every baseline: {'PASS' if beaten else 'MISS'})"
        lines.append(line)
    return lines


def _metrics_file(root: Path, preset: str, run: str) -> Path:
    return root / preset / run / "eval" / "metrics.json"


def _spawn(tasks: list[list[str]], jobs: int, root: Path) -> None:
    """Run ``bench/forecast_quality.py --run_only ...`` for each task, ``jobs`` at a time, threads split."""
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // jobs)), "PYTHONUNBUFFERED": "1"}
    root.mkdir(parents=True, exist_ok=True)
    started: list[tuple[subprocess.Popen, str]] = []
    for task in tasks:
        while sum(p.poll() is None for p, _ in started) >= jobs:
            time.sleep(1)
        name = "-".join(task).replace("--", "").replace(" ", "_")
        log = open(root / f"log-{name}.txt", "w")
        cmd = [sys.executable, __file__, "--run_only", "--output_dir", str(root), *task]
        started.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), name))
        print(f"started {name}", flush=True)
    for p, name in started:
        if p.wait() != 0:
            print(f"FAILED {name}: see {root / f'log-{name}.txt'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="synthetic", help="comma list: synthetic, manhattan, manhattan-bike, crime, "
                   "bikenyc (cross-dataset, needs the manhattan runs)")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    p.add_argument("--steps", type=int, default=None, help="stage-2 steps (default: the preset's)")
    p.add_argument("--ablations", default="", help="comma list of presets that also get seed-0 runs without "
                   "context / normalisation / anchor")
    p.add_argument("--ablation", default=None, help=argparse.SUPPRESS)  # one ablation run (--run_only)
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (separate processes, threads split)")
    p.add_argument("--run_only", action="store_true", help="run, write the run's files, print no summary")
    p.add_argument("--output_dir", default="runs/bench-forecast-quality")
    p.add_argument("--progress", action="store_true", help="progress bars")
    p.add_argument("--device", default="auto", help="auto (the GPU if any), cpu or cuda: training and evaluation")
    p.add_argument("--val_region_fraction", type=float, default=0.0,
                   help="both stages choose their weights on this fraction of the training regions, never fitted")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="mixed-precision training and the evaluation backbone (auto: bf16 on a GPU, fp32 on the CPU)")
    args = p.parse_args(argv)
    selection = ("--val_region_fraction", str(args.val_region_fraction)) if args.val_region_fraction else ()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    root, t_start = Path(args.output_dir), time.time()
    if args.run_only:
        for preset in presets:
            for s in seeds:
                if args.ablation:
                    _run(preset, s, root / preset / f"ablation-{args.ablation.replace(' ', '-')}", args.progress,
                         args.steps, (*ABLATIONS[args.ablation], *selection), args.device, args.dtype)  # fmt: skip
                else:
                    _run(preset, s, root / preset / f"seed{s}", args.progress, args.steps, selection, args.device,
                         args.dtype)
        return 0
    steps = ["--steps", str(args.steps)] if args.steps else []
    steps += ["--device", args.device, "--dtype", args.dtype]  # each run, also the ones in other processes
    steps += ["--val_region_fraction", str(args.val_region_fraction)]
    first = [["--presets", pr, "--seeds", str(s), *steps] for pr in presets if pr != "bikenyc" for s in seeds]
    ablate = [s.strip() for s in args.ablations.split(",") if s.strip() and s.strip() != "bikenyc"]
    first += [["--presets", pr, "--seeds", str(seeds[0]), "--ablation", a, *steps] for pr in ablate for a in ABLATIONS]
    then = [["--presets", "bikenyc", "--seeds", str(s), *steps] for s in seeds] if "bikenyc" in presets else []
    if args.jobs > 1:
        _spawn(first, args.jobs, root)
        _spawn(then, args.jobs, root)
    else:
        for task in first + then:
            main(["--run_only", "--output_dir", str(root), *task])
    summary = {}
    for preset in presets:
        files = [_metrics_file(root, preset, f"seed{s}") for s in seeds]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            print(f"\n=== {preset}: missing runs {missing} ===")
            continue
        runs = [json.loads(f.read_text())["metrics"] for f in files]
        agg = aggregate_seeds(runs)
        cols = list(next(iter(runs[0].values())))
        print(f"\n=== {preset}: {len(seeds)} seeds ===")
        print(format_seed_table(agg, cols, seeds))
        ratios = _ratios(preset, agg)
        print("\n".join(ratios))
        summary[preset] = {"seeds": seeds, "runs": runs, "mean_std": agg, "ratios": ratios}
        for name in ABLATIONS if preset in ablate else ():
            f = _metrics_file(root, preset, f"ablation-{name.replace(' ', '-')}")
            if not f.is_file():
                print(f"ablation {name}: missing {f}")
                continue
            m = json.loads(f.read_text())["metrics"]
            summary[preset].setdefault("ablations", {})[name] = m
            vals = ", ".join(f"{c} {m['stllm'][c]:.4g}" for c in (_mae_cols(m) or ["Macro-F1"]))
            print(f"ablation {name} (seed {seeds[0]}): stllm {vals}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"\nwrote {root / 'summary.json'} ({time.time() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
