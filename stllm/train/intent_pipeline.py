"""Population -> on-device student -> individual, end to end (PITuning's pipeline), for the bench and the demo.

1. ``stllm train-intent`` trains the population model on population users' earlier days;
2. it is distilled into a student (:mod:`stllm.train.distill_intent`) on a sample of the same training targets,
   saved, measured (parameters, disk, single-thread latency, peak RSS) and exported to ONNX (checked against
   PyTorch with onnxruntime when installed);
3. each held-out user's student head is tuned on their earlier days, with and without the unlearning term
   (:mod:`stllm.train.tune_intent`), and with ``loss_taus`` also under the logit-adjusted loss of each tau (the
   user's prior smoothed towards the population users' training shares; the population model and the student,
   the baselines, stay plain), the tau chosen on validation with the post-hoc settings below;
4. post-hoc, per variant: the tuned logits shrink towards the student's by ``n / (n + k)`` (``n``: the user's
   training targets, so thin histories move little) and are logit-adjusted by ``tau`` times the log of the user's
   own intent prior, add-``alpha`` smoothed (Menon et al. 2021, per user: a user's rare intents get recall), then
   shifted by one offset per intent fitted for macro F1 (:func:`stllm.train.tune_intent.fit_class_bias`).
   ``k``, ``tau``, ``alpha`` and the offsets are chosen on a *validation* split
   (:func:`stllm.data.intent.validation_data`: the last quarter of each held-out user's earlier days, tuned on the
   days before it; checked to hold no test target), by pooled macro F1 (``select_on="user"``: the mean of per-user
   macro F1s, noisier with the few validation targets NYC users have). The tuned rows only choose among grid points
   whose pooled validation weighted - macro gap is at least ``gap_margin`` below the smallest validation gap of every
   baseline (the population model, adjusted or not, the student before tuning, the count baselines) and whose macro
   F1 is at least the best baseline's, all scored on the same validation targets: the issue's targets, met on
   validation, never by looking at test days (when no point meets them, macro F1 alone decides). Above both, a floor:
   validation accuracy at least the population model's minus ``acc_margin`` -- a gap can be shrunk by lowering
   weighted F1 alone, which the floor forbids (the adjusted population row's offsets are fitted under the same
   floor).
5. with ``mix_ms``, the tuned row may also mix, after the sizing, its probabilities with the user's own smoothed
   transition table (:func:`stllm.train.tune_intent.mix_user`, weight ``n / (n + m)``): a closed-form step that
   moves users with a handful of targets, whom gradient tuning of a head barely moves (validation picks large
   ``k``). ``m`` (or no mix, which wins ties) is another axis of the tuned row's validation grid; the user tables
   are those of each split (validation: counted on the days before the validation days). The row without it is
   kept as ``tuned, no user-table mix``.
6. with ``neighbour_ks``, the tuned row's heads may also be tuned on the user's samples plus their ``K`` most similar
   population users' (weight ``w`` each, :class:`stllm.train.tune_intent.Neighbours`; similarity from the user's
   training days only), all users at once; ``(K, w)`` (or none, which wins ties) is one more head of the tuned row's
   validation grid. The row without it is kept as ``tuned, no neighbours``, and each ``(K, w)`` forced for the record.
With ``heldout_share`` the held-out users' test days are the last share of their active days
(:func:`stllm.data.intent.with_heldout_share`; population users and so the population model are unchanged).
Every model predicts the held-out users' later days (checked by :func:`stllm.data.intent.check_heldout`); scoring
of the table is the caller's (``stllm.eval.intent``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stllm.data.intent import (
    INTENTS,
    IntentCollator,
    PreparedIntent,
    check_heldout,
    prepare_from_record,
    validation_data,
)
from stllm.eval.intent_baselines import INTENT_BASELINES, baseline_table
from stllm.eval.intent_metrics import intent_scores
from stllm.models.intent import INTENT_DATA_FILE, load_intent_checkpoint, read_intent_record, run_intent
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
from stllm.train.tune_intent import (
    Neighbours,
    Posthoc,
    TuneConfig,
    UserLogits,
    population_shares,
    posthoc_logits,
    select_posthoc,
    tune_users,
    user_table_of,
)

logger = logging.getLogger("stllm")
POPULATION, POPULATION_ADJUSTED = "population model", "population model, adjusted"
BEFORE = "student before tuning"
TUNED = "student tuned (+unlearning, sized, adjusted)"
NO_SIZING, NO_ADJUSTMENT = "tuned, no history sizing", "tuned, no logit adjustment"
NO_UNLEARNING, PLAIN = "tuned, no unlearning", "tuned, plain (no sizing, no adjustment)"
NO_BIAS = "tuned, no class offsets"
NO_MIX = "tuned, no user-table mix"
NO_NEIGHBOURS = "tuned, no neighbours"


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
    logit_adjust: float = 0.0  # tau of the logit-adjusted loss of the population model and the distillation; 0 = plain
    batch_size: int = 32
    distill_samples: int = 4000
    student: StudentSpec = field(default_factory=StudentSpec)
    distill: DistillConfig = field(default_factory=DistillConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    val_frac: float = 0.25  # of each held-out user's earlier days: validation for k and tau
    ks: tuple[float, ...] = (0, 10, 30, 100, 300, 1000)  # history sizing n / (n + k); 0 = none
    taus: tuple[float, ...] = (0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)  # logit adjustment; 0 = none
    loss_taus: tuple[float, ...] = (0,)  # per-user tuning loss, logit-adjusted by these (tune.loss_tau always in)
    alphas: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0)  # pseudo-counts per intent of the user's prior
    mix_ms: tuple[float, ...] = ()  # tuned row: mix in the user's own table, weight n / (n + m); () = never
    neighbour_ks: tuple[int, ...] = ()  # tuned row: heads also tuned with K nearest population users; () = never
    neighbour_ws: tuple[float, ...] = (0.1, 0.3, 0.6)  # each neighbour sample's weight (the user's own: 1)
    neighbour_cap: int = 128  # each neighbour's latest training samples at most
    select_on: str = "pooled"  # validation macro F1: pooled or mean per user (tune_intent.select_posthoc)
    gap_margin: float | None = 0.0  # tuned rows: validation gap < every baseline's minus this; None = unbounded
    acc_margin: float | None = 0.03  # validation accuracy >= the population model's minus this; None = no floor
    class_bias: bool = True  # fit one offset per intent on validation (fit_class_bias)
    heldout_share: float | None = None  # held-out users' test days: the last share of their active days
    measure: bool = True  # footprint and ONNX
    reuse: bool = False  # load population/ and student/ from out_dir when there (same config and seed)


@dataclass
class PipelineResult:
    data: PreparedIntent
    rows: np.ndarray  # the held-out users' later-day targets, in the order of every prediction array
    preds: dict[str, np.ndarray]
    choices: dict[str, Posthoc]  # the (k, tau) validation chose for each post-hoc row
    val_scores: dict[str, dict[str, float]]  # pooled validation scores: the baselines' and each post-hoc row's choice
    n_train: np.ndarray  # each test row's user's training targets
    sizes: dict[str, dict]  # "teacher" / "student": parameters, disk_bytes, latency_ms, peak_rss_mb, ...
    seconds: dict[str, float]


def _reusable(path: Path, cfg: PipelineConfig) -> bool:
    """Whether ``path`` holds a checkpoint of this data and split to reuse (``cfg.reuse``); a mismatch is an error."""
    if not (cfg.reuse and (path / INTENT_DATA_FILE).is_file()):
        return False
    record = read_intent_record(path)
    seed = record.get("distill", {}).get("seed", record.get("seed"))
    tau = record.get("distill", record).get("logit_adjust", 0.0)
    if record.get("data") != cfg.data or int(record.get("split_seed", -1)) != cfg.split_seed or (
            seed is not None and int(seed) != cfg.seed) or float(tau) != cfg.logit_adjust:
        raise ValueError(f"{path}: field 'data'/'split_seed'/'seed'/'logit_adjust' of {INTENT_DATA_FILE} differs from "
                         f"this run's ({cfg.data}, split seed {cfg.split_seed}, seed {cfg.seed}, logit_adjust "
                         f"{cfg.logit_adjust}): not reusable")
    return True


def run_pipeline(cfg: PipelineConfig, out_dir: str | os.PathLike, progress: bool = False) -> PipelineResult:
    out = Path(out_dir)
    seconds, t0 = {}, time.perf_counter()
    teacher_dir = out / "population"
    if not _reusable(teacher_dir, cfg):
        trainer = train_intent(*parse_args([
            "--output_dir", str(teacher_dir), "--data", cfg.data, "--split_seed", str(cfg.split_seed),
            "--synthetic_users", str(cfg.synthetic_users), *(["--data_root", cfg.data_root] if cfg.data_root else []),
            "--tiny_preset", cfg.teacher_preset, "--max_steps", str(cfg.teacher_steps), "--per_device_train_batch_size",
            str(cfg.batch_size), "--learning_rate", str(cfg.teacher_lr), "--seed", str(cfg.seed), "--logit_adjust",
            str(cfg.logit_adjust), "--save_strategy",
            "no", "--disable_tqdm", str(not progress).lower(), "--report_to", "none", "--logging_steps", "50",
            "--overwrite_output_dir", "true"], data_class=IntentDataArguments))  # fmt: skip
        release_trainer(trainer)
    seconds["train population"] = time.perf_counter() - t0
    teacher, tokenizer, record = load_intent_checkpoint(teacher_dir)
    data = prepare_from_record(record, cfg.heldout_share)
    history = int(record.get("history", 8))
    test = data.dataset("user_test", history=history)
    check_heldout(data.log, test.rows, data.split)
    collator = IntentCollator(tokenizer)

    t = time.perf_counter()
    dcfg = DistillConfig(**{**cfg.distill.__dict__, "seed": cfg.seed, "logit_adjust": cfg.logit_adjust})
    student_dir = out / "student"
    if _reusable(student_dir, cfg):
        student = load_intent_checkpoint(student_dir)[0]
    else:
        pool = subsample(data.dataset("population_train", history=history), cfg.distill_samples, cfg.seed)
        student = distill(teacher, tokenizer, pool, cfg.student, dcfg, progress=progress)
        save_student(student, tokenizer, student_dir, distill_record(record, cfg.student, dcfg, teacher_dir))
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
    variants.update({name: TuneConfig(**{**cfg.tune.__dict__, "seed": cfg.seed, "loss_tau": t})
                     for t, name in tuned_heads(cfg).items() if name != TUNED})
    val = validation_data(data, cfg.val_frac)
    population = population_shares(data)  # the population users' training targets: the same in val and test
    scored = {}
    for name, d in (("val", val), ("test", data)):
        ul = tune_users(student, tokenizer, d, variants, history, population, neighbour_variants(cfg))
        ul.logits[POPULATION] = run_intent(teacher, collator, d.dataset("user_test", history=history)).numpy()
        scored[name] = (d, ul, d.tables.user_freq[d.log.user[ul.rows]], user_table_of(d, ul.rows, population))
    if not np.array_equal(scored["test"][1].rows, test.rows):
        raise RuntimeError("tuned predictions are not aligned with the held-out targets")
    seconds["tune users"] = time.perf_counter() - t
    preds, choices, val_scores = _posthoc_rows(cfg, scored)
    return PipelineResult(data=data, rows=test.rows, preds=preds, choices=choices, val_scores=val_scores,
                          n_train=scored["test"][1].n_train, sizes=sizes, seconds=seconds)


def tuned_heads(cfg: PipelineConfig) -> dict[float, str]:
    """``{loss_tau: variant name}`` of the tuned (+unlearning) heads whose ``loss_tau`` the validation chooses among:
    ``cfg.tune.loss_tau`` first (it wins ties), then the others of ``cfg.loss_taus``."""
    rest = [float(t) for t in cfg.loss_taus if float(t) != float(cfg.tune.loss_tau)]
    return {float(cfg.tune.loss_tau): TUNED, **{t: f"{TUNED}, tuning loss tau {t:g}" for t in rest}}


def neighbour_name(k: int, w: float) -> str:
    """The variant (and forced record row) of the tuned row's heads tuned with ``k`` neighbours of weight ``w``."""
    return f"{TUNED}, neighbours K {int(k)} w {float(w):g}"


def neighbour_variants(cfg: PipelineConfig) -> dict[str, tuple[TuneConfig, Neighbours]]:
    """The neighbour-tuned head variants of ``cfg`` (none without ``neighbour_ks``)."""
    tune = TuneConfig(**{**cfg.tune.__dict__, "seed": cfg.seed})
    return {neighbour_name(k, w): (tune, Neighbours(int(k), float(w), cfg.neighbour_cap))
            for k in cfg.neighbour_ks for w in cfg.neighbour_ws}


def mixed_name(m: float) -> str:
    """The record row of the tuned row with the user-table mix forced at ``m``."""
    return f"{TUNED}, user-table mix m {float(m):g}"


BOUNDED = (TUNED, NO_SIZING, NO_ADJUSTMENT, NO_BIAS, NO_UNLEARNING)  # validation gap must beat the baselines'
BIASED = (POPULATION_ADJUSTED, TUNED, NO_SIZING, NO_UNLEARNING)  # rows with fitted per-intent offsets


def _posthoc_rows(cfg: PipelineConfig,
                  scored: dict[str, tuple[PreparedIntent, UserLogits, np.ndarray, np.ndarray]]
                  ) -> tuple[dict[str, np.ndarray], dict[str, Posthoc], dict[str, dict[str, float]]]:
    """Every table row's test predictions; the post-hoc rows' ``(k, tau, alpha)`` chosen on the validation logits
    only, the tuned ones under the baselines' smallest validation gap minus ``cfg.gap_margin`` and at or above
    their best validation macro F1, every row with offsets or a bound at or above the accuracy floor."""
    vd, vl, vcounts, vtable = scored["val"]
    _, tl, tcounts, ttable = scored["test"]
    y, users = vd.log.intent[vl.rows], vd.log.user[vl.rows]
    heads = tuned_heads(cfg)  # the tuning-loss tau is chosen with k, tau, alpha (not in the no-adjustment ablation)
    base = {float(cfg.tune.loss_tau): TUNED}
    mixes = (None, *(float(m) for m in cfg.mix_ms))  # the tuned row's user-table mix; None (no mix) wins ties
    near = {(float(cfg.tune.loss_tau), int(k), float(w)): neighbour_name(k, w)  # after the own heads: they win ties
            for k in cfg.neighbour_ks for w in cfg.neighbour_ws}
    grid = {  # row: (tuned logits: {loss_tau: variant}, start logits, ks, taus)
        POPULATION_ADJUSTED: ({0.0: POPULATION}, POPULATION, (0,), cfg.taus),
        TUNED: ({**heads, **near}, "before", cfg.ks, cfg.taus),
        NO_SIZING: (heads, "before", (0,), cfg.taus),
        NO_ADJUSTMENT: (base, "before", cfg.ks, (0,)),
        NO_BIAS: (heads, "before", cfg.ks, cfg.taus),
        NO_UNLEARNING: ({float(cfg.tune.loss_tau): NO_UNLEARNING}, "before", cfg.ks, cfg.taus),
        PLAIN: (base, "before", (0,), (0,)),
        # each other tuning-loss tau alone, for the record: what the tuned row would be had validation not chosen
        **{name: ({t: name}, "before", cfg.ks, cfg.taus) for t, name in heads.items() if name != TUNED},
        **({NO_MIX: (heads, "before", cfg.ks, cfg.taus)} if cfg.mix_ms else {}),  # the tuned row as without mix_ms
        **{mixed_name(m): (heads, "before", cfg.ks, cfg.taus) for m in cfg.mix_ms},  # each m forced, for the record
        **({NO_NEIGHBOURS: (heads, "before", cfg.ks, cfg.taus)} if near else {}),  # the tuned row without neighbours
        **{name: ({key: name}, "before", cfg.ks, cfg.taus) for key, name in near.items()},  # each (K, w) forced
    }
    mix_of = {TUNED: mixes, NO_NEIGHBOURS: mixes, **{mixed_name(m): (float(m),) for m in cfg.mix_ms}}
    record = (*(name for name in heads.values() if name != TUNED), *((NO_MIX,) if cfg.mix_ms else ()),
              *(mixed_name(m) for m in cfg.mix_ms), *((NO_NEIGHBOURS,) if near else ()), *near.values())
    bounded, biased = (*BOUNDED, *record), (*BIASED, *record)
    preds = {POPULATION: tl.logits[POPULATION].argmax(-1), BEFORE: tl.logits["before"].argmax(-1)}
    val_scores = {**baseline_table(vd), **{name: intent_scores(y, vl.logits[key].argmax(-1), len(INTENTS))
                                          for name, key in ((POPULATION, POPULATION), (BEFORE, "before"))}}
    choices = {}
    floor = None if cfg.acc_margin is None else val_scores[POPULATION]["accuracy"] - cfg.acc_margin
    for row, (tuned, start, ks, taus) in grid.items():
        max_gap = min_macro = None
        bias = cfg.class_bias and row in biased
        if row in bounded and cfg.gap_margin is not None:
            base = [val_scores[b] for b in (*INTENT_BASELINES, POPULATION, BEFORE, POPULATION_ADJUSTED)]  # chosen
            max_gap = min(b["gap"] for b in base) - cfg.gap_margin
            min_macro = max(b["macro_f1"] for b in base)
        choices[row], val_scores[row] = select_posthoc(
            y, users, vl.logits[start], {t: vl.logits[v] for t, v in tuned.items()}, vl.n_train, vcounts, ks, taus,
            cfg.alphas, cfg.select_on, max_gap, min_macro, floor if (bias or row in bounded) else None, bias,
            vtable, mix_of.get(row, (None,)))
        chosen = tl.logits[tuned[choices[row].head]]
        preds[row] = posthoc_logits(tl.logits[start], chosen, tl.n_train, tcounts, choices[row], ttable).argmax(-1)
    order = (POPULATION, POPULATION_ADJUSTED, BEFORE, TUNED, NO_SIZING, NO_ADJUSTMENT, NO_BIAS, NO_UNLEARNING, PLAIN,
             *record)
    return {name: preds[name] for name in order}, choices, val_scores
