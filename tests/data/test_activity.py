"""Activity chains: compact text round trips, exports a trainer can read back, readers of the real files."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace

import numpy as np
import pytest

from stllm.data.activity import (
    Activity,
    ActivityChain,
    ActivityFormatError,
    Endpoint,
    Persona,
    Trip,
    chains_from_checkins,
    dataset_info,
    example_chain,
    export_examples,
    load_llmob_chains,
    load_lujiazui_examples,
    load_saopaulo_diaries,
    parse_chain,
    parse_steps,
    personas_from_checkins,
    read_alpaca,
    render_chain,
    synthetic_chains,
    to_example,
)
from stllm.data.checkins import build_checkins
from stllm.data.loaders import data_root

SHARED = data_root()
needs_shared = pytest.mark.skipif(not (SHARED / "saopaulo_od2017").is_dir(), reason="shared data not present")


def _chain() -> ActivityChain:
    p = Persona(group="worker", age="30-39", sex="f", categories=("Office", "Coffee Shop"), home=(40.75, -73.99),
                work=(40.76, -73.98), hours=(8, 22), extra=(("income", "12000/month"),))
    steps = (Activity("Home", start=0, end=8 * 3600, lat=40.75, lon=-73.99, place_id="h1", name="home"),
             Trip("walk", depart=8 * 3600, arrive=8 * 3600 + 900, origin=(40.75, -73.99), dest=(40.76, -73.98),
                  purpose="work"),
             Activity("Office", start=8 * 3600 + 900, end=17 * 3600 + 30, lat=40.76, lon=-73.98),
             Activity("Bar", start=20 * 3600))
    return ActivityChain(persona=p, date=dt.date(2024, 9, 16), weekday="Mon", steps=steps,
                         context_date=dt.date(2024, 9, 16), origin=Endpoint((40.7, -74.0), "home"),
                         destination=Endpoint(None, "home"), user="u7", source="<text>")


def test_render_parse_round_trip_and_the_written_text():
    c = _chain()
    text = render_chain(c)
    assert "A 08:15-17:00:30 | Office | 40.76,-73.98" in text  # seconds only when not zero
    assert "T walk | 08:00-08:15 | 40.75,-73.99 > 40.76,-73.98 | work" in text
    assert text.splitlines()[-2] == "A 20:00 | Bar"  # trailing unknown fields left out
    assert parse_chain(text) == c
    assert c.activities[1].category == "Office" and len(c.trips) == 1


@pytest.mark.parametrize(("text", "match"), [
    ("A 48:00 | Home", "line 1: field 'time': time '48:00' is not a time of day"),
    ("A 08:61 | Home", "line 1: field 'time': time '08:61' is not a time of day"),
    ("A 08:00 | ", "line 1: field 'category' is empty"),
    ("A 08:00 | Home | 40.7", "line 1: field 'coordinates': coordinates '40.7' are not 'lat,lon'"),
    ("A 08:00 | Home | 95.0,10.0", "out of range"),
    ("A 08:00 | Home\nT walk | 8:00-9:00 | 1,2", "line 2: field 'route'"),
    ("A 08:00 | Home\nB x", "line 2: expected an 'A ' .activity. or 'T ' .trip. line"),
])
def test_bad_steps_are_named_by_line_and_field(text, match):
    with pytest.raises(ActivityFormatError, match=match):
        parse_steps(text, source="gen.txt")


def test_bad_header_lines_are_named():
    with pytest.raises(ActivityFormatError, match=r"x.txt: line 2: field 'date' '2024-13-01'"):
        parse_chain("persona: group=a\ndate: 2024-13-01 Mon", source="x.txt")
    with pytest.raises(ActivityFormatError, match=r"line 1: persona field 'oops' is not key=value"):
        parse_chain("persona: oops", source="x.txt")
    with pytest.raises(ActivityFormatError, match=r"line 1: unknown line"):
        parse_chain("weather: sunny", source="x.txt")


def test_exports_read_back_and_dataset_info_points_at_them(tmp_path):
    chains = [_chain(), replace(_chain(), steps=_chain().steps[:1], persona=Persona())]
    examples = [to_example(c) for c in chains]
    paths = export_examples(examples, tmp_path)
    assert sorted(paths) == sorted(["stllm_activity_alpaca.json", "stllm_activity_sharegpt.json",
                                    "stllm_activity_chatml.json", "dataset_info.json"])
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert info == dataset_info()
    for entry in info.values():
        assert (tmp_path / entry["file_name"]).is_file()
    back = read_alpaca(tmp_path / "stllm_activity_alpaca.json")
    assert back == examples
    for ex, c in zip(back, chains):  # the export keeps everything but user, context date and origin
        assert example_chain(ex) == replace(c, user=None, context_date=None, origin=None, destination=None,
                                            source="<example>")
    share = json.loads((tmp_path / "stllm_activity_sharegpt.json").read_text())
    chatml = json.loads((tmp_path / "stllm_activity_chatml.json").read_text())
    for s, m, ex in zip(share, chatml, examples):
        assert s["conversations"][1] == {"from": "gpt", "value": ex.output}
        assert m["messages"][2] == {"role": "assistant", "content": ex.output}
        assert m["messages"][1]["content"].endswith(ex.input)


def test_read_alpaca_names_a_missing_field(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps([{"instruction": "x", "input": "y"}]))
    with pytest.raises(ActivityFormatError, match=r"a.json: record 0: field 'output' missing"):
        read_alpaca(p)


def test_chains_and_personas_from_checkins_hand_worked():
    t = np.array(["2012-11-05T06:00", "2012-11-05T10:00", "2012-11-05T12:00", "2012-11-06T06:30",
                  "2012-11-06T10:30", "2012-11-06T23:00", "2012-11-05T09:00"], dtype="datetime64[m]")
    c = build_checkins(user=["a"] * 6 + ["b"], poi=["h", "o", "c", "h", "o", "h", "o"],
                       category=["Home (private)", "Office", "Cafe", "Home (private)", "Office", "Home (private)",
                                 "Office"],
                       lat=[1, 2, 3, 1, 2, 1, 2], lon=[1, 2, 3, 1, 2, 1, 2], time=t, trajectory=["x"] * 7)
    personas = personas_from_checkins(c)
    a = personas["a"]
    assert a.categories == ("Home (private)", "Office", "Cafe")  # 3, 2, 1 check-ins
    assert a.home == (1.0, 1.0) and a.work == (2.0, 2.0)  # Monday 10:00 and Tuesday 10:30 at the office
    chains = chains_from_checkins(c, personas)
    assert [(ch.user, ch.date, len(ch.steps)) for ch in chains] == [("a", dt.date(2012, 11, 5), 3),
                                                                   ("a", dt.date(2012, 11, 6), 3)]  # b: 1 check-in
    assert chains[0].weekday == "Mon" and chains[1].steps[2].start == 23 * 3600
    assert chains[0].persona == a


@needs_shared
def test_saopaulo_diaries_counts_and_continuity():
    chains = load_saopaulo_diaries(SHARED / "saopaulo_od2017" / "sao_paulo_od2017_20persons_trips.csv")
    assert len(chains) == 20 and sum(len(c.trips) for c in chains) == 88  # PROVENANCE: 20 persons, 88 trips
    for c in chains:
        assert parse_chain(render_chain(c)) == replace(c, source="<text>")
        assert c.activities[-1].category == c.activities[0].category  # every chain returns to its first origin


def test_saopaulo_bad_file_is_named(tmp_path):
    p = tmp_path / "sp.csv"
    p.write_text("ID_PESS,O_lon,O_lat\n1,2,3\n")
    with pytest.raises(ActivityFormatError, match=r"sp.csv: missing column\(s\) D_lon"):
        load_saopaulo_diaries(p)


@needs_shared
def test_lujiazui_examples_parse_with_their_dates_and_times():
    ex = load_lujiazui_examples(SHARED / "lujiazui_examples")
    c85 = ex["train85"]
    assert (c85.date, c85.weekday, c85.context_date) == (dt.date(2024, 9, 16), "Mon", dt.date(2024, 9, 10))
    assert c85.persona.group == "工作人群" and c85.persona.age == "45岁"
    a1, a2 = c85.activities[:2]
    assert (a1.end, a2.start) == (11 * 3600 + 3 * 60, 11 * 3600)
    assert (a1.lat, a1.lon) == (31.232389, 121.514910)  # the file writes lon,lat
    assert c85.trips[0].dest == (31.232093, 121.514548) and c85.trips[0].arrive == 9 * 3600
    assert c85.destination.coord == (31.234818, 121.541061)
    assert ex["train0"].context_date == dt.date(2024, 9, 18) and ex["train0"].date == dt.date(2024, 10, 9)


@needs_shared
def test_llmob_counts_match_provenance():
    chains = load_llmob_chains(SHARED / "llmob_tokyo" / "llmob_activity_chains.csv.gz", dataset="2019")
    assert (len(chains["train"]), len(chains["test"])) == (5737, 1479)
    assert sum(len(c.steps) for c in (*chains["train"], *chains["test"])) == 59508
    first = chains["train"][0]
    assert first.user == "1004" and first.date == dt.date(2019, 1, 2)
    assert [a.category for a in first.activities[:2]] == ["Park", "Rest Area"]
    assert first.activities[0].start == 10 * 3600 + 50 * 60
    train_days = {(c.user, c.date) for c in chains["train"]}
    assert not train_days & {(c.user, c.date) for c in chains["test"]}


def test_llmob_bad_rows_are_named(tmp_path):
    p = tmp_path / "l.csv"
    head = "dataset,uid,split,date,seq,place_category,place_id,time\n"
    p.write_text(head + "2019,1,train,2019-01-01,0,Park,3,10:5\n")
    with pytest.raises(ActivityFormatError, match=r"l.csv: line 2: field 'time': time '10:5'"):
        load_llmob_chains(p)
    p.write_text(head + "2019,1,val,2019-01-01,0,Park,3,10:50\n")
    with pytest.raises(ActivityFormatError, match=r"line 2: field 'split' 'val'"):
        load_llmob_chains(p)


def test_synthetic_chains_split_by_day_and_carry_training_personas():
    s = synthetic_chains(seed=1, n_users=6, days=8)
    assert max(c.date for c in s["train"]) < min(c.date for c in s["test"])
    by_user = {c.user: c.persona for c in s["train"]}
    assert all(c.persona == by_user[c.user] for c in s["test"] if c.user in by_user)
    assert all(c.persona.categories for c in s["test"])


def test_activity_split_refuses_leaked_days_and_unseen_users():
    from stllm.data.activity import ActivitySplit

    day = ActivityChain(steps=(Activity("Park", start=3600),), date=dt.date(2024, 1, 1), user="u")
    with pytest.raises(ValueError, match=r"x: field 'date': 1 test day\(s\) are also training days"):
        ActivitySplit("x", [day], [day], with_coords=False, time_resolution_s=60)
    with pytest.raises(ValueError, match=r"x: field 'user': a test user has no training day"):
        ActivitySplit("x", [day], [replace(day, user="v")], with_coords=False, time_resolution_s=60)


def test_hold_out_last_days_takes_each_users_latest_days_when_enough_stay():
    from stllm.data.activity import hold_out_last_days

    def day(user: str, d: int) -> ActivityChain:
        return ActivityChain(steps=(Activity("Park", start=3600),), date=dt.date(2024, 1, d), user=user)

    train = [day("a", 5), day("a", 1), day("b", 2), day("a", 3), day("b", 1), day("c", 9)]
    kept, val = hold_out_last_days(train, per_user=1)
    assert [(c.user, c.date.day) for c in val] == [("a", 5)]  # b keeps only 1 day with one out: too few; c has 1
    assert kept == [c for c in train if c is not train[0]]
    kept, val = hold_out_last_days(train, per_user=1, min_kept=1)
    assert sorted((c.user, c.date.day) for c in val) == [("a", 5), ("b", 2)]
    assert hold_out_last_days(train, per_user=0) == (train, [])
    with pytest.raises(ValueError, match="per_user >= 0"):
        hold_out_last_days(train, per_user=-1)


@needs_shared
def test_nyc_split_tests_later_days_of_trained_users():
    from stllm.data.activity import load_activity_split

    split = load_activity_split("nyc")
    assert min(c.date for c in split.test) > max(c.date for c in split.train)
    assert {c.user for c in split.test} <= {c.user for c in split.train}
    assert len(split.test) > 2000 and all(c.persona.categories for c in split.test)
