"""LoRA checkpoints that hold everything evaluation needs, loadable by ``from_pretrained``.

A LoRA checkpoint directory has peft's ``adapter_config.json`` + ``adapter_model.safetensors``
(LoRA weights, the trained projectors/heads via ``modules_to_save``, the slot-token embedding
rows), our ``config.json`` (:class:`STLlamaConfig`), and ``st_base.safetensors``: the base weights
that cannot be re-read from ``config.backbone_name_or_path`` -- the ST modules (e.g. a stage-1
encoder) and, when the backbone was built from a config rather than loaded, the backbone too.
Pretrained backbone weights are never copied into every checkpoint.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ADAPTER_CONFIG = "adapter_config.json"
BASE_WEIGHTS = "st_base.safetensors"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # peft reads either (the .bin weights-only)
FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")  # fmt: skip

# peft wrapper parts of parameter names, removed to recover the plain model's names
_DROP = re.compile(r"(lora_[A-Za-z]+\.|\.modules_to_save\.|trainable_tokens_)")
_UNWRAP = ((".token_adapter.base_layer.", "."), (".base_layer.", "."), (".original_module.", "."))


def require_checkpoint_files(path: str | os.PathLike, required: tuple[str, ...], command: str) -> Path:
    """``path`` as a Path, after checking it is a directory holding each ``required`` file (the first missing one
    named, with the command that writes such checkpoints)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    for name in required:
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint {path} is missing {name} (was it written by stllm {command}?)")
    return path


def is_lora_checkpoint(path) -> bool:
    p = Path(os.fspath(path))
    return p.is_dir() and (p / ADAPTER_CONFIG).is_file() and (p / BASE_WEIGHTS).is_file()


def check_lora_files(path) -> None:
    """A directory with ``adapter_config.json`` but no full weights is a LoRA checkpoint: name the LoRA
    file it lacks (instead of transformers' "no file named model.safetensors")."""
    p = Path(os.fspath(path))
    if not (p.is_dir() and (p / ADAPTER_CONFIG).is_file()) or any((p / n).is_file() for n in FULL_WEIGHTS):
        return
    missing = [] if (p / BASE_WEIGHTS).is_file() else [BASE_WEIGHTS]
    if not any((p / n).is_file() for n in ADAPTER_WEIGHTS):
        missing.append(ADAPTER_WEIGHTS[0])
    if missing:
        raise FileNotFoundError(
            f"{p} is an incomplete LoRA checkpoint: it has {ADAPTER_CONFIG} but not {' and '.join(missing)}; "
            "copy the whole checkpoint directory again (or save it again with STTrainer)"
        )


def base_state_dict(peft_model) -> dict[str, torch.Tensor]:
    """The wrapped model's own (pre-LoRA) weights under their plain names."""
    base = peft_model.get_base_model()
    state = {}
    for name, tensor in base.state_dict().items():
        if _DROP.search(name):
            continue
        for old, new in _UNWRAP:
            name = name.replace(old, new)
        state[name] = tensor
    keep_backbone = base.config.backbone_name_or_path is None
    return {k: v for k, v in state.items() if keep_backbone or not k.startswith("backbone.")}


def save_lora_extras(peft_model, output_dir) -> None:
    """Write the config and the base weights beside the adapter files peft already wrote."""
    base = peft_model.get_base_model()
    base.config.save_pretrained(output_dir)
    tensors = {k: v.detach().contiguous().cpu() for k, v in base_state_dict(peft_model).items()}
    # tied weights share storage; safetensors stores each tensor once
    seen, unique = {}, {}
    for k, v in tensors.items():
        key = (v.data_ptr(), v.shape, v.dtype)
        if key not in seen:
            seen[key] = k
            unique[k] = v.clone()
    save_file(unique, os.path.join(output_dir, BASE_WEIGHTS))


def merge_adapter(peft_model):
    """The plain model with the adapter merged -- unless input/output embeddings are tied: merging the
    slot-token rows would then also move the output rows that training never changed (peft applies
    the row delta to the input side only), so the model stays wrapped."""
    if peft_model.get_base_model().config.tie_word_embeddings:
        return peft_model
    return peft_model.merge_and_unload()


def load_lora_checkpoint(cls, path, merge: bool = True, dtype=None, **kwargs):
    """Rebuild the base model, load ``st_base.safetensors``, apply the adapter and (by default) merge it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from stllm.models.configuration import STLlamaConfig
    from stllm.safe_io import check_safetensors_in
    from stllm.tokens import resize_with_mean_rows

    path = Path(os.fspath(path))
    check_lora_files(path)
    check_safetensors_in(path)
    config = STLlamaConfig.from_pretrained(path)
    text_config = config.text_config
    if config.backbone_name_or_path:
        src = config.backbone_name_or_path
        if not Path(src).is_dir():
            raise FileNotFoundError(f"{path / 'config.json'}: backbone_name_or_path {src} does not exist")
        backbone = AutoModelForCausalLM.from_pretrained(src, dtype=dtype or "auto")
        resize_with_mean_rows(backbone, text_config.vocab_size)
    else:
        backbone = AutoModelForCausalLM.from_config(text_config)
    model = cls(config, backbone=backbone)
    missing, unexpected = model.load_state_dict(load_file(str(path / BASE_WEIGHTS)), strict=False)
    if unexpected:
        raise ValueError(f"{path / BASE_WEIGHTS}: unexpected weights {unexpected[:5]}")
    if config.backbone_name_or_path is None:
        non_tied = [k for k in missing if k not in model.all_tied_weights_keys]
        if non_tied:
            raise ValueError(f"{path / BASE_WEIGHTS}: missing weights {non_tied[:5]}")
        model.tie_weights()
    peft_model = PeftModel.from_pretrained(model, str(path))
    model = merge_adapter(peft_model) if merge else peft_model
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
