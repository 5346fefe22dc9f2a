"""Activity instruction samples: the answer the model learns, its vocabulary, labels on the answer only."""

from __future__ import annotations

import datetime as dt

import numpy as np

from stllm.data.activity import Activity, ActivityChain, Persona
from stllm.data.activity_prompts import ActivityGenCollator, ActivityGenDataset, answer_vocabulary, gen_conversation
from stllm.data.tokenizer import train_tokenizer

DAY = ActivityChain(persona=Persona(categories=("Office",), hours=(8, 20)), date=dt.date(2024, 1, 1), weekday="Mon",
                    steps=(Activity("Home", start=7 * 3600, lat=40.71234, lon=-74.00049, place_id="p1"),
                           Activity("Office", start=9 * 3600 + 60, lat=40.7, lon=-73.99)), user="u1")


def test_conversation_shows_persona_and_date_and_answers_the_day():
    conv = gen_conversation(DAY, with_coords=True)
    assert conv.user.endswith("persona: categories=Office; hours=08-20\ndate: - Mon")
    assert "u1" not in conv.user and "2024" not in conv.user  # neither the user id nor the calendar date
    assert conv.answer == "A 07:00 | Home | 40.712,-74.000\nA 09:01 | Office | 40.700,-73.990"
    assert gen_conversation(DAY, with_coords=False).answer == "A 07:00 | Home\nA 09:01 | Office"


def test_answer_vocabulary_comes_from_the_given_days():
    cats, places = answer_vocabulary([DAY], with_coords=True)
    assert cats == ["Home", "Office"] and places == [("Home", "40.712,-74.000"), ("Office", "40.700,-73.990")]
    assert answer_vocabulary([DAY], with_coords=False) == (["Home", "Office"], None)


def test_collator_labels_only_the_answer():
    ds = ActivityGenDataset([DAY, DAY], with_coords=True)
    tok = train_tokenizer(["\n".join(ds[0]["conversation"].__dict__.values())] * 20, vocab_size=300)
    batch = ActivityGenCollator(tok)([ds[0], ds[1]])
    ids, labels = batch["input_ids"].numpy(), batch["labels"].numpy()
    answer = tok.decode(ids[0][labels[0] != -100])
    assert answer == " " + gen_conversation(DAY, True).answer + tok.eos_token
    assert np.array_equal(labels[0] != -100, labels[1] != -100)


def test_own_choices_and_start_hours_per_user():
    from dataclasses import replace

    from stllm.data.activity_prompts import own_choices, own_start_minutes

    other = replace(DAY, user="u2", steps=(Activity("Bar", start=22 * 3600 + 59 * 60, lat=40.8, lon=-73.9),))
    places = own_choices([DAY, other], with_coords=True)
    assert places == {"u1": {("Home", "40.712,-74.000"), ("Office", "40.700,-73.990")},
                      "u2": {("Bar", "40.800,-73.900")}}
    assert own_choices([DAY], with_coords=False) == {"u1": {"Home", "Office"}}
    minutes = own_start_minutes([DAY, other])
    assert np.flatnonzero(minutes["u1"]).tolist() == [*range(420, 480), *range(540, 600)]  # 07:xx and 09:xx
    assert np.flatnonzero(minutes["u2"]).tolist() == list(range(1320, 1380))  # 22:xx
