import numpy as np
import pytest

from stllm.data import ChatFormatter, PromptContext, Region, STInstructionDataset, build_conversation
from stllm.data.prompts import VICUNA_SYSTEM, describe_range
from stllm.tokens import GEO_PLACEHOLDER, ST_HIS_PLACEHOLDER, ST_PRE_PLACEHOLDER


def _ctx(**kw):
    minutes = int((np.datetime64("2020-01-01T00:00") - np.datetime64(0, "m")).astype(np.int64))
    base = dict(task="flow", region=Region("7", "Midtown", 40.75, -73.98, "Manhattan",
                                            (("Residential", 3), ("Commercial", 9), ("Education Facility", 3))),
                channels=("inflow", "outflow"), history_start=minutes, target_start=minutes + 360,
                input_len=12, output_len=12, freq_minutes=30, quantity="taxi", place="New York City")
    base.update(kw)
    return PromptContext(**base)


def test_time_range_in_words():
    minutes = int((np.datetime64("2020-01-01T00:00") - np.datetime64(0, "m")).astype(np.int64))
    assert describe_range(minutes, 12, 30).startswith(
        "January 1, 2020, 00:00, Wednesday to January 1, 2020, 05:30, Wednesday, with data points recorded at "
        "30-minute intervals")
    assert describe_range(minutes, 3, 1440).startswith("January 1, 2020, Wednesday to January 3, 2020, Friday")


def test_flow_prompt_content_and_placeholders():
    c = build_conversation(_ctx())
    assert c.system == VICUNA_SYSTEM
    assert c.user.count(ST_HIS_PLACEHOLDER) == 1 and ST_PRE_PLACEHOLDER not in c.user
    assert c.answer.count(ST_PRE_PLACEHOLDER) == 1 and ST_HIS_PLACEHOLDER not in c.answer
    assert "Midtown" in c.user and "Manhattan borough" in c.user and "taxi" in c.user
    # sorted by count, ties by name
    assert "Commercial (9), Education Facility (3), Residential (3)" in c.user
    assert GEO_PLACEHOLDER not in c.user
    g = build_conversation(_ctx(with_geo=True, extra_views=("week", "day")))
    assert g.user.count(GEO_PLACEHOLDER) == 1 and g.user.count(ST_HIS_PLACEHOLDER) == 3
    assert g.user.index("one week earlier") < g.user.index("one day earlier") < g.user.rindex(ST_HIS_PLACEHOLDER)


def test_event_prompt_names_categories():
    c = build_conversation(_ctx(task="event", channels=("BURGLARY", "ROBBERY"), quantity="crime", freq_minutes=1440))
    assert "burglary and robbery" in c.user and "classification" in c.user
    assert c.answer.count(ST_PRE_PLACEHOLDER) == 1
    with pytest.raises(ValueError, match="no prompt template"):
        build_conversation(_ctx(task="poi"))


def test_same_inputs_same_text_in_train_and_eval(city, scaler):
    train = STInstructionDataset(city, scaler, regions=city.region_ids[:6])
    evals = STInstructionDataset(city, None, regions=city.region_ids[4:])
    # region "4" (position 4 in train, 0 in eval), same window
    a, b = train[train.index_of(10, 4)], evals[evals.index_of(10, 0)]
    assert a["conversation"] == b["conversation"]
    assert build_conversation(_ctx()) == build_conversation(_ctx())
    regions = [Region("1", "A", pois=tuple((c, 2) for c in cats)) for cats in (("x", "y", "z"), ("z", "y", "x"))]
    texts = {build_conversation(_ctx(region=r)).user for r in regions}
    assert len(texts) == 1  # POI input order does not change wording


def test_chat_formatter_plain_and_template(tokenizer):
    conv = build_conversation(_ctx())
    prompt, answer = ChatFormatter()(conv)
    assert prompt == f"{VICUNA_SYSTEM} USER: {conv.user} ASSISTANT:" and answer == f" {conv.answer}"
    fmt = ChatFormatter(tokenizer)
    assert fmt.frame is not None
    p, a = fmt(conv)
    msgs = [{"role": "system", "content": conv.system}, {"role": "user", "content": conv.user}]
    assert p == tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": conv.answer}], tokenize=False)
    assert p + a == full and a.endswith(tokenizer.eos_token)


def test_compact_style_states_every_fact_of_the_urbangpt_wording_in_under_half_the_text():
    full = build_conversation(_ctx(with_geo=True, extra_views=("week",), context_days=0, context_weeks=0))
    c = build_conversation(_ctx(with_geo=True, extra_views=("week",), context_days=0, context_weeks=0, style="compact"))
    assert c.answer == ST_PRE_PLACEHOLDER
    assert c.user.count(ST_HIS_PLACEHOLDER) == 2 and c.user.count(GEO_PLACEHOLDER) == 1
    assert c.user.index("One week earlier") < c.user.rindex(ST_HIS_PLACEHOLDER)  # the view's slot comes first
    for fact in ("Midtown", "New York City", "Manhattan", "Commercial 9, Education Facility 3, Residential 3",
                 "Taxi flow history: 12 30-minute steps from Wed 2020-01-01 00:00", "(inflow, outflow)",
                 "Predict inflow, outflow for 12 steps from Wed 2020-01-01 06:00"):
        assert fact in c.user, fact
    assert len(c.system + c.user + c.answer) < 0.5 * len(full.system + full.user + full.answer)
    ctx = build_conversation(_ctx(style="compact", context_days=7, context_weeks=8))
    assert "with the target steps of the previous 7 days and 8 weeks" in ctx.user
    daily = build_conversation(_ctx(task="event", channels=("BURGLARY", "ROBBERY"), quantity="crime",
                                    freq_minutes=1440, style="compact"))
    assert "Predict whether each of burglary, robbery occurs in each of 12 steps from Wed 2020-01-01." in daily.user
    with pytest.raises(ValueError, match="prompt style 'terse'"):
        build_conversation(_ctx(style="terse"))
