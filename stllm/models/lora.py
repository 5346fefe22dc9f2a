"""LoRA on any backbone: find its attention projections, keep the ST modules and new tokens trainable.

Target modules are discovered from the loaded model (linear layers that are direct children of a
module whose class name contains "Attention"), so Llama's ``q/k/v/o_proj``, GPT-2's
``c_attn/c_proj`` and Qwen2's projections are all found without a per-architecture table.
"""

from __future__ import annotations

from collections.abc import Iterable

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from stllm.models.st_llama import STLlamaForCausalLM

# Modules that are trained in stage 2 by default; the encoder joins them with tune_st_encoder.
ST_TRAINABLE = ("st_projector", "geo_projector", "reg_head", "cls_head", "poi_head")


def attention_projections(backbone: nn.Module) -> list[str]:
    """Names (relative to ``backbone``) of the linear layers inside its attention blocks."""
    names = []
    for parent_name, parent in backbone.named_modules():
        if "Attention" not in type(parent).__name__:
            continue
        for child_name, child in parent.named_children():
            if isinstance(child, (nn.Linear, Conv1D)):
                names.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    if not names:
        raise ValueError(f"no linear layers found inside attention modules of {type(backbone).__name__}")
    return names


def add_lora(
    model: STLlamaForCausalLM,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Iterable[str] | None = None,
    train_new_token_rows: bool = True,
    tune_st_encoder: bool = False,
) -> PeftModel:
    """Wrap ``model`` with LoRA adapters on the backbone's attention projections.

    Trainable afterwards: the adapters, the projectors and heads, and (``train_new_token_rows``)
    only the embedding rows of the slot tokens -- the original vocabulary stays frozen.
    """
    if target_modules is None:
        target_modules = [f"backbone.{n}" for n in attention_projections(model.backbone)]
    cfg = model.config
    new_rows = cfg.slot_token_ids
    targets = list(target_modules)
    fan_in_fan_out = any(isinstance(model.get_submodule(t), Conv1D) for t in targets)  # GPT-2 style
    lora = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
        trainable_token_indices=new_rows if (train_new_token_rows and new_rows) else None,
        # saved with the adapter, so checkpoints and Trainer resumes carry the ST modules too
        modules_to_save=list(ST_TRAINABLE + (("mob_head",) if hasattr(model, "mob_head") else ())
                             + (("st_encoder",) if tune_st_encoder else ())),
    )
    return get_peft_model(model, lora)
