"""Save and load an encoder as a directory: ``encoder_config.json`` + ``model.safetensors``.

Stage-1 checkpoints live in this format so that ``STLlamaForCausalLM`` (and the encoder-only
baseline) load them by path, with the config checked against the weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from stllm.encoders.geo_encoder import GeoEncoder, GeoEncoderConfig
from stllm.encoders.st_encoder import STEncoder, STEncoderConfig
from stllm.safe_io import check_safetensors, staged_dir

CONFIG_NAME = "encoder_config.json"
WEIGHTS_NAME = "model.safetensors"
_KINDS = {"st": (STEncoder, STEncoderConfig), "geo": (GeoEncoder, GeoEncoderConfig)}


def save_encoder(encoder: STEncoder | GeoEncoder, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write the encoder's config and weights (and any ``extra`` JSON metadata) under ``path``, all or
    nothing: both files are staged and moved into place together, so a failed save (disk full) keeps
    the previous encoder loadable."""
    path = Path(path)
    kind = "st" if isinstance(encoder, STEncoder) else "geo"
    meta = {"kind": kind, "config": encoder.config.to_dict(), **(extra or {})}
    state = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    with staged_dir(path) as staging:
        save_file(state, str(staging / WEIGHTS_NAME))
        (staging / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    return path


def load_encoder(path: str | os.PathLike) -> STEncoder | GeoEncoder:
    """Rebuild an encoder saved with :func:`save_encoder`; missing files are named in the error."""
    path = Path(path)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(f"encoder directory {path} is missing {name}")
    meta = json.loads((path / CONFIG_NAME).read_text())
    if meta.get("kind") not in _KINDS:
        raise ValueError(
            f"{path / CONFIG_NAME}: field 'kind' must be one of {sorted(_KINDS)}, got {meta.get('kind')!r}"
        )
    check_safetensors(path / WEIGHTS_NAME)
    cls, cfg_cls = _KINDS[meta["kind"]]
    encoder = cls(cfg_cls.from_dict(meta["config"]))
    encoder.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
    return encoder
