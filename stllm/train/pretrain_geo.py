"""Stage 1 for :class:`GeoEncoder`: pretrain on a set of coordinates and save it as an encoder directory.

``pretrain_geo_encoder(coords, ...)`` samples batches of points from ``coords`` (region centroids,
POI / check-in locations), moves each by up to ``sample_jitter_m`` (so the encoder sees the
neighbourhood of the data, not only its exact points), and trains
:class:`~stllm.encoders.geo_pretrain.GeoPretrainObjective` (hierarchical cells + jitter InfoNCE).
A held-out fraction of the coordinates measures near (< 200 m) vs far (> 5 km) cosine similarity
before and after training. With ``output_dir`` it writes::

    encoder_config.json, model.safetensors   save_encoder (kind "geo"): what the model loads by path
    metrics.json                             losses, cell / contrastive accuracy, near/far similarity

Command line: ``python -m stllm.train.pretrain_geo --help`` (to become ``stllm pretrain-encoder --encoder geo``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stllm.encoders.geo_encoder import GeoEncoder, GeoEncoderConfig, check_coordinates
from stllm.encoders.geo_pretrain import GeoPretrainObjective, jitter, near_far_similarity
from stllm.encoders.io import save_encoder
from stllm.errors import run_command, split_debug
from stllm.train.checks import (
    at_least,
    claims_output_dir,
    fraction_half_open,
    non_negative_float,
    positive_float,
    positive_int,
)

logger = logging.getLogger(__name__)

# New York City (the five boroughs), the default box for --synthetic
NYC_BOX = (40.50, 40.92, -74.26, -73.70)  # lat_min, lat_max, lon_min, lon_max
METRICS_NAME = "metrics.json"


def synthetic_coords(n: int = 5000, seed: int = 0, box: tuple[float, float, float, float] = NYC_BOX) -> np.ndarray:
    """``(n, 2)`` float64 (lat, lon) uniform in ``box`` = (lat_min, lat_max, lon_min, lon_max)."""
    lat0, lat1, lon0, lon1 = box
    if not (-90 <= lat0 < lat1 <= 90 and -180 <= lon0 < lon1 <= 180):
        raise ValueError(f"bad box {box}: need -90 <= lat_min < lat_max <= 90 and -180 <= lon_min < lon_max <= 180")
    rng = np.random.default_rng(seed)
    return np.stack((rng.uniform(lat0, lat1, n), rng.uniform(lon0, lon1, n)), axis=1)


def read_coords_csv(path: str | os.PathLike) -> np.ndarray:
    """Read ``(M, 2)`` (lat, lon) from a CSV with columns ``lat, lon`` or ``latitude, longitude`` (any case)."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = {name.strip().lower(): name for name in (reader.fieldnames or [])}
        lat_col = fields.get("lat") or fields.get("latitude")
        lon_col = fields.get("lon") or fields.get("lng") or fields.get("longitude")
        if lat_col is None or lon_col is None:
            raise ValueError(
                f"{path}: needs columns 'lat' and 'lon' (or 'latitude' and 'longitude'); found {reader.fieldnames}"
            )
        rows = []
        for i, row in enumerate(reader, start=2):  # line 1 is the header
            try:
                rows.append((float(row[lat_col]), float(row[lon_col])))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{path}, line {i}: cannot parse {lat_col}={row[lat_col]!r}, {lon_col}={row[lon_col]!r}"
                ) from None
    if not rows:
        raise ValueError(f"{path}: no coordinate rows")
    coords = np.asarray(rows, dtype=np.float64)
    check_coordinates(torch.from_numpy(coords), f"{path} ({lat_col}, {lon_col})")
    return coords


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@claims_output_dir("geo encoder")
def pretrain_geo_encoder(
    coords: np.ndarray,
    config: GeoEncoderConfig | dict | None = None,
    steps: int = 1000,
    batch: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    output_dir: str | os.PathLike | None = None,
    *,
    levels_km: tuple[float, ...] = (0.5, 2.0, 8.0, 32.0),
    n_buckets: int = 4096,
    temperature: float = 0.1,
    jitter_m: float = 100.0,
    sample_jitter_m: float = 250.0,
    val_fraction: float = 0.1,
    weight_decay: float = 0.0,
    device: str | torch.device | None = None,
    log_every: int = 0,
    overwrite: bool = True,
) -> tuple[GeoEncoder, dict]:
    """Train a :class:`GeoEncoder` on ``coords`` (M, 2) (lat, lon) degrees; return ``(encoder, metrics)``.

    ``output_dir`` is held for the run (a lock with this pid) and refused when it holds another artefact
    (an ST encoder, a training run), or a geo encoder unless ``overwrite`` (the command line's default is
    not to overwrite; this function's keeps its earlier behaviour of replacing a geo encoder).

    ``val_fraction`` of the (shuffled) points are held out of sampling and used for the near/far
    similarity check. The encoder is returned in eval mode on the CPU.
    """
    coords_t = torch.as_tensor(np.asarray(coords, dtype=np.float64))
    if coords_t.dim() != 2:
        raise ValueError(f"coords must be (M, 2) (lat, lon), got shape {tuple(coords_t.shape)}")
    check_coordinates(coords_t, "coords")
    if steps < 0 or batch < 2:
        raise ValueError(f"need steps >= 0 and batch >= 2, got steps={steps}, batch={batch}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    m = coords_t.shape[0]
    n_val = int(round(m * val_fraction)) if m >= 20 else 0
    if m - n_val < 1:
        raise ValueError(f"need at least one training coordinate, got {m}")

    dev = torch.device(device) if device is not None else torch.device("cpu")
    torch.manual_seed(seed)  # weight init
    g = torch.Generator().manual_seed(seed)  # sampling + jitter (CPU generator; tensors moved after)
    perm = torch.randperm(m, generator=g)
    val, train = coords_t[perm[:n_val]], coords_t[perm[n_val:]]

    encoder = GeoEncoder(config)
    objective = GeoPretrainObjective(
        encoder, levels_km=levels_km, n_buckets=n_buckets, temperature=temperature, jitter_m=jitter_m
    ).to(dev)
    eval_coords = val if n_val > 0 else train
    before = near_far_similarity(encoder, eval_coords, seed=seed)
    opt = torch.optim.AdamW(objective.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=lr * 0.05)

    history: list[dict] = []
    last = None
    t0 = time.perf_counter()
    objective.train()
    for step in range(1, steps + 1):
        idx = torch.randint(train.shape[0], (batch,), generator=g)
        pts = jitter(train[idx], sample_jitter_m, g) if sample_jitter_m > 0 else train[idx]
        # the objective's positive jitter uses its own CPU generator stream, then moves to the device
        out = objective(pts.to(dev), generator=g)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        opt.step()
        sched.step()
        last = out
        if log_every and (step % log_every == 0 or step == steps):
            rec = {
                "step": step,
                "loss": out.total.item(),
                "cell": out.cell.item(),
                "contrastive": out.contrastive.item(),
            }
            history.append(rec)
            logger.info("step %d: %s", step, rec)
    train_s = time.perf_counter() - t0

    encoder = objective.encoder.cpu().eval()
    after = near_far_similarity(encoder, eval_coords, seed=seed)
    metrics = {
        "n_coords": int(m),
        "n_train": int(train.shape[0]),
        "n_val": int(n_val),
        "near_far_on": "val" if n_val > 0 else "train",
        "steps": int(steps),
        "batch": int(batch),
        "lr": float(lr),
        "seed": int(seed),
        "sample_jitter_m": float(sample_jitter_m),
        "objective": objective.settings(),
        "encoder_config": encoder.config.to_dict(),
        "train_seconds": round(train_s, 3),
        "near_far_before": before,
        "near_far_after": after,
        "history": history,
    }
    if last is not None:
        metrics["final"] = {
            "loss": last.total.item(),
            "cell": last.cell.item(),
            "contrastive": last.contrastive.item(),
            "cell_acc": {f"{k:g}km": a for k, a in zip(objective.levels_km, last.cell_acc.tolist())},
            "contrastive_acc": last.contrastive_acc.item(),
        }
    if output_dir is not None:
        out = Path(output_dir)
        save_encoder(encoder, out, extra={"pretrain": {"objective": "geo_cells+infonce", **objective.settings()}})
        _write_atomic(out / METRICS_NAME, json.dumps(metrics, indent=2))
        metrics["output_dir"] = str(out)
    return encoder, metrics


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(
        allow_abbrev=False,
        prog="stllm pretrain-encoder --encoder geo",
        description="Stage 1: pretrain a GeoEncoder (hierarchical grid cells + jitter InfoNCE) on coordinates.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--coords_csv", help="CSV with columns lat, lon (or latitude, longitude)")
    src.add_argument("--synthetic", action="store_true", help="random points in a city box (see --box)")
    p.add_argument("--n_synthetic", type=positive_int, default=5000, help="number of synthetic points")
    p.add_argument(
        "--box",
        type=float,
        nargs=4,
        default=list(NYC_BOX),
        metavar=("LAT_MIN", "LAT_MAX", "LON_MIN", "LON_MAX"),
        help="box for --synthetic (New York City)",
    )
    p.add_argument("--output_dir", default="checkpoints/geo_encoder", help="encoder directory to write")
    p.add_argument("--overwrite_output_dir", action="store_true",
                   help="replace a geo encoder already in --output_dir (another artefact is never replaced)")
    p.add_argument("--steps", type=positive_int, default=1000, help="optimisation steps")
    p.add_argument("--batch", type=at_least(2), default=256, help="points per batch")
    p.add_argument("--lr", type=non_negative_float, default=1e-3, help="AdamW learning rate (cosine-decayed)")
    p.add_argument("--seed", type=int, default=0, help="random seed (init, sampling, jitter)")
    p.add_argument("--out_dim", type=positive_int, default=GeoEncoderConfig.out_dim, help="embedding size")
    p.add_argument("--hidden_dim", type=positive_int, default=GeoEncoderConfig.hidden_dim, help="MLP hidden size")
    p.add_argument("--num_scales", type=positive_int, default=GeoEncoderConfig.num_scales, help="sinusoid scales")
    p.add_argument("--levels_km", type=positive_float, nargs="+", default=[0.5, 2.0, 8.0, 32.0], help="cell sizes (km)")
    p.add_argument("--n_buckets", type=positive_int, default=4096, help="hashed cell ids per level")
    p.add_argument("--temperature", type=positive_float, default=0.1, help="InfoNCE temperature")
    p.add_argument("--jitter_m", type=non_negative_float, default=100.0,
                   help="positive = point moved within this radius (m)")
    p.add_argument("--sample_jitter_m", type=non_negative_float, default=250.0,
                   help="training points moved within this (m)")
    p.add_argument("--val_fraction", type=fraction_half_open, default=0.1,
                   help="coordinates held out for the near/far check")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``stllm pretrain-encoder --encoder geo``; errors as :func:`stllm.errors.run_command` reports them."""
    argv, debug = split_debug(sys.argv[1:] if argv is None else list(argv))
    return run_command("pretrain-encoder --encoder geo", lambda: _main(build_parser().parse_args(argv)), debug=debug)


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = GeoEncoderConfig(out_dim=args.out_dim, hidden_dim=args.hidden_dim, num_scales=args.num_scales)
    if args.synthetic:
        coords = synthetic_coords(args.n_synthetic, args.seed, tuple(args.box))
    else:
        coords = read_coords_csv(args.coords_csv)
    metrics = _run(args, coords, config)
    b, a = metrics["near_far_before"], metrics["near_far_after"]
    print(
        f"geo encoder -> {args.output_dir}: near(<{a['near_m']:g} m) cos {b['near_cos']:.3f} -> {a['near_cos']:.3f}, "
        f"far(>{a['far_m']:g} m) cos {b['far_cos']:.3f} -> {a['far_cos']:.3f} on {metrics['near_far_on']} points"
    )
    return 0


def _run(args: argparse.Namespace, coords: np.ndarray, config: GeoEncoderConfig) -> dict:
    _, metrics = pretrain_geo_encoder(
        coords,
        config,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        output_dir=args.output_dir,
        levels_km=tuple(args.levels_km),
        n_buckets=args.n_buckets,
        temperature=args.temperature,
        jitter_m=args.jitter_m,
        sample_jitter_m=args.sample_jitter_m,
        val_fraction=args.val_fraction,
        device=args.device,
        log_every=max(args.steps // 10, 1),
        overwrite=args.overwrite_output_dir,
    )
    return metrics


if __name__ == "__main__":
    sys.exit(main())
