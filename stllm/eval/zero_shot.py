"""``stllm eval``: cross-region / cross-city / cross-dataset zero-shot evaluation with baselines.

Checks from the checkpoint's ``split.json`` that the evaluated regions (or city) and time range
were never trained on, and refuses otherwise (naming the overlap) unless ``--allow-overlap``.
stllm and every baseline run on the same windows in the same call; one table is printed and
``metrics.json``, ``predictions.jsonl`` and plots are written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from stllm.data import SplitRecord, STInstructionDataset, STScaler, assert_zero_shot, split_record
from stllm.data.context import ContextSpec
from stllm.encoders.io import save_encoder
from stllm.eval.baselines import baseline_label, eval_targets, run_baselines
from stllm.eval.metrics import event_metrics, flow_metrics
from stllm.eval.plots import plot_error_map, plot_forecasts
from stllm.eval.predict import predict
from stllm.models import STLlamaForCausalLM
from stllm.train.arguments import DataArguments
from stllm.train.train_mem import load_city

logger = logging.getLogger("stllm")
MODES = ("cross-region", "cross-city", "cross-dataset")
REQUIRED = ("config.json", "scaler.json", "split.json", "tokenizer_config.json")


@dataclass
class EvalResult:
    metrics: dict[str, dict[str, float]]
    table: str
    output_dir: Path
    files: list[Path] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)


def _check_checkpoint(path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    for name in REQUIRED:
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint {path} is missing {name}")


def _data_args(checkpoint: Path, overrides: dict) -> DataArguments:
    """The data the checkpoint was trained on (``data_args.json``), with the user's overrides."""
    base = {}
    if (checkpoint / "data_args.json").is_file():
        base = json.loads((checkpoint / "data_args.json").read_text())
    known = set(DataArguments.__dataclass_fields__)
    merged = {**base, **{k: v for k, v in overrides.items() if v is not None}}  # unset flags keep the run's data
    return DataArguments(**{k: v for k, v in merged.items() if k in known})


def eval_dataset(city, scaler, d_args: DataArguments, enc, regions, time: slice, stride: int) -> STInstructionDataset:
    """The checkpoint's prompts on the evaluated windows: the same template, extra views, geo slots and
    encoder context as in training (from ``data_args.json`` and the encoder config)."""
    views = tuple(v for v in d_args.extra_views.split(",") if v)
    return STInstructionDataset(city, scaler, regions=regions, time=time, input_len=enc.input_window,
                                output_len=enc.horizon, stride=stride, extra_views=views, with_geo=d_args.with_geo,
                                days=enc.days, weeks=enc.weeks)  # fmt: skip


def _eval_time(city, train: SplitRecord, mode: str, start: str | None, days: float | None, input_len: int) -> slice:
    """Cross-region: after the training time range; otherwise the whole series (or ``start``)."""
    if start is not None:
        first = city.time_index(start)
        first = max(first - input_len, 0)  # history may precede the first evaluated target
    elif mode == "cross-region" and train.city == city.name:
        end = np.datetime64(train.time_range[1])
        first = int(np.searchsorted(city.timestamps, end))
    else:
        first = 0
    if first >= city.n_steps:
        raise ValueError(f"evaluation start is outside the data ({city.timestamps[0]} .. {city.timestamps[-1]})")
    stop = city.n_steps
    if days is not None:
        stop = min(stop, first + input_len + int(np.timedelta64(int(days * 86400), "s") // city.freq))
    return slice(first, stop)


def _fmt(v: float) -> str:
    return "nan" if not np.isfinite(v) else (f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}")


def format_table(metrics: dict[str, dict[str, float]], columns: list[str]) -> str:
    width = max(len(n) for n in metrics) + 2
    lines = ["method".ljust(width) + "".join(c.rjust(max(12, len(c) + 2)) for c in columns)]
    for name, row in metrics.items():
        lines.append(name.ljust(width) + "".join(_fmt(row[c]).rjust(max(12, len(c) + 2)) for c in columns))
    return "\n".join(lines)


def aggregate_seeds(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, tuple[float, float]]]:
    """``{method: {column: (mean, std)}}`` over runs with different seeds (population std; methods and
    columns of the first run, each must appear in every run)."""
    if not runs:
        raise ValueError("aggregate_seeds: no runs")
    out = {}
    for method, row in runs[0].items():
        missing = [i for i, r in enumerate(runs) if method not in r]
        if missing:
            raise ValueError(f"aggregate_seeds: method {method!r} is missing from run(s) {missing}")
        out[method] = {c: (float(np.mean(v)), float(np.std(v)))
                       for c in row for v in [np.array([r[method][c] for r in runs], dtype=np.float64)]}
    return out


def format_seed_table(agg: dict[str, dict[str, tuple[float, float]]], columns: list[str], seeds: list[int]) -> str:
    """The table of :func:`format_table` with ``mean +- std`` cells, over ``seeds``."""
    cells = {m: {c: f"{_fmt(row[c][0])} +- {_fmt(row[c][1])}" for c in columns} for m, row in agg.items()}
    width = max(len(n) for n in cells) + 2
    w = max(20, *(len(v) + 2 for row in cells.values() for v in row.values()))
    lines = [f"mean +- std over seeds {', '.join(map(str, seeds))}",
             "method".ljust(width) + "".join(c.rjust(w) for c in columns)]
    lines += [m.ljust(width) + "".join(row[c].rjust(w) for c in columns) for m, row in cells.items()]
    return "\n".join(lines)


def evaluate(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    mode: str = "cross-region",
    data: str | None = None,
    data_root: str | None = None,
    eval_start: str | None = None,
    eval_days: float | None = None,
    stride: int | None = None,
    batch_size: int = 32,
    baselines: list[str] | None = None,
    supervised: bool = True,
    allow_overlap: bool = False,
    progress: bool = True,
    plots: bool = True,
    data_overrides: dict | None = None,
    rescale: bool | None = None,
    generate: bool = False,
    compare: dict[str, str | os.PathLike] | None = None,
    ridge: bool = True,
) -> EvalResult:
    """Evaluate ``checkpoint`` zero-shot against baselines; see the module docstring.

    ``compare`` maps row labels to other checkpoints (e.g. the "stllm without LLM" ablation) that are
    evaluated on the same windows, each refused like the main one if it trained on them. ``ridge``
    adds the scale-free linear baseline, fitted on the checkpoint's training regions and times (of the
    training city, also when another city is evaluated)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    ckpt, out = Path(checkpoint), Path(output_dir)
    _check_checkpoint(ckpt)
    out.mkdir(parents=True, exist_ok=True)
    model = STLlamaForCausalLM.from_pretrained(ckpt)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    scaler = STScaler.load(ckpt / "scaler.json")
    train = SplitRecord.from_json((ckpt / "split.json").read_text())
    d_args = _data_args(ckpt, {"data": data, "data_root": data_root, **(data_overrides or {})})
    city = load_city(d_args)
    enc = model.config.st_encoder
    if city.n_channels != enc.in_channels:
        raise ValueError(
            f"data {d_args.data!r} has {city.n_channels} channels {city.channels}; the checkpoint's encoder "
            f"was built for {enc.in_channels}"
        )
    if mode == "cross-region" and train.city != city.name:
        raise ValueError(f"cross-region evaluates the training city {train.city!r}, data is {city.name!r}")
    if mode != "cross-region" and train.city == city.name and not allow_overlap:
        raise ValueError(f"{mode} needs a city other than the training city {train.city!r}")
    seen = set(train.regions) if train.city == city.name else set()
    regions = [r for r in city.region_ids if r not in seen] if mode == "cross-region" else list(city.region_ids)
    if allow_overlap and mode == "cross-region" and not regions:
        regions = list(city.region_ids)
    if not regions:
        raise ValueError(f"no regions left to evaluate: all {city.n_regions} regions of {city.name!r} were trained on")
    input_len, output_len = enc.input_window, enc.horizon
    time = _eval_time(city, train, mode, eval_start, eval_days, input_len)
    # what is evaluated are the targets: histories may precede them (from held-out regions), targets may not
    # fall in a training period
    record = split_record(city, regions, slice(time.start + input_len, time.stop))
    if not allow_overlap:
        assert_zero_shot(train, record, require=("regions", "time"))
    if rescale is None:
        rescale = mode != "cross-region"
    if rescale:  # a new city's own history before the first evaluated target sets its scale (no targets used)
        scaler = STScaler.fit(city, regions=regions, time=slice(0, time.start + input_len))
    ds = eval_dataset(city, scaler, d_args, enc, regions, time, stride or output_len)
    logger.warning("evaluating %d regions x %d windows of %s (%s)", ds.n_regions, ds.n_windows, city.name, mode)
    run = {"checkpoint": str(ckpt.resolve()), "eval": json.loads(record.to_json()), "stride": stride or output_len}
    run["generate"] = generate
    stllm = predict(model, tokenizer, ds, scaler, batch_size=batch_size, output=out / "predictions.jsonl", run=run,
                    progress=progress, generate=generate)  # fmt: skip
    y, mask = eval_targets(city, ds.starts, ds.region_idx, input_len, output_len)
    failed = np.isnan(stllm).any(axis=(-2, -1))  # generate mode: samples whose answer held no prediction slots
    name = "stllm" if not generate else f"stllm (generate, {int((~failed).sum())}/{failed.size} parsed)"
    preds = {name: stllm}
    for label, other in (compare or {}).items():
        preds[label] = _predict_other(Path(other), label, city, record, enc, d_args, regions, time,
                                      stride or output_len, rescale, scaler, allow_overlap, batch_size, progress,
                                      out)  # fmt: skip

    encoder_dir = out / "encoder_from_checkpoint"  # the model's own (stage-1) encoder, zero-shot
    save_encoder(model.st_encoder, encoder_dir)
    scaler.save(encoder_dir / "scaler.json")
    # run_baselines' defaults: the simple ones, encoder_only (encoder_dir), supervised_encoder (train_time)
    history = int(ds.starts[0]) + input_len  # steps before the first evaluated target
    # the supervised reference needs its context's warm-up and a few windows (and a validation part) after it
    need = ContextSpec.of_encoder(enc).min_history(city.freq, city.source)
    train_time = slice(0, history) if supervised and history > need + 4 * (input_len + output_len) else None
    if supervised and train_time is None:
        logger.warning("supervised_encoder skipped: %d steps before the first target, it needs more than %d",
                       history, need + 4 * (input_len + output_len))
    names = baselines
    if names is not None and train_time is not None and "supervised_encoder" not in names:
        names = [*names, "supervised_encoder"]
    ridge_kwargs = _ridge_kwargs(ckpt, train, city, scaler) if ridge and (names is None or "ridge" in names) else None
    base = run_baselines(city, ds.starts, ds.region_idx, input_len, output_len, names=names,
                         encoder_dir=encoder_dir, train_time=train_time, ridge_kwargs=ridge_kwargs,
                         pretrain_kwargs={"epochs": 5, "steps_per_epoch": 100, "progress": False,
                                          "encoder_config": _same_inputs(enc)})  # fmt: skip
    preds.update({baseline_label(k): v for k, v in base.items()})

    # parse failures are reported in the row name and scored for no method (same samples for all rows)
    mask = mask & ~failed[..., None, None]
    if city.task == "event":
        metrics = {k: event_metrics(p, y, mask, classes=city.channels) for k, p in preds.items()}
        columns = [f"{m}/{c}" for c in city.channels for m in ("Recall", "F1")] + ["Macro-Recall", "Macro-F1"]
    else:
        metrics = {k: flow_metrics(p, y, mask, channels=city.channels) for k, p in preds.items()}
        columns = [f"{m}/{c}" for c in city.channels for m in ("MAE", "RMSE")]
    table = format_table(metrics, columns)
    files = [out / "predictions.jsonl", _write_json(out / "metrics.json", {
        "mode": mode, "city": city.name, "regions": regions, "time_range": record.time_range, "rescaled": rescale,
        "generate_failures": int(failed.sum()),
        "windows": ds.n_windows, "checkpoint": str(ckpt), "metrics": metrics})]  # fmt: skip
    if plots:
        files += _plots(out, city, ds, y, preds, metrics)
    (out / "table.txt").write_text(table + "\n")
    return EvalResult(metrics, table, out, files, columns)


def _predict_other(path: Path, label: str, city, record: SplitRecord, enc, d_args: DataArguments, regions, time,
                   stride: int, rescale: bool, scaler: STScaler, allow_overlap: bool, batch_size: int, progress: bool,
                   out: Path) -> np.ndarray:
    """Predictions of another checkpoint on the same windows (its own scaler unless rescaled)."""
    _check_checkpoint(path)
    if not allow_overlap:
        try:
            trained = SplitRecord.from_json((path / "split.json").read_text())
            assert_zero_shot(trained, record, require=("regions", "time"))
        except ValueError as e:
            raise ValueError(f"compared checkpoint {label!r} ({path}): {e}") from None
    model = STLlamaForCausalLM.from_pretrained(path)
    other = model.config.st_encoder
    if (other.input_window, other.horizon) != (enc.input_window, enc.horizon):
        raise ValueError(f"compared checkpoint {label!r} ({path}) forecasts {other.input_window} -> {other.horizon} "
                         f"steps, the evaluated one {enc.input_window} -> {enc.horizon}")
    own = scaler if rescale else STScaler.load(path / "scaler.json")
    views = _data_args(path, {}).extra_views if (path / "data_args.json").is_file() else d_args.extra_views
    ds = eval_dataset(city, own, DataArguments(**{**vars(d_args), "extra_views": views}), other, regions, time, stride)
    slug = "".join(ch if ch.isalnum() else "-" for ch in label).strip("-")
    run = {"checkpoint": str(path.resolve()), "eval": json.loads(record.to_json()), "stride": stride}
    return predict(model, AutoTokenizer.from_pretrained(path), ds, own, batch_size=batch_size,
                   output=out / f"predictions-{slug}.jsonl", run=run, progress=progress)


def _ridge_kwargs(ckpt: Path, train: SplitRecord, city, scaler: STScaler) -> dict:
    """Fit set of the ridge baseline: the checkpoint's training regions x training time, in its training
    city (loaded from the checkpoint's own data arguments when another city is evaluated)."""
    fit_city = city if train.city == city.name else load_city(_data_args(ckpt, {}))
    if fit_city.name != train.city:
        raise ValueError(f"ridge baseline: the checkpoint trained on {train.city!r}, its data arguments load "
                         f"{fit_city.name!r}")
    fit_time = slice(fit_city.time_index(train.time_range[0]), fit_city.time_index(train.time_range[1]))
    # features are normalised per sample: the evaluation's scaler only sets the units, for fit and prediction
    return {"fit_city": fit_city, "fit_regions": list(train.regions), "fit_time": fit_time, "scaler": scaler}


def _same_inputs(enc) -> dict:
    """Encoder config fields that decide what an encoder reads and how it forecasts: a supervised
    reference encoder gets the checkpoint's (context, normalisation, anchor)."""
    return {k: getattr(enc, k) for k in ("days", "weeks", "normalize", "residual", "norm_eps")}


def _write_json(path: Path, obj) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)
    return path


def _plots(out: Path, city, ds, y, preds, metrics) -> list[Path]:
    names = [city.regions[int(i)].name for i in ds.region_idx]
    key = "Macro-F1" if city.task == "event" else "MAE"
    others = {k: v for k, v in metrics.items() if not k.startswith("stllm") and "not zero-shot" not in k}
    best = (max if city.task == "event" else min)(others, key=lambda k: others[k][key]) if others else None
    first = next(iter(preds))
    shown = {first: np.nan_to_num(preds[first]), **({best: preds[best]} if best else {})}
    files = [plot_forecasts(out / "forecasts.png", y, shown, names, list(city.channels))]
    coords = city.coords[ds.region_idx]
    if np.isfinite(coords).all() and city.task != "event":
        err = np.nanmean(np.abs(preds[first] - y), axis=(0, 2, 3))
        files.append(plot_error_map(out / "error_map.png", coords[:, 0], coords[:, 1], err, names,
                                    f"stllm MAE per held-out region ({city.name})"))  # fmt: skip
    return files


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="stllm eval", description=__doc__,
                                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("checkpoint", help="a checkpoint directory written by stllm train (or stllm export)")
    p.add_argument("--output_dir", default=None, help="where results go (default: <checkpoint>/eval-<mode>)")
    p.add_argument("--mode", choices=MODES, default="cross-region", help="which zero-shot setting")
    p.add_argument("--data", default=None, help="data preset or .npz (default: what the checkpoint trained on)")
    p.add_argument("--data_root", default=None, help="folder of the real data (default ../shared/data)")
    p.add_argument("--eval_start", default=None, help="first evaluated target time, e.g. 2020-01-01")
    p.add_argument("--eval_days", type=float, default=None, help="evaluate this many days from the start")
    p.add_argument("--stride", type=int, default=None, help="steps between windows (default: the horizon)")
    p.add_argument("--batch_size", type=int, default=32, help="samples per forward pass")
    p.add_argument("--baselines", default=None, help="comma list (default: all zero-shot ones)")
    p.add_argument("--no_supervised", action="store_true", help="skip the supervised (not zero-shot) reference")
    p.add_argument("--allow-overlap", dest="allow_overlap", action="store_true",
                   help="evaluate even where the split check finds regions/time seen in training")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.add_argument("--generate", action="store_true",
                   help="UrbanGPT parity: generate each answer and read the heads at the generated slots (slow)")
    p.add_argument("--rescale", choices=("auto", "yes", "no"), default="auto",
                   help="fit the scaler on the evaluated city's history before the first target "
                        "(auto: for cross-city/cross-dataset)")
    return p


def run(args: argparse.Namespace) -> int:
    out = args.output_dir or str(Path(args.checkpoint) / f"eval-{args.mode}")
    try:
        result = evaluate(
            args.checkpoint, out, mode=args.mode, data=args.data, data_root=args.data_root,
            eval_start=args.eval_start, eval_days=args.eval_days, stride=args.stride, batch_size=args.batch_size,
            baselines=args.baselines.split(",") if args.baselines else None, supervised=not args.no_supervised,
            allow_overlap=args.allow_overlap, progress=not args.no_progress,
            rescale={"auto": None, "yes": True, "no": False}[args.rescale], generate=args.generate,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as e:
        print(f"stllm eval: error: {e}")
        return 2
    return print_result(result)


def print_result(result: EvalResult) -> int:
    """The table and the files written; the CLI's exit status (0)."""
    print(result.table)
    print("\nwrote " + ", ".join(str(f) for f in result.files))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
