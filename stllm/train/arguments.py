"""Command-line / file arguments of stage-2 training, parsed with ``HfArgumentParser``.

Every field has a default and a help string, so ``stllm train --help`` documents the whole
recipe; ``parse_args(["config.yaml"])`` (or ``.json``) reads the same fields from a file.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments

from stllm.data.city_files import parse_overrides
from stllm.data.loaders import read_json
from stllm.data.prompts import PROMPT_STYLES
from stllm.train.checks import (
    FRACTION_HALF_OPEN,
    FRACTION_OPEN,
    FRACTION_UPPER,
    NON_NEGATIVE,
    POSITIVE,
    check_fields,
    rule,
)

TINY_PRESETS = {
    # hidden, layers, heads, kv heads, intermediate
    "tiny": (64, 2, 4, 2, 128),
    "small": (256, 4, 4, 2, 688),
}


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Local Llama/Vicuna (or any causal LM) checkpoint directory with its tokenizer. "
                  "Unset: build a tiny Llama from --tiny_preset and train an offline tokenizer."},
    )
    tiny_preset: str = field(
        default="tiny", metadata={"help": f"Backbone size without a checkpoint: {sorted(TINY_PRESETS)}"}
    )
    st_encoder_path: str | None = field(
        default=None, metadata={"help": "Stage-1 encoder directory (stllm pretrain-encoder output)."}
    )
    geo_encoder_path: str | None = field(
        default=None, metadata={"help": "Stage-1 GeoEncoder directory (stllm pretrain-encoder --encoder geo)."}
    )
    no_llm: bool = field(
        default=False,
        metadata={"help": "Ablation 'stllm without LLM': the same encoder, normalisation, anchor, projector and heads "
                  "on a backbone with zero decoder layers (the heads read the projected encoder tokens directly). "
                  "Only without --model_name_or_path."},
    )
    st_normalize: bool = field(
        default=True, metadata={"help": "Scale-free inputs: each sample normalised by its own history's mean/std "
                                "(ablation: false). Taken from --st_encoder_path's config when one is given."})
    st_residual: bool = field(
        default=True, metadata={"help": "Forecast = seasonal anchor (historical average) + learned correction "
                                "(ablation: false)."})
    st_level_scales_correction: bool = field(
        default=True, metadata={"help": "Flows with the level block: when the model predicts, multiply the encoder's "
                                "and the heads' learned correction by the level gain too, so a tenfold quieter day "
                                "gets a tenfold smaller correction; training learns it unscaled (carries Manhattan "
                                "taxi through the 2020 collapse; ablation: false; taken from --st_encoder_path's "
                                "config when one is given)."})
    st_event_logits: bool = field(
        default=True, metadata={"help": "Events: the encoder also holds a logistic regression of 'an event happens' on "
                                "its normalised context and statistics, fitted at stage 1 (the logistic baseline's "
                                "problem); the event head corrects its logits (ablation: false). Taken from "
                                "--st_encoder_path's config when one is given."})
    tune_st_encoder: bool = field(default=False, metadata={"help": "Also train the ST encoder (frozen by default)."})
    full_finetune: bool | None = field(
        default=None,
        metadata={"help": "Train every backbone weight instead of LoRA. Default: LoRA on a pretrained backbone, "
                  "full fine-tuning on a backbone built from --tiny_preset (LoRA on random weights learns little)."},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str | None = field(
        default=None,
        metadata={"help": "Comma-separated module names for LoRA. Default: the backbone's attention projections, "
                  "found from its module names."},
    )
    projector_type: str = field(default="linear", metadata={"help": "STProjector kind: linear or mlp2x_gelu."})
    lm_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the language-model cross-entropy."})
    reg_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the regression MAE (flows)."})
    cls_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the classification BCE (events)."})
    poi_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the next-POI candidate cross-entropy."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Force an attention implementation; default: flash_attention_2 on GPU when "
                                "installed, sdpa otherwise."},
    )

    def __post_init__(self):
        if self.tiny_preset not in TINY_PRESETS:
            raise ValueError(f"--tiny_preset must be one of {sorted(TINY_PRESETS)}, got {self.tiny_preset!r}")
        if self.projector_type not in ("linear", "mlp2x_gelu"):
            raise ValueError(f"--projector_type must be linear or mlp2x_gelu, got {self.projector_type!r}")
        check_fields(self, [rule("lora_r", POSITIVE), rule("lora_alpha", POSITIVE),
                            rule("lora_dropout", FRACTION_HALF_OPEN)]
                     + [rule(f"{k}_loss_weight", NON_NEGATIVE) for k in ("lm", "reg", "cls", "poi")])


@dataclass
class DataArguments:
    data: str = field(
        default="synthetic",
        metadata={"help": "synthetic | manhattan-taxi | manhattan-bike | crime | bikenyc | a path to an .npz file."},
    )
    data_root: str | None = field(default=None, metadata={"help": "Where real data lives (default ../shared/data)."})
    task: str | None = field(
        default=None, metadata={"help": "City file only: flow or event, instead of what the file says (default flow)."})
    freq: str | None = field(
        default=None, metadata={"help": "City file only: the time step (30min, 1h, 1D) instead of the file's."})
    channels: str | None = field(
        default=None, metadata={"help": "City file only: comma-separated channel names instead of the file's."})
    keys: str | None = field(
        default=None, metadata={"help": "City .npz only: field=key pairs for files with other key names, e.g. "
                                "values=flow,time=timestamps (README: Your own city)."})
    synthetic_regions: int = field(default=24, metadata={"help": "Regions of the synthetic city."})
    synthetic_days: int = field(default=28, metadata={"help": "Days of the synthetic city."})
    synthetic_freq: str = field(default="1h", metadata={"help": "Step of the synthetic city."})
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic city."})
    synthetic_task: str = field(default="flow", metadata={"help": "Synthetic data kind: flow or event."})
    test_regions: float = field(default=0.2, metadata={"help": "Fraction of regions held out for zero-shot."})
    train_time: float = field(default=0.7, metadata={"help": "Fraction of the time range used for training."})
    train_start: str | None = field(default=None, metadata={"help": "First training time (overrides the fraction)."})
    train_end: str | None = field(
        default=None, metadata={"help": "End of training time, exclusive, e.g. 2020-01-01 (overrides the fraction)."}
    )
    max_train_windows: int | None = field(
        default=None, metadata={"help": "Keep only the last N training window starts (quick runs on long series)."}
    )
    split_seed: int = field(default=0, metadata={"help": "Seed of the region split."})
    input_len: int = field(default=12, metadata={"help": "History steps per sample."})
    output_len: int = field(default=12, metadata={"help": "Forecast steps per sample."})
    stride: int = field(default=1, metadata={"help": "Step between window starts."})
    context_days: int = field(
        default=7, metadata={"help": "Encoder context: the target slots on each of this many previous days "
                             "(taken from --st_encoder_path's config when one is given)."})
    context_weeks: int = field(
        default=8, metadata={"help": "Encoder context: the target slots on each of this many previous weeks; their "
                             "mean is the seasonal anchor the forecast corrects (0 and 0: recent steps only)."})
    context_recent_views: bool = field(
        default=False, metadata={"help": "Encoder context: each day/week view also holds the recent steps' slots, "
                                 "so the encoder sees how the last hours compare with the same hours before "
                                 "(taken from --st_encoder_path's config when one is given)."})
    context_level: bool = field(
        default=True, metadata={"help": "Encoder context (flows, with week views): also the last day and the same "
                                "hours in each context week; the anchor is scaled by how busy the last hours were "
                                "against their usual (taken from --st_encoder_path's config when one is given)."})
    extra_views: str = field(
        default="", metadata={"help": "Extra history placeholders (older mechanism, needs context 0/0): comma list "
                              "of day,week."})
    with_geo: bool = field(default=False, metadata={"help": "Add a <GEO> placeholder with the region centroid."})
    prompt_style: str = field(
        default="urbangpt", metadata={"help": "urbangpt (UrbanGPT's wording) or compact (the same facts without "
                                      "filler, about a third fewer tokens); evaluation reuses the checkpoint's."})
    val_fraction: float = field(
        default=0.1, metadata={"help": "Last fraction of the training time range (training regions) held out as "
                               "validation: early stopping and the best weights kept (0: none)."})
    val_region_fraction: float = field(
        default=0.0, metadata={"help": "Validate on this fraction of the training regions, never fitted (the same "
                               "ones stage 1 held out with the same seed), over the validation time: the weights "
                               "kept are chosen on regions the model did not fit, as zero-shot use needs (0: the "
                               "fitted regions)."})
    max_val_samples: int = field(default=256, metadata={"help": "Validation samples (evenly spaced) per evaluation."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Cap training samples (quick runs)."})
    tokenizer_vocab: int = field(default=600, metadata={"help": "Vocabulary of the offline tokenizer."})

    def __post_init__(self):
        if self.synthetic_task not in ("flow", "event"):
            raise ValueError(f"--synthetic_task must be flow or event, got {self.synthetic_task!r}")
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"--prompt_style must be one of {', '.join(PROMPT_STYLES)}, got {self.prompt_style!r}")
        check_fields(self, DATA_RULES)
        self.file_options()  # refuses a bad --task/--freq/--channels/--keys now, naming the flag

    def file_options(self) -> dict:
        """``--task``, ``--freq``, ``--channels``, ``--keys`` as :func:`stllm.data.city_files.load_city_file`
        arguments: what the user says beats what the city file says."""
        return parse_overrides(self.task, self.freq, self.channels, self.keys)


DATA_RULES = [
    *(rule(k, POSITIVE) for k in ("synthetic_regions", "synthetic_days", "input_len", "output_len", "stride",
                                  "max_val_samples", "tokenizer_vocab")),
    *(rule(k, POSITIVE, optional=True) for k in ("max_train_windows", "max_train_samples")),
    rule("context_days", NON_NEGATIVE), rule("context_weeks", NON_NEGATIVE),
    rule("test_regions", FRACTION_OPEN),  # zero-shot evaluation needs held-out regions, training needs the rest
    rule("train_time", FRACTION_UPPER), rule("val_fraction", FRACTION_HALF_OPEN),
    rule("val_region_fraction", FRACTION_HALF_OPEN),
]
TRAINING_RULES = [
    rule("num_train_epochs", POSITIVE), rule("per_device_train_batch_size", POSITIVE),
    rule("gradient_accumulation_steps", POSITIVE), rule("learning_rate", NON_NEGATIVE),
    rule("warmup_steps", NON_NEGATIVE), rule("early_stopping_patience", NON_NEGATIVE),
    rule("eval_steps", POSITIVE, optional=True),
]


@dataclass
class STTrainingArguments(TrainingArguments):
    output_dir: str = field(default="runs/stllm", metadata={"help": "Where checkpoints and logs go."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep st_values & co.: the model consumes non-text inputs."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Micro-batch per device."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into an output directory that holds another run."}
    )
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule after the warm-up."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Linear warm-up: steps, or a fraction of all steps."})
    eval_strategy: str = field(
        default="steps", metadata={"help": "Validate every eval_steps (off when the run has no validation part)."})
    eval_steps: float | None = field(default=0.1, metadata={"help": "Steps between validations (or a fraction)."})
    prediction_loss_only: bool = field(default=True, metadata={"help": "Validation computes losses only."})
    eval_on_start: bool = field(
        default=True, metadata={"help": "Validate before the first step: the starting weights are a candidate."})
    early_stopping_patience: int = field(
        default=3, metadata={"help": "Validations without a better forecast loss before training stops (0: never); "
                             "the best weights are restored at the end either way."})

    def __post_init__(self):
        self.check_ranges()
        if self.deepspeed:
            _check_deepspeed(self.deepspeed)
            single_process_environment()
        if not torch.cuda.is_available():
            if self.deepspeed:
                _configure_cpu_deepspeed(self)
            else:
                # accelerate forms a multi-process (gloo) group without CUDA only when told it runs on CPU
                self.use_cpu = True
        super().__post_init__()

    def check_ranges(self) -> None:
        """Refuse values HF would silently reinterpret (``max_steps 0`` trains by epochs) or run without effect."""
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"--max_steps must be > 0 (or -1: train --num_train_epochs epochs), got {self.max_steps}")
        check_fields(self, TRAINING_RULES)


def _check_deepspeed(config) -> None:
    """Fail early, naming the file, instead of deep inside DeepSpeed or accelerate."""
    if importlib.util.find_spec("deepspeed") is None:
        raise ValueError("--deepspeed needs DeepSpeed: pip install 'stllm[deepspeed]' (CPU: also ninja and gcc)")
    if isinstance(config, dict):
        return
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"--deepspeed config not found: {path}")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
    stage = cfg.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"{path}: zero_optimization.stage must be 0-3, got {stage!r}")


LAUNCHER_VARIABLES = ("LOCAL_RANK", "RANK", "WORLD_SIZE")


def single_process_environment() -> bool:
    """Without torchrun, give DeepSpeed the environment of a one-process torchrun job (rank 0 of 1 on a free
    local port): otherwise it looks for an MPI launcher and fails on a missing ``mpi4py``. Returns whether
    it set anything (False when a launcher already did)."""
    if any(v in os.environ for v in LAUNCHER_VARIABLES):
        return False
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    return True


def _configure_cpu_deepspeed(args: STTrainingArguments) -> None:
    """DeepSpeed on CPU (its CPU accelerator, gloo): accelerate gives DeepSpeed no process-group
    backend without CUDA and falls back to one process, so set up the shared distributed state here
    (DeepSpeed initialised on gloo) and tell TrainingArguments to use it."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "LOCAL_RANK" not in os.environ:
        return  # a single process needs no group
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    config = args.accelerator_config
    if config is None:
        args.accelerator_config = {"use_configured_state": True}
    elif isinstance(config, dict):
        config["use_configured_state"] = True
    else:
        config.use_configured_state = True


def build_parser(data_class=DataArguments) -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, data_class, STTrainingArguments), allow_abbrev=False)


def parse_args(argv: list[str] | None = None, data_class=DataArguments):
    """Parse flags, or a single ``.yaml``/``.json`` file holding the same fields: ``(ModelArguments,
    data_class, STTrainingArguments)`` (``data_class``: DataArguments for city data, or another task's)."""
    parser = build_parser(data_class)
    if argv and len(argv) == 1 and Path(argv[0]).suffix in (".yaml", ".yml", ".json"):
        path = Path(argv[0])
        if not path.is_file():
            raise FileNotFoundError(f"argument file not found: {path}")
        if path.suffix == ".json":
            return parser.parse_dict(read_json(path, "the training arguments as one JSON object"))
        import yaml

        try:
            return parser.parse_yaml_file(str(path))
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e}); expected the training arguments as one mapping") from None
    return parser.parse_args_into_dataclasses(args=argv)
