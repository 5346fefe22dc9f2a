import pytest
from model_fixtures import tiny_text_config
from transformers import AutoConfig

from stllm import STLlamaConfig


def test_round_trip_through_auto_config(tmp_path):
    cfg = STLlamaConfig(
        text_config=tiny_text_config("qwen2"),
        st_his_token_id=297,
        st_pre_token_id=298,
        geo_token_id=299,
        st_encoder_config={"in_channels": 4, "out_channels": 4, "num_tokens": 4},
        reg_loss_weight=0.3,
    )
    cfg.save_pretrained(tmp_path)
    back = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(back, STLlamaConfig)
    assert back.text_config.model_type == "qwen2" and back.text_config.hidden_size == 64
    assert back.st_slots == 4 and back.st_encoder.in_channels == 4 and back.reg_loss_weight == 0.3


def test_slots_follow_encoder_tokens_unless_given():
    text = tiny_text_config()
    assert STLlamaConfig(text_config=text).st_slots == 2
    cfg = STLlamaConfig(text_config=text, st_slots=3)
    assert cfg.st_encoder.num_tokens == 3


@pytest.mark.parametrize(
    "ids,match",
    [
        ({"st_his_token_id": 300}, "outside the backbone vocabulary"),
        ({"st_his_token_id": 5, "st_pre_token_id": 5}, "distinct"),
    ],
)
def test_bad_token_ids(ids, match):
    with pytest.raises(ValueError, match=match):
        STLlamaConfig(text_config=tiny_text_config(), **ids)


def test_unknown_projector_kind():
    with pytest.raises(ValueError, match="projector_type"):
        STLlamaConfig(text_config=tiny_text_config(), projector_type="mlp3x")
