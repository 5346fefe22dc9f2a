"""Evaluation throughput: stllm's batched single pass vs UrbanGPT-style generate-per-sample (CPU).

Both paths run the *same* tiny ``STLlamaForCausalLM`` on the *same* evaluation samples (the held-out
regions of a synthetic city, built with the offline tokenizer as in ``tests/eval/test_predict.py``):

(a) ``stllm.eval.predict.predict(..., batch_size=32)``: one teacher-forced causal pass per batch, heads
    read at the ``<st_pre>`` slots, through ``stllm.eval.slot_pass.SlotPass``: samples sorted by prompt
    text, each batch cut after its last ``<st_pre>``, the prefix its rows share (system prompt,
    instruction, region name) run once into the backbone's key/value cache, no padding mask (right
    padding). Same predictions as a plain forward (the tests check it); wall time includes collation.
(a0) reference: the plain batched forward the shortcuts replace (what ``predict`` ran before them):
    the same samples in dataset order, collated in batches of 32, ``model(..., logits_to_keep=1)``
    over prompt + whole answer template with the padding mask, heads read from its output. Timed
    once, after a warm-up batch.
(b) UrbanGPT style, one sample at a time: collate the sample (batch 1), ``model.generate`` on the prompt
    only (greedy, ``max_new_tokens`` = ``min_new_tokens`` = that sample's answer-template length, so it
    generates the whole answer including the ``<st_pre>`` run), then one forward over prompt + generated
    tokens reading the heads at the generated ``<st_pre>`` positions. An untrained model rarely
    generates the slot run; then the answer template's slot positions are overwritten with
    ``<st_pre>`` so the same work (generation + one forward with heads) is still timed. Run on a
    subset (default 20 samples); per-sample time is extrapolated.

Prints samples/s of all three, the ratio a/b against a target (default >= 100x) and a/a0. Defaults:
Llama width 128, 2 layers, 4 heads (2 KV), intermediate 344, BPE vocab 1000 + slot tokens, 200 samples
(4 held-out regions x 50 windows). Prints numbers only; asserts nothing.

    python bench/eval_throughput.py                # the spec (< 1 min on 2 cores)
    python bench/eval_throughput.py --gen-samples 5
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import numpy as np
import torch
import transformers
from bench_device import add_device_args, built_on, describe, resolve_device, synchronize
from transformers import LlamaConfig

from stllm import STLlamaConfig, STLlamaForCausalLM
from stllm.data import STDataCollator, STInstructionDataset, STScaler, synthetic_city, train_tokenizer
from stllm.data.city import parse_freq
from stllm.data.prompts import PROMPT_STYLES, ChatFormatter
from stllm.eval.predict import predict
from stllm.eval.slot_pass import SlotPass, TokenCount
from stllm.tokens import add_st_tokens


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("backbone")
    g.add_argument("--hidden", type=int, default=128)
    g.add_argument("--layers", type=int, default=2)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--kv-heads", type=int, default=2)
    g.add_argument("--intermediate", type=int, default=344)
    g.add_argument("--vocab", type=int, default=1000, help="BPE vocab trained offline (slot tokens added)")
    g = p.add_argument_group("data")
    g.add_argument("--regions", type=int, default=12, help="regions of the synthetic city")
    g.add_argument("--heldout", type=int, default=4, help="last regions held out and evaluated")
    g.add_argument("--samples", type=int, default=200, help="evaluation samples (rounded up to whole windows)")
    g.add_argument("--stride", type=int, default=1)
    g.add_argument("--freq", default="1h")
    g.add_argument("--prompt-style", default="urbangpt", choices=PROMPT_STYLES,
                   help="compact: the same facts without UrbanGPT's filler (about half the tokens)")
    g = p.add_argument_group("timing")
    g.add_argument("--batch-size", type=int, default=32, help="batch size of (a)")
    g.add_argument("--gen-samples", type=int, default=20, help="subset timed for (b), evenly spaced")
    g.add_argument("--warmup", type=int, default=1)
    g.add_argument("--repeats", type=int, default=3, help="full predict() passes for (a); median reported")
    g.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 keeps the default")
    g.add_argument("--target", type=float, default=100.0, help="rate (a) / rate (b) target")
    g.add_argument("--seed", type=int, default=0)
    add_device_args(p)
    return p.parse_args(argv)


def build_data(args):
    """Synthetic city, scaler fit on training regions, dataset of held-out regions, offline tokenizer."""
    windows = math.ceil(args.samples / args.heldout)
    in_len = out_len = 12
    steps = in_len + out_len + (windows - 1) * args.stride
    steps_per_day = int(np.timedelta64(1, "D") // parse_freq(args.freq))
    city = synthetic_city(seed=args.seed, n_regions=args.regions, days=math.ceil(steps / steps_per_day),
                          freq=args.freq, task="flow")  # fmt: skip
    train_ids, eval_ids = city.region_ids[: -args.heldout], city.region_ids[-args.heldout :]
    scaler = STScaler.fit(city, regions=train_ids)
    ds = STInstructionDataset(city, scaler, regions=eval_ids, time=slice(0, steps), stride=args.stride,
                              prompt_style=args.prompt_style)
    train_ds = STInstructionDataset(city, scaler, regions=train_ids, stride=12, prompt_style=args.prompt_style)
    fmt = ChatFormatter(None)
    texts = ["\n".join(fmt(train_ds[i]["conversation"])) for i in range(min(len(train_ds), 300))]
    tok = train_tokenizer(texts, vocab_size=args.vocab)
    slot_ids = add_st_tokens(tok)
    return city, scaler, ds, tok, slot_ids


def build_model(args, tok, slot_ids, n_channels: int) -> STLlamaForCausalLM:
    text = LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    text._attn_implementation = "sdpa"
    torch.manual_seed(args.seed)
    cfg = STLlamaConfig(
        text_config=text,
        **slot_ids.as_config(),
        st_encoder_config={"in_channels": n_channels, "out_channels": n_channels, "num_tokens": n_channels},
    )
    return STLlamaForCausalLM(cfg).eval()


def run_predict(args, model, tok, ds, scaler) -> tuple[float, np.ndarray, TokenCount]:
    synchronize()
    t0 = time.perf_counter()
    slot_pass = SlotPass(model)
    out = predict(model, tok, ds, scaler, batch_size=args.batch_size, progress=False,
                  slot_pass=slot_pass)  # returns host arrays: synced
    return time.perf_counter() - t0, out, slot_pass.tokens


@torch.inference_mode()
def run_plain(args, model, tok, ds, max_batches: int | None = None) -> float:
    """(a0): collate in dataset order, one plain ``model(...)`` per batch; seconds."""
    collator = STDataCollator(tok, st_slots=model.config.st_slots, padding_side="right")
    keys = ("input_ids", "attention_mask", "st_values", "st_window", "st_region")
    device = next(model.parameters()).device
    synchronize()
    t0 = time.perf_counter()
    for n, k in enumerate(range(0, len(ds), args.batch_size)):
        if max_batches is not None and n >= max_batches:
            break
        batch = collator([ds[i] for i in range(k, min(len(ds), k + args.batch_size))])
        model(**{key: batch[key].to(device) for key in keys}, logits_to_keep=1)  # as predict() did before SlotPass
    synchronize()
    return time.perf_counter() - t0


@torch.inference_mode()
def generate_one(model, tok, collator: STDataCollator, sample: dict) -> dict:
    """UrbanGPT-style: generate the answer from the prompt, then one forward reading the heads."""
    synchronize()
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collator([sample]).items()}
    ids, labels = batch["input_ids"], batch["labels"]
    p_len = int((labels[0] == -100).sum())  # batch of one, no padding: prompt then answer
    n_ans = ids.shape[1] - p_len
    st = {k: batch[k] for k in ("st_values", "st_window", "st_region")}
    seqs = model.generate(
        input_ids=ids[:, :p_len],
        attention_mask=batch["attention_mask"][:, :p_len],
        **st,
        do_sample=False,
        max_new_tokens=n_ans,
        min_new_tokens=n_ans,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    synchronize()
    t_gen = time.perf_counter() - t0
    pre_id, k = model.config.st_pre_token_id, model.config.st_slots
    gen = seqs[0, p_len:]
    cols = torch.nonzero(gen == pre_id).flatten()
    natural = cols.numel() == k and int(cols[-1] - cols[0]) == k - 1
    if not natural:  # same work: put the slot run where the answer template has it
        seqs = seqs.clone()
        seqs[0, p_len:][gen == pre_id] = tok.eos_token_id
        seqs[0, ids[0] == pre_id] = pre_id
    out = model(input_ids=seqs, attention_mask=torch.ones_like(seqs), **st, logits_to_keep=1)
    assert out.reg_pred is not None and out.reg_pred.shape[0] == 1
    synchronize()
    return {"total": time.perf_counter() - t0, "gen": t_gen, "prompt": p_len, "answer": n_ans, "natural": natural}


def main(argv=None) -> dict:
    args = parse_args(argv)
    device, dtype = resolve_device(args)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()

    print("== environment")
    print(f"torch {torch.__version__}  transformers {transformers.__version__}  python {platform.python_version()}")
    print(
        f"device {describe(device)}, dtype {args.dtype} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus)  "
        f"threads {torch.get_num_threads()}  load avg {os.getloadavg()[0]:.2f} (other load skews timings)"
    )

    city, scaler, ds, tok, slot_ids = build_data(args)
    with built_on(device, dtype):
        model = build_model(args, tok, slot_ids, city.n_channels)
    model = model.to(device=device, dtype=dtype)
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    n_st = sum(p.numel() for p in model.parameters()) - n_backbone
    print(
        f"model: Llama width {args.hidden}, {args.layers} layers, {args.heads} heads ({args.kv_heads} kv), "
        f"intermediate {args.intermediate}, vocab {len(tok)}, attn {model.backbone.config._attn_implementation}, "
        f"{args.dtype}; params backbone {n_backbone / 1e6:.3f}M, ST modules {n_st / 1e6:.3f}M, "
        f"st_slots {model.config.st_slots}"
    )
    collator = STDataCollator(tok, st_slots=model.config.st_slots, padding_side="right")
    lens = [len(x) for x in collator.encode([t for i in range(len(ds)) for t in collator.texts(ds[i])])]
    tot = [a + b for a, b in zip(lens[0::2], lens[1::2])]
    print(
        f"samples: {len(ds)} = {ds.n_regions} held-out regions x {ds.n_windows} windows of synthetic city "
        f"({city.n_regions} regions, {args.freq}); tokens/sample mean {statistics.mean(tot):.0f} "
        f"(prompt {statistics.mean(lens[0::2]):.0f} + answer {statistics.mean(lens[1::2]):.0f})"
    )

    print(f"\n== (a) predict(batch_size={args.batch_size}): batched teacher-forced single pass, incl. collation")
    for _ in range(args.warmup):
        predict(model, tok, ds, scaler, batch_size=args.batch_size, progress=False, max_batches=1)
    times = []
    for _ in range(args.repeats):
        t, pred, tokens = run_predict(args, model, tok, ds, scaler)
        times.append(t)
    t_a = statistics.median(times)
    rate_a = len(ds) / t_a
    print(f"predictions {tuple(pred.shape)}, {args.repeats} passes: median {t_a * 1e3:.1f} ms "
          f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})")  # fmt: skip
    print(f"rate (a) {rate_a:,.1f} samples/s  ({t_a / len(ds) * 1e3:.2f} ms/sample)")
    print(f"(a) {tokens.per_sample()}; (a0) and (b) compute every prompt token")

    print(f"\n== (a0) reference: plain batched forward (batch_size={args.batch_size}, full template, padding mask)")
    run_plain(args, model, tok, ds, max_batches=1)
    t_a0 = run_plain(args, model, tok, ds)
    rate_a0 = len(ds) / t_a0
    print(f"rate (a0) {rate_a0:,.1f} samples/s  ({t_a0 / len(ds) * 1e3:.2f} ms/sample); "
          f"(a) / (a0) = {rate_a / rate_a0:.2f}x")  # fmt: skip

    n_gen = min(args.gen_samples, len(ds))
    subset = np.linspace(0, len(ds) - 1, n_gen).round().astype(int).tolist()
    print(f"\n== (b) UrbanGPT style: per sample generate (batch 1, greedy) + one forward; {n_gen} of {len(ds)} samples")
    gen_collator = STDataCollator(tok, st_slots=model.config.st_slots, padding_side="right")
    for _ in range(args.warmup):
        generate_one(model, tok, gen_collator, ds[subset[0]])
    runs = [generate_one(model, tok, gen_collator, ds[i]) for i in subset]
    per = [r["total"] for r in runs]
    t_b = statistics.mean(per)
    rate_b = 1.0 / t_b
    print(
        f"per sample: mean {t_b * 1e3:.1f} ms, median {statistics.median(per) * 1e3:.1f} ms "
        f"(min {min(per) * 1e3:.1f}, max {max(per) * 1e3:.1f}); generate share "
        f"{sum(r['gen'] for r in runs) / sum(per):.0%}"
    )
    print(
        f"tokens generated per sample: mean {statistics.mean(r['answer'] for r in runs):.1f} "
        f"(prompt mean {statistics.mean(r['prompt'] for r in runs):.0f}); slot run generated by the model "
        f"itself in {sum(r['natural'] for r in runs)}/{n_gen} samples (others: slots forced, same work)"
    )
    print(f"rate (b) {rate_b:,.2f} samples/s  -> extrapolated {len(ds)} samples: {len(ds) * t_b:.1f} s")

    ratio = rate_a / rate_b
    print("\n== ratio")
    verdict = "PASS" if ratio >= args.target else "MISS"
    print(f"rate (a) / rate (b) = {ratio:.1f}x  target >= {args.target:.0f}x: {verdict}")
    print(f"rate (a0) / rate (b) = {rate_a0 / rate_b:.1f}x  (the plain batched forward, for reference)")
    print(f"model {(n_backbone + n_st) / 1e6:.3f}M params, threads {torch.get_num_threads()}")
    print(f"\ntotal bench time {time.perf_counter() - t_start:.1f} s")
    return {"rate_a": rate_a, "rate_a0": rate_a0, "rate_b": rate_b, "ratio": ratio, "target": args.target,
            "computed_tokens": tokens.computed / tokens.samples, "prompt_tokens": tokens.prompt / tokens.samples,
            "params": n_backbone + n_st}


if __name__ == "__main__":
    main()
