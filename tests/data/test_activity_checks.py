"""Validators: hand-built days that pass and fail each check, the Sao Paulo gold diaries, the Lujiazui defects."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from stllm.data.activity import (
    Activity,
    ActivityChain,
    Endpoint,
    Persona,
    Trip,
    load_lujiazui_examples,
    load_saopaulo_diaries,
)
from stllm.data.activity_checks import (
    BOXES,
    CHECKS,
    CheckConfig,
    check_box,
    check_continuity,
    check_date,
    check_format,
    check_persona,
    check_speed,
    check_text,
    check_times,
    distance_m,
    passes,
    run_checks,
)
from stllm.data.loaders import data_root

SHARED = data_root()
needs_shared = pytest.mark.skipif(not (SHARED / "lujiazui_examples").is_dir(), reason="shared data not present")
H = 3600
# 0.01 deg of latitude is 1111.95 m on the sphere of radius 6371008.8 m
A, B = (40.00, -74.00), (40.01, -74.00)


def _day(**kw) -> ActivityChain:
    steps = (Activity("Home", start=7 * H, end=8 * H, lat=A[0], lon=A[1]),
             Trip("walk", depart=8 * H, arrive=8 * H + 900, origin=A, dest=B),
             Activity("Office", start=8 * H + 900, end=17 * H, lat=B[0], lon=B[1]))
    base = ActivityChain(persona=Persona(categories=("Office", "Gym")), date=dt.date(2024, 9, 16), weekday="Mon",
                         steps=steps)
    return replace(base, **kw)


def test_distance_against_the_hand_value():
    assert distance_m(A, B) == pytest.approx(6371008.8 * 0.01 * 3.141592653589793 / 180, rel=1e-9)


def test_a_good_day_passes_every_check():
    cfg = CheckConfig(box=(39.9, 40.1, -74.1, -73.9))
    results = run_checks(_day(), cfg)
    assert [r.name for r in results] == list(CHECKS) and passes(results), results


def test_each_check_fails_with_its_reason():
    cfg = CheckConfig(box=(39.9, 40.1, -74.1, -73.9))
    day = _day()
    assert check_format(replace(day, steps=day.steps[1:2]), cfg).reason == "no activity"
    far = replace(day, steps=(*day.steps, Activity("Bar", start=18 * H, lat=41.0, lon=-74.0)))
    assert "activity 3 at 41.00000,-74.00000 is outside the box" in check_box(far, cfg).reason
    early = replace(day, steps=(*day.steps, Activity("Bar", start=16 * H)))
    assert check_times(early, cfg).reason == "activity 3 starts at 16:00, before activity 2 ends (17:00)"
    late = replace(day, steps=(Activity("Bar", start=29 * H),))
    assert check_times(late, cfg).reason == "activity 1 start 29:00 is outside the day (00:00..28:00)"
    # 1112 m walked in 5 minutes = 13.3 km/h > 7.2
    fast = replace(day, steps=(day.steps[0], replace(day.steps[1], arrive=8 * H + 300), day.steps[2]))
    res = check_speed(fast, cfg)
    assert not res.ok and "trip 1 (walk) covers 1.1 km in 5.0 min: 13.3 km/h > 7.2 km/h" == res.reason
    # by car the same is 13.3 km/h: fine
    assert check_speed(replace(fast, steps=(fast.steps[0], replace(fast.steps[1], mode="car"), fast.steps[2])),
                       cfg).ok
    moved = replace(day, steps=(day.steps[0], replace(day.steps[1], origin=(40.0005, -74.0)), day.steps[2]))
    assert check_continuity(moved, cfg).reason == "trip 1 starts 56 m from activity 1's place (tolerance 25 m)"
    alien = replace(day, persona=Persona(categories=("Bar",)))
    assert check_persona(alien, cfg).reason == "0% of the activities are among the persona's usual categories (< 10%)"
    assert check_date(replace(day, weekday="Tue"), cfg).reason == "2024-09-16 is a Mon, the chain says Tue"
    assert "differs from the date given" in check_date(replace(day, context_date=dt.date(2024, 9, 17)), cfg).reason


def test_checkin_days_are_judged_between_consecutive_activities():
    """No trips: the move between two check-ins has the time between them, at least the time resolution."""
    day = ActivityChain(steps=(Activity("Office", start=9 * H, lat=A[0], lon=A[1]),
                               Activity("Bar", start=9 * H + 60, lat=40.1, lon=-74.0)))  # 11 km in 1 min
    res = check_speed(day, CheckConfig())
    assert not res.ok and "activity 1 -> activity 2 (any mode) covers 11.1 km" in res.reason
    assert check_speed(day, CheckConfig(time_resolution_s=600)).ok  # 11.1 km / 10 min = 66.7 km/h


def test_missing_fields_pass_and_say_why():
    bare = ActivityChain(steps=(Activity("Park", start=10 * H), Activity("Cafe", start=11 * H)))
    cfg = CheckConfig(box=BOXES["nyc"])
    reasons = {r.name: r.reason for r in run_checks(bare, cfg)}
    assert passes(run_checks(bare, cfg))
    assert reasons["box"] == "no coordinates" and reasons["persona"] == "no persona history"
    assert reasons["date"] == "no date"


def test_text_that_does_not_parse_fails_every_check():
    res = check_text("A 08:00 | Home\nA 9 | Bar")
    assert not any(r.ok for r in res) and "does not parse" in res[0].reason and "line 2" in res[0].reason
    header = _day()
    ok = check_text("A 07:00 | Office\nA 08:00 | Gym", header=header)
    assert passes(ok)


@needs_shared
def test_every_saopaulo_diary_passes_every_check():
    chains = load_saopaulo_diaries(SHARED / "saopaulo_od2017" / "sao_paulo_od2017_20persons_trips.csv")
    cfg = CheckConfig(box=BOXES["saopaulo"], time_resolution_s=0)
    for c in chains:
        results = run_checks(c, cfg)
        assert passes(results), (c.user, [r for r in results if not r.ok])
    # and they are checked, not skipped: every chain has located, timed trips
    assert all("timed moves plausible" in check_speed(c, cfg).reason for c in chains)
    assert all("trip ends match" in check_continuity(c, cfg).reason for c in chains)


@needs_shared
def test_each_planted_lujiazui_defect_is_caught_with_its_reason():
    ex = load_lujiazui_examples(SHARED / "lujiazui_examples")
    cfg = CheckConfig(box=BOXES["lujiazui"], time_resolution_s=0)
    r85 = {r.name: r for r in run_checks(ex["train85"], cfg)}
    # tool: 2024-09-10 (Tue); answer: 2024-09-16 (Mon)
    assert r85["date"].reason == "date 2024-09-16 differs from the date given in the context (2024-09-10)"
    # activity 2 starts 11:00 while activity 1 ends 11:03
    assert r85["times"].reason == "activity 2 starts at 11:00, before activity 1 ends (11:03)"
    # trip 1 ends at 121.514548,31.232093, the POI is at 121.514910,31.232389
    assert r85["continuity"].reason == "trip 1 ends 48 m from activity 1's place (tolerance 25 m)"
    assert r85["box"].ok and r85["format"].ok
    r0 = {r.name: r for r in run_checks(ex["train0"], cfg)}
    assert r0["date"].reason == "date 2024-10-09 differs from the date given in the context (2024-09-18)"
    # the last trip goes to a sightseeing spot, not back to the workplace the day ends at
    assert r0["continuity"].reason == "trip 3 ends 4.0 km from the day's destination (tolerance 25 m)"
    # 355 m on foot between 18:28:15 and 18:30:00
    assert r0["speed"].reason == "trip 2 (walk) covers 355 m in 1.8 min: 12.2 km/h > 7.2 km/h"
    assert r0["times"].ok  # its times are in order: the checks do not fail what is right


def test_endpoint_continuity_uses_the_days_origin():
    day = _day()
    trip_first = replace(day, steps=day.steps[1:], origin=Endpoint((40.02, -74.0), "home"))
    assert "trip 1 starts 2.2 km from the day's origin" in check_continuity(trip_first, CheckConfig()).reason
