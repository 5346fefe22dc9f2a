"""What identifies an evaluation run: a checkpoint's files (checked, then hashed) and the evaluated data.

A prediction file is resumed only under the same identity (:mod:`stllm.eval.zero_shot`): a checkpoint
retrained into the same directory, or the same flags on other data, must not bring old rows back.
Digests are sha256 of content, never of names, sizes or times.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from stllm.data.loaders import read_json

REQUIRED = ("config.json", "scaler.json", "split.json", "tokenizer_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # a checkpoint needs one of them
_TOKENIZER_PARTS = (*TOKENIZER_FILES, "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "chat_template.jinja")  # fmt: skip
_MODEL_PARTS = ("config.json", "adapter_config.json", "generation_config.json")
_NOT_WEIGHTS = ("training_args.bin",)


def _weight_files(path: Path) -> list[Path]:
    return sorted(p for pattern in ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
                  for p in path.glob(pattern) if p.name not in _NOT_WEIGHTS)  # fmt: skip


def check_checkpoint(path: Path, label: str | None = None) -> None:
    what = f"compared checkpoint {label!r} ({path})" if label else f"checkpoint {path}"
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: directory not found")
    for name in REQUIRED:
        if not (path / name).is_file():
            raise FileNotFoundError(f"{what} is missing {name}")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"{what} is missing its tokenizer: needs {' or '.join(TOKENIZER_FILES)} beside "
                                "tokenizer_config.json (copy them from the training run)")  # fmt: skip
    if not _weight_files(path):
        raise FileNotFoundError(f"{what} holds no weights (model.safetensors, pytorch_model.bin, or "
                                "adapter_model.safetensors + st_base.safetensors)")  # fmt: skip


def _sha256(files: list[Path], root: Path) -> str:
    """Streaming sha256 of the files' names and bytes: equal only for the same content."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root)}\0{f.stat().st_size}\0".encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def checkpoint_digests(path: str | os.PathLike) -> dict[str, str]:
    """``{"weights": ..., "tokenizer": ...}``: sha256 of the weight files + model configs, and of the tokenizer
    files of a checkpoint (a retrained checkpoint in the same directory gets other digests)."""
    path = Path(path)
    model = _weight_files(path) + [path / n for n in _MODEL_PARTS if (path / n).is_file()]
    tok = [path / n for n in _TOKENIZER_PARTS if (path / n).is_file()]
    return {"weights": _sha256(sorted(model), path), "tokenizer": _sha256(tok, path)}


def data_digest(city) -> str:
    """sha256 of everything of a city that prompts and predictions read: values, mask, timestamps, adjacency
    and the region / channel metadata."""
    h = hashlib.sha256()
    meta = {"name": city.name, "task": city.task, "freq": str(city.freq), "channels": list(city.channels),
            "quantity": city.quantity, "place": city.place, "regions": [asdict(r) for r in city.regions]}  # fmt: skip
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for arr in (city.values, city.observed, city.timestamps.astype("datetime64[m]").astype(np.int64),
                city.adjacency if city.adjacency is not None else np.zeros(0)):  # fmt: skip
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def load_json_object(path: Path) -> dict:
    """A JSON object from ``path``; a corrupt or truncated file raises ``ValueError`` naming it
    (:func:`stllm.data.loaders.read_json`), as does one holding something else than an object."""
    obj = read_json(path, "the JSON object the training run wrote; restore it from the training run")
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}; restore it from the training run")
    return obj


def load_task_checkpoint(path: str | os.PathLike, required: tuple[str, ...], record_file: str, command: str):
    """``(model, tokenizer, record)`` of a task checkpoint (``stllm train-poi``, ``train-mobility``, ``train-gen``):
    the directory and each ``required`` file named when missing, ``record_file`` the JSON of what it trained on.
    The caller checks the model is one of its task (its head or slot token)."""
    from transformers import AutoTokenizer

    from stllm.models import STLlamaForCausalLM
    from stllm.models.checkpoint import require_checkpoint_files

    path = require_checkpoint_files(path, required, command)
    record = json.loads((path / record_file).read_text(encoding="utf-8"))
    return STLlamaForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), record
