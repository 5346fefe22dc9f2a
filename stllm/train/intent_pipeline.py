"""Population -> on-device student -> individual, end to end (PITuning's pipeline), for the bench and the demo.

1. ``stllm train-intent`` trains the population model on population users' earlier days;
2. it is distilled into a student (:mod:`stllm.train.distill_intent`) on a sample of the same training targets,
   saved, measured (parameters, disk, single-thread latency, peak RSS) and exported to ONNX (checked against
   PyTorch with onnxruntime when installed);
3. each held-out user's student head is tuned on their earlier days, with and without the unlearning term
   (:mod:`stllm.train.tune_intent`).
Every model predicts the held-out users' later days (checked by :func:`stllm.data.intent.check_heldout`); scoring
is the caller's (``stllm.eval.intent_metrics``), so this module stays below evaluation.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stllm.data.intent import IntentCollator, PreparedIntent, check_heldout, prepare_from_record
from stllm.models.intent import load_intent_checkpoint, run_intent
from stllm.train.arguments import parse_args
from stllm.train.distill_intent import (
    ONNX_FILE,
    DistillConfig,
    StudentSpec,
    dir_bytes,
    distill,
    distill_record,
    export_onnx,
    footprint,
    n_parameters,
    onnx_latency_ms,
    onnx_max_abs_diff,
    save_student,
)
from stllm.train.train_intent import IntentDataArguments, train_intent
from stllm.train.train_mem import release_trainer, subsample
from stllm.train.tune_intent import TuneConfig, tune_users

logger = logging.getLogger("stllm")
POPULATION, BEFORE = "population model", "student before tuning"
TUNED, NO_UNLEARNING = "student tuned (+unlearning)", "student tuned (no unlearning)"


@dataclass
class PipelineConfig:
    data: str = "tokyo"
    seed: int = 0
    split_seed: int = 0
    synthetic_users: int = 40  # data "synthetic" only
    data_root: str | None = None  # real-data folder (default ../shared/data)
    teacher_preset: str = "small"
    teacher_steps: int = 300
    teacher_lr: float = 1e-3
    batch_size: int = 32
    distill_samples: int = 4000
    student: StudentSpec = field(default_factory=StudentSpec)
    distill: DistillConfig = field(default_factory=DistillConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    measure: bool = True  # footprint and ONNX


@dataclass
class PipelineResult:
    data: PreparedIntent
    rows: np.ndarray  # the held-out users' later-day targets, in the order of every prediction array
    preds: dict[str, np.ndarray]
    sizes: dict[str, dict]  # "teacher" / "student": parameters, disk_bytes, latency_ms, peak_rss_mb, ...
    seconds: dict[str, float]


def run_pipeline(cfg: PipelineConfig, out_dir: str | os.PathLike, progress: bool = False) -> PipelineResult:
    out = Path(out_dir)
    seconds, t0 = {}, time.perf_counter()
    teacher_dir = out / "population"
    trainer = train_intent(*parse_args([
        "--output_dir", str(teacher_dir), "--data", cfg.data, "--split_seed", str(cfg.split_seed),
        "--synthetic_users", str(cfg.synthetic_users), *(["--data_root", cfg.data_root] if cfg.data_root else []),
        "--tiny_preset", cfg.teacher_preset, "--max_steps", str(cfg.teacher_steps), "--per_device_train_batch_size",
        str(cfg.batch_size), "--learning_rate", str(cfg.teacher_lr), "--seed", str(cfg.seed), "--save_strategy", "no",
        "--disable_tqdm", str(not progress).lower(), "--report_to", "none", "--logging_steps", "50",
        "--overwrite_output_dir", "true"], data_class=IntentDataArguments))  # fmt: skip
    release_trainer(trainer)
    seconds["train population"] = time.perf_counter() - t0
    teacher, tokenizer, record = load_intent_checkpoint(teacher_dir)
    data = prepare_from_record(record)
    history = int(record.get("history", 8))
    test = data.dataset("user_test", history=history)
    check_heldout(data.log, test.rows, data.split)
    collator = IntentCollator(tokenizer)
    preds = {POPULATION: run_intent(teacher, collator, test).argmax(-1).numpy()}

    t = time.perf_counter()
    dcfg = DistillConfig(**{**cfg.distill.__dict__, "seed": cfg.seed})
    pool = subsample(data.dataset("population_train", history=history), cfg.distill_samples, cfg.seed)
    student = distill(teacher, tokenizer, pool, cfg.student, dcfg, progress=progress)
    student_dir = save_student(student, tokenizer, out / "student", distill_record(record, cfg.student, dcfg,
                                                                                    teacher_dir))
    seconds["distil"] = time.perf_counter() - t
    sizes = {"teacher": {"parameters": n_parameters(teacher), "disk_bytes": dir_bytes(teacher_dir)},
             "student": {"parameters": n_parameters(student), "disk_bytes": dir_bytes(student_dir)}}
    if cfg.measure:
        one = collator([test[0]])
        sizes["teacher"] = footprint(teacher_dir, one)
        sizes["student"] = footprint(student_dir, one)
        try:
            path = export_onnx(student, collator([test[i] for i in range(min(4, len(test)))]), out / ONNX_FILE)
            others = [collator([test[i] for i in range(j, min(j + 16, len(test)))]) for j in (0, len(test) // 2)]
            sizes["student"].update(onnx_max_abs_diff=onnx_max_abs_diff(student, path, others),
                                    onnx_latency_ms=onnx_latency_ms(path, one), onnx_bytes=path.stat().st_size)
        except ImportError as exc:  # onnx extras absent: the rest still runs
            logger.warning("ONNX export skipped: %s (pip install -e .[onnx])", exc)

    t = time.perf_counter()
    variants = {TUNED: TuneConfig(**{**cfg.tune.__dict__, "seed": cfg.seed}),
                NO_UNLEARNING: TuneConfig(**{**cfg.tune.__dict__, "seed": cfg.seed, "unlearning": 0.0})}
    rows, tuned = tune_users(student, tokenizer, data, variants, history)
    if not np.array_equal(rows, test.rows):
        raise RuntimeError("tuned predictions are not aligned with the held-out targets")
    preds[BEFORE] = tuned.pop("before")
    preds.update(tuned)
    seconds["tune users"] = time.perf_counter() - t
    return PipelineResult(data=data, rows=test.rows, preds=preds, sizes=sizes, seconds=seconds)
