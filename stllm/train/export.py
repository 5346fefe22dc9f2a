"""``stllm export CHECKPOINT OUTPUT``: any training checkpoint -> a plain ``from_pretrained`` directory.

Handles the three things a run leaves behind: DeepSpeed ZeRO shards (``global_step*/``: the fp32
master weights are consolidated with DeepSpeed's own ``zero_to_fp32``), an stllm LoRA checkpoint
(adapter merged), and full weights. The output also carries the tokenizer, the fitted scaler and
the split record, so evaluation needs nothing else -- no manual ``zero_to_fp32.py`` step.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

ARTIFACTS = ("scaler.json", "split.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model")  # fmt: skip


def zero_shards(checkpoint: Path) -> Path | None:
    """The ``global_step*`` folder of a DeepSpeed checkpoint (the one ``latest`` names), if any."""
    latest = checkpoint / "latest"
    if latest.is_file():
        tag = checkpoint / latest.read_text().strip()
        if tag.is_dir():
            return tag
    steps = sorted(checkpoint.glob("global_step*"), key=lambda p: int(p.name.removeprefix("global_step") or 0))
    return steps[-1] if steps else None


def load_trained(checkpoint: str | Path):
    """The trained :class:`STLlamaForCausalLM` from any checkpoint kind (LoRA merged where possible)."""
    from stllm.models import STLlamaConfig, STLlamaForCausalLM
    from stllm.models.checkpoint import is_lora_checkpoint, load_lora_checkpoint, merge_adapter

    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a training checkpoint: config.json is missing")
    shards = zero_shards(checkpoint)
    if shards is None:
        return STLlamaForCausalLM.from_pretrained(checkpoint)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=shards.name)
    if is_lora_checkpoint(checkpoint):
        model = load_lora_checkpoint(STLlamaForCausalLM, checkpoint, merge=False)
    else:
        model = STLlamaForCausalLM(STLlamaConfig.from_pretrained(checkpoint))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"{shards}: ZeRO weights do not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")  # fmt: skip
    if hasattr(model, "merge_and_unload"):
        model = merge_adapter(model)
    return model.eval()


def export_checkpoint(checkpoint: str | Path, output: str | Path) -> Path:
    """Write the trained model, tokenizer and run artifacts of ``checkpoint`` under ``output``."""
    checkpoint, output = Path(checkpoint), Path(output)
    model = load_trained(checkpoint)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    for name in ARTIFACTS + TOKENIZER_FILES:
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, output / name)
    return output


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="turn a training checkpoint (ZeRO, LoRA or full) into a plain model dir")
    p.add_argument("checkpoint", help="a checkpoint directory written by stllm train")
    p.add_argument("output", help="where the from_pretrained directory is written")
    p.set_defaults(func=lambda args: print(f"exported to {export_checkpoint(args.checkpoint, args.output)}") or 0)
    return p
