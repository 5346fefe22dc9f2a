"""On-device intent prediction (PITuning-style): event logs, coarse intents, next-intent samples, splits.

An :class:`EventLog` holds one row per event of a user (an activity, a place type, an app open) as parallel numpy
arrays sorted by ``(user, time)``: the fine event name and its coarse *intent*, one of :data:`INTENTS` -- the nine
Foursquare top-level categories. Mapping: the LLMob Tokyo file carries ``top_category`` per row (its 399 "Event"
rows join "Arts & Entertainment", Foursquare's nearest top level, so ten become nine); the NYC check-ins carry
only fine names, mapped through the Tokyo file's own ``place_category -> top_category`` pairs plus
:data:`NYC_EXTRA` for NYC names Tokyo never uses (rows still unmapped are dropped and counted).

A sample asks for the intent of event ``j`` from the user's events before it. Splits (:class:`IntentSplit`):
population users (the population model trains on them) vs held-out users (individual tuning and the headline
table), and inside every user the later days (the last ``test_frac`` of the user's active days; in held-out users
optionally a larger stated share, :func:`with_heldout_share`) are held out. :func:`check_heldout` is what every
evaluation calls: it refuses targets of population users, targets before a user's cutoff, a split whose two user
sets overlap, and held-out days that are not the share the split states.

:class:`TransitionTables` are PITuning's event-to-intent transition features, counted on training rows only:
population P(intent | last event), P(intent | last intent), P(intent | time block), and the user's own
P(intent | last intent) and P(intent); a training target never sees its own count (leave-one-out).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from stllm.data.checkins import load_checkins
from stllm.data.collator import PromptCollator
from stllm.data.llmob import read_llmob_rows
from stllm.data.loaders import data_root
from stllm.tokens import INTENT_PRE_TOKEN

INTENTS = (
    "Arts & Entertainment", "College & University", "Food", "Nightlife Spot", "Outdoors & Recreation",
    "Professional & Other Places", "Residence", "Shop & Service", "Travel & Transport",
)  # fmt: skip
INTENT_ALIASES = {"Event": "Arts & Entertainment"}
# NYC (TSMC2014) category names absent from the Tokyo file, mapped by hand to their Foursquare top level.
NYC_EXTRA = {
    "Home (private)": "Residence", "Residential Building (Apartment / Condo)": "Residence",
    "Subway": "Travel & Transport", "Train Station": "Travel & Transport", "Road": "Travel & Transport",
    "Bus Station": "Travel & Transport", "General Travel": "Travel & Transport", "Airport": "Travel & Transport",
    "Bridge": "Travel & Transport", "Light Rail": "Travel & Transport", "Ferry": "Travel & Transport",
    "Parking": "Travel & Transport", "Moving Target": "Travel & Transport", "Taxi": "Travel & Transport",
    "Gym / Fitness Center": "Outdoors & Recreation", "Neighborhood": "Outdoors & Recreation",
    "Other Great Outdoors": "Outdoors & Recreation", "River": "Outdoors & Recreation",
    "Deli / Bodega": "Food", "Pizza Place": "Food", "Café": "Food", "Sandwich Place": "Food", "Diner": "Food",
    "Latin American Restaurant": "Food", "Ramen /  Noodle House": "Food", "Food Truck": "Food",
    "Molecular Gastronomy Restaurant": "Food",
    "Food & Drink Shop": "Shop & Service", "Drugstore / Pharmacy": "Shop & Service", "Mall": "Shop & Service",
    "Gas Station / Garage": "Shop & Service", "Salon / Barbershop": "Shop & Service",
    "Furniture / Home Store": "Shop & Service", "Arts & Crafts Store": "Shop & Service",
    "Flea Market": "Shop & Service",
    "College Academic Building": "College & University", "University": "College & University",
    "Building": "Professional & Other Places", "Government Building": "Professional & Other Places",
    "General Entertainment": "Arts & Entertainment", "Other Nightlife": "Nightlife Spot",
}  # fmt: skip
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
LLMOB_COLUMNS = ("dataset", "uid", "date", "time", "place_category", "top_category")
INTENT_FEATURES = ("log_pop_event", "log_pop_intent", "log_pop_time", "log_user_intent", "log_user_freq",
                   "log_user_evidence", "is_last")  # fmt: skip
BLOCK_HOURS = 3


class IntentDataError(ValueError):
    """Bad intent data or split; the message names the file (or ``<memory>``), the field and what was expected."""


@dataclass(frozen=True)
class EventLog:
    """Events of many users, sorted by ``(user, time)`` (file order breaks ties)."""

    user: np.ndarray  # (n,) int64 index into user_ids
    time: np.ndarray  # (n,) datetime64[m], local time
    event: np.ndarray  # (n,) int64 index into event_names
    intent: np.ndarray  # (n,) int64 index into INTENTS
    user_ids: np.ndarray  # (U,) str
    event_names: np.ndarray  # (E,) str
    source: str = "<memory>"

    def __len__(self) -> int:
        return int(self.user.shape[0])

    @property
    def day(self) -> np.ndarray:
        """Calendar day of each event (days since 1970-01-01)."""
        return self.time.astype("datetime64[D]").astype(np.int64)

    @property
    def weekday(self) -> np.ndarray:
        """0 = Monday ... 6 = Sunday."""
        return (self.day + 3) % 7

    @property
    def minute(self) -> np.ndarray:
        """Minute of the day."""
        return (self.time - self.time.astype("datetime64[D]")).astype(np.int64)

    def subset(self, rows: np.ndarray) -> EventLog:
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = np.sort(rows)
        return replace(self, user=self.user[rows], time=self.time[rows], event=self.event[rows],
                       intent=self.intent[rows])

    def __repr__(self) -> str:
        return (f"EventLog({len(self)} events, {len(np.unique(self.user))} users, {len(self.event_names)} event "
                f"names, source={self.source!r})")


def build_event_log(user: Sequence, time: Sequence, event: Sequence, intent: Sequence[str],
                    source: str = "<memory>") -> EventLog:
    """An :class:`EventLog` from raw columns; ``intent`` holds names of :data:`INTENTS` (or an alias)."""
    n = len(user)
    for name, col in (("time", time), ("event", event), ("intent", intent)):
        if len(col) != n:
            raise IntentDataError(f"{source}: field '{name}' has {len(col)} rows, 'user' has {n}")
    if n == 0:
        raise IntentDataError(f"{source}: no events")
    names = np.array([INTENT_ALIASES.get(str(x), str(x)) for x in intent])
    known = np.isin(names, INTENTS)
    if not known.all():
        bad = sorted(set(names[~known].tolist()))[:5]
        raise IntentDataError(f"{source}: field 'intent': unknown intent(s) {bad}; expected one of {list(INTENTS)}")
    user_ids, u = np.unique(np.asarray(user).astype(str), return_inverse=True)
    event_names, e = np.unique(np.asarray(event).astype(str), return_inverse=True)
    t = np.asarray(time).astype("datetime64[m]")
    if np.isnat(t).any():
        raise IntentDataError(f"{source}: field 'time': {int(np.isnat(t).sum())} missing times")
    c = np.searchsorted(np.array(INTENTS), names)
    order = np.lexsort((np.arange(n), t, u))
    return EventLog(user=u[order].astype(np.int64), time=t[order], event=e[order].astype(np.int64),
                    intent=c[order].astype(np.int64), user_ids=user_ids, event_names=event_names, source=source)


def load_llmob_csv(path: str | os.PathLike, dataset: str = "2019") -> EventLog:
    """The LLMob Tokyo activity chains (``llmob_activity_chains.csv.gz``), rows of one ``dataset`` (2019, 2021 or
    20192021; users repeat across them). Event = the fine place category, intent = ``top_category``."""
    users, times, events, intents = [], [], [], []
    for line, rec in read_llmob_rows(path, LLMOB_COLUMNS, dataset, IntentDataError):
        try:
            t = np.datetime64(f"{rec['date']}T{rec['time'].zfill(8)}", "m")
        except ValueError:
            raise IntentDataError(f"{path}: line {line}: field 'date'/'time': unparsable "
                                  f"{rec['date']!r} {rec['time']!r}") from None
        top = INTENT_ALIASES.get(rec["top_category"], rec["top_category"])
        if top not in INTENTS:
            raise IntentDataError(f"{path}: line {line}: field 'top_category': unknown {rec['top_category']!r}")
        users.append(rec["uid"])
        times.append(t)
        events.append(rec["place_category"])
        intents.append(top)
    return build_event_log(users, np.array(times), events, intents, source=str(path))


def llmob_category_map(path: str | os.PathLike) -> dict[str, str]:
    """``place_category -> intent`` as the LLMob file records it (the first pairing wins)."""
    out: dict[str, str] = {}
    for _, rec in read_llmob_rows(path, ("place_category", "top_category"), None, IntentDataError):
        out.setdefault(rec["place_category"], INTENT_ALIASES.get(rec["top_category"], rec["top_category"]))
    return out


def load_nyc_events(paths: Sequence[str | os.PathLike], category_map: dict[str, str]) -> tuple[EventLog, int]:
    """Foursquare NYC check-in CSVs (read by :func:`stllm.data.checkins.load_checkins`) as events; intents through
    ``category_map`` (e.g. :func:`llmob_category_map`) then :data:`NYC_EXTRA`. Returns the log and the number of
    rows dropped because their category maps to no intent. Duplicate rows (files overlapping in time) drop too."""
    mapping = {**category_map, **NYC_EXTRA}
    users, times, events, intents, dropped, seen = [], [], [], [], 0, set()
    for p in paths:
        ci = load_checkins(p)
        names = ci.categories[ci.category]
        for u, t, name, poi in zip(ci.user_ids[ci.user], ci.time, names, ci.poi_ids[ci.poi]):
            key = (u, t, poi)
            if key in seen:
                continue
            seen.add(key)
            top = mapping.get(str(name))
            if top is None:
                dropped += 1
                continue
            users.append(u)
            times.append(t)
            events.append(name)
            intents.append(top)
    return build_event_log(users, np.array(times), events, intents, source=",".join(map(str, paths))), dropped


# -- the embedded default: synthetic smartphone events ------------------------------------------------------------
# events a phone sees for each intent (place types and app opens)
SYNTHETIC_EVENTS = {
    "Arts & Entertainment": ("place Cinema", "place Museum", "app Tickets"),
    "College & University": ("place Lecture Hall", "place Library", "app Courses"),
    "Food": ("place Restaurant", "place Cafe", "app Food Delivery"),
    "Nightlife Spot": ("place Bar", "place Club", "app Nightlife"),
    "Outdoors & Recreation": ("place Park", "place Gym", "app Fitness"),
    "Professional & Other Places": ("place Office", "app Mail", "app Calendar"),
    "Residence": ("place Home", "app Smart Home", "app Streaming"),
    "Shop & Service": ("place Supermarket", "place Mall", "app Shopping"),
    "Travel & Transport": ("place Station", "app Maps", "app Transit"),
}


def _population_rhythm() -> np.ndarray:
    """``(2, 8, C)`` intent weights per (weekend, 3-hour block): commute, work, lunch, shop, dinner, home."""
    w = np.full((2, 8, len(INTENTS)), 0.2)
    ix = {name: i for i, name in enumerate(INTENTS)}
    for blk, name, v in ((2, "Travel & Transport", 4), (3, "Professional & Other Places", 5), (4, "Food", 5),
                         (5, "Professional & Other Places", 4), (6, "Travel & Transport", 3), (6, "Shop & Service", 3),
                         (7, "Food", 3), (7, "Residence", 2), (3, "College & University", 1.5)):
        w[0, blk, ix[name]] += v
    for blk, name, v in ((3, "Outdoors & Recreation", 3), (4, "Food", 4), (5, "Shop & Service", 4),
                         (5, "Arts & Entertainment", 2), (6, "Food", 2), (7, "Nightlife Spot", 2), (7, "Residence", 2)):
        w[1, blk, ix[name]] += v
    return w


def synthetic_events(seed: int = 0, n_users: int = 40, days: int = 56) -> EventLog:
    """Smartphone-like event logs: a shared weekday/weekend rhythm, each user's own mix of it, and per user two
    long-tail habits (after intent A the user goes to a rare intent B with high probability) that contradict
    the population's transitions -- what individual tuning is for. Events start 2024-01-01 (a Monday)."""
    rng = np.random.default_rng(seed)
    base = _population_rhythm()
    c = len(INTENTS)
    users, times, events, intents = [], [], [], []
    start = np.datetime64("2024-01-01T00:00", "m")
    for u in range(n_users):
        mix = base * rng.gamma(2.0, 0.5, size=(1, 1, c))
        habits = [(int(rng.integers(c)), int(rng.integers(c)), rng.uniform(0.5, 0.8)) for _ in range(2)]
        fav = rng.integers(0, 3, size=c)  # each user's usual event per intent
        for d in range(days):
            weekend = int(d % 7 >= 5)
            minute = int(rng.integers(6 * 60, 9 * 60))
            prev = None
            for _ in range(int(rng.integers(4, 10))):
                if minute >= 24 * 60:
                    break
                p = mix[weekend, minute // 60 // BLOCK_HOURS]
                p = p / p.sum()
                k = int(rng.choice(c, p=p))
                for a, b, q in habits:
                    if prev == a and rng.random() < q:
                        k = b
                name = INTENTS[k]
                choices = SYNTHETIC_EVENTS[name]
                ev = choices[fav[k]] if rng.random() < 0.7 else choices[int(rng.integers(len(choices)))]
                users.append(f"u{u:03d}")
                times.append(start + np.timedelta64(d * 1440 + minute, "m"))
                events.append(ev)
                intents.append(name)
                prev = k
                minute += int(rng.integers(40, 180))
    return build_event_log(users, np.array(times), events, intents, source=f"synthetic(seed={seed})")


# -- splits --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IntentSplit:
    """Population vs held-out users and, per user, the first held-out day (days since epoch).

    Saved with every checkpoint (``to_json``) and checked by every evaluation (:func:`check_heldout`)."""

    population_users: tuple[str, ...]
    heldout_users: tuple[str, ...]
    cutoff: dict[str, int]
    source: str = "<memory>"
    heldout_share: float | None = None  # stated share of each held-out user's active days held out (checked)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> IntentSplit:
        try:
            share = d.get("heldout_share")
            return cls(tuple(d["population_users"]), tuple(d["heldout_users"]),
                       {str(k): int(v) for k, v in d["cutoff"].items()}, d.get("source", "<memory>"),
                       None if share is None else float(share))
        except (KeyError, TypeError, ValueError) as exc:
            raise IntentDataError(f"split record: field {exc}: missing or malformed") from None


def n_test_days(n_days: int, frac: float) -> int:
    """How many of a user's ``n_days`` active days are test days (the last ones): ``round(frac * n_days)``, >= 1."""
    return max(1, int(round(frac * n_days)))


def _active_days(log: EventLog) -> dict[str, np.ndarray]:
    day = log.day
    return {str(log.user_ids[u]): np.unique(day[log.user == u]) for u in np.unique(log.user)}


def make_split(log: EventLog, heldout_frac: float = 0.3, test_frac: float = 0.2, seed: int = 0,
               min_days: int = 5, heldout_test_frac: float | None = None) -> IntentSplit:
    """Users with at least ``min_days`` active days; ``heldout_frac`` of them (random, seeded) held out; in every
    user the last ``test_frac`` of active days (at least one) are test days -- in held-out users the last
    ``heldout_test_frac`` instead when given (:func:`with_heldout_share`)."""
    if not 0 < heldout_frac < 1 or not 0 < test_frac < 1:
        raise IntentDataError(f"{log.source}: heldout_frac and test_frac must be in (0, 1)")
    cutoff: dict[str, int] = {}
    for u, days in _active_days(log).items():
        if len(days) >= min_days:
            cutoff[u] = int(days[len(days) - n_test_days(len(days), test_frac)])
    users = np.array(sorted(cutoff))
    if len(users) < 2:
        raise IntentDataError(f"{log.source}: field 'user': fewer than 2 users with {min_days}+ active days")
    perm = np.random.default_rng(seed).permutation(len(users))
    n_held = min(len(users) - 1, max(1, int(round(heldout_frac * len(users)))))
    held = tuple(sorted(users[perm[:n_held]].tolist()))
    pop = tuple(sorted(users[perm[n_held:]].tolist()))
    split = IntentSplit(pop, held, cutoff, log.source)
    return split if heldout_test_frac is None else with_heldout_share(log, split, heldout_test_frac)


def with_heldout_share(log: EventLog, split: IntentSplit, frac: float) -> IntentSplit:
    """``split`` with each held-out user's test days the last ``frac`` of their active days (at least one), the share
    recorded so :func:`check_heldout` can verify it. Population users keep their cutoffs, so a population model
    trained under ``split`` stays valid (it never saw a held-out user). Why: NYC users have few active days, and
    with a 20% share most held out only one or two days (five targets), too few to tell tuning from no tuning."""
    if not 0 < frac < 1:
        raise IntentDataError(f"{split.source}: field 'heldout_share': must be in (0, 1), got {frac}")
    check_split(split)
    days = _active_days(log)
    lacking = [u for u in split.heldout_users if u not in days]
    if lacking:
        raise IntentDataError(f"{log.source}: field 'user': held-out users {lacking[:3]} have no events")
    cutoff = {**split.cutoff, **{u: int(days[u][len(days[u]) - n_test_days(len(days[u]), frac)])
                                 for u in split.heldout_users}}
    return replace(split, cutoff=cutoff, heldout_share=float(frac))


def check_heldout_share(log: EventLog, split: IntentSplit) -> None:
    """Every held-out user's test days are the share the split states (when it states one): the same held-out
    days for every method scored on it."""
    if split.heldout_share is None:
        return
    days = _active_days(log)
    for u in split.heldout_users:
        d = days.get(u, np.zeros(0, dtype=np.int64))
        want = n_test_days(len(d), split.heldout_share)
        if int((d >= split.cutoff[u]).sum()) != want:
            raise IntentDataError(f"split {split.source}: field 'cutoff': user {u} holds out "
                                  f"{int((d >= split.cutoff[u]).sum())} of {len(d)} active days, the stated "
                                  f"heldout_share {split.heldout_share} gives {want}")


def check_split(split: IntentSplit) -> None:
    """Population and held-out users must be disjoint and every user must have a cutoff."""
    both = sorted(set(split.population_users) & set(split.heldout_users))
    if both:
        raise IntentDataError(f"split {split.source}: field 'heldout_users': {len(both)} user(s) are also "
                              f"population users, e.g. {both[:3]}: leaked split")
    lacking = sorted((set(split.population_users) | set(split.heldout_users)) - set(split.cutoff))
    if lacking:
        raise IntentDataError(f"split {split.source}: field 'cutoff': no cutoff day for users {lacking[:3]}")


PARTS = ("population_train", "population_test", "user_train", "user_test", "unused")


def sample_parts(log: EventLog, rows: np.ndarray, split: IntentSplit) -> np.ndarray:
    """Index into :data:`PARTS` of each target row, by its user's group and its day against the user's cutoff."""
    names = log.user_ids[log.user[rows]]
    pop = np.isin(names, split.population_users)
    held = np.isin(names, split.heldout_users)
    cut = np.array([split.cutoff.get(str(n), np.iinfo(np.int64).max) for n in names], dtype=np.int64)
    later = log.day[rows] >= cut
    part = np.full(len(rows), 4, dtype=np.int64)
    part[pop & ~later], part[pop & later] = 0, 1
    part[held & ~later], part[held & later] = 2, 3
    return part


def check_heldout(log: EventLog, rows: np.ndarray, split: IntentSplit, allow_population: bool = False) -> None:
    """Refuse evaluation targets the model may have trained on: targets before their user's cutoff, targets of
    population users (unless ``allow_population``: then only their later days), or a leaked split."""
    check_split(split)
    check_heldout_share(log, split)
    part = sample_parts(log, rows, split)
    ok = (3, 1) if allow_population else (3,)
    bad = ~np.isin(part, ok)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        r = int(rows[i])
        raise IntentDataError(f"{log.source}: {int(bad.sum())} evaluation target(s) are not held out, e.g. user "
                              f"{log.user_ids[log.user[r]]} at {log.time[r]} ({PARTS[part[i]]}): refusing to evaluate")


def validation_split(log: EventLog, split: IntentSplit, val_frac: float = 0.25) -> IntentSplit:
    """A split for choosing hyperparameters of individual tuning without test targets: each held-out user's cutoff
    moves back to the first of the last ``val_frac`` of their *training* active days (at least one), so that the
    new split's ``user_test`` is the end of the user's own earlier days. Users with fewer than two training days
    have no validation days and leave the held-out group; population users are unchanged (the population tables
    and model are the same). :func:`check_validation` checks the result never reaches a test day."""
    if not 0 < val_frac < 1:
        raise IntentDataError(f"{split.source}: val_frac must be in (0, 1), got {val_frac}")
    check_split(split)
    day, names = log.day, log.user_ids[log.user]
    cutoff, held = dict(split.cutoff), []
    for u in split.heldout_users:
        days = np.unique(day[(names == u) & (day < split.cutoff[u])])
        if len(days) < 2:
            continue
        n_val = min(len(days) - 1, max(1, int(round(val_frac * len(days)))))
        cutoff[u] = int(days[len(days) - n_val])
        held.append(u)
    if not held:
        raise IntentDataError(f"{split.source}: field 'heldout_users': no held-out user has 2+ training days to "
                              "validate on")
    return IntentSplit(split.population_users, tuple(held), cutoff, f"{split.source} (validation)")


def check_validation(log: EventLog, rows: np.ndarray, split: IntentSplit) -> None:
    """Refuse validation targets that are not held-out users' training targets under the real ``split``."""
    check_split(split)
    part = sample_parts(log, rows, split)
    bad = part != PARTS.index("user_train")
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        r = int(rows[i])
        raise IntentDataError(f"{log.source}: {int(bad.sum())} validation target(s) are not held-out users' "
                              f"training targets, e.g. user {log.user_ids[log.user[r]]} at {log.time[r]} "
                              f"({PARTS[part[i]]}): refusing to select on them")


# -- samples and features ------------------------------------------------------------------------------------------
def target_rows(log: EventLog, min_history: int = 1) -> np.ndarray:
    """Rows that can be a target: at least ``min_history`` earlier events of the same user."""
    first = np.r_[True, log.user[1:] != log.user[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(log)), 0))
    return np.flatnonzero(np.arange(len(log)) - start >= min_history)


def _time_block(log: EventLog, rows: np.ndarray) -> np.ndarray:
    """(weekend, 3-hour block) of each row as one index in ``0..15``."""
    weekend = (log.weekday[rows] >= 5).astype(np.int64)
    return weekend * (24 // BLOCK_HOURS) + log.minute[rows] // 60 // BLOCK_HOURS


def _log_share(counts: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    c = np.maximum(counts, 0.0) + alpha
    return np.log(c / c.sum(axis=-1, keepdims=True))


@dataclass
class TransitionTables:
    """Event-to-intent and intent-to-intent transition counts fitted on training targets only."""

    pop_event: np.ndarray  # (E, C) population: last event -> intent
    pop_intent: np.ndarray  # (C, C) population: last intent -> intent
    pop_time: np.ndarray  # (16, C) population: time block of the last event -> intent
    user_intent: np.ndarray  # (U, C, C) each user's own: last intent -> intent
    user_freq: np.ndarray  # (U, C) each user's own intents

    @classmethod
    def fit(cls, log: EventLog, rows: np.ndarray, split: IntentSplit) -> TransitionTables:
        """Population tables from population-train targets, user tables from each user's own train targets."""
        c, part = len(INTENTS), sample_parts(log, rows, split)
        pop = rows[part == 0]
        own = rows[np.isin(part, (0, 2))]
        tables = cls(np.zeros((len(log.event_names), c)), np.zeros((c, c)), np.zeros((2 * 24 // BLOCK_HOURS, c)),
                     np.zeros((len(log.user_ids), c, c)), np.zeros((len(log.user_ids), c)))
        p = pop - 1
        np.add.at(tables.pop_event, (log.event[p], log.intent[pop]), 1.0)
        np.add.at(tables.pop_intent, (log.intent[p], log.intent[pop]), 1.0)
        np.add.at(tables.pop_time, (_time_block(log, p), log.intent[pop]), 1.0)
        np.add.at(tables.user_intent, (log.user[own], log.intent[own - 1], log.intent[own]), 1.0)
        np.add.at(tables.user_freq, (log.user[own], log.intent[own]), 1.0)
        return tables

    def features(self, log: EventLog, rows: np.ndarray, split: IntentSplit) -> np.ndarray:
        """``(n, C, F)`` features (:data:`INTENT_FEATURES`) of every intent for each target row; a target that
        was counted into a table is taken out of it first (leave-one-out)."""
        part = sample_parts(log, rows, split)
        c = len(INTENTS)
        prev, y = rows - 1, log.intent[rows]
        own = np.eye(c)[y]  # the target's own count
        in_pop = (part == 0)[:, None].astype(np.float64)
        in_user = np.isin(part, (0, 2))[:, None].astype(np.float64)
        u, last = log.user[rows], log.intent[prev]
        user_row = self.user_intent[u, last] - own * in_user
        feats = np.stack((
            _log_share(self.pop_event[log.event[prev]] - own * in_pop),
            _log_share(self.pop_intent[last] - own * in_pop),
            _log_share(self.pop_time[_time_block(log, prev)] - own * in_pop),
            _log_share(user_row),
            _log_share(self.user_freq[u] - own * in_user),
            np.broadcast_to(np.log1p(user_row.sum(-1, keepdims=True)), (len(rows), c)),
            np.eye(c)[last],
        ), axis=-1)
        return feats.astype(np.float32)


PROMPT_QUESTION = "Next intent:"  # the collator appends <intent_pre> after it


def describe_events(log: EventLog, rows: np.ndarray, history: int) -> list[str]:
    """The prompt of each target: its user's last ``history`` events (weekday, time, event name), oldest first."""
    start = np.r_[0, np.flatnonzero(log.user[1:] != log.user[:-1]) + 1]
    user_start = start[np.searchsorted(start, rows, side="right") - 1]
    wd, minute = log.weekday, log.minute
    texts = []
    for r, s in zip(rows.tolist(), user_start.tolist()):
        parts = [f"{WEEKDAYS[wd[i]]} {minute[i] // 60:02d}:{minute[i] % 60:02d} {log.event_names[log.event[i]]}"
                 for i in range(max(s, r - history), r)]
        texts.append("Recent events: " + "; ".join(parts) + f". {PROMPT_QUESTION}")
    return texts


class IntentDataset(torch.utils.data.Dataset):
    """Next-intent samples of ``rows``: prompt text, transition features ``(C, F)``, target intent, user, part."""

    def __init__(self, log: EventLog, rows: np.ndarray, split: IntentSplit, tables: TransitionTables,
                 history: int = 8):
        self.log, self.rows, self.split = log, np.asarray(rows, dtype=np.int64), split
        self.features = tables.features(log, self.rows, split)
        self.texts = describe_events(log, self.rows, history)
        self.targets = log.intent[self.rows]
        self.users = log.user[self.rows]
        self.parts = sample_parts(log, self.rows, split)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"id": f"{self.log.user_ids[self.users[i]]}#{int(self.rows[i])}", "text": self.texts[i],
                "features": self.features[i], "target": int(self.targets[i])}


def dataset_targets(dataset) -> np.ndarray:
    """The target intents of an :class:`IntentDataset` or of a ``torch.utils.data.Subset`` of one (what
    ``subsample`` returns), without building the prompts: what a training prior is counted from."""
    if isinstance(dataset, torch.utils.data.Subset):
        return dataset_targets(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    return np.asarray(dataset.targets, dtype=np.int64)


class IntentCollator(PromptCollator):
    """Samples of :class:`IntentDataset` -> ``input_ids``, ``attention_mask`` (B, L) with one ``<intent_pre>`` per
    row (the prompt's last token; right padding), ``intent_features`` (B, C, F), ``intent_targets`` (B,)."""

    def __init__(self, tokenizer, max_length: int | None = None):
        super().__init__(tokenizer, "right", max_length)
        if INTENT_PRE_TOKEN not in self.vocab:
            raise ValueError(f"tokenizer lacks {INTENT_PRE_TOKEN}; call stllm.tokens.add_intent_token(tokenizer) first")
        self.intent_id = self.vocab[INTENT_PRE_TOKEN]

    def texts(self, sample: dict) -> tuple[str, str]:
        return sample["text"] + " ", INTENT_PRE_TOKEN

    def __call__(self, samples: Sequence[dict]) -> dict:
        input_ids, filled, _ = self.tokenize(samples)
        self.check_slots(input_ids, filled, samples, (("<intent_pre>", self.intent_id, 1),))
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(filled.astype(np.int64)),
            "intent_features": torch.from_numpy(np.stack([s["features"] for s in samples])),
            "intent_targets": torch.tensor([s["target"] for s in samples], dtype=torch.long),
        }


TOKYO_FILE = ("llmob_tokyo", "llmob_activity_chains.csv.gz")
NYC_FILES = (("foursquare_nyc", "NYC_val.csv"), ("foursquare_nyc", "NYC_test.csv"))


def resolve_events(spec: str, seed: int = 0, n_users: int = 40, root: str | os.PathLike | None = None) -> EventLog:
    """``synthetic`` (the embedded default), ``tokyo`` (LLMob 2019 users), ``nyc`` (Foursquare NYC val+test), or a
    path to an LLMob-format CSV; ``root`` is the real-data folder (default: :func:`stllm.data.loaders.data_root`)."""
    root = data_root(root)
    if spec == "synthetic":
        return synthetic_events(seed=seed, n_users=n_users)
    if spec == "tokyo":
        return load_llmob_csv(root.joinpath(*TOKYO_FILE))
    if spec == "nyc":
        log, _ = load_nyc_events([root.joinpath(*f) for f in NYC_FILES], llmob_category_map(root.joinpath(*TOKYO_FILE)))
        return log
    return load_llmob_csv(spec)


@dataclass
class PreparedIntent:
    """Everything a run needs, built once: the log, its split, the target rows, their parts and the tables."""

    log: EventLog
    split: IntentSplit
    rows: np.ndarray
    parts: np.ndarray
    tables: TransitionTables

    def rows_of(self, *parts: str) -> np.ndarray:
        return self.rows[np.isin(self.parts, [PARTS.index(p) for p in parts])]

    def dataset(self, *parts: str, history: int = 8) -> IntentDataset:
        return IntentDataset(self.log, self.rows_of(*parts), self.split, self.tables, history)


def prepare_intent(log: EventLog, split: IntentSplit | None = None, heldout_frac: float = 0.3,
                   test_frac: float = 0.2, seed: int = 0, heldout_test_frac: float | None = None) -> PreparedIntent:
    """Split (unless given), target rows, their parts, transition tables fitted on training targets."""
    split = split or make_split(log, heldout_frac, test_frac, seed, heldout_test_frac=heldout_test_frac)
    check_split(split)
    check_heldout_share(log, split)
    rows = target_rows(log)
    return PreparedIntent(log, split, rows, sample_parts(log, rows, split), TransitionTables.fit(log, rows, split))


def validation_data(data: PreparedIntent, val_frac: float = 0.25) -> PreparedIntent:
    """``data`` under :func:`validation_split`: its ``user_test`` part is the end of each held-out user's earlier
    days (the real test days drop out, as ``unused``), the user tables count only the days before it. Checked:
    every validation target is a training target of the real split."""
    split = validation_split(data.log, data.split, val_frac)
    parts = sample_parts(data.log, data.rows, split)
    parts[data.parts == PARTS.index("user_test")] = PARTS.index("unused")
    val = PreparedIntent(data.log, split, data.rows, parts, TransitionTables.fit(data.log, data.rows, split))
    check_validation(data.log, val.rows_of("user_test"), data.split)
    return val


def prepare_from_record(record: dict, heldout_share: float | None = None) -> PreparedIntent:
    """The data and split a checkpoint trained on (its ``intent_data.json``), rebuilt exactly; with
    ``heldout_share`` the held-out users' test days become that share (:func:`with_heldout_share`)."""
    for key in ("data", "split"):
        if key not in record:
            raise IntentDataError(f"intent record: field '{key}' missing (not written by stllm train-intent?)")
    log = resolve_events(record["data"], int(record.get("synthetic_seed", 0)), int(record.get("synthetic_users", 40)),
                         record.get("data_root"))
    split = IntentSplit.from_dict(record["split"])
    return prepare_intent(log, split=split if heldout_share is None else with_heldout_share(log, split, heldout_share))
