import torch
from model_fixtures import VOCAB, tiny_text_config, tiny_word_tokenizer
from transformers import AutoModelForCausalLM

from stllm.tokens import GEO_TOKEN, SLOT_TOKENS, ST_HIS_TOKEN, ST_PRE_TOKEN, add_st_tokens


def test_add_st_tokens_is_idempotent_and_single_token():
    tok = tiny_word_tokenizer()
    ids = add_st_tokens(tok)
    assert len(tok) == VOCAB + len(SLOT_TOKENS)
    assert add_st_tokens(tok) == ids and len(tok) == VOCAB + len(SLOT_TOKENS)
    enc = tok(f"w1 {ST_HIS_TOKEN}{ST_HIS_TOKEN} w2 {ST_PRE_TOKEN} {GEO_TOKEN}")["input_ids"]
    assert enc.count(ids.st_his_token_id) == 2 and ids.st_pre_token_id in enc and ids.geo_token_id in enc


def test_new_embedding_rows_start_at_the_mean():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_text_config("llama"))
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    ids = add_st_tokens(tiny_word_tokenizer(), model)
    new_in = model.get_input_embeddings().weight
    assert new_in.shape[0] == VOCAB + len(SLOT_TOKENS)
    assert torch.equal(new_in[:VOCAB], old_in)
    for i in (ids.st_his_token_id, ids.st_pre_token_id, ids.geo_token_id):
        torch.testing.assert_close(new_in[i], old_in.mean(0))
        torch.testing.assert_close(model.get_output_embeddings().weight[i], old_out.mean(0))
