"""stllm: spatio-temporal large language models of cities.

``from stllm import STLlamaForCausalLM`` gives a Hugging Face causal LM that reads city windows
(via :class:`STEncoder`) and coordinates (via :class:`GeoEncoder`) at placeholder tokens and
forecasts flows and events with its regression and classification heads.
"""

from stllm.encoders import (
    GeoEncoder,
    GeoEncoderConfig,
    STEncoder,
    STEncoderConfig,
    load_encoder,
    save_encoder,
)
from stllm.models import (
    ClassificationHead,
    RegressionHead,
    STCausalLMOutput,
    STLlamaConfig,
    STLlamaForCausalLM,
    STProjector,
)
from stllm.tokens import STTokenIds, add_st_tokens

__version__ = "0.1.0"

__all__ = [
    "ClassificationHead",
    "GeoEncoder",
    "GeoEncoderConfig",
    "RegressionHead",
    "STCausalLMOutput",
    "STEncoder",
    "STEncoderConfig",
    "STLlamaConfig",
    "STLlamaForCausalLM",
    "STProjector",
    "STTokenIds",
    "add_st_tokens",
    "load_encoder",
    "save_encoder",
]
