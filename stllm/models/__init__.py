"""The spatio-temporal LLM: config, projector, heads, and the model; registered with Auto* classes."""

from transformers import AutoConfig, AutoModelForCausalLM

from stllm.models.configuration import STLlamaConfig
from stllm.models.heads import ClassificationHead, RegressionHead
from stllm.models.projector import STProjector
from stllm.models.st_llama import STCausalLMOutput, STLlamaForCausalLM, STLlamaPreTrainedModel

AutoConfig.register(STLlamaConfig.model_type, STLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(STLlamaConfig, STLlamaForCausalLM, exist_ok=True)

__all__ = [
    "ClassificationHead",
    "RegressionHead",
    "STCausalLMOutput",
    "STLlamaConfig",
    "STLlamaForCausalLM",
    "STLlamaPreTrainedModel",
    "STProjector",
]
