"""Does a pretrained language model help the forecasts? SmolLM2-135M-Instruct vs the same architecture
randomly initialised vs no LLM, with the recipe of ``bench/forecast_quality.py`` (``stllm.demo.run_demo``:
stage-1 encoder, stage-2 instruction tuning, cross-region zero-shot evaluation on held-out regions with
every baseline on the same windows), same steps, same seeds, same flags for every row:

* ``stllm SmolLM2 pretrained``: LoRA on the converted SmolLM2 folder (``stllm backbone smollm2-135m``);
* ``stllm SmolLM2 random init``: the same config, tokenizer and LoRA recipe, weights drawn at random;
* ``stllm without LLM``: run_demo's ablation row (same encoder and heads on a zero-layer backbone).

CPU (the default) is sized for a shared 2-core machine: a smaller synthetic city, batch 4, a few dozen
steps, no validation; expect about 4-5 s per training sample at ~320 tokens on one thread. ``--device
cuda`` uses the presets' own sizes (batch 16, their steps) and all flow/event presets; on one H200 the
three presets fit in 10 minutes:

    OMP_NUM_THREADS=1 python bench/smollm2_quality.py --presets synthetic --seeds 0,1 --steps 24
    python bench/smollm2_quality.py --device cuda --presets synthetic,crime,manhattan --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from stllm.data.prompts import PROMPT_STYLES
from stllm.demo import run_demo
from stllm.eval.zero_shot import aggregate_seeds, format_seed_table
from stllm.models.backbones import export_backbone

PRETRAINED, RANDOM, NO_LLM = "stllm SmolLM2 pretrained", "stllm SmolLM2 random init", "stllm without LLM"
RUN_DIRS = {PRETRAINED: "pretrained", RANDOM: "random-init"}
# CPU sizing: what a shared 2-core machine allows (the presets' own data flags stay; these come after them)
CPU_FLAGS = {
    "synthetic": ("--synthetic_regions", "20", "--synthetic_days", "28", "--context_days", "2", "--context_weeks", "1"),
    "manhattan": ("--max_train_windows", "256"),
}
NO_VALIDATION = ("--eval_strategy", "no", "--eval_on_start", "false")
CPU_COMMON = ("--per_device_train_batch_size", "4", "--logging_steps", "4", *NO_VALIDATION)
GPU_COMMON = NO_VALIDATION


def random_init_folder(pretrained: Path, out: Path, seed: int = 0) -> Path:
    """``pretrained``'s config, tokenizer and generation config with weights drawn as the class initialises
    them: the architecture without what pretraining learned."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(pretrained), dtype=torch.float32)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(pretrained).save_pretrained(out)
    return out


def _run(preset: str, seed: int, root: Path, folders: dict[str, Path], steps: int | None, flags: tuple[str, ...],
         progress: bool) -> dict:  # fmt: skip
    """Metrics ``{method: {column: value}}`` of one seed: the pretrained run (with the no-LLM row and every
    baseline) and the random-init run's stllm row, evaluated on the same windows (same seed, same split).
    Runs already finished under ``root`` (their ``eval/metrics.json``) are reused, so seeds can be added later."""
    runs = {}
    for label, folder in folders.items():
        out, t0 = root / preset / f"seed{seed}" / RUN_DIRS[label], time.time()
        done = out / "eval" / "metrics.json"
        if done.is_file():  # a finished run of an earlier invocation (same output_dir): reused, not retrained
            runs[label] = json.loads(done.read_text())["metrics"]
            print(f"--- {preset} seed {seed} {label}: reused {done}", flush=True)
            continue
        res = run_demo(out, data=preset, seed=seed, steps=steps, progress=progress, no_llm_row=label == PRETRAINED,
                       extra_flags=flags, backbone=folder)  # fmt: skip
        print(f"--- {preset} seed {seed} {label}: {time.time() - t0:.0f} s", flush=True)
        runs[label] = res.metrics
    records = [json.loads((root / preset / f"seed{seed}" / d / "eval" / "metrics.json").read_text())
               for d in RUN_DIRS.values()]
    differ = [k for k in ("regions", "time_range", "windows") if records[0][k] != records[1][k]]
    if differ:  # held-out regions and windows must be the same for every row
        raise RuntimeError(f"{preset} seed {seed}: the runs were evaluated on different {differ}")
    metrics = {(PRETRAINED if k == "stllm" else k): v for k, v in runs[PRETRAINED].items()}
    metrics[RANDOM] = runs[RANDOM]["stllm"]
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="synthetic", help="comma list of flow/event demo presets: synthetic, "
                   "crime, manhattan, manhattan-bike")  # fmt: skip
    p.add_argument("--seeds", default="0,1", help="comma list of seeds")
    p.add_argument("--steps", type=int, default=None, help="stage-2 steps (default: 24 on CPU, the preset's on cuda)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu: small sizes; cuda: preset sizes")
    p.add_argument("--backbone_dir", default="checkpoints/smollm2-135m", help="the converted folder (made if absent)")
    p.add_argument("--output_dir", default="runs/bench-smollm2-quality")
    p.add_argument("--progress", action="store_true", help="progress bars")
    p.add_argument("--prompt_style", default="urbangpt", choices=PROMPT_STYLES,
                   help="compact: the same facts without UrbanGPT's filler (half the tokens, so about half the time)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.device == "cpu" and torch.cuda.is_available():
        raise SystemExit("--device cpu on a machine with CUDA: training would use the GPU; pass --device cuda")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    root, t_start = Path(args.output_dir), time.time()
    pretrained, _ = export_backbone("smollm2-135m", args.backbone_dir)
    folders = {PRETRAINED: pretrained, RANDOM: random_init_folder(pretrained, root / "smollm2-135m-random-init")}
    steps = args.steps or (24 if args.device == "cpu" else None)
    summary = {}
    for preset in presets:
        flags = (*CPU_FLAGS.get(preset, ()), *CPU_COMMON) if args.device == "cpu" else GPU_COMMON
        flags = (*flags, "--prompt_style", args.prompt_style)
        runs = [_run(preset, s, root, folders, steps, flags, args.progress) for s in seeds]
        agg = aggregate_seeds(runs)
        cols = list(next(iter(runs[0].values())))
        print(f"\n=== {preset}: {len(seeds)} seeds, {steps or 'preset'} steps, {args.device}, "
              f"flags {' '.join(flags)} ===")  # fmt: skip
        print(format_seed_table(agg, cols, seeds))
        for c in cols:
            if c.startswith("MAE/") or c == "Macro-F1":
                vals = ", ".join(f"{m.removeprefix('stllm ')} {agg[m][c][0]:.4g} +- {agg[m][c][1]:.2g}"
                                 for m in (PRETRAINED, RANDOM, NO_LLM))  # fmt: skip
                print(f"{c}: {vals}")
        summary[preset] = {"seeds": seeds, "steps": steps, "flags": list(flags), "runs": runs, "mean_std": agg}
        root.mkdir(parents=True, exist_ok=True)
        (root / "summary.json").write_text(json.dumps(summary, indent=2, default=float))  # after each preset
    print(f"\nwrote {root / 'summary.json'} ({time.time() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
