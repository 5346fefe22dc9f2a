"""Forward-pass overhead of STLlamaForCausalLM over its plain backbone, plus STEncoder throughput (CPU).

Measures, in one run:

1. Full forward (``torch.inference_mode``, eval, fp32, SDPA) of ``STLlamaForCausalLM`` vs
   ``model.backbone(input_ids=..., attention_mask=...)`` on the *same* token ids, alternating the two
   (ABBA order) after a warm-up and reporting medians and the ratio against a target (default 1.05).
2. A breakdown of the overhead: input-id check, ``encode_history``, projector, the full ``splice``
   (encode + project + scatter + checks), the heads (``_slot_hidden`` + regression + classification),
   and the backbone called the way the wrapper calls it (``inputs_embeds``, ``output_hidden_states``).
3. ``model.st_encoder(x)`` for ``x (windows, 12, regions, 2)`` at the default STEncoderConfig:
   median ms and (regions x windows) per second.

Defaults are the benchmark spec: Llama width 512, 8 layers, 8 heads (8 KV heads), intermediate 1376
(~2.7x width, the Llama-7B ratio 11008/4096), vocab 32000 + 3 slot tokens, seq 256, batch 8, one
history and one prediction placeholder per sample at varied positions, st_values of 8 windows x 263
regions. Prints numbers only; asserts nothing.

    python bench/forward_overhead.py               # the spec (~1-2 min on 2 cores)
    python bench/forward_overhead.py --repeats 3   # quicker, noisier
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import transformers
from bench_device import add_device_args, built_on, describe, resolve_device, timed
from transformers import LlamaConfig

from stllm import STEncoder, STEncoderConfig, STLlamaConfig, STLlamaForCausalLM


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
    g.add_argument("--windows", type=int, default=8, help="W of st_values in the forward benchmark")
    g.add_argument("--regions", type=int, default=263)
    g.add_argument("--enc-windows", type=int, default=64, help="W of the encoder-only benchmark")
    g = p.add_argument_group("timing")
    g.add_argument("--warmup", type=int, default=2)
    g.add_argument("--repeats", type=int, default=7, help="full-forward repeats for each model")
    g.add_argument("--part-repeats", type=int, default=30, help="repeats for the breakdown parts")
    g.add_argument("--enc-repeats", type=int, default=10)
    g.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 keeps the default")
    g.add_argument("--target", type=float, default=1.05, help="ST forward / backbone forward target")
    g.add_argument("--seed", type=int, default=0)
    add_device_args(p)
    return p.parse_args(argv)


def median_time(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn) for _ in range(repeats))


def build_model(args) -> STLlamaForCausalLM:
    vocab = args.base_vocab + 3
    text = LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        vocab_size=vocab,
        max_position_embeddings=max(2048, args.seq),
    )
    text._attn_implementation = "sdpa"
    cfg = STLlamaConfig(
        text_config=text,
        st_his_token_id=args.base_vocab,
        st_pre_token_id=args.base_vocab + 1,
        geo_token_id=args.base_vocab + 2,
    )
    return STLlamaForCausalLM(cfg).eval()


def make_inputs(args, cfg: STLlamaConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random text ids with one history and one prediction placeholder per sample, varied positions."""
    b, s, k = args.batch, args.seq, cfg.st_slots
    ids = torch.randint(0, args.base_vocab, (b, s), generator=gen)
    for i in range(b):
        # history somewhere in the first half, prediction somewhere after it
        his = int(torch.randint(1, s // 2 - k, (1,), generator=gen))
        pre = int(torch.randint(his + k + 1, s - k, (1,), generator=gen))
        ids[i, his : his + k] = cfg.st_his_token_id
        ids[i, pre : pre + k] = cfg.st_pre_token_id
    enc = cfg.st_encoder
    values = torch.randn(args.windows, enc.input_window, args.regions, enc.in_channels, generator=gen)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones(b, s, dtype=torch.long),
        "st_values": values,
        "st_window": torch.randint(0, args.windows, (b,), generator=gen),
        "st_region": torch.randint(0, args.regions, (b,), generator=gen),
    }


def bench_forward(args, model, inputs) -> tuple[list[float], list[float]]:
    """ABBA-alternated timings of the ST forward and the plain backbone forward (seconds)."""
    plain_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}

    def st():
        return model(**inputs)

    def plain():
        return model.backbone(**plain_inputs)

    for _ in range(args.warmup):
        st()
        plain()
    st_t, plain_t = [], []
    for r in range(args.repeats):
        order = ((st, st_t), (plain, plain_t)) if r % 2 == 0 else ((plain, plain_t), (st, st_t))
        for fn, acc in order:
            acc.append(timed(fn))
    return st_t, plain_t


def bench_parts(args, model, inputs) -> list[tuple[str, float]]:
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    vals, win, reg = inputs["st_values"], inputs["st_window"], inputs["st_region"]
    emb = model.get_input_embeddings()(ids)
    tokens = model.encode_history(vals, win, reg)
    feats = model.st_projector(tokens).flatten(0, 1)
    hidden = model.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    layout = model.slot_layout(ids, vals, win, reg)
    n, w = args.part_repeats, args.warmup

    def heads():
        slots = model._slot_hidden(hidden, layout)[:2]
        return model.reg_head(*slots), model.cls_head(*slots)

    parts = [
        ("slot_layout (every check, one host sync)", lambda: model.slot_layout(ids, vals, win, reg)),
        ("encode_history", lambda: model.encode_history(vals, win, reg)),
        ("st_projector", lambda: model.st_projector(tokens)),
        ("index_copy of the features alone", lambda: emb.reshape(-1, emb.shape[-1]).index_copy(0, layout.his, feats)),
        ("splice given the layout (encode+project+copy)",
         lambda: model.splice(ids, emb, vals, win, reg, layout=layout)),
        ("heads (_slot_hidden + reg + cls)", heads),
    ]
    out = [(name, median_time(fn, n, w)) for name, fn in parts]

    # The wrapper calls the backbone with inputs_embeds and output_hidden_states=True; time that
    # against the plain call (same repeats as the full forward: these are the expensive ones).
    def wrapped_backbone():
        return model.backbone(inputs_embeds=emb, attention_mask=mask, output_hidden_states=True)

    def plain():
        return model.backbone(input_ids=ids, attention_mask=mask)

    for _ in range(w):
        wrapped_backbone()
        plain()
    a, b = [], []
    for r in range(args.repeats):
        order = ((wrapped_backbone, a), (plain, b)) if r % 2 == 0 else ((plain, b), (wrapped_backbone, a))
        for fn, acc in order:
            acc.append(timed(fn))
    out.append(("backbone(embeds, hidden_states) - plain, median", statistics.median(a) - statistics.median(b)))
    out.append(("backbone(embeds, hidden_states) - plain, min", min(a) - min(b)))
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    device, dtype = resolve_device(args)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t_start = time.perf_counter()

    print("== environment")
    print(f"torch {torch.__version__}  transformers {transformers.__version__}  python {platform.python_version()}")
    print(
        f"device {describe(device)}, dtype {args.dtype} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus)  "
        f"threads {torch.get_num_threads()}  load avg {os.getloadavg()[0]:.2f} (other load skews timings)"
    )

    with built_on(device, dtype):
        model = build_model(args)
    model = model.to(device=device, dtype=dtype)
    cfg = model.config
    inputs = {k: v.to(device) for k, v in make_inputs(args, cfg, gen).items()}
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    n_st = sum(p.numel() for p in model.parameters()) - n_backbone
    print(
        f"backbone: width {args.hidden}, {args.layers} layers, {args.heads} heads ({args.kv_heads} kv), "
        f"intermediate {args.intermediate}, vocab {cfg.vocab_size}, attn "
        f"{model.backbone.config._attn_implementation}, dtype {next(model.parameters()).dtype}"
    )
    print(f"params: backbone {n_backbone / 1e6:.2f}M, ST modules {n_st / 1e6:.3f}M")
    print(
        f"inputs: batch {args.batch} x seq {args.seq}, st_slots {cfg.st_slots}, "
        f"st_values {tuple(inputs['st_values'].shape)}, {args.batch} history + {args.batch} prediction "
        f"placeholders; warmup {args.warmup}, repeats {args.repeats}"
    )

    with torch.inference_mode():
        print("\n== 1. full forward (median, ABBA-alternated)")
        st_all, plain_all = bench_forward(args, model, inputs)
        st_t, plain_t = statistics.median(st_all), statistics.median(plain_all)
        ratio = st_t / plain_t
        for name, t, all_t in (("STLlamaForCausalLM", st_t, st_all), ("plain backbone", plain_t, plain_all)):
            print(f"{name:20s}{t * 1e3:9.2f} ms  (min {min(all_t) * 1e3:.2f}, max {max(all_t) * 1e3:.2f})")
        print(
            f"ratio {ratio:.4f}  (overhead {(st_t - plain_t) * 1e3:+.2f} ms)  target <= {args.target:.2f}: "
            f"{'PASS' if ratio <= args.target else 'MISS'}"
        )
        print(f"ratio of mins {min(st_all) / min(plain_all):.4f}  (less sensitive to other load on the machine)")

        print(f"\n== 2. overhead breakdown (median of {args.part_repeats}; % of plain backbone forward)")
        for name, t in bench_parts(args, model, inputs):
            print(f"{name:48s} {t * 1e3:9.3f} ms  {100 * t / plain_t:6.2f}%")

        print(f"\n== 3. STEncoder alone: {args.regions} regions x {args.enc_windows} windows, default config")
        enc = STEncoder(STEncoderConfig()).eval().to(device=device, dtype=dtype)
        ec = enc.config
        x = torch.randn(args.enc_windows, ec.input_window, args.regions, ec.in_channels, generator=gen)
        x = x.to(device=device, dtype=dtype)
        for _ in range(args.warmup):
            enc(x)
        enc_t = [timed(lambda: enc(x)) for _ in range(args.enc_repeats)]
        t = statistics.median(enc_t)
        n_series = args.regions * args.enc_windows
        print(f"input {tuple(x.shape)}, {sum(p.numel() for p in enc.parameters()) / 1e3:.1f}K params")
        print(f"median {t * 1e3:.2f} ms  ->  {n_series / t:,.0f} region-windows/s")
        print(f"min    {min(enc_t) * 1e3:.2f} ms  ->  {n_series / min(enc_t):,.0f} region-windows/s")

    print(f"\ntotal bench time {time.perf_counter() - t_start:.1f} s")
    return {"st_ms": st_t * 1e3, "plain_ms": plain_t * 1e3, "ratio": ratio, "target": args.target,
            "encoder_ms": t * 1e3}


if __name__ == "__main__":
    main()
