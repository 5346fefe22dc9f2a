"""Stage-1 encoder against the historical average and the level-scaled one on other test periods.

The Manhattan protocol tests on 2020-01-01..14, a holiday shift. This runs the same protocol (8 weeks of
training on 80% of the zones up to ``start``, zero-shot on the other zones for the 14 days after it) at
other starts, stage 1 only (the demo's stage-1 settings), and prints MAE in / out of: the historical
average, ``level_average``, the encoder as stage 1 chose it, and the encoder with its linear path zeroed
(what the level-scaled anchor alone gives inside the encoder). A development check: which design wins
away from the protocol's test period.

    python bench/forecast_periods.py --presets manhattan-taxi,manhattan-bike --starts 2019-06-03,2019-10-01
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from stllm.data import RegionSplit
from stllm.data.loaders import load_preset
from stllm.encoders.io import load_encoder, save_encoder
from stllm.eval.baselines import encoder_only, eval_targets, historical_average
from stllm.eval.level_average import level_average
from stllm.train.pretrain_encoder import pretrain_st_encoder

TRAIN_STEPS = 2688  # 8 weeks of 30-minute steps, as the manhattan demo presets
STAGE1 = {"epochs": 3, "steps_per_epoch": 150, "regions_per_batch": 16}


def run(preset: str, start: str, seed: int, root: str | None, work: Path) -> dict[str, list[float]]:
    city = load_preset(preset, root=root)
    regions = RegionSplit.random(city, test=0.2, seed=0)
    e0 = city.time_index(start)
    fit_time = slice(e0 - TRAIN_STEPS - 23, e0)
    cfg = {"input_window": 12, "horizon": 12, "days": 7, "weeks": 8, "level_len": 48, "in_channels": city.n_channels,
           "out_channels": city.n_channels, "num_tokens": city.n_channels}
    out = work / f"{preset}-{start}"
    pretrain_st_encoder(city, regions.train, fit_time, seed=seed, output_dir=out, overwrite=True, progress=False,
                        encoder_config=cfg, **STAGE1)
    test = city.region_index(regions.test)
    starts = np.arange(e0 - 12, e0 + 14 * 48 - 24 + 1, 12)
    y, mask = eval_targets(city, starts, test, 12, 12)

    def mae(pred: np.ndarray) -> list[float]:
        return [float(np.abs(pred - y)[..., c][mask[..., c]].mean()) for c in range(city.n_channels)]

    rows = {"historical_average": mae(historical_average(city, starts, test, 12, 12)),
            "level_average": mae(level_average(city, starts, test, 12, 12, fit_regions=list(regions.train),
                                               fit_time=fit_time))}  # fmt: skip
    for label, zero in (("encoder (stage 1)", False), ("encoder, linear path zeroed", True)):
        enc = load_encoder(out)
        if zero:
            with torch.no_grad():
                enc.linear_proj.weight.zero_()
                enc.linear_proj.bias.zero_()
        variant = work / f"{out.name}-{int(zero)}"
        save_encoder(enc, variant)
        shutil.copy(out / "scaler.json", variant / "scaler.json")
        rows[label] = mae(encoder_only(city, starts, test, 12, 12, encoder_dir=variant))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="manhattan-taxi,manhattan-bike")
    p.add_argument("--starts", default="2019-06-03,2019-10-01", help="first test day of each period")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_root", default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            for start in args.starts.split(","):
                rows = run(preset, start, args.seed, args.data_root, Path(tmp))
                print(f"\n{preset}, 14 days from {start}, seed {args.seed} (MAE per channel)")
                for name, vals in rows.items():
                    print(f"  {name:30s} " + " / ".join(f"{v:.3f}" for v in vals), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
