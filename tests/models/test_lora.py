import pytest
from model_fixtures import tiny_model

from stllm.models.lora import attention_projections


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("llama", {"q_proj", "k_proj", "v_proj", "o_proj"}),
        ("qwen2", {"q_proj", "k_proj", "v_proj", "o_proj"}),
        ("gpt2", {"c_attn", "c_proj"}),
    ],
)
def test_attention_projections_are_found_per_architecture(kind, expected):
    names = attention_projections(tiny_model(kind).backbone)
    assert {n.rsplit(".", 1)[-1] for n in names} == expected
    assert len(names) == 2 * len(expected)  # two layers
    assert not any("mlp" in n for n in names)  # GPT-2's MLP also has a c_proj
