"""Stage-2 instruction tuning: ``torchrun --nproc_per_node=G stllm/train/train_mem.py [--deepspeed ...]``.

The same command trains a tiny model on a laptop CPU (SDPA, fp32, gloo) and a Vicuna on a GPU
node (flash-attention 2 when installed, bf16, NCCL); one log line says which. Data are split by
region and time before anything is fitted, and the checkpoint records what was trained on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import IntervalStrategy, LlamaConfig, set_seed

from stllm import outdir
from stllm.data import (
    CityData,
    RegionSplit,
    SplitRecord,
    STDataCollator,
    STInstructionDataset,
    STScaler,
    split_record,
    train_tokenizer,
)
from stllm.data.context import period_steps
from stllm.data.loaders import load_preset
from stllm.data.prompts import tokenizer_corpus
from stllm.data.splits import hold_out_regions, set_aside
from stllm.encoders.io import CONFIG_NAME as ENCODER_CONFIG
from stllm.encoders.io import load_encoder
from stllm.encoders.level import level_from_scaler
from stllm.errors import run_command, split_debug
from stllm.models import STLlamaConfig, STLlamaForCausalLM
from stllm.models.lora import add_lora
from stllm.runtime import detect_runtime
from stllm.tokens import add_st_tokens
from stllm.train.arguments import TINY_PRESETS, DataArguments, ModelArguments, STTrainingArguments, parse_args
from stllm.train.trainer import BestWeights, STTrainer

logger = logging.getLogger("stllm")


@dataclass
class PreparedData:
    city: CityData
    regions: RegionSplit
    train_time: slice
    scaler: STScaler
    train: STInstructionDataset

    data_args: DataArguments | None = None
    val: torch.utils.data.Dataset | None = None  # training (or held-out training) regions, the last training time

    def artifacts(self) -> dict[str, str]:
        """Files every checkpoint carries: the fitted scaler, what was trained on, how the data was built."""
        record = split_record(self.city, self.regions.train, self.train_time)
        files = {"scaler.json": self.scaler.to_json(), "split.json": record.to_json()}
        if self.data_args is not None:
            files["data_args.json"] = json.dumps(dataclasses.asdict(self.data_args), indent=2)
        return files


def load_city(data_args: DataArguments) -> CityData:
    """The city named by ``--data``: a preset, an ``.npz`` or a CSV folder (``--task``, ``--freq``,
    ``--channels``, ``--keys`` beat what the file says). A city file's warnings (``stllm data check``)
    are logged: the errors it would report stop training here already, with the same message."""
    city = load_preset(
        data_args.data, data_args.data_root, file_options=data_args.file_options(), seed=data_args.synthetic_seed,
        n_regions=data_args.synthetic_regions, days=data_args.synthetic_days, freq=data_args.synthetic_freq,
        task=data_args.synthetic_task,
    )
    if city.source != "<memory>":
        from stllm.data.check import city_warnings

        for warning in city_warnings(city):
            logger.warning("%s", warning)
    return city


def train_time_slice(city: CityData, data_args: DataArguments) -> slice:
    """Training steps: ``[train_start, train_end)`` when given, else the first ``train_time`` fraction;
    ``max_train_windows`` keeps only the most recent part (enough for the last N window starts)."""
    start = city.time_index(data_args.train_start) if data_args.train_start else 0
    stop = int(round(city.n_steps * data_args.train_time))
    if data_args.train_end:
        stop = city.time_index(data_args.train_end)
    if stop - start < data_args.input_len + data_args.output_len:
        raise ValueError(
            f"{city.source}: training time [{city.timestamps[min(start, city.n_steps - 1)]}, step {stop}) is shorter "
            f"than one window of {data_args.input_len}+{data_args.output_len} steps"
        )
    if data_args.max_train_windows:
        start = max(start, stop - data_args.max_train_windows - data_args.input_len - data_args.output_len + 1)
    return slice(start, stop)


def prepare_data(data_args: DataArguments, encoder_dir: str | None = None) -> PreparedData:
    """Split regions and time, fit (or reuse the stage-1) scaler on the training part only."""
    city = load_city(data_args)
    regions = RegionSplit.random(city, test=data_args.test_regions, seed=data_args.split_seed)
    train_time = train_time_slice(city, data_args)
    split_file = Path(encoder_dir) / "split.json" if encoder_dir else None
    if split_file is not None and split_file.is_file():
        # the stage-1 encoder saw these regions: stage 2 trains on the same ones, so regions held out
        # for zero-shot evaluation are unseen by both stages
        record = SplitRecord.from_json(split_file.read_text())
        if record.city != city.name:
            raise ValueError(f"{split_file}: encoder was pretrained on city {record.city!r}, data is {city.name!r}")
        train_ids = set(record.regions)
        regions = RegionSplit(
            train=record.regions, test=tuple(r for r in city.region_ids if r not in train_ids)
        ).validate(city)
    if encoder_dir and (Path(encoder_dir) / ENCODER_CONFIG).is_file():  # the encoder decides what it reads
        enc = load_encoder(encoder_dir).config
        if (enc.days, enc.weeks, enc.recent_views) != (data_args.context_days, data_args.context_weeks,
                                                       data_args.context_recent_views):
            logger.info("context days/weeks/recent views %s from %s", (enc.days, enc.weeks, enc.recent_views),
                        encoder_dir)
        data_args.context_days, data_args.context_weeks = enc.days, enc.weeks
        data_args.context_recent_views = enc.recent_views
        data_args.context_level = bool(enc.level_len)
    scaler_file = Path(encoder_dir) / "scaler.json" if encoder_dir else None
    scaler = None
    if scaler_file is not None and scaler_file.is_file():
        scaler = STScaler.load(scaler_file)  # the encoder was trained on this scaling
    fit_regions, val_regions = _validation_regions(regions.train, data_args, encoder_dir)
    if scaler is None:
        scaler = STScaler.fit(city, regions=fit_regions, time=train_time)
    views = tuple(v for v in data_args.extra_views.split(",") if v)
    fit_time, val_time = _validation_split(city, train_time, data_args)

    def dataset(time: slice, stride: int, ids=fit_regions) -> STInstructionDataset:
        return STInstructionDataset(
            city, scaler, regions=ids, time=time, input_len=data_args.input_len,
            output_len=data_args.output_len, stride=stride, extra_views=views, with_geo=data_args.with_geo,
            days=data_args.context_days, weeks=data_args.context_weeks, prompt_style=data_args.prompt_style,
            recent_views=data_args.context_recent_views, level_len=level_len(city, data_args),
        )

    val = None
    if val_time is not None:
        full = dataset(val_time, 1, val_regions or fit_regions)
        keep = np.unique(np.linspace(0, len(full) - 1, num=min(len(full), data_args.max_val_samples)).astype(int))
        val = torch.utils.data.Subset(full, keep.tolist())
    return PreparedData(city, regions, train_time, scaler, dataset(fit_time, data_args.stride), data_args, val)


def _validation_regions(train: tuple[str, ...], data_args: DataArguments, encoder_dir: str | None
                        ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(fit, validation)`` regions: with ``--val_region_fraction`` the stage-1 encoder's held-out regions when it
    recorded some (so neither stage fits them), else the same draw from the training regions with
    ``--split_seed``; without it every training region is fitted and validated on."""
    if not data_args.val_region_fraction:
        return tuple(train), ()
    metrics = Path(encoder_dir) / "metrics.json" if encoder_dir else None
    if metrics is not None and metrics.is_file():
        held = json.loads(metrics.read_text()).get("settings", {}).get("val_regions") or []
        if held:
            unknown = sorted(set(held) - set(train))
            if unknown:
                raise ValueError(f"{metrics}: settings.val_regions {unknown[:3]} are not training regions of this run")
            return set_aside(train, held)
    return hold_out_regions(train, data_args.val_region_fraction, data_args.split_seed, "--val_region_fraction")


def _validation_split(city: CityData, train_time: slice, data_args: DataArguments) -> tuple[slice, slice | None]:
    """``(fit, validation)``: validation forecasts have their targets in the last ``val_fraction`` of the
    training time (their history may precede it); fitting windows end before it. None when too short."""
    if data_args.val_fraction <= 0:
        return train_time, None
    if not 0 < data_args.val_fraction < 1:
        raise ValueError(f"--val_fraction must be in [0, 1), got {data_args.val_fraction}")
    window = data_args.input_len + data_args.output_len
    span = train_time.stop - train_time.start
    v0 = train_time.stop - max(data_args.output_len, int(round(span * data_args.val_fraction)))
    if v0 - train_time.start < 2 * window:
        logger.warning("training time too short for a validation part: training without one")
        return train_time, None
    return slice(train_time.start, v0), slice(v0 - data_args.input_len, train_time.stop)


def level_len(city: CityData, data_args: DataArguments) -> int:
    """Steps of the encoder context's level block: one day with ``--context_level`` on counts (flows) with week
    views, else none (events are not scaled; the level compares with the same steps in earlier weeks)."""
    on = data_args.context_level and city.task != "event" and data_args.context_weeks > 0
    return period_steps(city.freq, "day", city.source) if on else 0


def encoder_config(city: CityData, data_args: DataArguments, encoder_dir: str | None,
                   model_args: ModelArguments, scaler: STScaler | None = None) -> dict:
    """The ST encoder's config for this run: the stage-1 encoder's when ``encoder_dir`` is given (checked
    against the data), else one built from the data and model arguments (also what stage 1 trains; with
    ``scaler``, the level block's count conversion, which stage 1 adds from its own scaler)."""
    c = city.n_channels
    if encoder_dir:
        cfg_file = Path(encoder_dir) / ENCODER_CONFIG
        if not cfg_file.is_file():
            raise FileNotFoundError(f"--st_encoder_path {encoder_dir} has no {ENCODER_CONFIG}")
        enc = load_encoder(encoder_dir).config.to_dict()
        if enc["in_channels"] != c:
            raise ValueError(
                f"data {data_args.data!r} has {c} channels {city.channels}; the encoder at {encoder_dir} "
                f"was built for {enc['in_channels']}"
            )
        if enc["num_tokens"] != c:
            raise ValueError(
                f"the encoder at {encoder_dir} gives {enc['num_tokens']} tokens per region, but the heads predict "
                f"channel k from slot k, so it needs one per channel ({c}); pretrain it with num_tokens={c}"
            )
        return enc
    level = level_len(city, data_args)
    return {"in_channels": c, "out_channels": c, "num_tokens": c, "input_window": data_args.input_len,
            "horizon": data_args.output_len, "days": data_args.context_days, "weeks": data_args.context_weeks,
            "recent_views": data_args.context_recent_views, "normalize": model_args.st_normalize,
            "residual": model_args.st_residual, "level_len": level,
            "event_logits": bool(model_args.st_event_logits and city.task == "event" and model_args.st_normalize),
            "level_scales_correction": bool(model_args.st_level_scales_correction and level),
            **(level_from_scaler(scaler) if scaler is not None and level else {})}


def event_pos_weight(data: PreparedData, cap: float = 20.0) -> list[float] | None:
    """Per-category (negatives / positives) on the training regions and times, for a balanced BCE."""
    if data.city.task != "event":
        return None
    idx = data.city.region_index(data.regions.train)
    rate = (data.city.values[data.train_time][:, idx] > 0).mean(axis=(0, 1))
    return [float(min(cap, (1 - p) / max(p, 1e-6))) for p in rate]


def build_model(model_args: ModelArguments, data_args: DataArguments, data: PreparedData, attn: str):
    """A pretrained backbone wrapped with ST modules, or a tiny Llama with an offline tokenizer."""
    enc_cfg = encoder_config(data.city, data_args, model_args.st_encoder_path, model_args, data.scaler)
    common = dict(
        cls_pos_weight=event_pos_weight(data),
        st_encoder_config=enc_cfg, projector_type=model_args.projector_type, lm_loss_weight=model_args.lm_loss_weight,
        reg_loss_weight=model_args.reg_loss_weight, cls_loss_weight=model_args.cls_loss_weight,
        poi_loss_weight=model_args.poi_loss_weight,
    )
    if model_args.model_name_or_path:
        if model_args.no_llm:
            raise ValueError("--no_llm builds a backbone with zero layers; it cannot be combined with "
                             "--model_name_or_path")
        return STLlamaForCausalLM.from_backbone(
            model_args.model_name_or_path, st_encoder_path=model_args.st_encoder_path,
            attn_implementation=model_args.attn_implementation or attn, **common,
        )
    texts = tokenizer_corpus(data.train, 400)
    model, tokenizer = build_tiny_model(texts, model_args, data_args.tokenizer_vocab, attn, **common)
    if model_args.st_encoder_path:
        model.st_encoder.load_state_dict(load_encoder(model_args.st_encoder_path).state_dict())
    return model, tokenizer


def build_tiny_model(texts: list[str], model_args: ModelArguments, vocab_size: int, attn: str,
                     extra_tokens: dict[str, str] | None = None, **config_kwargs):
    """A Llama of ``--tiny_preset`` size from its config, with a BPE tokenizer trained offline on ``texts``.

    ``extra_tokens`` maps config fields to special tokens outside ``SLOT_TOKENS`` (``{"mob_pre_token_id":
    "<mob_pre>"}``): added to the tokenizer before the backbone's vocabulary is sized, their ids set in the config."""
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    ids = add_st_tokens(tokenizer)
    for name, token in (extra_tokens or {}).items():
        tokenizer.add_special_tokens({"additional_special_tokens": [token]}, replace_extra_special_tokens=False)
        config_kwargs[name] = tokenizer.convert_tokens_to_ids(token)
    hidden, layers, heads, kv, inter = TINY_PRESETS[model_args.tiny_preset]
    if model_args.no_llm:
        layers = 0  # the ablation: embeddings and final norm only, no attention or MLP between slots
    text = LlamaConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
        intermediate_size=inter, vocab_size=len(tokenizer), max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    config = STLlamaConfig(text_config=text, **ids.as_config(), **config_kwargs)
    config._attn_implementation = model_args.attn_implementation or attn
    with _without_zero3_init():  # a tiny model gains nothing from partitioned construction
        model = STLlamaForCausalLM(config)
    return model, tokenizer


@contextlib.contextmanager
def _without_zero3_init():
    """Build a model with plain tensors even when a ZeRO-3 config is active (the engine partitions it
    when training starts); ``zero.Init`` is for models too big to build on one process."""
    from transformers.integrations import deepspeed as hf_ds

    ref = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = ref


def load_geo_encoder(model: STLlamaForCausalLM, path: str | None) -> None:
    """Put a pretrained GeoEncoder into the model (its config must match the model's)."""
    if not path:
        return
    geo = load_encoder(path)
    if type(geo).__name__ != "GeoEncoder":
        raise ValueError(f"--geo_encoder_path {path} holds a {type(geo).__name__}, not a GeoEncoder")
    if geo.config.to_dict() != model.geo_encoder.config.to_dict():
        model.config.geo_encoder_config = geo.config.to_dict()
        model.geo_encoder = geo.to(next(model.parameters()).dtype)
        model.geo_projector = type(model.geo_projector)(geo.token_dim, model.config.hidden_size,
                                                        model.config.projector_type)  # fmt: skip
    else:
        model.geo_encoder.load_state_dict(geo.state_dict())


def make_trainable(model: STLlamaForCausalLM, model_args: ModelArguments):
    """LoRA (default) or full fine-tuning; the ST encoder stays frozen unless asked."""
    full = model_args.full_finetune
    if full is None:
        full = model.config.backbone_name_or_path is None
    if full:
        model.requires_grad_(True)
        model.st_encoder.requires_grad_(model_args.tune_st_encoder)
        if model_args.geo_encoder_path:  # a pretrained GeoEncoder stays as pretrained, like the ST encoder
            model.geo_encoder.requires_grad_(model_args.tune_st_encoder)
        return model
    targets = model_args.lora_target_modules.split(",") if model_args.lora_target_modules else None
    return add_lora(
        model, r=model_args.lora_r, alpha=model_args.lora_alpha, dropout=model_args.lora_dropout,
        target_modules=targets, tune_st_encoder=model_args.tune_st_encoder,
    )


ARCHITECTURE_FIELDS = ("st_slots", "head_dim", "projector_type", "st_his_token_id", "st_pre_token_id", "geo_token_id",
                       "poi_pre_token_id", "st_encoder_config", "geo_encoder_config")  # fmt: skip
TEXT_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "vocab_size")  # fmt: skip


def check_resume_compatible(checkpoint: str | os.PathLike, config: STLlamaConfig) -> None:
    """Refuse to resume into a model built differently from the checkpoint's, naming the fields."""
    path = Path(checkpoint) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {checkpoint} has no config.json")
    saved, now = json.loads(path.read_text()), config.to_dict()
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}"
             for k in ARCHITECTURE_FIELDS if saved.get(k) != now.get(k)]  # fmt: skip
    st, nt = saved.get("text_config", {}), now.get("text_config", {})
    diffs += [f"text_config.{k}: checkpoint {st.get(k)!r}, now {nt.get(k)!r}"
              for k in TEXT_FIELDS if st.get(k) != nt.get(k)]  # fmt: skip
    if diffs:
        raise ValueError(f"cannot resume from {checkpoint}: the model differs in " + "; ".join(diffs))


def _resumes_own_run(args: STTrainingArguments) -> bool:
    """Whether ``--resume_from_checkpoint`` is ``--output_dir`` or one of its checkpoints."""
    if not args.resume_from_checkpoint:
        return False
    out, ckpt = Path(args.output_dir).resolve(), Path(args.resume_from_checkpoint).resolve()
    return ckpt == out or ckpt.parent == out


@contextlib.contextmanager
def claim_run_dir(args: STTrainingArguments):
    """Hold ``--output_dir`` for the whole run (a lock with this job's pid, see :mod:`stllm.outdir`) on global
    rank 0 only: the other ranks write nothing of their own there, and rank 0's refusal fails the whole job."""
    if args.process_index != 0:
        yield None
        return
    overwrite = args.overwrite_output_dir or _resumes_own_run(args)
    with outdir.claim_output_dir(args.output_dir, "training run", overwrite=overwrite,
                                 flag="--overwrite_output_dir") as path:  # fmt: skip
        yield path


def start_run(training_args: STTrainingArguments):
    """Log the runtime (rank 0), check that a resumed checkpoint can continue exactly, seed; returns the
    runtime. The output directory is claimed by :func:`claim_run_dir`."""
    rt = detect_runtime()
    if training_args.process_index == 0:
        logger.warning(rt.log_line())
    if training_args.resume_from_checkpoint:
        check_resume_state(training_args.resume_from_checkpoint)
    set_seed(training_args.seed)
    return rt


TRAINING_STATE_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.json")


def check_resume_state(checkpoint: str | os.PathLike) -> None:
    """Refuse a checkpoint without the optimizer, schedule or trainer state: HF would silently restart them
    and the losses would differ from an uninterrupted run. Under DeepSpeed the optimizer (and schedule)
    state is in ``global_step*/``."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: no such directory")
    deepspeed = any(p.is_dir() for p in path.glob("global_step*"))
    needed = ("trainer_state.json",) if deepspeed else TRAINING_STATE_FILES
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--resume_from_checkpoint {path} has no {', '.join(missing)} (a final output directory keeps only the "
            "model): resuming would restart the optimizer and learning-rate schedule, and the losses would differ "
            "from an uninterrupted run; resume from a checkpoint-N directory written during training"
        )


# artefact fields that do not decide the samples (where the same files live)
IDENTITY_IGNORED = frozenset({"data_root", "source"})


def check_resume_data(checkpoint: str | os.PathLike, tokenizer, artifacts: dict[str, str]) -> None:
    """Refuse a checkpoint whose tokenizer maps ids to other strings, or whose data, split or scaler differ
    from this run's (the artefact files every checkpoint carries), naming the fields."""
    path = Path(checkpoint)
    diffs = _tokenizer_diff(path, tokenizer)
    for name, text in artifacts.items():
        saved_file = path / name
        if not saved_file.is_file():
            diffs.append(f"{name}: missing in the checkpoint, so its data cannot be checked")
            continue
        saved, now = json.loads(saved_file.read_text()), json.loads(text)
        if not (isinstance(saved, dict) and isinstance(now, dict)):
            saved, now = {"content": saved}, {"content": now}
        diffs += [f"{name} {k}: checkpoint {_short(saved.get(k))}, now {_short(now.get(k))}"
                  for k in sorted(set(saved) | set(now)) if k not in IDENTITY_IGNORED and saved.get(k) != now.get(k)]
    if diffs:
        raise ValueError(f"cannot resume from {checkpoint}: it was trained on other tokens or data: "
                         + "; ".join(diffs))


def _tokenizer_diff(checkpoint: Path, tokenizer) -> list[str]:
    from transformers import AutoTokenizer

    if not any((checkpoint / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        return [f"tokenizer: {checkpoint} has no tokenizer.json or tokenizer_config.json, so its token ids "
                "cannot be checked"]
    saved = {i: t for t, i in AutoTokenizer.from_pretrained(checkpoint).get_vocab().items()}
    now = {i: t for t, i in tokenizer.get_vocab().items()}
    changed = sum(saved.get(i) != now.get(i) for i in set(saved) | set(now))
    if not changed:
        return []
    return [f"tokenizer: {changed} of {len(now)} token ids mean other strings than in the checkpoint "
            f"({len(saved)} tokens; was the offline tokenizer retrained on other data or --tokenizer_vocab?)"]


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def ready_for_training(model: STLlamaForCausalLM, model_args: ModelArguments, training_args: STTrainingArguments, rt):
    """Pretrained GeoEncoder in, resume compatibility checked, bf16 on CUDA, LoRA or full fine-tuning."""
    load_geo_encoder(model, model_args.geo_encoder_path)
    if training_args.resume_from_checkpoint:
        check_resume_compatible(training_args.resume_from_checkpoint, model.config)
    if rt.device == "cuda" and not (training_args.bf16 or training_args.fp16):
        training_args.bf16 = rt.dtype == torch.bfloat16
    return make_trainable(model, model_args)


def subsample(dataset, max_samples: int | None, seed: int):
    """At most ``max_samples`` samples, drawn without replacement and kept in dataset order."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    keep = np.sort(np.random.default_rng(seed).choice(len(dataset), size=max_samples, replace=False))
    return torch.utils.data.Subset(dataset, keep.tolist())


def fit_and_save(model, tokenizer, training_args: STTrainingArguments, train_set, collator,
                 artifacts: dict[str, str], eval_set=None) -> STTrainer:
    """Train with STTrainer (resuming when asked), save the final checkpoint and the trainer state.

    With ``eval_set`` the run validates every ``eval_steps``, stops early after ``early_stopping_patience``
    validations without a better forecast loss and keeps the best weights (:class:`BestWeights`)."""
    if training_args.resume_from_checkpoint:
        check_resume_data(training_args.resume_from_checkpoint, tokenizer, artifacts)
    callbacks = []
    if eval_set is None or len(eval_set) == 0:
        eval_set = None
        training_args.eval_strategy, training_args.eval_on_start = IntervalStrategy.NO, False
    elif training_args.eval_strategy != IntervalStrategy.NO:
        if training_args.deepspeed:
            logger.warning("validation runs, but the best weights are not restored under DeepSpeed (partitioned "
                           "parameters): use --load_best_model_at_end with a matching --save_strategy")
        else:
            callbacks.append(BestWeights(patience=training_args.early_stopping_patience))
    trainer = STTrainer(
        model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set, data_collator=collator,
        processing_class=tokenizer, artifacts=artifacts, callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    return trainer


def train(model_args: ModelArguments, data_args: DataArguments, training_args: STTrainingArguments) -> STTrainer:
    """Build everything from the arguments, train, save the final checkpoint; returns the trainer."""
    rt = start_run(training_args)
    with claim_run_dir(training_args):
        data = prepare_data(data_args, model_args.st_encoder_path)
        model, tokenizer = build_model(model_args, data_args, data, rt.attn_implementation)
        model = ready_for_training(model, model_args, training_args, rt)
        train_set = subsample(data.train, data_args.max_train_samples, training_args.seed)
        collator = STDataCollator(tokenizer, st_slots=model.config.st_slots, padding_side="right")
        return fit_and_save(model, tokenizer, training_args, train_set, collator, data.artifacts(), data.val)


def release_trainer(trainer) -> None:
    """Free what a finished run holds in the collective layer: the DeepSpeed engine's ZeRO hooks, optimizer
    and pending all-gather handles (``engine.destroy()``), then the trainer's reference cycles. Left to
    interpreter teardown, they are destroyed after the process group, in arbitrary order, on each rank."""
    engine = getattr(trainer, "model_wrapped", None)
    if engine is not None and type(engine).__name__ == "DeepSpeedEngine" and hasattr(engine, "destroy"):
        engine.destroy()
    for attr in ("model_wrapped", "deepspeed", "optimizer", "lr_scheduler"):
        if hasattr(trainer, attr):
            setattr(trainer, attr, None)


def shutdown_distributed() -> None:
    """Collect garbage, wait for every rank, destroy the process group: a rank must not tear down gloo
    while objects holding its groups are still alive or another rank is still in a collective ("terminate
    called without an active exception" after a successful run)."""
    gc.collect()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    gc.collect()


def run_training_cli(argv: list[str] | None, train_fn, data_class=DataArguments, name: str = "train") -> int:
    """Parse ``(ModelArguments, data_class, STTrainingArguments)``, run ``train_fn`` on them, release the
    trainer and tear down the process group. Errors go through :func:`stllm.errors.run_command` (user
    errors: one line, exit 2; ``--debug`` for the traceback), also under ``torchrun train_mem.py``."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    argv, debug = split_debug(sys.argv[1:] if argv is None else list(argv))

    def job() -> None:
        trainer = train_fn(*parse_args(argv, data_class=data_class))
        release_trainer(trainer)

    code = run_command(name, job, debug=debug)
    if code == 0:  # after an error the other ranks may never reach the barrier: torchrun ends them
        shutdown_distributed()
    return code


def main(argv: list[str] | None = None) -> int:
    return run_training_cli(argv, train)


if __name__ == "__main__":
    sys.exit(main())
