"""Encoders that turn city numbers and coordinates into vectors."""

from stllm.encoders.geo_encoder import GeoEncoder, GeoEncoderConfig
from stllm.encoders.st_encoder import STEncoder, STEncoderConfig, STEncoderOutput

__all__ = ["GeoEncoder", "GeoEncoderConfig", "STEncoder", "STEncoderConfig", "STEncoderOutput"]
from stllm.encoders.io import load_encoder, save_encoder  # noqa: E402

__all__ += ["load_encoder", "save_encoder"]
