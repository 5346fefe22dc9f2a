import pytest
import torch
from model_fixtures import HIS, PRE, VOCAB, make_batch, tiny_text_config, tiny_word_tokenizer
from transformers import AutoModelForCausalLM

from stllm import STEncoder, STLlamaForCausalLM, save_encoder
from stllm.tokens import SLOT_TOKENS


@pytest.fixture
def backbone_dir(tmp_path):
    torch.manual_seed(0)
    backbone = AutoModelForCausalLM.from_config(tiny_text_config("llama"))
    backbone.save_pretrained(tmp_path / "llama")
    tiny_word_tokenizer().save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


def test_wraps_local_checkpoint_and_keeps_its_weights(backbone_dir, tmp_path):
    encoder = STEncoder()
    save_encoder(encoder, tmp_path / "enc")
    model, tok = STLlamaForCausalLM.from_backbone(backbone_dir, st_encoder_path=tmp_path / "enc")
    model.eval()
    cfg = model.config
    assert len(tok) == VOCAB + len(SLOT_TOKENS)
    assert model.get_input_embeddings().weight.shape[0] == VOCAB + len(SLOT_TOKENS)
    assert tok.convert_ids_to_tokens(cfg.st_his_token_id) == "<st_his>"
    assert cfg.text_config.vocab_size == VOCAB + len(SLOT_TOKENS)
    for k, v in encoder.state_dict().items():
        assert torch.equal(model.st_encoder.state_dict()[k], v)
    # plain text: the wrapped model gives the original backbone's logits on the old vocabulary
    original = AutoModelForCausalLM.from_pretrained(backbone_dir).eval()
    ids = torch.randint(4, VOCAB, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits[..., :VOCAB], original(input_ids=ids).logits)
    # and it runs with placeholders using the ids the tokenizer assigned
    b = make_batch()
    ids = b["input_ids"].clone()
    ids[ids == HIS], ids[ids == PRE] = cfg.st_his_token_id, cfg.st_pre_token_id
    with torch.no_grad():
        assert model(**dict(b, input_ids=ids)).reg_pred.shape == (3, 12, 2)


def test_missing_backbone_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        STLlamaForCausalLM.from_backbone(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        STLlamaForCausalLM.from_backbone(tmp_path / "empty")
