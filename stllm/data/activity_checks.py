"""Validators of activity chains: each says pass/fail and why, so a generated day is judged, not trusted.

They sit below training and evaluation because both use them: generation counts the share of days that
pass, the bench reports it per method, and the same checks accept the Sao Paulo survey diaries and reject
the Lujiazui model-written examples for what is wrong with them. A check that lacks what it needs (no
coordinates, no times, no persona history) passes and says so: it cannot fail a source for not having a
field (the format check is where missing structure fails).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from stllm.data.activity import (
    DAY_SECONDS,
    WEEKDAYS,
    Activity,
    ActivityChain,
    ActivityFormatError,
    LatLon,
    Trip,
    format_time,
    parse_chain,
)

EARTH_RADIUS_M = 6_371_008.8
# straight-line speed limits (km/h): a path is longer than the line, so real trips stay well below these
MAX_SPEED_KMH = {"walk": 7.2, "bike": 30.0, "transit": 80.0, "drive": 130.0, None: 130.0}
MODE_WORDS = {"walk": "walk", "walking": "walk", "foot": "walk", "bike": "bike", "bicycle": "bike",
              "cycle": "bike", "transit": "transit", "bus": "transit", "subway": "transit", "metro": "transit",
              "train": "transit", "rail": "transit", "drive": "drive", "car": "drive", "taxi": "drive",
              "motorcycle": "drive"}  # fmt: skip
# lat min, lat max, lon min, lon max
BOXES = {"nyc": (40.45, 41.10, -74.35, -73.60), "saopaulo": (-24.01, -23.35, -46.83, -46.36),
         "lujiazui": (31.20, 31.26, 121.48, 121.56), "synthetic": (40.70, 40.80, -74.02, -73.93)}


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    reason: str


@dataclass(frozen=True)
class CheckConfig:
    """What the checks accept: the area's box, speed limits per mode, how far a trip end may lie from its
    place, the time resolution (a day written on a 10-minute grid cannot be faulted for two places in one
    slot) and the share of a day's activities that must be among the persona's usual categories."""

    box: tuple[float, float, float, float] | None = None
    max_speed_kmh: dict = field(default_factory=lambda: dict(MAX_SPEED_KMH))
    continuity_m: float = 25.0
    time_resolution_s: int = 60
    persona_min_share: float = 0.1  # with 10 usual categories, 98.5% of real held-out Tokyo days pass
    day_end_s: int = DAY_SECONDS + 4 * 3600  # a diary day may run to 04:00 the next morning (night shifts)


def haversine_m(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in metres, elementwise over arrays (numpy; the encoders' twin is torch)."""
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(x, dtype=np.float64)) for x in (lat1, lon1, lat2, lon2))
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def distance_m(a: LatLon, b: LatLon) -> float:
    return float(haversine_m(a[0], a[1], b[0], b[1]))


def _dist_words(m: float) -> str:
    return f"{m:.0f} m" if m < 1000 else f"{m / 1000:.1f} km"


def _labels(chain: ActivityChain) -> list[str]:
    """'activity 2', 'trip 1', ... numbered per kind, in order."""
    counts = {"activity": 0, "trip": 0}
    out = []
    for s in chain.steps:
        kind = "activity" if isinstance(s, Activity) else "trip"
        counts[kind] += 1
        out.append(f"{kind} {counts[kind]}")
    return out


def check_format(chain: ActivityChain, cfg: CheckConfig | None = None) -> CheckResult:
    """At least one activity, every activity with a category, no day longer than the steps can hold."""
    acts = chain.activities
    if not acts:
        return CheckResult("format", False, "no activity")
    if any(not a.category.strip() for a in acts):
        return CheckResult("format", False, "an activity has no category")
    if chain.weekday is not None and chain.weekday not in WEEKDAYS:
        return CheckResult("format", False, f"weekday {chain.weekday!r} is not one of {', '.join(WEEKDAYS)}")
    return CheckResult("format", True, f"{len(acts)} activities, {len(chain.trips)} trips")


def check_box(chain: ActivityChain, cfg: CheckConfig) -> CheckResult:
    """Every activity's coordinates inside the area's box (trips may start or end outside the area)."""
    if cfg.box is None:
        return CheckResult("box", True, "no box configured")
    lat0, lat1, lon0, lon1 = cfg.box
    n = 0
    for label, s in zip(_labels(chain), chain.steps):
        if isinstance(s, Activity) and s.coord is not None:
            n += 1
            if not (lat0 <= s.lat <= lat1 and lon0 <= s.lon <= lon1):
                return CheckResult("box", False, f"{label} at {s.lat:.5f},{s.lon:.5f} is outside the box "
                                                 f"lat {lat0}..{lat1}, lon {lon0}..{lon1}")
    return CheckResult("box", True, f"{n} located activities inside" if n else "no coordinates")


def _events(chain: ActivityChain) -> list[tuple[str, int]]:
    out = []
    for label, s in zip(_labels(chain), chain.steps):
        first, second = ("start", "end") if isinstance(s, Activity) else ("departure", "arrival")
        a, b = (s.start, s.end) if isinstance(s, Activity) else (s.depart, s.arrive)
        out += [(f"{label} {w}", t) for w, t in ((first, a), (second, b)) if t is not None]
    return out


def check_times(chain: ActivityChain, cfg: CheckConfig) -> CheckResult:
    """Times inside the day (``0 .. day_end_s``), each activity within itself, activities in order (one starts
    after the previous ends), then every known time of every step non-decreasing along the chain."""
    events = _events(chain)
    for label, t in events:
        if not 0 <= t <= cfg.day_end_s:
            return CheckResult("times", False, f"{label} {format_time(t)} is outside the day "
                                               f"(00:00..{format_time(cfg.day_end_s)})")
    acts = [(lab, s) for lab, s in zip(_labels(chain), chain.steps) if isinstance(s, Activity)]
    for lab, a in acts:
        if a.start is not None and a.end is not None and a.end < a.start:
            return CheckResult("times", False, f"{lab} ends at {format_time(a.end)}, before it starts "
                                               f"({format_time(a.start)})")
    for (lab0, a0), (lab1, a1) in zip(acts, acts[1:]):
        before = a0.end if a0.end is not None else a0.start
        if before is not None and a1.start is not None and a1.start < before:
            what = "ends" if a0.end is not None else "starts"
            return CheckResult("times", False, f"{lab1} starts at {format_time(a1.start)}, before {lab0} {what} "
                                               f"({format_time(before)})")
    for (l0, t0), (l1, t1) in zip(events, events[1:]):
        if t1 < t0:
            return CheckResult("times", False, f"{l1} {format_time(t1)} is before {l0} {format_time(t0)}")
    return CheckResult("times", True, f"{len(events)} times in order" if events else "no times")


def _mode(mode: str | None) -> str | None:
    return None if mode is None else MODE_WORDS.get(mode.strip().lower().split()[0].split("-")[0], None)


def _moves(chain: ActivityChain) -> list[tuple[str, str | None, LatLon, LatLon, int | None, int | None]]:
    """(label, mode, from, to, earliest departure, latest arrival) of every move between located steps: each
    trip, and consecutive located activities with no trip between them (check-in days)."""
    steps, labels = chain.steps, _labels(chain)
    known = [(i, t) for i, s in enumerate(steps) for t in ((s.start, s.end) if isinstance(s, Activity)
                                                           else (s.depart, s.arrive)) if t is not None]

    def last_before(i: int, inclusive: bool) -> int | None:
        ts = [t for j, t in known if j < i or (inclusive and j == i)]
        return ts[-1] if ts else None

    def first_after(i: int, inclusive: bool) -> int | None:
        ts = [t for j, t in known if j > i or (inclusive and j == i)]
        return ts[0] if ts else None

    moves = []
    for i, s in enumerate(steps):
        if isinstance(s, Trip) and s.origin is not None and s.dest is not None:
            dep = s.depart if s.depart is not None else last_before(i, False)
            arr = s.arrive if s.arrive is not None else first_after(i, False)
            moves.append((labels[i], s.mode, s.origin, s.dest, dep, arr))
        elif isinstance(s, Activity) and i > 0 and isinstance(steps[i - 1], Activity):
            prev = steps[i - 1]
            if prev.coord is not None and s.coord is not None:
                dep = prev.end if prev.end is not None else prev.start
                moves.append((f"{labels[i - 1]} -> {labels[i]}", None, prev.coord, s.coord, dep, s.start))
    return moves


def check_speed(chain: ActivityChain, cfg: CheckConfig) -> CheckResult:
    """Each move's straight-line speed within the limit of its mode (unknown mode: the fastest); the time a
    move has is from its departure (or the last time before it) to its arrival (or the next time after it),
    at least the time resolution."""
    moves = _moves(chain)
    checked = 0
    for label, mode, a, b, dep, arr in moves:
        if dep is None or arr is None:
            continue
        checked += 1
        d = distance_m(a, b)
        if d <= cfg.continuity_m:
            continue
        kind = _mode(mode)
        limit = cfg.max_speed_kmh.get(kind, cfg.max_speed_kmh[None])
        dt_s = arr - dep
        if dt_s <= 0 and cfg.time_resolution_s <= 0:
            return CheckResult("speed", False, f"{label} covers {_dist_words(d)} in {dt_s} s")
        kmh = d / max(dt_s, cfg.time_resolution_s) * 3.6
        if kmh > limit:
            return CheckResult("speed", False, f"{label} ({mode or 'any mode'}) covers {_dist_words(d)} in "
                                               f"{max(dt_s, 0) / 60:.1f} min: {kmh:.1f} km/h > {limit:g} km/h")
    return CheckResult("speed", True, f"{checked} timed moves plausible" if checked else "no timed moves")


def check_continuity(chain: ActivityChain, cfg: CheckConfig) -> CheckResult:
    """A trip starts where the step before it ended (the previous activity's place, the previous trip's end
    or the day's origin) and ends where the next one is (the next activity's place, or the day's destination)."""
    steps, labels = chain.steps, _labels(chain)
    checked = 0
    for i, s in enumerate(steps):
        if not isinstance(s, Trip):
            continue
        prev = steps[i - 1] if i > 0 else None
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        pairs = []
        if isinstance(prev, Activity):
            pairs.append(("starts", s.origin, prev.coord, f"{labels[i - 1]}'s place"))
        elif isinstance(prev, Trip):
            pairs.append(("starts", s.origin, prev.dest, f"where {labels[i - 1]} ends"))
        elif chain.origin is not None:
            pairs.append(("starts", s.origin, chain.origin.coord, "the day's origin"))
        if isinstance(nxt, Activity):
            pairs.append(("ends", s.dest, nxt.coord, f"{labels[i + 1]}'s place"))
        elif nxt is None and chain.destination is not None:
            pairs.append(("ends", s.dest, chain.destination.coord, "the day's destination"))
        for verb, here, there, what in pairs:
            if here is None or there is None:
                continue
            checked += 1
            d = distance_m(here, there)
            if d > cfg.continuity_m:
                return CheckResult("continuity", False, f"{labels[i]} {verb} {_dist_words(d)} from {what} "
                                                        f"(tolerance {cfg.continuity_m:g} m)")
    return CheckResult("continuity", True, f"{checked} trip ends match" if checked else "no located trips")


def check_persona(chain: ActivityChain, cfg: CheckConfig) -> CheckResult:
    """At least ``persona_min_share`` of the day's activities among the persona's usual categories."""
    usual = set(chain.persona.categories)
    acts = chain.activities
    if not usual or not acts:
        return CheckResult("persona", True, "no persona history")
    share = sum(a.category in usual for a in acts) / len(acts)
    if share < cfg.persona_min_share:
        return CheckResult("persona", False, f"{share:.0%} of the activities are among the persona's usual "
                                             f"categories (< {cfg.persona_min_share:.0%})")
    return CheckResult("persona", True, f"{share:.0%} of the activities among the usual categories")


def check_date(chain: ActivityChain, cfg: CheckConfig | None = None) -> CheckResult:
    """The weekday written agrees with the date, and the date with the one the prompt or tool fixed."""
    if chain.date is None:
        return CheckResult("date", True, "no date")
    actual = WEEKDAYS[chain.date.weekday()]
    if chain.weekday is not None and chain.weekday != actual:
        return CheckResult("date", False, f"{chain.date.isoformat()} is a {actual}, the chain says {chain.weekday}")
    if chain.context_date is not None and chain.context_date != chain.date:
        return CheckResult("date", False, f"date {chain.date.isoformat()} differs from the date given in the "
                                          f"context ({chain.context_date.isoformat()})")
    return CheckResult("date", True, f"{chain.date.isoformat()} {actual}")


CHECKS: dict[str, Callable[[ActivityChain, CheckConfig], CheckResult]] = {
    "format": check_format, "box": check_box, "times": check_times, "speed": check_speed,
    "continuity": check_continuity, "persona": check_persona, "date": check_date,
}


def run_checks(chain: ActivityChain, cfg: CheckConfig | None = None) -> list[CheckResult]:
    """Every check, in :data:`CHECKS` order."""
    cfg = cfg or CheckConfig()
    return [fn(chain, cfg) for fn in CHECKS.values()]


def check_text(text: str, cfg: CheckConfig | None = None, header: ActivityChain | None = None,
               source: str = "<generated>") -> list[CheckResult]:
    """Checks of model-written steps: a parse failure fails 'format' (the others are skipped and fail with
    it); ``header`` supplies persona and date from the prompt."""
    from dataclasses import replace

    try:
        chain = parse_chain(text, source)
    except ActivityFormatError as e:
        return [CheckResult(name, False, f"does not parse: {e}") for name in CHECKS]
    if header is not None:
        chain = replace(header, steps=chain.steps)
    return run_checks(chain, cfg)


def passes(results: list[CheckResult]) -> bool:
    return all(r.ok for r in results)
