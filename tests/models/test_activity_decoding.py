"""Constrained decoding of activity days: the automaton byte by byte, token bytes, and sampled answers from an
untrained model (the worst case: logits say nothing) that all parse, keep times in order and stay in vocabulary."""

from __future__ import annotations

import numpy as np
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


def test_reach_masks_places_too_far_for_the_minutes_between_lines():
    from stllm.data.activity import ActivityChain
    from stllm.data.activity_checks import CheckConfig, check_speed, distance_m
    from stllm.models.activity_decoding import ReachRule

    g = activity_grammar(CATS, PLACES, max_lines=3, reach=ReachRule(max_speed_kmh=130.0, min_seconds=60))
    d = distance_m((40.700, -74.000), (40.720, -73.980))  # by hand ~2.8 km: 2.8 km / 130 km/h = 1.3 min
    assert 2700 < d < 2900
    s = _feed(g, "A 10:00 | Bar | 40.700,-74.000\n")
    assert _feed(g, "A 10:01 | Office | 40.720,-73.980", s) is None  # 168 km/h
    assert _feed(g, "A 10:02 | Office | 40.720,-73.980", s) is not None  # 84 km/h
    assert _feed(g, "A 10:00 | Bar / Pub | 40.700,-74.000", s) is not None  # same coordinates: always reachable
    assert _feed(g, "A 10:01 | Office | 40.7", s) is not None and _feed(g, "A 10:01 | Office | 40.72", s) is None
    for text, ok in (("A 10:00 | Bar | 40.700,-74.000\nA 10:02 | Office | 40.720,-73.980", True),
                     ("A 10:00 | Bar | 40.700,-74.000\nA 10:01 | Office | 40.720,-73.980", False)):
        assert check_speed(ActivityChain(steps=parse_steps(text)), CheckConfig()).ok is ok  # the validator agrees


def _untrained(tok):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, vocab_size=len(tok),
                                        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)).eval()


def test_prefer_bonus_lifts_only_tokens_that_choose_a_preferred_place():
    tok = _tokenizer()
    g = activity_grammar(CATS, PLACES, answer_prefix=" ", max_lines=4)
    cafe = g.preferred([("Café", "40.710,-73.990"), ("Nowhere", "0.000,0.000")])
    assert cafe.sum() == 1 and g.choices[int(cafe.argmax())] == ("Café", "40.710,-73.990")
    proc = ActivityLogitsProcessor(g, tok, prompt_len=0, max_new_tokens=200, prefer=[cafe, None], bonus=5.0)

    def boosted(text: str, row: int = 0) -> tuple[set, set]:
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]] * 2)
        out = proc(ids, torch.zeros(2, len(tok)))[row]
        return set(torch.nonzero(out == 5.0).flatten().tolist()), set(torch.nonzero(out == 0.0).flatten().tolist())

    up, flat = boosted(" A 10:00 |")  # the time is decided: choosing the place starts
    assert up and all("Café".startswith(tok.decode([i]).strip()) for i in up)  # ' ', ' C', ' Café', ...
    assert any(tok.decode([i]).strip().startswith("Office") for i in flat)
    assert boosted(" A 10:00 |", row=1)[0] == set()  # no preference for the second row
    up, flat = boosted(" A 10:00 | Café | 40.710,-73.990")  # decided line: EOS and the newline stay level
    assert not up and tok.eos_token_id in flat
    assert not boosted(" A 1")[0]  # times are never pulled


def test_sampling_with_reach_and_a_strong_preference_keeps_speed_and_place():
    from stllm.data.activity import ActivityChain
    from stllm.data.activity_checks import CheckConfig, check_speed
    from stllm.models.activity_decoding import ReachRule

    tok = _tokenizer()
    model = _untrained(tok)
    g = activity_grammar(CATS, PLACES, answer_prefix=" ", max_lines=4, reach=ReachRule(130.0))
    prefer = [g.preferred([("Office", "40.720,-73.980")]), None] * 3
    prompts = tok(["<s>persona: x ASSISTANT:"] * 6, add_special_tokens=False, return_tensors="pt")
    proc = ActivityLogitsProcessor(g, tok, prompts["input_ids"].shape[1], 80, prefer, bonus=50.0)
    out = model.generate(**prompts, do_sample=True, top_k=0, max_new_tokens=80, logits_processor=[proc],
                         pad_token_id=tok.pad_token_id)
    days = [ActivityChain(steps=parse_steps(t.strip()))
            for t in tok.batch_decode(out[:, prompts["input_ids"].shape[1]:], skip_special_tokens=True)]
    assert all(check_speed(d, CheckConfig()).ok for d in days)
    assert all(a.category == "Office" and a.lat == 40.72 for d in days[::2] for a in d.activities[:1])
    assert len({(a.category, a.lat) for d in days[1::2] for a in d.activities}) > 1


def test_time_bonus_lifts_tokens_towards_preferred_hours_while_the_time_is_open():
    tok = _tokenizer()
    g = activity_grammar(CATS, None, answer_prefix=" ", max_lines=4)
    hours = np.zeros(24 * 60, dtype=bool)
    hours[14 * 60:15 * 60] = True  # 14:00-14:59
    proc = ActivityLogitsProcessor(g, tok, prompt_len=0, max_new_tokens=200, prefer_times=[hours], time_bonus=3.0)

    def lifted(text: str) -> set[str]:
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        out = proc(ids, torch.zeros(1, len(tok)))[0]
        return {tok.decode([i]) for i in torch.nonzero(out == 3.0).flatten().tolist()}

    up = lifted(" A")
    assert up == {" "}  # ' ' keeps every time open; ' 09', ' 10', ' 11' (this vocabulary's) close out 14:xx
    assert lifted(" A 1") == {"4"}  # 14:xx, not 10-13 or 15-19
    assert not lifted(" A 14:00 |")  # the time is written: categories are not pulled by it


def _prior_for(g, days):
    from stllm.data.activity_prior import PriorDay, UserPrior

    return UserPrior(len(g.choices)).fit(
        [PriorDay(u, tuple(r for r in g.ranks(keys)), tuple(m)) for u, keys, m in days])


def _allowed_choices(g, tok, proc, text: str, rows: int) -> list[set]:
    """Per row, the choices every allowed token at ``text`` leads towards (empty: the place is left open)."""
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]] * rows)
    out = proc(ids, torch.zeros(rows, len(tok)))
    state = proc.state_of(tuple(ids[0].tolist()))
    tokens, lo, hi, _, _ = proc.allowed(state, True)
    finite = torch.isfinite(out).numpy()
    return [set.intersection(*({*range(a, b + 1)} for t, a, b in zip(tokens, lo, hi) if finite[r, t]))
            for r in range(rows)]


def test_user_prior_draws_the_line_place_from_the_users_history_at_its_share():
    tok = _tokenizer()
    g = activity_grammar(CATS, None, answer_prefix=" ", max_lines=4)
    office, cafe = g.ranks(["Office", "Café"])
    prior = _prior_for(g, [("u", ["Office"], [600])] * 3 + [("u", ["Café"], [600])])
    p = prior.choice("u", -1, 10)
    rows = 400
    for weight in (1.0, 0.5):
        proc = ActivityLogitsProcessor(g, tok, 0, 200, prior=prior, users=["u"] * rows, prior_weight=weight, seed=1)
        allowed = _allowed_choices(g, tok, proc, " A 10:00 | ", rows)
        forced = [next(iter(a)) for a in allowed if len(a) == 1]
        assert len(forced) / rows == pytest.approx(weight, abs=0.07)  # the share of lines drawn from the prior
        assert np.mean([c == office for c in forced]) == pytest.approx(p[office] / p.sum(), abs=0.07)
        assert any(c == cafe for c in forced)  # drawn, not the prior's mode
        assert all(not a for a in allowed if len(a) != 1)  # the rest: every category open
    again = ActivityLogitsProcessor(g, tok, 0, 200, prior=prior, users=["u"] * rows, prior_weight=0.5, seed=1)
    assert _allowed_choices(g, tok, again, " A 10:00 | ", rows) == allowed  # seeded: repeatable
    with pytest.raises(ValueError, match="prior"):
        ActivityLogitsProcessor(g, tok, 0, 200, prior_weight=0.5)


def test_user_prior_never_forces_a_place_out_of_reach_and_hours_follow_the_previous_line():
    from stllm.models.activity_decoding import ReachRule

    tok = _tokenizer()
    g = activity_grammar(CATS, PLACES, answer_prefix=" ", max_lines=4, reach=ReachRule(130.0))
    far = ("Office", "40.720,-73.980")  # ~2.8 km from the bar: out of reach one minute later
    prior = _prior_for(g, [("u", [("Bar", "40.700,-74.000"), far], [600, 900])] * 5)
    proc = ActivityLogitsProcessor(g, tok, 0, 200, prior=prior, users=["u"] * 50, prior_weight=1.0,
                                   hour_weight=1.0, seed=0)
    allowed = _allowed_choices(g, tok, proc, " A 10:00 | Bar | 40.700,-74.000\nA 10:01 | ", 50)
    assert all(allowed) and not any(g.ranks([far])[0] in a for a in allowed)  # forced, never to the far office
    ids = torch.tensor([tok(" A 10:00 | Bar | 40.700,-74.000\nA", add_special_tokens=False)["input_ids"]] * 50)
    out = proc(ids, torch.zeros(50, len(tok)))
    _, _, _, tlo, thi = proc.allowed(proc.state_of(tuple(ids[0].tolist())), True)
    assert (tlo >= 0).all()  # after 'A' every token writes the time
    tokens = proc.allowed(proc.state_of(tuple(ids[0].tolist())), True)[0]
    for row in range(50):  # every allowed token can still reach a time in 15:xx, the move seen after 10:xx
        ok = torch.isfinite(out[row, torch.from_numpy(tokens)]).numpy()
        assert ok.any() and ((tlo[ok] <= 15 * 60 + 59) & (thi[ok] >= 15 * 60)).all()
        assert not ok.all()  # and some were closed (' 10', ' 09', ...)
    line = tok("A", add_special_tokens=False)["input_ids"]
    canon = tok("A 15:00 |", add_special_tokens=False)["input_ids"]  # 15:00: the only minute seen in 15:xx
    assert canon[:len(line)] == line
    exact = [torch.nonzero(torch.isfinite(r)).flatten().tolist() == [canon[len(line)]] for r in out]
    assert np.mean(exact) > 0.7  # most rows: the minute drawn is 15:00, spelt as the tokenizer spells it


def test_a_forced_place_is_spelt_in_the_tokenizers_own_tokens():
    tok = _tokenizer()
    g = activity_grammar(CATS, None, answer_prefix=" ", max_lines=4)
    prior = _prior_for(g, [("u", ["Café"], [600])] * 20)
    proc = ActivityLogitsProcessor(g, tok, 0, 200, prior=prior, users=["u"] * 8, prior_weight=1.0, seed=0)
    line = " A 10:00 |"
    ids = tok(line, add_special_tokens=False)["input_ids"]
    canon = tok(line + " Café", add_special_tokens=False)["input_ids"]
    assert canon[:len(ids)] == ids and len(canon) > len(ids)
    out = proc(torch.tensor([ids] * 8), torch.zeros(8, len(tok)))
    allowed = {tuple(torch.nonzero(torch.isfinite(r)).flatten().tolist()) for r in out}
    # ' ' (then 'Café'), ' C', ... also lead to Café, but only the tokenizer's own next token is allowed
    assert allowed == {(canon[len(ids)],)}


def test_a_drawn_day_length_is_kept_exactly():
    from stllm.data.activity_prior import PriorDay, UserPrior

    tok = _tokenizer()
    model = _untrained(tok)
    g = activity_grammar(CATS, None, answer_prefix=" ", max_lines=4)
    days = [PriorDay("u", (0,), (600,), weekend=False, n_activities=n) for n in (1, 3, 3)]
    prior = UserPrior(len(g.choices)).fit(days + [PriorDay("w", (0,), (600,), weekend=True, n_activities=2)] * 3)
    rows = 24
    prompts = tok(["<s>persona: x ASSISTANT:"] * rows, add_special_tokens=False, return_tensors="pt")
    proc = ActivityLogitsProcessor(g, tok, prompts["input_ids"].shape[1], 90, prior=prior, users=["u", "w"] * 12,
                                   weekends=[False, True] * 12, length_weight=1.0, seed=3)
    torch.manual_seed(0)
    out = model.generate(**prompts, do_sample=True, top_k=0, max_new_tokens=90, logits_processor=[proc],
                         pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(out[:, prompts["input_ids"].shape[1]:], skip_special_tokens=True)
    lengths = [len(parse_steps(t.strip())) for t in texts]
    assert lengths == proc.lines  # each day has exactly its drawn number of activities
    assert set(lengths[0::2]) == {1, 3} and set(lengths[1::2]) == {2}  # u: 1 or 3 (weekday); w: 2
    assert ActivityLogitsProcessor(g, tok, 0, 90, prior=prior, users=["u"] * 4, length_weight=1.0, seed=3).lines \
        == ActivityLogitsProcessor(g, tok, 0, 90, prior=prior, users=["u"] * 4, length_weight=1.0, seed=3).lines
    half = ActivityLogitsProcessor(g, tok, 0, 90, prior=prior, users=["u"] * 200, length_weight=0.5, seed=0)
    assert 0.4 < np.mean([n is None for n in half.lines]) < 0.6  # the share left to the LM
    with pytest.raises(ValueError, match="length_weight"):
        ActivityLogitsProcessor(g, tok, 0, 90, length_weight=0.5)


def test_category_bias_lifts_the_token_that_decides_each_category_once():
    tok = _tokenizer()
    g = activity_grammar(CATS, PLACES, answer_prefix=" ", max_lines=4)
    proc = ActivityLogitsProcessor(g, tok, prompt_len=0, max_new_tokens=200,
                                   category_bias={"Café": 1.5, "Office": -1.0})

    def shifted(text: str) -> dict[str, float]:
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        out = proc(ids, torch.zeros(1, len(tok)))[0]
        return {tok.decode([i]): float(out[i]) for i in torch.nonzero(out > float("-inf")).flatten().tolist()}

    opening = shifted(" A 10:00 |")
    assert {v for k, v in opening.items() if k.strip().startswith("Caf")} == {1.5}
    assert {v for k, v in opening.items() if k.strip().startswith("Off")} == {-1.0}
    assert {v for k, v in opening.items() if k.strip() in ("", "B", "Bar")} == {0.0}  # spans several categories
    # Office has two places: once it is decided, the coordinates' tokens are level (b counted once per line)
    assert set(shifted(" A 10:00 | Office | 40.7").values()) == {0.0}


def test_user_category_bias_lifts_only_its_users_rows():
    tok = _tokenizer()
    g = activity_grammar(CATS, PLACES, answer_prefix=" ", max_lines=4)
    proc = ActivityLogitsProcessor(g, tok, prompt_len=0, max_new_tokens=200, users=["u", "v"],
                                   category_bias={"Office": -1.0}, user_category_bias={"u": {"Café": 1.5}})
    ids = torch.tensor([tok(" A 10:00 |", add_special_tokens=False)["input_ids"]] * 2)
    out = proc(ids, torch.zeros(2, len(tok)))
    for row, cafe in ((0, 1.5), (1, 0.0)):  # v has no bias of their own: the population's alone
        allowed = {tok.decode([i]): float(out[row, i]) for i in torch.nonzero(out[row] > float("-inf")).flatten()}
        assert {v for k, v in allowed.items() if k.strip().startswith("Caf")} == {cafe}
        assert {v for k, v in allowed.items() if k.strip().startswith("Off")} == {-1.0}
    with pytest.raises(ValueError, match="needs each row's user"):
        ActivityLogitsProcessor(g, tok, 0, 200, user_category_bias={"u": {"Café": 1.5}})


def test_category_mass_is_the_decoders_expected_category_of_each_line():
    tok = _tokenizer()
    g = activity_grammar(CATS, answer_prefix=" ", max_lines=4)
    mass: dict = {}
    proc = ActivityLogitsProcessor(g, tok, prompt_len=0, max_new_tokens=200, users=["u", "u"], category_mass=mass,
                                   temperature=0.5)
    ids = tok(" A 10:00 |", add_special_tokens=False)["input_ids"]
    scores = torch.full((2, len(tok)), -1e4)
    for text, logit in ((" Café", 0.0), (" Office", np.log(2)), (" ", 0.0), (" Bar", np.log(2))):
        (i,) = tok(text, add_special_tokens=False)["input_ids"]
        scores[:, i] = logit
    proc(torch.tensor([ids] * 2), scores)
    # at T 0.5 the weights are 1 (Café), 4 (Office), 1 (' ': every category), 4 (' Bar': Bar or Bar / Pub) of 10;
    # ' Bar' spreads evenly (no deciding token in its range), ' ' as the deciding tokens (Café 1 : Office 4)
    expected = np.array([0.2, 0.2, 0.1 + 0.1 / 5, 0.4 + 0.1 * 4 / 5])  # Bar, Bar / Pub, Café, Office
    np.testing.assert_allclose(mass["u"], 2 * expected)  # two rows of the same user: two lines
    proc(torch.tensor([ids + tok(" Ca", add_special_tokens=False)["input_ids"]] * 2), scores)
    np.testing.assert_allclose(mass["u"], 2 * expected)  # a line counts once
    with pytest.raises(ValueError, match="category_mass needs each row's user"):
        ActivityLogitsProcessor(g, tok, 0, 200, category_mass={})
    # with places the ranks sort 'Bar / Pub | ..' before 'Bar | ..' while the category indices sort Bar first: a
    # token spanning both still spreads over exactly those two; each line's mass sums to one
    gp = activity_grammar(CATS, PLACES, answer_prefix=" ", max_lines=4)
    places: dict = {}
    proc = ActivityLogitsProcessor(gp, tok, 0, 200, users=["u"], category_mass=places)
    only_bar = torch.full((1, len(tok)), -1e4)
    only_bar[0, tok(" Bar", add_special_tokens=False)["input_ids"]] = 0.0
    proc(torch.tensor([ids]), only_bar)
    np.testing.assert_allclose(places["u"], [0.5, 0.5, 0.0, 0.0])


def test_time_gaps_reweight_the_floors_hour_and_spread_its_minutes_as_the_trained_gaps():
    tok = _tokenizer()
    g = activity_grammar(CATS, None, answer_prefix=" ", max_lines=4)
    # moves seen: 10:08 -> 10:10 (same hour, gap 2) and 10:58 -> 12:00: same-hour share 1/2, so after minute 58
    # the stay ratio is (0 + 10 * 1/2) / (1 + 10) / (1/2) = 10/11; gaps {2: 1}: p(2) = 61/120, others 1/120
    prior = _prior_for(g, [("u", ["Bar", "Café"], [608, 610]), ("u", ["Bar", "Office"], [658, 720])])
    proc = ActivityLogitsProcessor(g, tok, 0, 200, prior=prior, users=["u"], time_gaps=1.0)

    def boosts(text: str) -> dict[str, float]:
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        out = proc(ids, torch.zeros(1, len(tok)))[0]
        return {tok.decode([i]): float(out[i]) for i in torch.nonzero(torch.isfinite(out)).flatten().tolist()}

    hour = boosts(" A 10:58 | Bar\nA")
    assert hour[" 10"] == pytest.approx(np.log(10 / 11)) and hour[" 11"] == 0.0  # ' 11' leaves 10:xx
    assert boosts(" A")[" 10"] == 0.0  # a day's first line has no floor
    minute = boosts(" A 10:10 | Bar\nA 10:")  # '1' leads to 10:10-10:19 (gaps 0-9), '2' to 10:20-10:29 (10-19)
    assert minute["1"] == pytest.approx(np.log(70 / 120)) and minute["2"] == pytest.approx(np.log(10 / 120))
    assert "0" not in minute  # 10:0x is before the floor
    plain = ActivityLogitsProcessor(g, tok, 0, 200, prior=prior, users=["u"])
    ids = torch.tensor([tok(" A 10:58 | Bar\nA", add_special_tokens=False)["input_ids"]])
    out = plain(ids, torch.zeros(1, len(tok)))[0]
    assert (out[torch.isfinite(out)] == 0).all()  # off by default
    with pytest.raises(ValueError, match="time_gaps"):
        ActivityLogitsProcessor(g, tok, 0, 200, time_gaps=0.5)


def test_repeats_draw_whether_the_lm_repeats_the_previous_place_from_the_history():
    tok = _tokenizer()
    g = activity_grammar(CATS, None, answer_prefix=" ", max_lines=4)
    office, cafe = g.ranks(["Office", "Café"])
    prior = _prior_for(g, [("u", ["Café", "Office"], [600, 660])] * 5 + [("w", ["Office", "Office"], [600, 660])] * 5)
    # repeats: population {no: 5, yes: 5} -> 1/2; u {no: 5}: (0 + 1/2) / 6 = 1/12; u after Café: (0 + 1/12) / 6 = 1/72;
    # w {yes: 5}: (5 + 1/2) / 6; w after Office: (5 + 11/12) / 6 = 71/72
    assert prior.repeat("u", cafe) == pytest.approx(1 / 72) and prior.repeat("w", office) == pytest.approx(71 / 72)
    rows = 200
    for user, prev, share in (("u", "Café", 1 / 72), ("w", "Office", 71 / 72)):
        proc = ActivityLogitsProcessor(g, tok, 0, 200, prior=prior, users=[user] * rows, repeats=1.0, seed=0)
        text = f" A 10:00 | {prev}\nA 11:00 |"
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]] * rows)
        out = proc(ids, torch.zeros(rows, len(tok)))
        tokens, lo, hi, _, _ = proc.allowed(proc.state_of(tuple(ids[0].tolist())), True)
        rank = g.ranks([prev])[0]
        only_prev = torch.from_numpy(tokens[(lo == rank) & (hi == rank)])
        other = torch.from_numpy(tokens[(lo >= 0) & ((lo != rank) | (hi != rank))])
        assert len(only_prev) and len(other)
        may_repeat = torch.isfinite(out[:, only_prev]).any(dim=1)
        may_move = torch.isfinite(out[:, other]).any(dim=1)
        repeated = (may_repeat & ~may_move).float().mean().item()  # forced to the previous place
        barred = (~may_repeat & may_move).float().mean().item()
        assert repeated + barred == pytest.approx(1.0)  # every line decided, none left to the LM
        assert repeated == pytest.approx(share, abs=0.04)
    plain = ActivityLogitsProcessor(g, tok, 0, 200, prior=prior, users=["u"], prior_weight=0.0)
    ids = torch.tensor([tok(" A 10:00 | Café\nA 11:00 |", add_special_tokens=False)["input_ids"]])
    assert torch.isfinite(plain(ids, torch.zeros(1, len(tok)))).sum() > 1  # off: the LM decides


def test_first_weight_draws_only_the_first_lines_start_from_the_users_history():
    tok = _tokenizer()
    g = activity_grammar(CATS, None, answer_prefix=" ", max_lines=4)
    prior = _prior_for(g, [("u", ["Bar", "Café"], [15 * 60, 17 * 60 + 30])] * 20)  # days start at 15:00 only
    rows = 50
    proc = ActivityLogitsProcessor(g, tok, 0, 200, prior=prior, users=["u"] * rows, first_weight=1.0, seed=0)

    def finite(text: str) -> list[list[int]]:
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]] * rows)
        return [torch.nonzero(torch.isfinite(r)).flatten().tolist() for r in proc(ids, torch.zeros(rows, len(tok)))]

    line = tok(" A ", add_special_tokens=False)["input_ids"]
    canon = tok(" A 15:00 |", add_special_tokens=False)["input_ids"]
    assert canon[:len(line)] == line and tok.decode([canon[len(line)]]).startswith("1")
    # p(first hour | u) = (20 + 1 * (20 + 1/24) / 21) / 21 at 15 h: 0.998; within 15:xx, minute 0 (20 + 1/60) / 21:
    # nearly every row may only write 15:00 (here '1', not '0' or '2')
    assert np.mean([f == [canon[len(line)]] for f in finite(" A ")]) > 0.8
    assert all(len(f) > 1 for f in finite(" A 15:00 | Bar\nA "))  # a later line's time is the LM's ('1' or '2')
    with pytest.raises(ValueError, match="first_weight"):
        ActivityLogitsProcessor(g, tok, 0, 200, first_weight=0.5)
