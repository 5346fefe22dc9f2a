"""Data layer throughput and memory on the full Manhattan taxi file (or a synthetic city).

Prints collated samples/s with the offline tokenizer (target >= 2,000/s on 2 cores), for batches
grouped by window (what evaluation does) and random batches (what training does), and the resident
memory the city + dataset add (target < 200 MB). Usage: python bench/data_throughput.py [--data synthetic]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from stllm.data import (
    STDataCollator,
    STInstructionDataset,
    STScaler,
    load_manhattan_flows,
    synthetic_city,
    train_tokenizer,
    window_batches,
)
from stllm.data.prompts import ChatFormatter


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rate(collator, dataset, batches) -> tuple[float, int]:
    t0, n = time.perf_counter(), 0
    for idx in batches:
        collator([dataset[i] for i in idx])
        n += len(idx)
    return n / (time.perf_counter() - t0), n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", choices=("manhattan", "synthetic"), default="manhattan")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--batches", type=int, default=150, help="batches timed per mode")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}  threads {torch.get_num_threads()}")
    before = rss_mb()
    t0 = time.perf_counter()
    if args.data == "manhattan":
        city = load_manhattan_flows("taxi")
    else:
        city = synthetic_city(seed=0, n_regions=69, days=730, freq="30min")
    scaler = STScaler.fit(city, time=slice(0, city.n_steps // 2))
    ds = STInstructionDataset(city, scaler)
    load_s = time.perf_counter() - t0
    after = rss_mb()
    print(f"city {city.name}: values {city.values.shape} {city.values.dtype}, {len(ds):,} samples "
          f"({ds.n_windows:,} windows x {ds.n_regions} regions), built in {load_s:.1f} s")  # fmt: skip
    fmt = ChatFormatter(None)
    rng = np.random.default_rng(0)
    texts = ["\n".join(fmt(ds[int(i)]["conversation"])) for i in rng.choice(len(ds), 400, replace=False)]
    tok = train_tokenizer(texts, vocab_size=2000)
    collator = STDataCollator(tok, st_slots=city.n_channels)
    grouped = list(window_batches(ds, args.batch_size, shuffle=True, seed=0))[: args.batches]
    random = [rng.choice(len(ds), args.batch_size, replace=False).tolist() for _ in range(args.batches)]
    rate(collator, ds, grouped[:3])  # warm-up (sentence cache)
    g, n_g = rate(collator, ds, grouped)
    r, n_r = rate(collator, ds, random)
    target = 2000
    print(f"collated samples/s, grouped by window: {g:,.0f} ({n_g} samples)  target >= {target}: "
          f"{'PASS' if g >= target else 'MISS'}")  # fmt: skip
    print(f"collated samples/s, random batches:    {r:,.0f} ({n_r} samples)  target >= {target}: "
          f"{'PASS' if r >= target else 'MISS'}")  # fmt: skip
    added = after - before
    print(f"resident memory added by city + dataset: {added:.0f} MB  target < 200 MB: "
          f"{'PASS' if added < 200 else 'MISS'}   (process total {rss_mb():.0f} MB)")  # fmt: skip


if __name__ == "__main__":
    main()
