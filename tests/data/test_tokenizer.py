import pytest
from transformers import AutoTokenizer

from stllm.data import train_tokenizer
from stllm.data.prompts import ChatFormatter
from stllm.tokens import SLOT_TOKENS, add_st_tokens


def test_special_and_slot_tokens_are_single_tokens(tokenizer):
    ids = [tokenizer.convert_tokens_to_ids(t) for t in SLOT_TOKENS]
    assert len(set(ids)) == len(SLOT_TOKENS) and tokenizer.unk_token_id not in ids
    for t in (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token):
        assert len(tokenizer(t, add_special_tokens=False)["input_ids"]) == 1
    enc = tokenizer("flow<st_his><st_his>x <st_pre>.", add_special_tokens=False)["input_ids"]
    assert enc.count(ids[0]) == 2 and enc.count(ids[1]) == 1
    n = len(tokenizer)
    assert add_st_tokens(tokenizer).as_config()["st_his_token_id"] == ids[0] and len(tokenizer) == n


def test_decode_round_trip_and_compression(tokenizer, dataset):
    p, a = ChatFormatter(tokenizer)(dataset[3]["conversation"])
    text = (p + a).replace("<ST_HIS>", "<st_his><st_his>").replace("<ST_PRE>", "<st_pre><st_pre>")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode()) / 2.5  # BPE learned merges from the corpus
    odd = "Zürich 東京 ☃ tabs\tand\nnewlines"
    assert tokenizer.decode(tokenizer(odd, add_special_tokens=False)["input_ids"]) == odd  # byte level: no <unk>


def test_save_load_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    text = "<s>USER: where <st_his><geo> ASSISTANT: <st_pre></s>"
    assert back(text, add_special_tokens=False)["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert back.chat_template == tokenizer.chat_template
    assert (back.pad_token_id, back.eos_token_id, back.bos_token_id) == (
        tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id)
    assert len(back) == len(tokenizer)


def test_vocab_size_checked():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["abc"], vocab_size=100)
    small = train_tokenizer(["the city the city the city"] * 20, vocab_size=300)
    assert len(small) <= 300
