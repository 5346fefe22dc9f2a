"""Constrained decoding of activity days: the automaton byte by byte, token bytes, and sampled answers from an
untrained model (the worst case: logits say nothing) that all parse, keep times in order and stay in vocabulary."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from stllm.data.activity import parse_steps
from stllm.data.tokenizer import train_tokenizer
from stllm.models.activity_decoding import ActivityLogitsProcessor, activity_grammar, token_bytes

CATS = ["Bar", "Bar / Pub", "Café", "Office"]
PLACES = [("Bar", "40.700,-74.000"), ("Bar / Pub", "40.700,-74.000"), ("Café", "40.710,-73.990"),
          ("Office", "40.710,-73.990"), ("Office", "40.720,-73.980")]


def _feed(grammar, text: str, state=None):
    state = grammar.start() if state is None else state
    for b in text.encode("utf-8"):
        state = grammar.advance(state, b)
        if state is None:
            return None
    return state


def test_grammar_accepts_lines_and_refuses_what_does_not_parse():
    g = activity_grammar(CATS, PLACES, answer_prefix=" ", max_lines=3)
    s = _feed(g, " A 10:00 | Bar / Pub | 40.700,-74.000")
    assert s is not None and g.eos_allowed(s)
    assert not g.eos_allowed(_feed(g, " A 10:00 | Bar / Pub | 40.700,-74.00"))  # coordinates cut short
    assert _feed(g, " A 10:00 | Pub") is None  # not a category
    assert _feed(g, " A 10:60") is None  # not a time
    assert _feed(g, " A 10:00 | Bar | 41.000,-74.000") is None  # not a training place
    assert _feed(g, " A 10:00 | Bar | 40.710,-73.990") is None  # a place, but no bar was there
    assert g.eos_allowed(_feed(g, " A 10:00 | Office | 40.720,-73.980"))
    assert _feed(g, "A 10:00") is None  # the answer prefix is required


def test_times_never_decrease_and_lines_are_capped():
    g = activity_grammar(CATS, None, max_lines=2)
    s = _feed(g, "A 10:00 | Bar\n")
    assert _feed(g, "A 09:59", s) is None and _feed(g, "A 10:00 | Café", s) is not None
    assert _feed(g, "A 1", s) is not None and _feed(g, "A 0", s) is None  # 0x:xx is before 10:00 throughout
    two = _feed(g, "A 10:00 | Bar\nA 11:00 | Office")
    assert g.eos_allowed(two) and g.advance(two, ord("\n")) is None  # a third line is not allowed


def _tokenizer():
    lines = ["A 10:00 | Bar / Pub | 40.700,-74.000\nA 11:30 | Café | 40.710,-73.990", "A 09:00 | Office"] * 30
    return train_tokenizer(lines, vocab_size=300)


def test_token_bytes_match_what_the_tokenizer_decodes():
    tok = _tokenizer()
    tb = token_bytes(tok)
    assert tok.eos_token_id not in tb and len(tb) > 256  # every byte, plus merges; no special token
    for i, data in tb.items():
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue  # a partial UTF-8 byte: the decoder shows U+FFFD, the automaton uses the byte
        assert tok.decode([i]) == text


@pytest.mark.parametrize("places", [None, PLACES])
def test_sampled_answers_of_an_untrained_model_always_parse(places):
    tok = _tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=len(tok),
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)).eval()
    grammar = activity_grammar(CATS, places, answer_prefix=" ", max_lines=4)
    prompts = tok(["<s>persona: x ASSISTANT:", "<s>date: 2024-01-01 Mon ASSISTANT:"] * 4, add_special_tokens=False,
                  padding=True, padding_side="left", return_tensors="pt")
    max_new = 60  # short: the budget rule must still close every line
    proc = ActivityLogitsProcessor(grammar, tok, prompts["input_ids"].shape[1], max_new)
    out = model.generate(**prompts, do_sample=True, top_k=0, max_new_tokens=max_new, logits_processor=[proc],
                         pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(out[:, prompts["input_ids"].shape[1]:], skip_special_tokens=True)
    for t in texts:
        steps = parse_steps(t.strip())
        assert 1 <= len(steps) <= 4
        starts = [a.start for a in steps]
        assert starts == sorted(starts)
        assert all(a.category in CATS for a in steps)
        if places:
            assert all((a.category, f"{a.lat:.3f},{a.lon:.3f}") in PLACES for a in steps)
        else:
            assert all(a.lat is None for a in steps)
