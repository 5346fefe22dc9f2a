"""Training-step overhead of STLlamaForCausalLM + LoRA over its plain backbone + LoRA (CPU).

One step = forward with labels (and, for the ST model, ``reg_targets``), ``loss.backward()``,
``AdamW.step()``, ``zero_grad(set_to_none=True)``; both models in train mode, fp32, SDPA.

- ST: ``add_lora(STLlamaForCausalLM)`` -- LoRA on the backbone's attention projections, projectors and
  heads trainable via ``modules_to_save``, slot-token embedding rows trainable, ST encoder frozen.
  Loss = LM loss + regression loss (MAE at the ``<st_pre>`` slots).
- plain: a deepcopy of the same backbone (taken before wrapping, so identical weights) with its own
  peft LoRA on the same attention projections (same r / alpha / dropout), ``labels`` -> its own loss.

Each model has its own AdamW over its own trainable parameters, so the optimizers never share state.
Both see the same token ids and labels (slot positions labelled -100 in both). After a warm-up the
two steps alternate (ABBA order); prints median and min step times, the ratio against a target
(default 1.10), the ratio of mins, tokens/s, and the peak-RSS growth of one step of each.

Defaults match bench/forward_overhead.py: Llama width 512, 8 layers, 8 heads (8 KV heads),
intermediate 1376, vocab 32000 + 3 slot tokens, seq 256, batch 8, one history and one prediction
placeholder per sample, st_values of 8 windows x 263 regions. Prints numbers only; asserts nothing.

    python bench/train_step.py               # the spec (~1-2 min on 2 cores)
    python bench/train_step.py --repeats 9   # steadier
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import peft
import torch
import transformers
from bench_device import add_device_args, built_on, describe, resolve_device, timed
from forward_overhead import build_model, make_inputs
from peft import LoraConfig, get_peft_model

from stllm.models.lora import add_lora, attention_projections


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("backbone")
    g.add_argument("--hidden", type=int, default=512)
    g.add_argument("--layers", type=int, default=8)
    g.add_argument("--heads", type=int, default=8)
    g.add_argument("--kv-heads", type=int, default=8)
    g.add_argument("--intermediate", type=int, default=1376)
    g.add_argument("--base-vocab", type=int, default=32000, help="slot tokens are appended after it")
    g = p.add_argument_group("inputs")
    g.add_argument("--seq", type=int, default=256)
    g.add_argument("--batch", type=int, default=8)
    g.add_argument("--windows", type=int, default=8, help="W of st_values")
    g.add_argument("--regions", type=int, default=263)
    g = p.add_argument_group("training")
    g.add_argument("--lora-r", type=int, default=8)
    g.add_argument("--lora-alpha", type=int, default=16)
    g.add_argument("--lora-dropout", type=float, default=0.05)
    g.add_argument("--lr", type=float, default=1e-4)
    g = p.add_argument_group("timing")
    g.add_argument("--warmup", type=int, default=2, help="untimed steps of each model")
    g.add_argument("--repeats", type=int, default=5, help="timed steps of each model")
    g.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 keeps the default")
    g.add_argument("--target", type=float, default=1.10, help="ST step / plain step target")
    g.add_argument("--seed", type=int, default=0)
    add_device_args(p)
    return p.parse_args(argv)


# -- memory: peak RSS of one step -----------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB elsewhere


def step_peak_rss_mib(step: Callable[[], object]) -> tuple[float, str]:
    """Peak RSS during one step above the RSS just before it (MiB), and how it was measured.

    With a resettable high-water mark (Linux) this is the step's own transient peak; otherwise
    ``ru_maxrss`` only grows, so the figure is the growth of the process-wide peak (0 when the step
    stays under an earlier, larger peak).
    """
    if _reset_peak_rss() and _status_kib("VmHWM") is not None:
        before = _status_kib("VmRSS")
        step()
        return (_status_kib("VmHWM") - before) / 1024, "VmHWM after clear_refs"
    before = _maxrss_kib()
    step()
    return (_maxrss_kib() - before) / 1024, "ru_maxrss growth (upper-bounded by earlier peaks)"


# -- models and steps -----------------------------------------------------------------------------
def build_pair(args, device: torch.device, dtype: torch.dtype):
    """ST model with add_lora and a plain backbone (deepcopy, same weights) with its own LoRA."""
    with built_on(device, dtype):
        st = build_model(args)
    st = st.to(device=device, dtype=dtype)
    backbone = copy.deepcopy(st.backbone)  # before wrapping: identical weights, no shared tensors
    targets = attention_projections(backbone)
    st = add_lora(st, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout)
    plain = get_peft_model(
        backbone,
        LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        ),
    )
    return st.train(), plain.train(), targets


def make_step(model, inputs: dict[str, torch.Tensor], lr: float) -> tuple[Callable[[], float], int]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)

    def step() -> float:
        loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step, sum(p.numel() for p in params)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device, dtype = resolve_device(args)
    # peft's wrapping probes a deprecated transformers property; the warning is noise here
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t_start = time.perf_counter()

    print("== environment")
    print(
        f"torch {torch.__version__}  transformers {transformers.__version__}  peft {peft.__version__}  "
        f"python {platform.python_version()}"
    )
    print(
        f"device {describe(device)}, dtype {args.dtype} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus)  "
        f"threads {torch.get_num_threads()}  load avg {os.getloadavg()[0]:.2f} (other load skews timings)"
    )

    rss_start = _maxrss_kib()
    st, plain, targets = build_pair(args, device, dtype)
    cfg = st.config
    inputs = {k: v.to(device) for k, v in make_inputs(args, cfg, gen).items()}
    ids = inputs["input_ids"]
    slot_ids = [i for i in (cfg.st_his_token_id, cfg.st_pre_token_id, cfg.geo_token_id) if i is not None]
    labels = ids.masked_fill(torch.isin(ids, torch.tensor(slot_ids, device=device)), -100)
    n_pre = int((ids == cfg.st_pre_token_id).sum()) // cfg.st_slots
    horizon = cfg.st_encoder.horizon
    reg_targets = torch.randn(n_pre, horizon, cfg.st_slots, generator=gen).to(device=device, dtype=dtype)
    st_inputs = {**inputs, "labels": labels, "reg_targets": reg_targets}
    plain_inputs = {"input_ids": ids, "attention_mask": inputs["attention_mask"], "labels": labels}

    st_step, st_trainable = make_step(st, st_inputs, args.lr)
    plain_step, plain_trainable = make_step(plain, plain_inputs, args.lr)
    n_backbone = sum(p.numel() for p in plain.parameters())
    n_st_total = sum(p.numel() for p in st.parameters())
    tokens = args.batch * args.seq

    print(
        f"backbone: width {args.hidden}, {args.layers} layers, {args.heads} heads ({args.kv_heads} kv), "
        f"intermediate {args.intermediate}, vocab {cfg.vocab_size}, attn "
        f"{cfg.text_config._attn_implementation}, dtype {next(st.parameters()).dtype}"
    )
    print(
        f"LoRA r {args.lora_r}, alpha {args.lora_alpha}, dropout {args.lora_dropout} on "
        f"{len(targets)} attention projections; AdamW lr {args.lr}"
    )
    print(
        f"params: plain {n_backbone / 1e6:.2f}M ({plain_trainable / 1e6:.3f}M trainable), "
        f"ST {n_st_total / 1e6:.2f}M ({st_trainable / 1e6:.3f}M trainable; encoder frozen, "
        f"modules_to_save copies included)"
    )
    print(
        f"inputs: batch {args.batch} x seq {args.seq} = {tokens} tokens, st_slots {cfg.st_slots}, "
        f"st_values {tuple(inputs['st_values'].shape)}, {n_pre} history + {n_pre} prediction placeholders, "
        f"reg_targets {tuple(reg_targets.shape)}; warmup {args.warmup}, repeats {args.repeats}"
    )
    print(f"peak RSS after building both models: +{(_maxrss_kib() - rss_start) / 1024:.0f} MiB")

    print("\n== 1. training step: forward + backward + AdamW step + zero_grad (ABBA-alternated)")
    losses = {}
    for _ in range(args.warmup):
        losses["ST"] = st_step()
        losses["plain"] = plain_step()
    st_t, plain_t = [], []
    for r in range(args.repeats):
        order = ((st_step, st_t), (plain_step, plain_t)) if r % 2 == 0 else ((plain_step, plain_t), (st_step, st_t))
        for fn, acc in order:
            acc.append(timed(fn))
    st_med, plain_med = statistics.median(st_t), statistics.median(plain_t)
    for name, t, all_t in (("STLlama + LoRA", st_med, st_t), ("plain backbone + LoRA", plain_med, plain_t)):
        print(
            f"{name:22s}{t * 1e3:9.1f} ms  (min {min(all_t) * 1e3:.1f}, max {max(all_t) * 1e3:.1f})  "
            f"{tokens / t:8,.0f} tokens/s (median)  {tokens / min(all_t):8,.0f} tokens/s (min)"
        )
    print("per repeat, ST/plain (ms): " + "  ".join(f"{a * 1e3:.0f}/{b * 1e3:.0f}" for a, b in zip(st_t, plain_t)))
    ratio = st_med / plain_med
    print(
        f"ratio {ratio:.4f}  (overhead {(st_med - plain_med) * 1e3:+.1f} ms)  target <= {args.target:.2f}: "
        f"{'PASS' if ratio <= args.target else 'MISS'}"
    )
    print(f"ratio of mins {min(st_t) / min(plain_t):.4f}  (less sensitive to other load on the machine)")
    if args.warmup:
        print(f"last warm-up loss: ST {losses['ST']:.4f}, plain {losses['plain']:.4f}")

    peak_gib = {}
    if device.type == "cuda":
        print("\n== 2. peak device memory of one step above the memory before it")
        for name, fn in (("plain backbone + LoRA", plain_step), ("STLlama + LoRA", st_step)):
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            torch.cuda.synchronize()
            peak_gib[name] = (torch.cuda.max_memory_allocated(device) - before) / 2**30
            print(f"{name:22s}{peak_gib[name]:+9.3f} GiB")
    print("\n== 2. peak RSS of one step above the RSS before it" if device.type == "cpu" else "\n== host peak RSS")
    for name, fn in (("plain backbone + LoRA", plain_step), ("STLlama + LoRA", st_step)):
        mib, how = step_peak_rss_mib(fn)
        print(f"{name:22s}{mib:+9.0f} MiB  ({how})")
    print(f"process peak RSS {_maxrss_kib() / 1024:.0f} MiB")

    print(f"\ntotal bench time {time.perf_counter() - t_start:.1f} s")
    extra_gib = peak_gib["STLlama + LoRA"] - peak_gib["plain backbone + LoRA"] if peak_gib else None
    return {"st_ms": st_med * 1e3, "plain_ms": plain_med * 1e3, "ratio": ratio, "target": args.target,
            "extra_peak_gib": extra_gib}


if __name__ == "__main__":
    main()
