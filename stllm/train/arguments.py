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


@dataclass
class DataArguments:
    data: str = field(
        default="synthetic",
        metadata={"help": "synthetic | manhattan-taxi | manhattan-bike | crime | bikenyc | a path to an .npz file."},
    )
    data_root: str | None = field(default=None, metadata={"help": "Where real data lives (default ../shared/data)."})
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
    extra_views: str = field(
        default="", metadata={"help": "Extra history placeholders (older mechanism, needs context 0/0): comma list "
                              "of day,week."})
    with_geo: bool = field(default=False, metadata={"help": "Add a <GEO> placeholder with the region centroid."})
    val_fraction: float = field(
        default=0.1, metadata={"help": "Last fraction of the training time range (training regions) held out as "
                               "validation: early stopping and the best weights kept (0: none)."})
    max_val_samples: int = field(default=256, metadata={"help": "Validation samples (evenly spaced) per evaluation."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Cap training samples (quick runs)."})
    tokenizer_vocab: int = field(default=600, metadata={"help": "Vocabulary of the offline tokenizer."})


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
        if self.deepspeed:
            _check_deepspeed(self.deepspeed)
        if not torch.cuda.is_available():
            if self.deepspeed:
                _configure_cpu_deepspeed(self)
            else:
                # accelerate forms a multi-process (gloo) group without CUDA only when told it runs on CPU
                self.use_cpu = True
        super().__post_init__()


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
    return HfArgumentParser((ModelArguments, data_class, STTrainingArguments))


def parse_args(argv: list[str] | None = None, data_class=DataArguments):
    """Parse flags, or a single ``.yaml``/``.json`` file holding the same fields: ``(ModelArguments,
    data_class, STTrainingArguments)`` (``data_class``: DataArguments for city data, or another task's)."""
    parser = build_parser(data_class)
    if argv and len(argv) == 1 and Path(argv[0]).suffix in (".yaml", ".yml", ".json"):
        path = Path(argv[0])
        if not path.is_file():
            raise FileNotFoundError(f"argument file not found: {path}")
        if path.suffix == ".json":
            return parser.parse_json_file(str(path))
        return parser.parse_yaml_file(str(path))
    return parser.parse_args_into_dataclasses(args=argv)
