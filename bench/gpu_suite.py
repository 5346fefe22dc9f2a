"""One call that checks a release on a GPU: forward, training-step and evaluation comparisons at 7B shape, and the demo.

Runs, in one process, with random weights at Llama-7B shape (width 4096, 32 layers, 32 heads,
intermediate 11008; nothing is downloaded):

1. ``forward_overhead``: ``STLlamaForCausalLM`` forward / plain backbone forward, batch 8 x seq 256.
2. ``train_step``: LoRA step (forward, backward, AdamW) of the ST model / plain backbone + LoRA, batch 4 x
   seq 512, and the extra peak device memory of the ST step.
3. ``eval_throughput``: ``predict`` (batched slot pass, batch 128) against UrbanGPT-style per-sample generate,
   with the tokens computed per sample; once with UrbanGPT's prompt wording, once with the compact style.
4. ``stllm demo --quick`` in a subprocess (train + zero-shot evaluation; the trainer takes the GPU).

then prints one table: each measure, its value, the target of issue 19 and PASS/MISS. Each part's own
report is printed above the table. On one H200 the whole suite is meant to take under 6 minutes; ``--shape
tiny`` runs the same code at toy size (on CPU in about a minute) to check the script itself.

    python bench/gpu_suite.py                          # cuda, bf16, 7B shape
    python bench/gpu_suite.py --shape tiny --device cpu --dtype fp32 --skip-demo
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import subprocess
import sys
import time

import eval_throughput
import forward_overhead
import torch
import train_step

SHAPES = {
    # Llama-7B: the shape of Vicuna-7B, UrbanGPT's backbone
    "7b": ["--hidden", "4096", "--layers", "32", "--heads", "32", "--kv-heads", "32", "--intermediate", "11008"],
    "tiny": ["--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--intermediate", "128"],
}
# at toy size the 32k vocabulary, the 263-region city and the repeats would dominate; smaller, same code
TINY_MODEL_INPUTS = ["--base-vocab", "500", "--regions", "12", "--windows", "2", "--repeats", "2", "--warmup", "1"]
# issue 19's targets on one GPU at 7B shape
TARGETS = {"forward": 1.02, "train": 1.05, "extra_gib": 0.1, "eval_ratio": 100.0, "eval_rate": 187.0}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--eval-samples", type=int, default=256, help="samples predicted in (3)")
    p.add_argument("--gen-samples", type=int, default=8, help="samples generated one at a time in (3)")
    p.add_argument("--skip-demo", action="store_true", help="leave out (4)")
    return p.parse_args(argv)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _run(name: str, fn, argv: list[str]) -> tuple[dict | None, float]:
    print(f"\n######## {name}: {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    try:
        out = fn(argv)
    except Exception as exc:  # one part failing must not hide the others' numbers
        print(f"{name} failed: {type(exc).__name__}: {exc}", flush=True)
        out = None
    _free()
    return out, time.perf_counter() - t0


def _demo(device: str) -> tuple[int, float, str]:
    """Exit code, seconds and the table's last lines of ``stllm demo --quick``."""
    env = dict(os.environ)
    if not device.startswith("cuda"):
        env["CUDA_VISIBLE_DEVICES"] = ""  # the trainer would otherwise take a GPU the suite was told not to use
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stllm.cli", "demo", "--quick"], env=env, capture_output=True,
                          text=True)  # fmt: skip
    out = proc.stdout if proc.returncode == 0 else proc.stdout + proc.stderr  # stderr: progress bars, or the error
    tail = "\n".join(out.strip().splitlines()[-14:])
    return proc.returncode, time.perf_counter() - t0, tail


def _row(name: str, value: float | None, fmt: str, target: str, ok: bool | None) -> tuple[str, str, str, str]:
    shown = "failed" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)
    verdict = "FAIL" if shown == "failed" else "-" if ok is None else ("PASS" if ok else "MISS")
    return name, shown, target, verdict


def main(argv=None) -> list[tuple[str, str, str, str]]:
    args = parse_args(argv)
    t_start = time.perf_counter()
    common = [*SHAPES[args.shape], "--device", args.device, "--dtype", args.dtype]
    tiny = TINY_MODEL_INPUTS if args.shape == "tiny" else []
    fwd, t_fwd = _run("forward", forward_overhead.main,
                      [*common, "--batch", "8", "--seq", "256", "--repeats", "7", "--part-repeats", "10",
                       "--target", str(TARGETS["forward"]), *tiny,
                       *(["--enc-windows", "2", "--enc-repeats", "2", "--part-repeats", "2"] if tiny else [])])
    trn, t_trn = _run("train step", train_step.main,
                      [*common, "--batch", "4", "--seq", "512", "--repeats", "5", "--target", str(TARGETS["train"]),
                       *tiny])
    evaluation = [*common, "--batch-size", "128", "--samples", str(args.eval_samples), "--heldout", "4",
                  "--gen-samples", str(args.gen_samples), "--repeats", "2", "--target", str(TARGETS["eval_ratio"]),
                  *(["--vocab", "400", "--regions", "6"] if tiny else [])]
    ev, t_ev = _run("evaluation", eval_throughput.main, evaluation)
    ev_c, t_ev_c = _run("evaluation, compact prompts", eval_throughput.main,
                        [*evaluation, "--prompt-style", "compact"])
    t_ev += t_ev_c
    rows = [
        _row("forward: ST / backbone (batch 8, seq 256)", fwd and fwd["ratio"], ".4f", f"<= {TARGETS['forward']}",
             fwd and fwd["ratio"] <= TARGETS["forward"]),
        _row("forward: ST ms", fwd and fwd["st_ms"], ".2f", "", None),
        _row("forward: encoder ms (263 regions x 64 windows)", fwd and fwd["encoder_ms"], ".2f", "keep", None),
        _row("train step: ST / plain LoRA (batch 4, seq 512)", trn and trn["ratio"], ".4f", f"<= {TARGETS['train']}",
             trn and trn["ratio"] <= TARGETS["train"]),
    ]
    extra = trn and trn["extra_peak_gib"]
    if trn and extra is None:
        rows.append(("train step: extra peak device memory GiB", "n/a on cpu", f"<= {TARGETS['extra_gib']}", "-"))
    else:
        rows.append(_row("train step: extra peak device memory GiB", extra, "+.3f", f"<= {TARGETS['extra_gib']}",
                         None if extra is None else extra <= TARGETS["extra_gib"]))
    rows += [
        _row("eval: predict samples/s (batch 128)", ev and ev["rate_a"], ",.1f", f">= {TARGETS['eval_rate']:.0f}",
             ev and ev["rate_a"] >= TARGETS["eval_rate"]),
        _row("eval: predict / per-sample generate", ev and ev["ratio"], ",.1f", f">= {TARGETS['eval_ratio']:.0f}",
             ev and ev["ratio"] >= TARGETS["eval_ratio"]),
        _row("eval: tokens computed per sample", ev and ev["computed_tokens"], ".1f",
             "" if not ev else f"of {ev['prompt_tokens']:.1f}", None),
        _row("eval, compact prompts: predict samples/s", ev_c and ev_c["rate_a"], ",.1f",
             f">= {TARGETS['eval_rate']:.0f}", ev_c and ev_c["rate_a"] >= TARGETS["eval_rate"]),
        _row("eval, compact prompts: predict / generate", ev_c and ev_c["ratio"], ",.1f",
             f">= {TARGETS['eval_ratio']:.0f}", ev_c and ev_c["ratio"] >= TARGETS["eval_ratio"]),
        _row("eval, compact prompts: tokens computed per sample", ev_c and ev_c["computed_tokens"], ".1f",
             "" if not ev_c else f"of {ev_c['prompt_tokens']:.1f}", None),
    ]
    demo_tail = ""
    if not args.skip_demo:
        code, t_demo, demo_tail = _demo(args.device)
        rows.append(_row("stllm demo --quick: seconds (exit code)", t_demo, ".1f", "exit 0", code == 0))
    print(f"\n######## gpu suite: shape {args.shape}, {args.device}, {args.dtype}; torch {torch.__version__}")
    if demo_tail:
        print("demo --quick, last lines:\n" + demo_tail + "\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':{width}s}  {'value':>12s}  {'target':>12s}  verdict")
    for name, value, target, verdict in rows:
        print(f"{name:{width}s}  {value:>12s}  {target:>12s}  {verdict}")
    print(f"parts: forward {t_fwd:.0f} s, train step {t_trn:.0f} s, evaluation {t_ev:.0f} s; "
          f"total {time.perf_counter() - t_start:.0f} s")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
