"""Daily activity chains: a typed schema, the compact text the LM writes, exports and readers.

An :class:`ActivityChain` is one person-day: a :class:`Persona`, the date, and an ordered sequence of
:class:`Activity` and :class:`Trip` steps. Everything that a source does not know is ``None`` (check-ins have
no trips, LLMob chains no coordinates, the Sao Paulo diaries no arrival times), so one type serves every
source and the validators (:mod:`stllm.data.activity_checks`) skip what they cannot check.

The compact text format (one record per line; ``-`` or an empty field for unknown; coordinates are
``lat,lon`` everywhere, also for sources that write ``lon,lat``)::

    persona: group=worker; age=45; categories=Office,Coffee Shop; home=40.75000,-73.99000; hours=08-22
    date: 2012-11-12 Mon
    context: date=2012-11-12
    from: 40.75000,-73.99000 | home
    A 08:10-08:50 | Coffee Shop | 40.75120,-73.99340 | p123 | Joe's
    T walk | 08:50-09:05 | 40.75120,-73.99340 > 40.76000,-73.98000 | work
    A 09:05 | Office | 40.76000,-73.98000
    to: 40.75000,-73.99000 | home

``A start[-end] | category | lat,lon | place id | name``; ``T mode | depart-arrive | origin > dest | purpose``.
Times are ``HH:MM`` or ``HH:MM:SS`` (stored as seconds since the day's midnight; ``26:50`` is 02:50 the next
morning, as in a diary that runs past midnight). ``context: date=`` is the date a prompt
or tool fixed for the day (the date a generated day must agree with).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from stllm.data.llmob import read_llmob_rows

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
LatLon = tuple[float, float]
DAY_SECONDS = 86400


class ActivityFormatError(ValueError):
    """Bad activity input; the message names the file (or text), the line and the field."""


@dataclass(frozen=True)
class Persona:
    """Who the person is, as far as the source knows: stated attributes and anchors from their history."""

    group: str | None = None
    age: str | None = None
    sex: str | None = None
    categories: tuple[str, ...] = ()  # dominant activity categories in their history, most frequent first
    home: LatLon | None = None
    work: LatLon | None = None
    hours: tuple[int, int] | None = None  # usual first and last active hour
    extra: tuple[tuple[str, str], ...] = ()  # other stated attributes (household, income, vehicles, ...)


@dataclass(frozen=True)
class Activity:
    category: str
    start: int | None = None  # seconds since midnight
    end: int | None = None
    lat: float | None = None
    lon: float | None = None
    place_id: str | None = None
    name: str | None = None

    @property
    def coord(self) -> LatLon | None:
        return None if self.lat is None or self.lon is None else (self.lat, self.lon)


@dataclass(frozen=True)
class Trip:
    mode: str | None = None
    depart: int | None = None
    arrive: int | None = None
    origin: LatLon | None = None
    dest: LatLon | None = None
    purpose: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """Where the day starts or ends outside the chain (the Lujiazui 'origin before / destination after')."""

    coord: LatLon | None = None
    kind: str | None = None


@dataclass(frozen=True)
class ActivityChain:
    persona: Persona = field(default_factory=Persona)
    date: dt.date | None = None
    weekday: str | None = None  # as written in the source (Mon..Sun), checked against ``date``
    steps: tuple[Activity | Trip, ...] = ()
    context_date: dt.date | None = None  # the date a prompt/tool fixed for this day
    origin: Endpoint | None = None
    destination: Endpoint | None = None
    user: str | None = None
    source: str = ""

    @property
    def activities(self) -> tuple[Activity, ...]:
        return tuple(s for s in self.steps if isinstance(s, Activity))

    @property
    def trips(self) -> tuple[Trip, ...]:
        return tuple(s for s in self.steps if isinstance(s, Trip))

    @property
    def weekend(self) -> bool | None:
        """Saturday or Sunday (None without a date): days of the two kinds differ in length and rhythm."""
        return None if self.date is None else self.date.weekday() >= 5


# ---------------------------------------------------------------------------------------------- rendering
def format_time(seconds: int | None) -> str:
    if seconds is None:
        return ""
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}" if s == 0 else f"{h:02d}:{m:02d}:{s:02d}"


def format_coord(coord: LatLon | None, digits: int | None = None) -> str:
    """``lat,lon``; ``digits=None`` writes each float exactly (shortest repr, so parsing gives it back)."""
    if coord is None:
        return "-"
    if digits is None:
        return f"{coord[0]!r},{coord[1]!r}"
    return f"{coord[0]:.{digits}f},{coord[1]:.{digits}f}"


def _clean(text: str | None) -> str:
    return "-" if text is None or text == "" else text.replace("|", "/").replace("\n", " ").strip() or "-"


def _span(start: int | None, end: int | None) -> str:
    if end is None:
        return format_time(start) or "-"
    return f"{format_time(start)}-{format_time(end)}"


def render_activity(a: Activity, digits: int | None = None) -> str:
    fields = [f"A {_span(a.start, a.end)}", _clean(a.category), format_coord(a.coord, digits), _clean(a.place_id),
              _clean(a.name)]
    while len(fields) > 2 and fields[-1] == "-":  # trailing unknowns are left out
        fields.pop()
    return " | ".join(fields)


def render_trip(t: Trip, digits: int | None = None) -> str:
    where = "-" if t.origin is None and t.dest is None else f"{format_coord(t.origin, digits)} > " \
                                                            f"{format_coord(t.dest, digits)}"
    return " | ".join([f"T {_clean(t.mode)}", _span(t.depart, t.arrive) if t.depart is not None or t.arrive is not None
                       else "-", where, _clean(t.purpose)])


def render_persona(p: Persona) -> str:
    pairs = [("group", p.group), ("age", p.age), ("sex", p.sex),
             ("categories", ",".join(p.categories) if p.categories else None),
             ("home", format_coord(p.home, 5) if p.home else None),
             ("work", format_coord(p.work, 5) if p.work else None),
             ("hours", f"{p.hours[0]:02d}-{p.hours[1]:02d}" if p.hours else None), *p.extra]
    return "persona: " + "; ".join(f"{k}={_clean(v).replace(';', ',')}" for k, v in pairs if v not in (None, ""))


def render_header(chain: ActivityChain) -> list[str]:
    """The lines before the steps: persona, date, context date, origin."""
    lines = [render_persona(chain.persona)]
    if chain.user is not None:
        lines.insert(0, f"user: {_clean(chain.user)}")
    if chain.date is not None or chain.weekday is not None:
        lines.append(f"date: {chain.date.isoformat() if chain.date else '-'} {chain.weekday or '-'}")
    if chain.context_date is not None:
        lines.append(f"context: date={chain.context_date.isoformat()}")
    if chain.origin is not None:
        lines.append(f"from: {format_coord(chain.origin.coord)} | {_clean(chain.origin.kind)}")
    return lines


def render_steps(steps, digits: int | None = None) -> list[str]:
    return [render_activity(s, digits) if isinstance(s, Activity) else render_trip(s, digits) for s in steps]


def render_chain(chain: ActivityChain, digits: int | None = None) -> str:
    """The whole chain as compact text; :func:`parse_chain` reads it back."""
    lines = render_header(chain) + render_steps(chain.steps, digits)
    if chain.destination is not None:
        lines.append(f"to: {format_coord(chain.destination.coord)} | {_clean(chain.destination.kind)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- parsing
_TIME = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")


def parse_time(text: str, where: str) -> int | None:
    text = text.strip()
    if text in ("", "-"):
        return None
    m = _TIME.match(text)
    if not m:
        raise ActivityFormatError(f"{where}: time {text!r} is not HH:MM or HH:MM:SS")
    h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if h > 47 or mi > 59 or s > 59:
        raise ActivityFormatError(f"{where}: time {text!r} is not a time of day (hours past 23 continue the day "
                                  "after midnight, up to 47:59)")
    return h * 3600 + mi * 60 + s


def _parse_span(text: str, where: str) -> tuple[int | None, int | None]:
    text = text.strip()
    if text in ("", "-"):
        return None, None
    if "-" not in text:
        return parse_time(text, where), None
    a, b = text.split("-", 1)
    return parse_time(a, where), parse_time(b, where)


def parse_coord(text: str, where: str) -> LatLon | None:
    text = text.strip()
    if text in ("", "-"):
        return None
    parts = text.split(",")
    try:
        lat, lon = (float(p) for p in parts)
    except ValueError:
        raise ActivityFormatError(f"{where}: coordinates {text!r} are not 'lat,lon'") from None
    if not (np.isfinite(lat) and np.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
        raise ActivityFormatError(f"{where}: coordinates {text!r} out of range (lat +-90, lon +-180)")
    return lat, lon


def _opt(text: str) -> str | None:
    text = text.strip()
    return None if text in ("", "-") else text


def parse_activity_line(line: str, where: str) -> Activity:
    fields = [f.strip() for f in line[2:].split("|")] + [""] * 5
    start, end = _parse_span(fields[0], f"{where}: field 'time'")
    category = _opt(fields[1])
    if category is None:
        raise ActivityFormatError(f"{where}: field 'category' is empty")
    coord = parse_coord(fields[2], f"{where}: field 'coordinates'")
    return Activity(category=category, start=start, end=end, lat=coord[0] if coord else None,
                    lon=coord[1] if coord else None, place_id=_opt(fields[3]), name=_opt(fields[4]))


def parse_trip_line(line: str, where: str) -> Trip:
    fields = [f.strip() for f in line[2:].split("|")] + [""] * 4
    depart, arrive = _parse_span(fields[1], f"{where}: field 'time'")
    origin = dest = None
    if _opt(fields[2]) is not None:
        if ">" not in fields[2]:
            raise ActivityFormatError(f"{where}: field 'route' {fields[2]!r} is not 'lat,lon > lat,lon'")
        a, b = fields[2].split(">", 1)
        origin, dest = parse_coord(a, f"{where}: field 'origin'"), parse_coord(b, f"{where}: field 'dest'")
    return Trip(mode=_opt(fields[0]), depart=depart, arrive=arrive, origin=origin, dest=dest, purpose=_opt(fields[3]))


def parse_persona(text: str, where: str) -> Persona:
    values: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        if "=" not in part:
            raise ActivityFormatError(f"{where}: persona field {part.strip()!r} is not key=value")
        k, v = part.split("=", 1)
        values[k.strip()] = v.strip()
    hours = None
    if "hours" in values:
        m = re.match(r"^(\d{1,2})-(\d{1,2})$", values["hours"])
        if not m:
            raise ActivityFormatError(f"{where}: field 'hours' {values['hours']!r} is not HH-HH")
        hours = (int(m.group(1)), int(m.group(2)))
    known = ("group", "age", "sex", "categories", "home", "work", "hours")
    return Persona(
        group=values.get("group"), age=values.get("age"), sex=values.get("sex"),
        categories=tuple(c.strip() for c in values["categories"].split(",")) if values.get("categories") else (),
        home=parse_coord(values["home"], f"{where}: field 'home'") if "home" in values else None,
        work=parse_coord(values["work"], f"{where}: field 'work'") if "work" in values else None,
        hours=hours, extra=tuple((k, v) for k, v in values.items() if k not in known))


def _parse_date(text: str, where: str) -> dt.date | None:
    if text in ("", "-"):
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ActivityFormatError(f"{where}: field 'date' {text!r} is not YYYY-MM-DD") from None


def _parse_endpoint(text: str, where: str) -> Endpoint:
    coord, _, kind = text.partition("|")
    return Endpoint(parse_coord(coord, f"{where}: field 'coordinates'"), _opt(kind))


def parse_steps(text: str, source: str = "<text>", first_line: int = 1) -> tuple[Activity | Trip, ...]:
    """Only ``A``/``T`` lines (what a model writes after the prompt); blank lines are skipped."""
    steps = []
    for n, line in enumerate(text.splitlines(), start=first_line):
        where = f"{source}: line {n}"
        if not line.strip():
            continue
        if line.startswith("A "):
            steps.append(parse_activity_line(line, where))
        elif line.startswith("T "):
            steps.append(parse_trip_line(line, where))
        else:
            raise ActivityFormatError(f"{where}: expected an 'A ' (activity) or 'T ' (trip) line, got {line[:40]!r}")
    return tuple(steps)


def parse_chain(text: str, source: str = "<text>") -> ActivityChain:
    """Read the compact format (:func:`render_chain`); raises :class:`ActivityFormatError` naming the line."""
    persona, date, weekday, context, origin, destination, user = Persona(), None, None, None, None, None, None
    steps: list[Activity | Trip] = []
    for n, line in enumerate(text.splitlines(), start=1):
        where = f"{source}: line {n}"
        head, _, rest = line.partition(":")
        if not line.strip():
            continue
        if line.startswith(("A ", "T ")):
            steps.extend(parse_steps(line, source, n))
        elif head == "user":
            user = _opt(rest)
        elif head == "persona":
            persona = parse_persona(rest, where)
        elif head == "date":
            parts = rest.split()
            if len(parts) != 2:
                raise ActivityFormatError(f"{where}: field 'date' needs 'YYYY-MM-DD Wkd', got {rest.strip()!r}")
            date, weekday = _parse_date(parts[0], where), _opt(parts[1])
        elif head == "context":
            key, _, value = rest.strip().partition("=")
            if key != "date":
                raise ActivityFormatError(f"{where}: unknown context field {key!r} (known: date)")
            context = _parse_date(value.strip(), where)
        elif head in ("from", "to"):
            (origin, destination) = ((_parse_endpoint(rest, where), destination) if head == "from"
                                     else (origin, _parse_endpoint(rest, where)))
        else:
            raise ActivityFormatError(f"{where}: unknown line {line[:40]!r} "
                                      "(expected user/persona/date/context/from/to/A/T)")
    return ActivityChain(persona=persona, date=date, weekday=weekday, steps=tuple(steps), context_date=context,
                         origin=origin, destination=destination, user=user, source=source)


# ---------------------------------------------------------------------------------------------- exports
INSTRUCTION = ("Write the activity chain of this person for the given day, one line per activity "
               "('A start | category[ | lat,lon]'), in time order.")
SYSTEM = "You simulate realistic daily activities of city residents."


@dataclass(frozen=True)
class ActivityExample:
    """One instruction sample: the prompt shows persona and date, the answer is the steps."""

    instruction: str
    input: str
    output: str


def lm_view(chain: ActivityChain, with_coords: bool, digits: int = 3) -> ActivityChain:
    """What the model reads and writes: activities with start, category and (optionally) rounded coordinates."""
    steps = tuple(Activity(category=a.category, start=a.start,
                           lat=round(a.lat, digits) if with_coords and a.lat is not None else None,
                           lon=round(a.lon, digits) if with_coords and a.lon is not None else None)
                  for a in chain.activities)
    return replace(chain, steps=steps, origin=None, destination=None)


def to_example(chain: ActivityChain, digits: int = 3) -> ActivityExample:
    """The prompt is the header (persona, date); the answer is the steps, coordinates at ``digits`` decimals."""
    head = replace(chain, context_date=None, origin=None, user=None)
    return ActivityExample(INSTRUCTION, "\n".join(render_header(head)),
                           "\n".join(render_steps(chain.steps, digits)))


def example_chain(example: ActivityExample, source: str = "<example>") -> ActivityChain:
    """The chain an example describes (header from ``input``, steps from ``output``)."""
    return parse_chain(example.input + "\n" + example.output, source)


def to_alpaca(examples: list[ActivityExample]) -> list[dict]:
    return [{"instruction": e.instruction, "input": e.input, "output": e.output, "system": SYSTEM} for e in examples]


def to_sharegpt(examples: list[ActivityExample]) -> list[dict]:
    return [{"system": SYSTEM, "conversations": [{"from": "human", "value": f"{e.instruction}\n{e.input}"},
                                                  {"from": "gpt", "value": e.output}]} for e in examples]


def to_chatml(examples: list[ActivityExample]) -> list[dict]:
    return [{"messages": [{"role": "system", "content": SYSTEM},
                          {"role": "user", "content": f"{e.instruction}\n{e.input}"},
                          {"role": "assistant", "content": e.output}]} for e in examples]


def dataset_info(prefix: str = "stllm_activity") -> dict:
    """LLaMA-Factory's ``dataset_info.json`` entries for the three files :func:`export_examples` writes."""
    return {
        f"{prefix}_alpaca": {"file_name": f"{prefix}_alpaca.json",
                             "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                         "system": "system"}},
        f"{prefix}_sharegpt": {"file_name": f"{prefix}_sharegpt.json", "formatting": "sharegpt",
                               "columns": {"messages": "conversations", "system": "system"}},
        f"{prefix}_chatml": {"file_name": f"{prefix}_chatml.json", "formatting": "sharegpt",
                             "columns": {"messages": "messages"},
                             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                      "assistant_tag": "assistant", "system_tag": "system"}},
    }


def export_examples(examples: list[ActivityExample], directory: str | os.PathLike,
                    prefix: str = "stllm_activity") -> dict[str, Path]:
    """Write Alpaca, ShareGPT and ChatML JSON plus ``dataset_info.json`` (atomically); returns the paths."""
    from stllm.safe_io import staged_dir

    info = dataset_info(prefix)
    payloads = {info[f"{prefix}_alpaca"]["file_name"]: to_alpaca(examples),
                info[f"{prefix}_sharegpt"]["file_name"]: to_sharegpt(examples),
                info[f"{prefix}_chatml"]["file_name"]: to_chatml(examples), "dataset_info.json": info}
    with staged_dir(directory) as tmp:  # all four files or none
        for name, payload in payloads.items():
            (tmp / name).write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")
    return {name: Path(directory) / name for name in payloads}


def read_alpaca(path: str | os.PathLike) -> list[ActivityExample]:
    """Examples back from an Alpaca file (:func:`to_alpaca`); names the record and field that is missing."""
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    out = []
    for i, r in enumerate(records):
        for k in ("instruction", "input", "output"):
            if not isinstance(r.get(k), str):
                raise ActivityFormatError(f"{path}: record {i}: field {k!r} missing or not a string")
        out.append(ActivityExample(r["instruction"], r["input"], r["output"]))
    return out


# ---------------------------------------------------------------------------------------------- builders
def _seconds(times: np.ndarray) -> np.ndarray:
    t = times.astype("datetime64[s]")
    return (t - t.astype("datetime64[D]")).astype(np.int64)


def personas_from_checkins(checkins, top: int = 10) -> dict[str, Persona]:
    """Per user id, a persona from their check-ins (pass the training part only): dominant categories,
    home (the most visited place before 07:00 or after 20:00, or a 'Home' category place), work (most
    visited place 09-17 on weekdays) and active hours (10th/90th percentile of the check-in hour)."""
    sec = _seconds(checkins.time)
    hour = sec // 3600
    weekday = (checkins.time.astype("datetime64[D]").astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    out = {}
    order = np.argsort(checkins.user, kind="stable")
    users, starts = np.unique(checkins.user[order], return_index=True)
    for u, rows in zip(users.tolist(), np.split(order, starts[1:])):
        cats = Counter(checkins.categories[checkins.category[rows]].tolist())
        top_cats = tuple(c for c, _ in sorted(cats.items(), key=lambda kv: (-kv[1], kv[0]))[:top])
        home_rows = rows[np.char.find(checkins.categories[checkins.category[rows]].astype(str), "Home") >= 0]
        if not home_rows.size:
            home_rows = rows[(hour[rows] < 7) | (hour[rows] >= 20)]
        work_rows = rows[(hour[rows] >= 9) & (hour[rows] < 17) & (weekday[rows] < 5)]
        out[str(checkins.user_ids[u])] = Persona(
            categories=top_cats, home=_anchor(checkins, home_rows), work=_anchor(checkins, work_rows),
            hours=(int(np.percentile(hour[rows], 10)), int(np.percentile(hour[rows], 90))))
    return out


def _anchor(checkins, rows: np.ndarray) -> LatLon | None:
    if not rows.size:
        return None
    poi, counts = np.unique(checkins.poi[rows], return_counts=True)
    best = int(poi[np.argmax(counts)])
    r = rows[checkins.poi[rows] == best][0]
    return round(float(checkins.lat[r]), 5), round(float(checkins.lon[r]), 5)


def chains_from_checkins(checkins, personas: dict[str, Persona] | None = None, min_activities: int = 2
                         ) -> list[ActivityChain]:
    """One chain per user and local calendar day (activities = check-ins, start times only, no trips).

    ``personas`` (from the training part, :func:`personas_from_checkins`) are attached by user id; users
    without one get an empty persona. Days with fewer than ``min_activities`` check-ins are skipped."""
    day = checkins.time.astype("datetime64[D]")
    order = np.lexsort((checkins.time, day, checkins.user))
    key = checkins.user[order].astype(np.int64) * 10**6 + day[order].astype(np.int64)
    _, starts = np.unique(key, return_index=True)
    sec = _seconds(checkins.time)
    chains = []
    for rows in np.split(order, starts[1:]):
        if len(rows) < min_activities:
            continue
        uid = str(checkins.user_ids[checkins.user[rows[0]]])
        date = day[rows[0]].astype(dt.date)
        steps = tuple(Activity(category=str(checkins.categories[checkins.category[r]]), start=int(sec[r]),
                               lat=float(checkins.lat[r]), lon=float(checkins.lon[r]),
                               place_id=str(checkins.poi_ids[checkins.poi[r]]) if checkins.poi[r] >= 0 else None)
                      for r in rows.tolist())
        chains.append(ActivityChain(persona=(personas or {}).get(uid, Persona()), date=date,
                                    weekday=WEEKDAYS[date.weekday()], steps=steps, user=uid, source=checkins.source))
    return chains


LLMOB_COLUMNS = ("dataset", "uid", "split", "date", "seq", "place_category", "place_id", "time")


def load_llmob_chains(path: str | os.PathLike, dataset: str = "2019") -> dict[str, list[ActivityChain]]:
    """The LLMob Tokyo CSV (``llmob_activity_chains.csv.gz``) as ``{"train": [...], "test": [...]}`` chains of
    one ``dataset`` (2019, 2021 or 20192021); personas come from each user's train days only."""
    days: dict[tuple[str, str, str], list[tuple[int, int, str, str]]] = {}
    for line, rec in read_llmob_rows(path, LLMOB_COLUMNS, dataset, ActivityFormatError):
        if rec["split"] not in ("train", "test"):
            raise ActivityFormatError(f"{path}: line {line}: field 'split' {rec['split']!r} is not train/test")
        t = parse_time(rec["time"], f"{path}: line {line}: field 'time'")
        try:
            seq = int(rec["seq"])
        except ValueError:
            raise ActivityFormatError(f"{path}: line {line}: field 'seq' {rec['seq']!r} is not an integer") from None
        days.setdefault((rec["split"], rec["uid"], rec["date"]), []).append(
            (seq, t, rec["place_category"], rec["place_id"]))
    history: dict[str, Counter] = {}
    hours: dict[str, list[int]] = {}
    for (split, uid, _), rows in days.items():
        if split == "train":
            history.setdefault(uid, Counter()).update(r[2] for r in rows)
            hours.setdefault(uid, []).extend(r[1] // 3600 for r in rows)
    personas = {uid: Persona(categories=tuple(c for c, _ in sorted(cnt.items(), key=lambda kv: (-kv[1], kv[0]))[:10]),
                             hours=(int(np.percentile(hours[uid], 10)), int(np.percentile(hours[uid], 90))))
                for uid, cnt in history.items()}
    out: dict[str, list[ActivityChain]] = {"train": [], "test": []}
    for (split, uid, date_text), rows in sorted(days.items()):
        date = _parse_date(date_text, f"{path}: user {uid}")
        steps = tuple(Activity(category=c, start=t, place_id=p) for _, t, c, p in sorted(rows))
        out[split].append(ActivityChain(persona=personas.get(uid, Persona()), date=date,
                                        weekday=WEEKDAYS[date.weekday()], steps=steps, user=uid, source=str(path)))
    return out


SAOPAULO_COLUMNS = ("ID_PESS", "O_lon", "O_lat", "D_lon", "D_lat", "mode_abstr", "purpose_at_origin_abstr",
                    "departure", "trip_seq")


def load_saopaulo_diaries(path: str | os.PathLike) -> list[ActivityChain]:
    """The Sao Paulo OD-2017 20-person extract as chains: activity at each trip's origin (its purpose, ending
    at the departure), the trip (mode, departure, origin > destination), and a last activity at the last
    destination (the first activity's purpose when the person is back where the day started, else 'Unknown').
    Arrival times are not in the survey extract, so activity starts after the first are unknown. A departure
    earlier than the one before it is after midnight (a night shift): it gets 24 h added (``26:50``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    persons: dict[str, list[tuple[int, dict, int]]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in SAOPAULO_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ActivityFormatError(f"{path}: missing column(s) {', '.join(missing)}")
        for line, rec in enumerate(reader, start=2):
            try:
                seq = int(rec["trip_seq"])
            except ValueError:
                raise ActivityFormatError(f"{path}: line {line}: field 'trip_seq' {rec['trip_seq']!r} "
                                          "is not an integer") from None
            persons.setdefault(rec["ID_PESS"], []).append((seq, rec, line))
    chains = []
    for pid, trips in persons.items():
        steps: list[Activity | Trip] = []
        prev_end = 0
        first = None
        for _, rec, line in sorted(trips, key=lambda x: x[0]):
            where = f"{path}: line {line}"
            o = parse_coord(f"{rec['O_lat']},{rec['O_lon']}", f"{where}: field 'O_lat,O_lon'")
            d = parse_coord(f"{rec['D_lat']},{rec['D_lon']}", f"{where}: field 'D_lat,D_lon'")
            depart = parse_time(rec["departure"], f"{where}: field 'departure'")
            while depart < prev_end:
                depart += DAY_SECONDS
            act = Activity(category=rec["purpose_at_origin_abstr"], start=prev_end if not steps else None,
                           end=depart, lat=o[0], lon=o[1])
            first = first or act
            steps += [act, Trip(mode=rec["mode_abstr"], depart=depart, origin=o, dest=d)]
            prev_end = depart
        last = steps[-1]
        back_home = first is not None and last.dest == first.coord
        steps.append(Activity(category=first.category if back_home else "Unknown", lat=last.dest[0], lon=last.dest[1]))
        chains.append(ActivityChain(persona=Persona(), steps=tuple(steps), user=pid, source=str(path)))
    return chains


# Lujiazui (Shanghai) answers: Chinese, lon,lat coordinates, seconds in times
_LJZ_PERSONA = {"陆家嘴活动人群画像": "group", "年龄": "age", "性别": "sex"}
_CN_WEEKDAYS = {"一": "Mon", "二": "Tue", "三": "Wed", "四": "Thu", "五": "Fri", "六": "Sat", "日": "Sun", "天": "Sun"}
_CN_DATE = re.compile(r"(\d{4})年(\d{1,2})月(\d{1,2})日[，,]\s*星期([一二三四五六日天])")
_LJZ_DAY_FIELDS = ("陆家嘴前出发地", "陆家嘴后目的地", "到达陆家嘴时间", "离开陆家嘴时间")
_LONLAT = r"(\d+\.\d+),(\d+\.\d+)"


def _lonlat(m: re.Match, i: int = 1) -> LatLon:
    return float(m.group(i + 1)), float(m.group(i))


def parse_lujiazui_answer(text: str, context_date: dt.date | None = None, source: str = "<lujiazui>"
                          ) -> ActivityChain:
    """One Lujiazui answer (``# 个体基本信息`` ... ``## 活动链出行链概述``) as a chain.

    Trips take their times from the activities around them (departure = the previous activity's end or the
    time of leaving the district; arrival = the next activity's start or the arrival time); ``context_date``
    is the date the query tool returned (what the answer's date must agree with)."""
    persona: dict[str, str] = {}
    extra: list[tuple[str, str]] = []
    date = weekday = None
    origin = destination = None
    arrival = departure = None
    steps: list[Activity | Trip] = []
    lines = text.splitlines()
    for n, raw in enumerate(lines, start=1):
        line = raw.strip()
        where = f"{source}: line {n}"
        m = re.match(r"^\[(.+?)\]:\s*(.*)$", line)
        if m and not steps and m.group(1) not in _LJZ_DAY_FIELDS:
            key, value = m.group(1), m.group(2)
            if key in _LJZ_PERSONA:
                persona[_LJZ_PERSONA[key]] = value
            else:
                extra.append((key, value))
            continue
        if (dm := _CN_DATE.search(line)) and line.startswith("#"):
            date = dt.date(int(dm.group(1)), int(dm.group(2)), int(dm.group(3)))
            weekday = _CN_WEEKDAYS[dm.group(4)]
        elif line.startswith("[陆家嘴前出发地]") or line.startswith("[陆家嘴后目的地]"):
            cm = re.search(_LONLAT, line)
            if not cm:
                raise ActivityFormatError(f"{where}: field 'coordinates' missing")
            ep = Endpoint(_lonlat(cm), line.split(":", 1)[1].split(",")[0].strip())
            origin, destination = (ep, destination) if "前出发地" in line else (origin, ep)
        elif line.startswith("[到达陆家嘴时间]"):
            arrival = parse_time(line.split(":", 1)[1].strip(), f"{where}: field 'arrival'")
        elif line.startswith("[离开陆家嘴时间]"):
            departure = parse_time(line.split(":", 1)[1].strip(), f"{where}: field 'departure'")
        elif line.startswith("## 出行ID"):
            mode = re.search(r"出行方式：\s*(\w+)", line)
            steps.append(Trip(mode=mode.group(1) if mode else None))
        elif line.startswith("## 活动ID"):
            kind = re.search(r"活动类型：\s*(\S+)", line)
            steps.append(Activity(category=kind.group(1) if kind else "Unknown"))
        elif line.startswith("[起点]") and steps and isinstance(steps[-1], Trip):
            cm = re.findall(_LONLAT, line)
            if len(cm) != 2:
                raise ActivityFormatError(f"{where}: field 'route' needs two lon,lat pairs")
            (olon, olat), (dlon, dlat) = cm
            steps[-1] = replace(steps[-1], origin=(float(olat), float(olon)), dest=(float(dlat), float(dlon)))
        elif line.startswith("[出行目的]") and steps and isinstance(steps[-1], Trip):
            steps[-1] = replace(steps[-1], purpose=line.split(":", 1)[1].strip())
        elif line.startswith("[时段]") and steps and isinstance(steps[-1], Activity):
            tm = re.search(r"(\d{1,2}:\d{2}:\d{2})\s*-\s*(\d{1,2}:\d{2}:\d{2})", line)
            if not tm:
                raise ActivityFormatError(f"{where}: field 'time span' is not 'H:MM:SS - H:MM:SS'")
            steps[-1] = replace(steps[-1], start=parse_time(tm.group(1), where), end=parse_time(tm.group(2), where))
        elif line.startswith("[地点]") and steps and isinstance(steps[-1], Activity):
            cm = re.search(_LONLAT, line)
            name = line.split(":", 1)[1].split(",")[0].strip()
            lat, lon = _lonlat(cm) if cm else (None, None)
            steps[-1] = replace(steps[-1], name=name, lat=lat, lon=lon)
    if not steps:
        raise ActivityFormatError(f"{source}: no trip or activity sections (## 出行ID / ## 活动ID)")
    steps = _lujiazui_trip_times(steps, arrival, departure)
    return ActivityChain(persona=Persona(group=persona.get("group"), age=persona.get("age"), sex=persona.get("sex"),
                                         extra=tuple(extra)),
                         date=date, weekday=weekday, steps=tuple(steps), context_date=context_date, origin=origin,
                         destination=destination, source=source)


def _lujiazui_trip_times(steps: list, arrival: int | None, departure: int | None) -> list:
    out = list(steps)
    for i, s in enumerate(out):
        if not isinstance(s, Trip):
            continue
        prev = next((a for a in reversed(out[:i]) if isinstance(a, Activity)), None)
        nxt = out[i + 1] if i + 1 < len(out) and isinstance(out[i + 1], Activity) else None
        depart = prev.end if prev is not None else None
        arrive = nxt.start if nxt is not None else None
        if prev is None and arrive is None:
            arrive = arrival
        if nxt is None and depart is None:
            depart = departure
        out[i] = replace(s, depart=depart, arrive=arrive)
    return out


def _answer_and_date(turn: dict, where: str) -> tuple[str, dt.date | None]:
    answer = turn.get("final_answer")
    if not isinstance(answer, str):
        raise ActivityFormatError(f"{where}: field 'final_answer' missing")
    date = None
    for step in turn.get("steps", []):
        if "query_date" in str(step.get("tool_call", "")) and (m := _CN_DATE.search(str(step.get("tool_response")))):
            date = dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    return answer, date


def load_lujiazui_examples(folder: str | os.PathLike) -> dict[str, ActivityChain]:
    """The two extracted Lujiazui training examples (``train0``, ``train85``) as chains, the date returned
    by their ``query_date`` tool call as ``context_date``. Model-written: validators should reject them."""
    folder = Path(folder)
    out = {}
    p0 = folder / "sample_train0_messages.json"
    messages = json.loads(p0.read_text(encoding="utf-8"))
    model = next((m for m in messages if m.get("role") in ("model", "assistant", "gpt")), messages[-1])
    answer, date = _answer_and_date(json.loads(model["content"]), f"{p0}: model turn")
    out["train0"] = parse_lujiazui_answer(answer, date, source=str(p0))
    p85 = folder / "sample_train85_model_turn.json"
    answer, date = _answer_and_date(json.loads(p85.read_text(encoding="utf-8")), str(p85))
    out["train85"] = parse_lujiazui_answer(answer, date, source=str(p85))
    return out


# ---------------------------------------------------------------------------------------------- synthetic
def synthetic_chains(seed: int = 0, n_users: int = 30, days: int = 28) -> dict[str, list[ActivityChain]]:
    """The demo default: :func:`~stllm.data.checkins.synthetic_checkins` as user-days, the first 3/4 of the
    days ``train`` (personas from them), the rest ``test``."""
    from stllm.data.checkins import synthetic_checkins

    c = synthetic_checkins(seed=seed, n_users=n_users, days=days)
    day = c.time.astype("datetime64[D]")
    cut = day.min() + np.timedelta64(int(days * 3 // 4), "D")
    train, test = c.subset(day < cut), c.subset(day >= cut)
    personas = personas_from_checkins(train)
    return {"train": chains_from_checkins(train, personas), "test": chains_from_checkins(test, personas)}


# ---------------------------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class ActivitySplit:
    """Training days and held-out test days of one city, checked on construction: no test (user, date) is a
    training day, and every test user has training days (their persona comes from those)."""

    name: str
    train: list[ActivityChain]
    test: list[ActivityChain]
    with_coords: bool
    time_resolution_s: int  # the grid the source's times lie on

    def __post_init__(self):
        seen = {(c.user, c.date) for c in self.train}
        leaked = [c for c in self.test if (c.user, c.date) in seen]
        if leaked:
            raise ValueError(f"{self.name}: field 'date': {len(leaked)} test day(s) are also training days "
                             f"(first: user {leaked[0].user} on {leaked[0].date})")
        users = {c.user for c in self.train}
        if any(c.user not in users for c in self.test):
            raise ValueError(f"{self.name}: field 'user': a test user has no training day")


ACTIVITY_DATA = ("tokyo", "nyc", "synthetic")


def hold_out_last_days(train: Sequence[ActivityChain], per_user: int, min_kept: int = 2
                       ) -> tuple[list[ActivityChain], list[ActivityChain]]:
    """``(kept, validation)``: each user's last ``per_user`` training days (by date) become validation days when
    at least ``min_kept`` days stay for training. Sampling settings are chosen on these days of training users,
    never on the test days; users with few days give none (their only days are needed to learn them)."""
    if per_user < 0 or min_kept < 1:
        raise ValueError(f"validation days: need per_user >= 0 and min_kept >= 1, got {per_user}, {min_kept}")
    by_user: dict[str | None, list[int]] = {}
    for i, c in enumerate(train):
        by_user.setdefault(c.user, []).append(i)
    held: set[int] = set()
    for rows in by_user.values():
        if per_user and len(rows) - per_user >= min_kept:
            order = sorted(rows, key=lambda i: (train[i].date is None, train[i].date or dt.date.min, i))
            held.update(order[-per_user:])
    return ([c for i, c in enumerate(train) if i not in held], [c for i, c in enumerate(train) if i in held])


def load_activity_split(name: str, root: str | os.PathLike | None = None, seed: int = 0) -> ActivitySplit:
    """``tokyo``: LLMob 2019 users' train/test days (the file's split); ``nyc``: Foursquare NYC, days of
    ``NYC_val.csv`` train (personas from them) and days of ``NYC_test.csv`` after the last training day test,
    users seen in training only; ``synthetic``: :func:`synthetic_chains`."""
    from stllm.data.checkins import load_checkins
    from stllm.data.loaders import data_root

    base = data_root(root)
    if name == "tokyo":
        days = load_llmob_chains(base / "llmob_tokyo" / "llmob_activity_chains.csv.gz", dataset="2019")
        return ActivitySplit("tokyo", days["train"], days["test"], with_coords=False, time_resolution_s=600)
    if name == "nyc":
        train_ci = load_checkins(base / "foursquare_nyc" / "NYC_val.csv")
        test_ci = load_checkins(base / "foursquare_nyc" / "NYC_test.csv")
        personas = personas_from_checkins(train_ci)
        train = chains_from_checkins(train_ci, personas)
        last, users = max(c.date for c in train), {c.user for c in train}
        test = [c for c in chains_from_checkins(test_ci, personas) if c.user in users and c.date > last]
        return ActivitySplit("nyc", train, test, with_coords=True, time_resolution_s=60)
    if name == "synthetic":
        days = synthetic_chains(seed=seed)
        return ActivitySplit("synthetic", days["train"], days["test"], with_coords=True, time_resolution_s=60)
    raise ValueError(f"unknown activity data {name!r}; known: {', '.join(ACTIVITY_DATA)}")
