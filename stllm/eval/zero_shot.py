"""``stllm eval``: cross-region / cross-city / cross-dataset zero-shot evaluation with baselines.

Checks from the checkpoint's ``split.json`` that the evaluated regions (or city) and time range
were never trained on, and refuses otherwise (naming the overlap) unless ``--allow-overlap``. The
city is recognised by content (:meth:`stllm.data.splits.SplitRecord.matches`), so the training file
under another name, with regions renamed, reordered or subset, or relabelled in time, is still the
training city. stllm and every baseline run on the same windows in the same call; one table is
printed and ``metrics.json``, ``predictions.jsonl`` and plots are written.

Everything that can fail is checked before the model pass: the flags, the checkpoint's files, the
evaluation window, the zero-shot split, each baseline's history (a default baseline that cannot run
is skipped with a warning and a note under the table; one asked for by ``--baselines`` is refused),
the ridge's fit set, the compared checkpoints and the output directory; the baselines then run
before the model pass.

``predictions.jsonl`` (and ``predictions-<label>.jsonl`` per compared checkpoint) resume a killed
run. Their resume key holds everything that decides the rows: a sha256 of the checkpoint's weight
files and config (``weights``) and of its tokenizer files (``tokenizer``), a sha256 of the evaluated
city's content (``data``: values, mask, timestamps, region metadata), the scaler used (``scaler``),
and the options (regions, target time range, stride, generate, rescale, prompt views). A file
written under another key is refused, naming what differs; ``--overwrite`` starts fresh.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from stllm.data import SplitRecord, STInstructionDataset, STScaler, assert_zero_shot, split_record
from stllm.data.channels import describe, map_channels
from stllm.data.city_files import OVERRIDES as FILE_OPTIONS
from stllm.data.city_files import parse_overrides
from stllm.data.commands import add_override_flags
from stllm.data.context import ContextSpec, period_steps
from stllm.data.splits import ContentFingerprint
from stllm.encoders.io import save_encoder
from stllm.errors import run_command
from stllm.eval.baselines import BASELINES, NOT_ZERO_SHOT, baseline_label, eval_targets, run_baselines
from stllm.eval.metrics import event_metrics, f1_thresholds, flow_metrics, macro_f1_difference, mae_difference
from stllm.eval.plots import plot_error_map, plot_forecasts
from stllm.eval.predict import PredictionFile, predict
from stllm.eval.run_identity import check_checkpoint, checkpoint_digests, data_digest, load_json_object
from stllm.models import STLlamaConfig, STLlamaForCausalLM
from stllm.outdir import check_output_dir, claim_output_dir, held_artifact
from stllm.runtime import DTYPES, inference_device, inference_dtype, place_for_inference
from stllm.safe_io import write_text_atomic
from stllm.train.arguments import DataArguments
from stllm.train.train_mem import load_city

logger = logging.getLogger("stllm")
MODES = ("cross-region", "cross-city", "cross-dataset")
SUPERVISED_TRAINING = {"epochs": 5, "steps_per_epoch": 100}  # the supervised reference's training budget
_DEFAULT_BASELINES = ("last_value", "seasonal_naive_day", "seasonal_naive_week", "historical_average",
                      "level_average", "ridge", "logistic", "encoder_only")  # fmt: skip
VAL_F1 = "Macro-F1 (val thr)"  # at per-class thresholds chosen on validation windows, per method
FITTED = ("level_average", "ridge", "logistic")  # fitted on the checkpoint's training regions x time (one fit set)


@dataclass
class EvalResult:
    metrics: dict[str, dict[str, float]]
    table: str
    output_dir: Path
    files: list[Path] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)


def _data_args(checkpoint: Path, overrides: dict) -> DataArguments:
    """The data the checkpoint was trained on (``data_args.json``), with the user's overrides."""
    path = checkpoint / "data_args.json"
    base = load_json_object(path) if path.is_file() else {}
    if overrides.get("data") not in (None, base.get("data")):  # how the training file was read is not the new one's
        base = {k: v for k, v in base.items() if k not in FILE_OPTIONS}
    known = set(DataArguments.__dataclass_fields__)
    merged = {**base, **{k: v for k, v in overrides.items() if v is not None}}  # unset flags keep the run's data
    try:
        return DataArguments(**{k: v for k, v in merged.items() if k in known})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def eval_dataset(city, scaler, d_args: DataArguments, enc, regions, time: slice, stride: int) -> STInstructionDataset:
    """The checkpoint's prompts on the evaluated windows: the same template, extra views, geo slots and
    encoder context as in training (from ``data_args.json`` and the encoder config)."""
    views = tuple(v for v in d_args.extra_views.split(",") if v)
    return STInstructionDataset(city, scaler, regions=regions, time=time, input_len=enc.input_window,
                                output_len=enc.horizon, stride=stride, extra_views=views, with_geo=d_args.with_geo,
                                days=enc.days, weeks=enc.weeks, recent_views=enc.recent_views,
                                prompt_style=d_args.prompt_style, level_len=enc.level_len)  # fmt: skip


def _check_options(mode: str, batch_size, stride, eval_days, baselines) -> None:
    """The flags, before any work: each error names the flag (and the argument of :func:`evaluate`)."""
    if mode not in MODES:
        raise ValueError(f"mode (--mode) must be one of {MODES}, got {mode!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size (--batch_size) must be a positive integer, got {batch_size!r}")
    if stride is not None and (isinstance(stride, bool) or int(stride) != stride or stride < 1):
        raise ValueError(f"stride (--stride) must be a positive number of steps, got {stride!r}")
    if eval_days is not None and not (math.isfinite(eval_days) and eval_days > 0):
        raise ValueError(f"eval_days (--eval_days) must be a positive number of days, got {eval_days!r}")
    unknown = [b for b in baselines or () if b not in BASELINES]
    if unknown:
        raise ValueError(f"baselines (--baselines): unknown {unknown}; known: {sorted(BASELINES)}")


def _eval_time(city, train_end: np.datetime64 | None, start: str | None, days: float | None, input_len: int,
               output_len: int, need: int) -> slice:  # fmt: skip
    """Steps of the evaluation (history of the first window included): from ``start`` (the first target),
    else after the training time (``train_end``, on the evaluated data's clock), else the whole series;
    ``days`` after the first target at most. The first window moves to where its context has ``need``
    steps of history (as the dataset does). Refuses a start outside the data or a range shorter than
    one input + output window, naming the flags."""
    ts, n = city.timestamps, city.n_steps
    span = f"{ts[0]} .. {ts[-1]}"
    if start is not None:
        try:
            when = np.datetime64(start, "m")
        except ValueError:
            raise ValueError(f"eval_start (--eval_start) {start!r} is not a date, e.g. 2020-01-01") from None
        if when < ts[0] or when > ts[-1]:
            raise ValueError(f"eval_start (--eval_start) {start} is outside the data {city.source} ({span})")
        first = max(city.time_index(when) - input_len, 0)  # history may precede the first evaluated target
    elif train_end is not None:
        first = int(np.searchsorted(ts, train_end))
        if first >= n:
            raise ValueError(f"the data {city.source} ({span}) ends before the training time does ({train_end}): "
                             "nothing after it to evaluate; pass --eval_start")  # fmt: skip
    else:
        first = 0
    stop = n if days is None else min(n, first + input_len + int(np.timedelta64(int(days * 86400), "s") // city.freq))
    asked, first = first, max(first, need - input_len)
    if stop - first < input_len + output_len:
        end = ts[stop - 1] + city.freq
        if first > asked:  # the model's context moved the first target past the end
            raise ValueError(
                f"the evaluation ends at {end}, but the model's context needs {need} steps of history: the first "
                f"target of {city.source} can be {ts[min(need, n - 1)]}; move --eval_start or raise --eval_days"
            )
        raise ValueError(
            f"the evaluation from {ts[min(first + input_len, n - 1)]} to {end} of {city.source} ({span}) is shorter "
            f"than one input + output window ({input_len} + {output_len} steps): raise --eval_days or move --eval_start"
        )
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
    overwrite: bool = False,
    channel_map: dict[str, str] | str | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> EvalResult:
    """Evaluate ``checkpoint`` zero-shot against baselines; see the module docstring.

    ``compare`` maps row labels to other checkpoints (e.g. the "stllm without LLM" ablation) that are
    evaluated on the same windows, each refused like the main one if it trained on them. ``ridge``
    adds the scale-free linear baseline and the level-scaled historical average, fitted on the checkpoint's
    training regions and times (of the training city, also when another city is evaluated). ``overwrite``
    discards the prediction files of an earlier run in ``output_dir`` instead of resuming them (or refusing
    them when they differ).
    ``channel_map`` (``{new: trained}`` or ``"new=trained,..."``) says which channel of the evaluated data feeds
    which trained channel when their names differ (:func:`stllm.data.channels.map_channels`). ``device`` and
    ``dtype`` (``auto``: the GPU in bf16 when there is one, else the CPU in fp32) place the model's passes
    (:func:`stllm.runtime.place_for_inference`)."""
    _check_options(mode, batch_size, stride, eval_days, baselines)
    placement = inference_device(device)
    placement = (placement, inference_dtype(dtype, placement))  # bad flags are named before any work
    ckpt, out = Path(checkpoint), Path(output_dir)
    check_checkpoint(ckpt)
    for label, other in (compare or {}).items():
        check_checkpoint(Path(other), label)
    if held_artifact(out) not in (None, "evaluation"):
        check_output_dir(out, "evaluation", overwrite)  # refuses a checkpoint, an encoder, foreign files
    with claim_output_dir(out, "evaluation", check=False):
        return _evaluate(ckpt, out, mode, data, data_root, eval_start, eval_days, stride, batch_size, baselines,
                         supervised, allow_overlap, progress, plots, data_overrides, rescale, generate, compare or {},
                         ridge, overwrite, channel_map, placement)  # fmt: skip


CPU_FP32 = (torch.device("cpu"), torch.float32)


def _evaluate(ckpt: Path, out: Path, mode, data, data_root, eval_start, eval_days, stride, batch_size, baselines,
              supervised, allow_overlap, progress, plots, data_overrides, rescale, generate, compare, ridge,
              overwrite, channel_map=None, placement=CPU_FP32) -> EvalResult:  # fmt: skip
    # -- everything that can be checked, before the model is loaded
    enc = STLlamaConfig.from_pretrained(ckpt).st_encoder
    scaler = STScaler.load(ckpt / "scaler.json")
    train = SplitRecord.load(ckpt / "split.json")
    d_args = _data_args(ckpt, {"data": data, "data_root": data_root, **(data_overrides or {})})
    city = load_city(d_args)
    # channels by name against the ones the checkpoint's scaler was fitted on (reordered, renamed to them)
    city, channels_used = map_channels(city, scaler.channels, channel_map, what=f"data {d_args.data!r}")
    if city.n_channels != enc.in_channels:
        raise ValueError(
            f"data {d_args.data!r} has {city.n_channels} channels {city.channels}; the checkpoint's encoder "
            f"was built for {enc.in_channels}"
        )
    content = ContentFingerprint.of(city)
    links = train.matches(split_record(city, content=content))
    regions = _eval_regions(mode, train, city, links, allow_overlap)
    input_len, output_len = enc.input_window, enc.horizon
    need = ContextSpec.of_encoder(enc).min_history(city.freq, city.source)
    train_end = _train_end(train, links) if mode == "cross-region" else None
    time = _eval_time(city, train_end, eval_start, eval_days, input_len, output_len, need)
    # what is evaluated are the targets: histories may precede them (from held-out regions), targets may not
    # fall in a training period
    record = split_record(city, regions, slice(time.start + input_len, time.stop), content=content)
    if not allow_overlap:
        assert_zero_shot(train, record, require=("regions", "time"))
    if rescale is None:
        rescale = mode != "cross-region"
    if rescale:  # a new city's own history before the first evaluated target sets its scale (no targets used)
        scaler = STScaler.fit(city, regions=regions, time=slice(0, time.start + input_len))
    stride = stride or output_len
    ds = eval_dataset(city, scaler, d_args, enc, regions, time, stride)
    names, train_time, skipped = _plan_baselines(baselines, city, ds, enc, supervised, ridge)
    fitted = [n for n in names if n in FITTED]
    ridge_kwargs = _ridge_kwargs(ckpt, train, city, scaler, links) if fitted else None
    clash = _ridge_clash(ridge_kwargs, city, ds, regions) if ridge_kwargs else None
    if clash and baselines is not None:
        raise ValueError(f"baseline {fitted[0]!r} (--baselines): {clash}; leave it out")
    if clash:
        names, ridge_kwargs = [n for n in names if n not in FITTED], None
        for n in fitted:
            skipped[n] = clash
            logger.warning("%s skipped: %s", n, clash)
    options = {"regions": regions, "time_range": list(record.time_range), "stride": stride, "rescale": rescale,
               "prompt": {"extra_views": d_args.extra_views, "with_geo": d_args.with_geo,
                          **({"style": d_args.prompt_style} if d_args.prompt_style != "urbangpt" else {})}}  # fmt: skip
    shared = {"data": data_digest(city)}
    run = {**checkpoint_digests(ckpt), **shared, "scaler": json.loads(scaler.to_json()),
           "options": {**options, "generate": generate}}  # fmt: skip
    others = {label: _prepare_other(Path(path), label, city, record, enc, d_args, regions, time, stride, rescale,
                                    scaler, allow_overlap, out, shared, options)
              for label, path in compare.items()}  # fmt: skip
    for file in [PredictionFile(out / "predictions.jsonl", run), *(o["file"] for o in others.values())]:
        file.clear() if overwrite else file.done()  # a file of another run is refused now, not after the pass
    logger.warning("evaluating %d regions x %d windows of %s (%s)", ds.n_regions, ds.n_windows, city.name, mode)

    # -- the baselines (cheap, and they cannot fail after the model pass), then the model passes
    model = STLlamaForCausalLM.from_pretrained(ckpt)
    model.st_encoder.match_scaler(scaler)  # rescaled: the level block's counts are read through the new scaler
    encoder_dir = out / "encoder_from_checkpoint"  # the model's own (stage-1) encoder, zero-shot
    save_encoder(model.st_encoder, encoder_dir)
    scaler.save(encoder_dir / "scaler.json")
    base = run_baselines(city, ds.starts, ds.region_idx, input_len, output_len, names=names,
                         encoder_dir=encoder_dir, train_time=train_time, ridge_kwargs=ridge_kwargs,
                         pretrain_kwargs={**SUPERVISED_TRAINING, "progress": False,
                                          "encoder_config": _same_inputs(enc)})  # fmt: skip
    place_for_inference(model, *placement)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    stllm = predict(model, tokenizer, ds, scaler, batch_size=batch_size,
                    output=out / "predictions.jsonl", run=run, progress=progress, generate=generate)  # fmt: skip
    val = None
    if city.task == "event":  # every method's F1 threshold, chosen on the checkpoint's validation windows
        val, why = _validation_windows(ds, d_args, enc, scaler, ridge_kwargs)
        if val is None:
            skipped["validation thresholds"] = why
            logger.warning("no validation-chosen thresholds: %s", why)
        else:
            val_preds = {"stllm": predict(model, tokenizer, val["ds"], scaler, batch_size=batch_size, progress=False)}
    del model
    y, mask = eval_targets(city, ds.starts, ds.region_idx, input_len, output_len)
    failed = np.isnan(stllm).any(axis=(-2, -1))  # generate mode: samples whose answer held no prediction slots
    name = "stllm" if not generate else f"stllm (generate, {int((~failed).sum())}/{failed.size} parsed)"
    preds = {name: stllm}
    for label, other in others.items():
        preds[label] = _predict_other(other, batch_size, progress, placement)
        if val is not None:
            val_preds[label] = _predict_other(other, batch_size, False, placement, val)
    preds.update({baseline_label(k): v for k, v in base.items()})
    thresholds = {}
    if val is not None:
        val_base = run_baselines(city, val["ds"].starts, val["ds"].region_idx, input_len, output_len,
                                 names=[n for n in names if n != "supervised_encoder"], encoder_dir=encoder_dir,
                                 ridge_kwargs=val["ridge_kwargs"])  # fmt: skip
        val_preds.update({baseline_label(k): v for k, v in val_base.items()})
        val_preds[name] = val_preds.pop("stllm")
        thresholds = {k: f1_thresholds(p, *val["targets"]) for k, p in val_preds.items()}

    comparisons: dict[str, dict] = {}  # each stllm row - the best zero-shot baseline, with a region-bootstrap interval
    # parse failures are reported in the row name and scored for no method (same samples for all rows)
    mask = mask & ~failed[..., None, None]
    if city.task == "event":
        metrics = {k: event_metrics(p, y, mask, classes=city.channels) for k, p in preds.items()}
        if thresholds:  # the supervised reference has none: its own training is the evaluated data
            for k, row in metrics.items():
                row[VAL_F1] = (event_metrics(preds[k], y, mask, threshold=thresholds[k])["Macro-F1"]
                               if k in thresholds else float("nan"))  # fmt: skip
        columns = [f"{m}/{c}" for c in city.channels for m in ("Recall", "F1")] + ["Macro-Recall", "Macro-F1"]
        columns += [VAL_F1] if thresholds else []
        zero_shot = [k for k in _independent(base) if k in thresholds]
        if zero_shot and mask.any():  # how large a gap to the best baseline these regions can tell apart
            best = max(zero_shot, key=lambda k: metrics[k][VAL_F1])
            comparisons = {f"{k} - {best}": {"metric": VAL_F1, **macro_f1_difference(
                preds[k], preds[best], y, mask, thresholds[k], thresholds[best])}
                           for k in [name, *others] if k in thresholds}  # fmt: skip
    else:
        metrics = {k: flow_metrics(p, y, mask, channels=city.channels) for k, p in preds.items()}
        columns = [f"{m}/{c}" for c in city.channels for m in ("MAE", "RMSE")]
        zero_shot = _independent(base)
        if zero_shot and mask.any():  # how large a gap to the best baseline (mean MAE over channels) they tell apart
            best = min(zero_shot, key=lambda k: np.mean([metrics[k][f"MAE/{c}"] for c in city.channels]))
            comparisons = {f"{k} - {best}": {"metric": "MAE (all channels)",
                                             **mae_difference(preds[k], preds[best], y, mask)}
                           for k in [name, *others]}  # fmt: skip
    table = format_table(metrics, columns) + "".join(f"\nskipped {baseline_label(k)}: {v}" for k, v in skipped.items())
    table += "\n" * bool(comparisons) + "".join(  # a block of its own under the table
        f"\ndifference {k}, {c['metric']}: {c['diff']:+.4f} (95% interval {c['low']:+.4f} to {c['high']:+.4f}, "
        f"paired bootstrap over the {c['units']} regions)" for k, c in comparisons.items())
    files = [out / "predictions.jsonl", _write_json(out / "metrics.json", {
        "mode": mode, "city": city.name, "regions": regions, "time_range": record.time_range, "rescaled": rescale,
        "generate_failures": int(failed.sum()), "skipped": skipped,
        "windows": ds.n_windows, "checkpoint": str(ckpt), "channels": channels_used,
        "channel_mapping": describe(channels_used), "metrics": metrics,
        **({"event_thresholds": {k: dict(zip(city.channels, map(float, v))) for k, v in thresholds.items()},
            "threshold_windows": {"regions": val["regions"], "time_range": val["time_range"]}} if thresholds else {}),
        **({"comparisons": comparisons} if comparisons else {}),
    })]  # fmt: skip
    if plots:
        files += _plots(out, city, ds, y, preds, metrics)
    (out / "table.txt").write_text(table + "\n")
    return EvalResult(metrics, table, out, files, columns)


def _independent(base: dict) -> list[str]:
    """Row labels of the zero-shot baselines that are not a part of stllm itself (the stage-1 encoder is): what
    the model is compared with under the table."""
    return [baseline_label(k) for k in base if k not in NOT_ZERO_SHOT and k != "encoder_only"]


def _eval_regions(mode: str, train: SplitRecord, city, links: dict, allow_overlap: bool) -> list[str]:
    """Regions to evaluate. ``links`` (evaluated id -> trained id, by content) decides whether the data is the
    training city: cross-region needs it and drops its trained regions; cross-city/-dataset refuse it."""
    if mode == "cross-region" and not links:
        raise ValueError(f"cross-region evaluates the training city {train.city!r}; data {city.name!r} "
                         f"({city.source}) holds none of its data (compared by content): use --mode cross-city "
                         "or cross-dataset")  # fmt: skip
    if mode != "cross-region" and links and not allow_overlap:
        renamed = [f"{e}={t}" for e, (t, _) in links.items() if e != t or city.name != train.city]
        note = f", e.g. evaluated=trained ids {renamed[:4]}" if renamed else ""
        raise ValueError(f"{mode} needs a city other than the training city {train.city!r}: data {city.name!r} "
                         f"holds {len(links)} of its regions (compared by content{note}); use --mode cross-region, "
                         "or --allow-overlap")  # fmt: skip
    trained = set(train.regions)
    seen = {e for e, (t, _) in links.items() if t in trained}
    regions = [r for r in city.region_ids if r not in seen] if mode == "cross-region" else list(city.region_ids)
    if allow_overlap and mode == "cross-region" and not regions:
        regions = list(city.region_ids)
    if not regions:
        raise ValueError(f"no regions left to evaluate: all {city.n_regions} regions of {city.name!r} were trained on")
    return regions


def _train_end(train: SplitRecord, links: dict) -> np.datetime64:
    """End of the training time on the evaluated data's clock (the shift most regions agree on)."""
    shifts = [s for _, s in links.values()]
    shift = max(set(shifts), key=shifts.count) if shifts else np.timedelta64(0, "m")
    return np.datetime64(train.time_range[1], "m") + shift


def _plan_baselines(names: list[str] | None, city, ds, enc, supervised: bool, ridge: bool):
    """``(names to run, supervised train_time or None, {skipped name: reason})`` from what each baseline needs
    before the first target: the defaults that cannot run are skipped with a warning, a baseline asked for
    by name is refused (before any model pass)."""
    input_len, output_len = ds.input_len, ds.output_len
    history = int(ds.starts.min()) + input_len  # steps before the first evaluated target
    day, week = (period_steps(city.freq, p, city.source) for p in ("day", "week"))
    linear = ContextSpec(input_len, output_len, 7, 8).min_history(city.freq, city.source)  # ridge and logistic
    needs = {"seasonal_naive_day": day, "seasonal_naive_week": week, "historical_average": day,
             "ridge": linear, "logistic": linear,
             "level_average": ContextSpec(input_len, output_len, 0, 8, level_len=day).min_history(city.freq,
                                                                                                city.source),
             "encoder_only": ContextSpec.of_encoder(enc).min_history(city.freq, city.source)}  # fmt: skip
    explicit = names is not None
    supervised = supervised or (explicit and "supervised_encoder" in names)
    wanted = [n for n in (names if explicit else _DEFAULT_BASELINES) if n != "supervised_encoder"]
    off_task = "logistic" if city.task != "event" else "level_average"  # a default only where it applies
    wanted = [n for n in wanted if (ridge or n not in FITTED) and not (n == off_task and not explicit)]
    run, skipped = [], {}
    for n in wanted:
        if history >= needs.get(n, 0):
            run.append(n)
            continue
        reason = f"needs {needs[n]} steps of history before the first target, the evaluation has {history}"
        if explicit:
            raise ValueError(f"baseline {n!r} (--baselines) {reason}: move --eval_start later or leave it out")
        skipped[n] = reason
        logger.warning("%s skipped: %s", n, reason)
    # the supervised reference needs its context's warm-up and a few windows (and a validation part) after it
    sup_need = needs["encoder_only"] + 4 * (input_len + output_len)
    train_time = slice(0, history) if supervised and history > sup_need else None
    if supervised and train_time is None:
        skipped["supervised_encoder"] = f"needs more than {sup_need} steps before the first target, has {history}"
        logger.warning("supervised_encoder skipped: %s", skipped["supervised_encoder"])
    return run + (["supervised_encoder"] if train_time is not None else []), train_time, skipped


def _prepare_other(path: Path, label: str, city, record: SplitRecord, enc, d_args: DataArguments, regions, time,
                   stride: int, rescale: bool, scaler: STScaler, allow_overlap: bool, out: Path, shared: dict,
                   options: dict) -> dict:  # fmt: skip
    """Everything about a compared checkpoint that can be checked without its weights: its split (refused like
    the main one), horizon, scaler (its own unless rescaled), prompt views, and its prediction file."""
    what = f"compared checkpoint {label!r} ({path})"
    try:
        if not allow_overlap:
            assert_zero_shot(SplitRecord.load(path / "split.json"), record, require=("regions", "time"))
        other = STLlamaConfig.from_pretrained(path).st_encoder
        own = scaler if rescale else STScaler.load(path / "scaler.json")
        views = _data_args(path, {}).extra_views if (path / "data_args.json").is_file() else d_args.extra_views
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    if (other.input_window, other.horizon) != (enc.input_window, enc.horizon):
        raise ValueError(f"{what} forecasts {other.input_window} -> {other.horizon} steps, the evaluated one "
                         f"{enc.input_window} -> {enc.horizon}")  # fmt: skip
    o_args = DataArguments(**{**vars(d_args), "extra_views": views})
    ds = eval_dataset(city, own, o_args, other, regions, time, stride)
    slug = "".join(ch if ch.isalnum() else "-" for ch in label).strip("-")
    o_options = {**options, "prompt": {**options["prompt"], "extra_views": views}, "generate": False}
    run = {**checkpoint_digests(path), **shared, "scaler": json.loads(own.to_json()), "options": o_options}
    return {"path": path, "ds": ds, "scaler": own, "run": run, "args": o_args, "enc": other,
            "file": PredictionFile(out / f"predictions-{slug}.jsonl", run)}  # fmt: skip


def _predict_other(other: dict, batch_size: int, progress: bool, placement, val: dict | None = None) -> np.ndarray:
    """Predictions of another checkpoint on the same windows (prepared by :func:`_prepare_other`); with ``val``
    (:func:`_validation_windows`), on those validation windows instead (not saved)."""
    model = place_for_inference(STLlamaForCausalLM.from_pretrained(other["path"]), *placement)
    model.st_encoder.match_scaler(other["scaler"])
    tokenizer = AutoTokenizer.from_pretrained(other["path"])
    if val is not None:
        ds = eval_dataset(other["ds"].city, other["scaler"], other["args"], other["enc"], val["regions"], val["time"],
                          val["stride"])  # fmt: skip
        return predict(model, tokenizer, ds, other["scaler"], batch_size=batch_size, progress=False)
    return predict(model, tokenizer, other["ds"], other["scaler"], batch_size=batch_size, output=other["file"].path,
                   run=other["run"], progress=progress)  # fmt: skip


def _validation_windows(ds, d_args: DataArguments, enc, scaler: STScaler, ridge_kwargs: dict | None):
    """``(windows, None)`` on which each method's F1 thresholds are chosen, or ``(None, why not)``: the
    checkpoint's training regions over the last ``val_fraction`` of its training time (what stage 2 validated
    on; the last 10% when the run had no validation part, which the model then saw in training), in the
    evaluated city; never an evaluated region or target (checked)."""
    if ridge_kwargs is None or ridge_kwargs["fit_city"] is not ds.city:
        return None, "they need the checkpoint's training regions and time in the evaluated data (cross-region)"
    fit, regions = ridge_kwargs["fit_time"], ridge_kwargs["fit_regions"]
    span, out_len = fit.stop - fit.start, ds.output_len
    v0 = fit.stop - max(out_len, int(round(span * (d_args.val_fraction or 0.1))))
    need = ContextSpec.of_encoder(enc).min_history(ds.city.freq, ds.city.source)
    if v0 - ds.input_len < need:
        return None, f"the validation windows (from step {v0}) need {need} steps of history before them"
    time = slice(v0 - ds.input_len, fit.stop)
    stride = max(1, out_len // 4)
    val_ds = eval_dataset(ds.city, scaler, d_args, enc, regions, time, stride)
    evaluated = {ds.city.region_ids[int(i)] for i in ds.region_idx}
    if evaluated & set(regions) or int(val_ds.starts.max()) + out_len > int(ds.starts.min()):
        raise AssertionError("validation windows for the thresholds overlap the evaluated regions or targets")
    targets = eval_targets(ds.city, val_ds.starts, val_ds.region_idx, ds.input_len, out_len)
    t = ds.city.timestamps
    # the fitted baselines forecast these windows like the model: fitted on the same regions before them. The
    # fit set's zero-shot check guards evaluated data, which these windows are not (checked above): a copy of
    # the city passes it as another clock's data
    refit = {**ridge_kwargs, "fit_city": copy.copy(ds.city), "fit_time": slice(fit.start, v0)}
    return {"ds": val_ds, "time": time, "regions": regions, "stride": stride, "targets": targets, "ridge_kwargs": refit,
            "time_range": [str(t[v0]), str(t[fit.stop - 1])]}, None


def _ridge_kwargs(ckpt: Path, train: SplitRecord, city, scaler: STScaler, links: dict) -> dict:
    """Fit set of the ridge baseline: the checkpoint's training regions x training time, in its training
    city: the evaluated data when it holds them under the same ids and clock, else the city the checkpoint's
    own data arguments load (checked by content to be the training data)."""
    zero = np.timedelta64(0, "m")
    same = all(links.get(r, (None, zero)) == (r, zero) for r in train.regions)
    fit_city = city if same else load_city(_data_args(ckpt, {}))
    if fit_city is not city:
        fit_links = train.matches(split_record(fit_city))
        if not all(fit_links.get(r, (None, zero)) == (r, zero) for r in train.regions):
            raise ValueError(f"ridge baseline: {ckpt / 'data_args.json'} loads {fit_city.name!r} ({fit_city.source}), "
                             f"not the data the checkpoint trained on ({train.city!r}, compared by content); "
                             "restore data_args.json or pass --baselines without ridge")  # fmt: skip
    fit_time = slice(fit_city.time_index(train.time_range[0]), fit_city.time_index(train.time_range[1]))
    # features are normalised per sample: the evaluation's scaler only sets the units, for fit and prediction
    return {"fit_city": fit_city, "fit_regions": list(train.regions), "fit_time": fit_time, "scaler": scaler}


def _ridge_clash(kw: dict, city, ds, regions: list[str]) -> str | None:
    """Why the zero-shot ridge cannot be fitted (with ``--allow-overlap``: its fit set, the checkpoint's training
    regions and time, holds evaluated regions or targets), or None."""
    if kw["fit_city"] is not city:
        return None
    shared = sorted(set(kw["fit_regions"]) & set(regions))
    if shared:
        return f"its fit set (the checkpoint's training regions) holds evaluated regions {shared[:4]}"
    t0 = ds.starts + ds.input_len
    fit = kw["fit_time"]
    if ((t0 < fit.stop) & (t0 + ds.output_len > fit.start)).any():
        return "its fit set (the checkpoint's training time) overlaps the evaluated targets"
    return None


def _same_inputs(enc) -> dict:
    """Encoder config fields that decide what an encoder reads and how it forecasts: a supervised
    reference encoder gets the checkpoint's (context, normalisation, anchor)."""
    return {k: getattr(enc, k) for k in ("days", "weeks", "recent_views", "level_len", "normalize", "residual",
                                         "norm_eps")}  # the level's count conversion: from its own scaler


def _write_json(path: Path, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, default=float))


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
    p = parser or argparse.ArgumentParser(prog="stllm eval", description=__doc__, allow_abbrev=False,
                                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("checkpoint", help="a checkpoint directory written by stllm train (or stllm export)")
    p.add_argument("--output_dir", default=None, help="where results go (default: <checkpoint>/eval-<mode>)")
    p.add_argument("--mode", choices=MODES, default="cross-region", help="which zero-shot setting")
    p.add_argument("--data", default=None, help="preset, .npz or CSV folder (default: what the checkpoint trained on)")
    p.add_argument("--data_root", default=None, help="folder of the real data (default ../shared/data)")
    add_override_flags(p)
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
    p.add_argument("--overwrite", action="store_true",
                   help="discard the predictions of an earlier run in the output directory instead of resuming them")
    p.add_argument("--channel_map", default=None,
                   help="new=trained,...: which channel of the evaluated data feeds which trained channel when their "
                        "names differ (default: by name; e.g. pickup=outflow,dropoff=inflow)")
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=("auto", *DTYPES),
                   help="the backbone's dtype (auto: bf16 on a GPU, fp32 on the CPU); encoder and heads stay fp32")
    return p


def run(args: argparse.Namespace) -> int:
    parse_overrides(args.task, args.freq, args.channels, args.keys)  # a bad flag is named before any work
    file_options = {k: getattr(args, k) for k in FILE_OPTIONS}
    out = args.output_dir or str(Path(args.checkpoint) / f"eval-{args.mode}")
    result = evaluate(
        args.checkpoint, out, mode=args.mode, data=args.data, data_root=args.data_root,
        eval_start=args.eval_start, eval_days=args.eval_days, stride=args.stride, batch_size=args.batch_size,
        baselines=args.baselines.split(",") if args.baselines else None, supervised=not args.no_supervised,
        allow_overlap=args.allow_overlap, progress=not args.no_progress,
        rescale={"auto": None, "yes": True, "no": False}[args.rescale], generate=args.generate,
        overwrite=args.overwrite, data_overrides=file_options, channel_map=args.channel_map,
        device=args.device, dtype=args.dtype,
    )  # fmt: skip
    return print_result(result)


def print_result(result: EvalResult) -> int:
    """The table and the files written; the CLI's exit status (0)."""
    print(result.table)
    print("\nwrote " + ", ".join(str(f) for f in result.files))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command("eval", lambda: run(build_parser().parse_args(argv)))
