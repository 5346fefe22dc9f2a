"""The mobility answer grammar: whatever the logits, a generated answer parses, writes exactly the asked days and
only the row's named places, within the grammar's byte budget."""

import numpy as np
import pytest
import torch

from stllm.data.mobility_answers import LABELS, day_headers, parse_answer, runs_to_rows
from stllm.data.tokenizer import train_tokenizer
from stllm.models.mobility_decoding import DONE, AnswerGrammar, MobilityAnswerProcessor


@pytest.fixture(scope="module")
def tokenizer():
    rng = np.random.default_rng(0)
    lines = [f"{d} weekday: A " + " ".join(f"{LABELS[rng.integers(8)]}@{t}" for t in sorted(rng.choice(47, 3) + 1))
             for d in range(40, 80)]
    return train_tokenizer(["USER: where? ASSISTANT: " + "\n".join(lines)] * 4, vocab_size=400)


def walk(grammar, state, text: str):
    for b in text.encode():
        state = grammar.advance(state, b)
        if state is None:
            return None
    return state


def test_grammar_accepts_and_refuses():
    g = AnswerGrammar(max_runs=3)
    s = g.start(["60 weekday: ", "61 weekday: "], n_places=3, prefix=" ")
    ok = walk(g, s, " 60 weekday: A B@16 A@36\n61 weekday: C")
    assert ok is not None and g.eos_allowed(ok)
    assert not g.eos_allowed(walk(g, s, " 60 weekday: A B@16"))  # day 61 not written yet
    for bad in (" 60 weekday: D",  # only 3 named places
                " 60 weekday: A A@3",  # the same place twice in a row
                " 60 weekday: A B@16 C@16",  # half-hours strictly increase
                " 60 weekday: A B@0",  # no change at midnight (the first place is midnight's)
                " 60 weekday: A B@05",  # no leading zero
                " 60 weekday: A B@48",  # 0..47
                " 60 weekday: A B@1 C@2 A",  # at most 3 places a day
                " 61 weekday: A"):  # the asked day's header
        assert walk(g, s, bad) is None, bad


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_logits_always_give_a_valid_answer(tokenizer, seed):
    """Sampling from random logits (sharp, so runs and EOS are tried early and late) under the processor: every row's
    answer parses against its own asked days and named places, and each asked slot gets one named place."""
    torch.manual_seed(seed)
    g = AnswerGrammar(max_runs=4)
    asks = [([60, 61, 62], 8), ([60, 62], 1), ([70], 26), ([61, 62, 63, 64, 65], 3)]
    headers = [day_headers(np.array(d)) for d, _ in asks]
    starts = [g.start(h, n, prefix=" ") for h, (_, n) in zip(headers, asks)]
    ids = torch.full((len(asks), 3), int(tokenizer.pad_token_id))
    proc = MobilityAnswerProcessor(g, tokenizer, ids.shape[1], starts)
    budget = max(g.max_bytes(s) for s in starts)
    for _ in range(budget):
        scores = proc(ids, torch.randn(len(asks), len(tokenizer)) * 4)
        ids = torch.cat([ids, torch.distributions.Categorical(logits=scores).sample()[:, None]], 1)
    proc(ids, torch.zeros(len(asks), len(tokenizer)))
    assert all(s == DONE for s in proc.states)  # every row finished within the byte budget
    for row, (days, n) in enumerate(asks):
        text = tokenizer.decode(ids[row, 3:], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        runs = parse_answer(text, headers[row], n, source=f"row {row}")
        assert len(runs) == len(days) and all(p < n for r in runs for p, _ in r)
        d = np.repeat(days, 48)
        got = runs_to_rows(runs, np.array(days), d, np.tile(np.arange(48), len(days)))
        assert got.shape == d.shape and (got >= 0).all() and (got < n).all()


def test_processor_refuses_a_token_outside_the_grammar(tokenizer):
    g = AnswerGrammar()
    proc = MobilityAnswerProcessor(g, tokenizer, 1, [g.start(["60 weekday: "], 2)])
    z = tokenizer.convert_tokens_to_ids("Z")
    with pytest.raises(ValueError, match="does not allow"):
        proc(torch.tensor([[0, z]]), torch.zeros(1, len(tokenizer)))
