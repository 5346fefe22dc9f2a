"""Does a pretrained language model help next-POI ranking on real Foursquare NYC? SmolLM2-135M-Instruct vs
the same architecture randomly initialised vs no LLM, with the ``stllm demo --data nyc-poi`` recipe
(``train_next_poi`` on ``NYC_val.csv``, ``evaluate_next_poi`` on the later ``NYC_test.csv``: later check-ins,
seen and unseen users, every baseline ranked on the same samples), same steps, same seeds, same flags:

* ``stllm SmolLM2 pretrained``: LoRA on the converted SmolLM2 folder (``stllm backbone smollm2-135m``);
* ``stllm SmolLM2 random init``: the same config, tokenizer and LoRA recipe, weights drawn at random;
* ``stllm without LLM``: what the POI path offers, ``train-poi --no_llm true``: the tiny Llama with zero
  layers (embeddings, final norm, candidate head; its own offline tokenizer), fully trained.

CPU (the default) is sized for a shared 2-core machine: batch 4, 64 steps, 300 evenly spaced test samples.
``--device cuda`` uses the demo's sizes (batch 16, 600 steps, every test sample):

    OMP_NUM_THREADS=1 python bench/smollm2_poi.py --seeds 0 --backbone_dir /tmp/smol
    python bench/smollm2_poi.py --device cuda --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from smollm2_quality import NO_LLM, PRETRAINED, RANDOM, random_init_folder

from stllm.data.loaders import data_root
from stllm.demo import POI_PRESETS, train_flags
from stllm.eval.next_poi import evaluate_next_poi
from stllm.eval.zero_shot import aggregate_seeds, format_seed_table
from stllm.models.backbones import export_backbone
from stllm.train.arguments import parse_args
from stllm.train.train_poi import POIDataArguments, train_next_poi

RUN_DIRS = {PRETRAINED: "pretrained", RANDOM: "random-init", NO_LLM: "no-llm"}
SIZES = {"cpu": {"batch": 4, "steps": 64, "max_samples": 300}, "cuda": {"batch": 16, "steps": 600, "max_samples": None}}
COLUMNS = ["acc@1", "acc@5", "acc@10", "mrr", "ndcg@10"]


def _run(seed: int, root: Path, rows: dict[str, list[str]], size: dict, progress: bool) -> dict:
    """``{group: {method: metrics}}`` of one seed: the three stllm rows and the baselines (from the first run's
    evaluation), all on the same test samples. Finished runs under ``root`` are reused."""
    source, _, test = POI_PRESETS["nyc-poi"]
    source, test = source.format(root=data_root()), test.format(root=data_root())
    results = {}
    for label, flags in rows.items():
        out, t0 = root / f"seed{seed}" / RUN_DIRS[label], time.time()
        done = out / "eval" / "metrics.json"
        if not done.is_file():
            args = parse_args(["--output_dir", str(out / "model"), "--checkins", source, *flags,
                               *train_flags(size["steps"], seed, progress, batch=size["batch"], logging_steps=4)],
                              data_class=POIDataArguments)  # fmt: skip
            train_next_poi(*args)
            evaluate_next_poi(out / "model", out / "eval", test=test, max_samples=size["max_samples"],
                              progress=progress)  # fmt: skip
            print(f"--- seed {seed} {label}: {time.time() - t0:.0f} s", flush=True)
        results[label] = json.loads(done.read_text())
    first = results[PRETRAINED]
    metrics = {}
    for group, methods in first.items():
        ns = {label: r[group]["stllm"]["n"] for label, r in results.items()}
        if len(set(ns.values())) != 1:  # every row must be ranked on the same held-out samples
            raise RuntimeError(f"seed {seed} {group}: the runs were evaluated on different sample counts {ns}")
        metrics[group] = {label: r[group]["stllm"] for label, r in results.items()}
        metrics[group].update({k: v for k, v in methods.items() if k != "stllm"})
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0", help="comma list of seeds")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 64 on CPU, 600 on cuda)")
    p.add_argument(
        "--max_samples",
        type=int,
        default=None,
        help="evenly spaced test samples (default: 300 on CPU, all on cuda; 0: all)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu: small sizes; cuda: demo sizes")
    p.add_argument("--backbone_dir", default="checkpoints/smollm2-135m", help="the converted folder (made if absent)")
    p.add_argument("--output_dir", default="runs/bench-smollm2-poi")
    p.add_argument("--progress", action="store_true", help="progress bars")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.device == "cpu" and torch.cuda.is_available():
        raise SystemExit("--device cpu on a machine with CUDA: training would use the GPU; pass --device cuda")
    size = dict(SIZES[args.device])
    size["steps"] = args.steps or size["steps"]
    if args.max_samples is not None:
        size["max_samples"] = args.max_samples or None
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    root, t_start = Path(args.output_dir), time.time()
    pretrained, _ = export_backbone("smollm2-135m", args.backbone_dir)
    random_dir = random_init_folder(pretrained, root / "smollm2-135m-random-init")
    rows = {PRETRAINED: ["--model_name_or_path", str(pretrained)], RANDOM: ["--model_name_or_path", str(random_dir)],
            NO_LLM: ["--no_llm", "true"]}  # fmt: skip
    runs = [_run(s, root, rows, size, args.progress) for s in seeds]
    print(f"\n=== nyc-poi: seeds {seeds}, {size['steps']} steps at batch {size['batch']}, {args.device}, "
          f"test samples {size['max_samples'] or 'all'} ===")  # fmt: skip
    summary = {"seeds": seeds, "size": size, "runs": runs}
    for group in runs[0]:
        agg = aggregate_seeds([r[group] for r in runs])
        n = int(np.mean([r[group][PRETRAINED]["n"] for r in runs]))
        print(f"\n{group} ({n} samples)\n{format_seed_table(agg, COLUMNS, seeds)}")
        summary[group] = agg
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"\nwrote {root / 'summary.json'} ({time.time() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
