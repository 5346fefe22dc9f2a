import numpy as np
import pytest
import torch

from stllm.data import Conversation, STDataCollator, STInstructionDataset, synthetic_city
from stllm.data.prompts import ChatFormatter


@pytest.fixture(scope="module")
def collator(tokenizer):
    return STDataCollator(tokenizer, st_slots=2)


def _expanded(tokenizer, conv, slots=2):
    p, a = ChatFormatter(tokenizer)(conv)
    rep = lambda s: s.replace("<ST_HIS>", "<st_his>" * slots).replace("<ST_PRE>", "<st_pre>" * slots).replace(  # noqa: E731
        "<GEO>", "<geo>")
    return rep(p), rep(a)


def test_batch_layout_labels_and_decoding(collator, tokenizer, dataset):
    samples = [dataset[i] for i in (0, 1, 50, 51)]
    b = collator(samples)
    assert b["input_ids"].dtype == torch.long and b["labels"].shape == b["input_ids"].shape
    assert b["attention_mask"].dtype == torch.long
    for i, s in enumerate(samples):
        ids = b["input_ids"][i][b["attention_mask"][i].bool()].tolist()
        p, a = _expanded(tokenizer, s["conversation"])
        assert tokenizer.decode(ids) == p + a
        answer_ids = b["labels"][i][b["labels"][i] != -100].tolist()
        assert tokenizer.decode(answer_ids) == a
        n = int(b["attention_mask"][i].sum())
        assert b["attention_mask"][i, :n].all() and not b["attention_mask"][i, n:].any()  # right padding
        assert (b["input_ids"][i, n:] == tokenizer.pad_token_id).all()
    his = (b["input_ids"] == tokenizer.convert_tokens_to_ids("<st_his>")).sum()
    pre = (b["input_ids"] == tokenizer.convert_tokens_to_ids("<st_pre>")).sum()
    assert his == 2 * len(b["st_window"]) and pre == 2 * b["reg_targets"].shape[0] == 8
    assert "geo_coords" not in b


def test_left_padding_and_multiple(tokenizer, dataset):
    col = STDataCollator(tokenizer, st_slots=2, padding_side="left", pad_to_multiple_of=16)
    b = col([dataset[0], dataset[len(dataset) - 1]])
    assert b["input_ids"].shape[1] % 16 == 0
    assert b["attention_mask"][:, -1].all()  # last position is real text in every row
    right = STDataCollator(tokenizer, st_slots=2)([dataset[0], dataset[len(dataset) - 1]])
    for i in range(2):
        real = lambda x, m, i=i: x[i][m[i].bool()].tolist()  # noqa: E731
        assert real(b["input_ids"], b["attention_mask"]) == real(right["input_ids"], right["attention_mask"])
        assert real(b["labels"], b["labels"] != -100) == real(right["labels"], right["labels"] != -100)


def test_window_dedup_80_regions_one_window(tokenizer):
    city = synthetic_city(seed=0, n_regions=80, days=2)
    ds = STInstructionDataset(city)
    b = STDataCollator(tokenizer, st_slots=2)([ds[ds.index_of(7, r)] for r in range(80)])
    assert b["st_values"].shape == (1, 12, 80, 2)
    assert b["st_window"].tolist() == [0] * 80 and b["st_region"].tolist() == list(range(80))
    np.testing.assert_array_equal(b["st_values"][0].numpy(), city.values[7:19])


def test_windows_regions_and_targets_map_back(collator, dataset):
    idx = [dataset.index_of(w, r) for w, r in ((3, 1), (9, 4), (3, 7), (9, 1))]
    samples = [dataset[i] for i in idx]
    b = collator(samples)
    assert b["st_values"].shape[0] == 2 and b["st_window"].tolist() == [0, 1, 0, 1]
    assert b["st_region"].tolist() == [1, 4, 7, 1]
    for p, s in enumerate(samples):
        np.testing.assert_array_equal(b["st_values"][b["st_window"][p]].numpy(), s["history"][0][1])
        np.testing.assert_array_equal(b["reg_targets"][p].numpy(), s["target"])
    assert b["reg_mask"].all() and not b["cls_mask"].any() and (b["cls_targets"] == 0).all()
    assert b["reg_targets"].dtype == torch.float32 and b["reg_mask"].dtype == torch.bool


def test_extra_views_and_geo(tokenizer, city):
    ds = STInstructionDataset(city, extra_views=("week", "day"), with_geo=True)
    col = STDataCollator(tokenizer, st_slots=2, with_adjacency=True, return_meta=True)
    samples = [ds[ds.index_of(w, r)] for w, r in ((0, 0), (0, 5), (1, 0))]
    b = col(samples)
    assert len(b["st_window"]) == 9 and b["reg_targets"].shape == (3, 12, 2)
    assert b["st_values"].shape[0] == 6  # 3 views x 2 target windows
    assert b["st_window"][:3].tolist() == b["st_window"][3:6].tolist()  # same window, other region
    assert b["st_region"].tolist() == [0, 0, 0, 5, 5, 5, 0, 0, 0]
    np.testing.assert_allclose(b["geo_coords"].numpy(), city.coords[[0, 5, 0]])
    assert (b["input_ids"] == tokenizer.convert_tokens_to_ids("<geo>")).sum() == 3
    assert b["st_adj"].shape == (city.n_regions, city.n_regions) and b["meta"] == [s["id"] for s in samples]


def test_event_batch(tokenizer):
    ev = synthetic_city(seed=4, n_regions=5, days=40, task="event")
    ds = STInstructionDataset(ev, input_len=7, output_len=3)
    samples = [ds[i] for i in range(10)]
    b = STDataCollator(tokenizer, st_slots=4)(samples)
    assert b["cls_targets"].shape == (10, 3, 4) and b["cls_mask"].all() and not b["reg_mask"].any()
    np.testing.assert_array_equal(b["cls_targets"].numpy(), np.stack([s["target"] for s in samples]))
    assert (b["reg_targets"] == 0).all() and set(b["cls_targets"].unique().tolist()) == {0.0, 1.0}


def test_errors(tokenizer, collator, dataset):
    s = dict(dataset[0])
    s["conversation"] = Conversation("sys", "no history here", "answer <ST_PRE>")
    with pytest.raises(ValueError, match=r"prompt has 0 <ST_HIS> placeholder\(s\), expected 1"):
        collator([s])
    s["conversation"] = Conversation("sys", "h <ST_HIS>", "answer without prediction")
    with pytest.raises(ValueError, match=r"answer has 0 <ST_PRE>"):
        collator([s])
    s["conversation"] = Conversation("sys", "h <ST_HIS> <st_his>", "a <ST_PRE>")
    with pytest.raises(ValueError, match="already contains slot token"):
        collator([s])
    with pytest.raises(ValueError, match="over max_length=20"):
        STDataCollator(tokenizer, st_slots=2, max_length=20)([dataset[0]])
    with pytest.raises(ValueError, match="st_slots=3"):
        STDataCollator(tokenizer, st_slots=3)([dataset[0]])
    with pytest.raises(ValueError, match="empty batch"):
        collator([])


def test_tokenizer_without_slot_tokens_rejected():
    from stllm.data import train_tokenizer

    tok = train_tokenizer(["plain text"] * 5, vocab_size=300)
    tok_dict = tok.get_vocab()
    assert "<st_his>" in tok_dict  # ours has them; a foreign one does not:

    class Foreign:
        def get_vocab(self):
            return {"a": 0}

    with pytest.raises(ValueError, match="add_st_tokens"):
        STDataCollator(Foreign(), st_slots=2)


def test_segment_cache_matches_whole_text_tokenisation(tokenizer, dataset):
    cached = STDataCollator(tokenizer, st_slots=2)
    whole = STDataCollator(tokenizer, st_slots=2, cache_segments=False)
    for idx in ([0, 5, 40], [7, 300, 301, 900]):
        a, b = cached([dataset[i] for i in idx]), whole([dataset[i] for i in idx])
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert cached.encode.enabled and len(cached.encode.cache) > 10


def test_segment_cache_turns_itself_off_for_prefix_space_tokenizers(tokenizer, dataset):
    class PrefixSpace:  # mimics SentencePiece: every encode call starts with a prefix token
        def __init__(self, tok):
            self.tok = tok

        def __call__(self, texts, add_special_tokens=False):
            ids = self.tok(texts, add_special_tokens=False)["input_ids"]
            return {"input_ids": [[self.tok.unk_token_id, *x] for x in ids]}

        def __getattr__(self, name):
            return getattr(self.tok, name)

    col = STDataCollator(PrefixSpace(tokenizer), st_slots=2)
    with pytest.warns(UserWarning, match="segment caching is off"):
        b = col([dataset[0], dataset[1]])
    assert not col.encode.enabled
    ref = tokenizer(list(col.texts(dataset[0])), add_special_tokens=False)["input_ids"]
    n = int(b["attention_mask"][0].sum())
    assert b["input_ids"][0, :n].tolist() == [tokenizer.unk_token_id, *ref[0], tokenizer.unk_token_id, *ref[1]]
