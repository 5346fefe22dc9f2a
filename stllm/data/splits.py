"""Region, time and city splits that *record* what training saw, so zero-shot is checked in code.

A split produces :class:`SplitRecord` objects (city, region ids, time range) for its parts. Training
saves its record next to the checkpoint; evaluation calls :func:`assert_zero_shot` with the training
record and its own, and refuses to report "zero-shot" numbers when anything overlaps.

Cities are compared by *content*, not by name: a record carries a :class:`ContentFingerprint` of
its whole city (a hash per region and whole day -- whole week for daily data -- of the values), so
the training file saved under another name, with its regions renamed, reordered or subset, or cut
or relabelled in time by whole days, is still recognised as the training city
(:meth:`SplitRecord.matches`). Records written before fingerprints existed fall back to names, with
a warning.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from stllm.data.city import CityData

logger = logging.getLogger("stllm")


class SplitError(ValueError):
    """A split that is inconsistent with its city or violates a zero-shot requirement."""


_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)
_MINUTE = np.timedelta64(1, "m")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _block_steps(freq_minutes: int) -> int:
    """Steps per fingerprint block: a day, or a week when a day holds fewer than 12 steps (daily data), so a
    block holds enough values to identify a series; 24 steps when the step does not divide a day."""
    if 1440 % freq_minutes:
        return 24
    per_day = 1440 // freq_minutes
    return per_day if per_day >= 12 else 7 * per_day


def _block_hashes(values: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """``(B, S, N, C)`` blocks -> ``(B, N)`` uint32 hashes of each region's block; 0 marks a constant block
    (all values equal, e.g. a night of zeros), which identifies nothing and is never matched."""
    bits = np.ascontiguousarray(values.astype(np.float32) + np.float32(0)).view(np.uint32).astype(np.uint64)
    bits = np.where(observed, bits, np.uint64(0xFFFFFFFF))  # -0.0 became 0.0 above; missing gets its own code
    s, c = values.shape[1], values.shape[3]
    pos = _mix(np.arange(s * c, dtype=np.uint64).reshape(s, c) * _GOLDEN + _GOLDEN)[None, :, None, :]
    h = _mix(_mix(bits ^ pos).sum(axis=(1, 3), dtype=np.uint64))
    h32 = ((h >> np.uint64(32)) ^ h) & np.uint64(0xFFFFFFFF)
    h32 = np.where(h32 == 0, np.uint64(1), h32).astype(np.uint32)
    flat = bits.transpose(0, 2, 1, 3).reshape(bits.shape[0], bits.shape[2], -1)
    constant = (flat == flat[..., :1]).all(axis=-1)
    return np.where(constant, np.uint32(0), h32)


@dataclass(frozen=True)
class ContentFingerprint:
    """Per-region hashes of a city's values over whole blocks of time (:func:`_block_steps`), blocks aligned
    to the calendar so two files of the same data, cut differently, hash the same blocks the same way.

    ``hashes`` holds ``(n_blocks, n_regions)`` little-endian uint32 (0: constant block); block ``b`` starts at
    ``start + b * block_steps * freq``. Two fingerprints are compared only at the same step, block and
    channel count."""

    freq_minutes: int
    block_steps: int
    start: str
    n_channels: int
    regions: tuple[str, ...]
    hashes: bytes

    def __post_init__(self):
        object.__setattr__(self, "regions", tuple(str(r) for r in self.regions))

    @classmethod
    def of(cls, city: CityData) -> ContentFingerprint:
        """The fingerprint of all of ``city`` (every region, every whole block)."""
        f = int(city.freq / _MINUTE)
        block = _block_steps(f)
        span = block * f
        t0 = int(city.timestamps[0].astype("datetime64[m]").astype(np.int64))
        phase = t0 % f  # blocks start where the step grid meets the calendar
        first = ((-(t0 - phase)) % span) // f
        n = max(0, (city.n_steps - first) // block)
        stop = first + n * block
        shape = (n, block, city.n_regions, city.n_channels)
        h = _block_hashes(city.values[first:stop].reshape(shape), city.observed[first:stop].reshape(shape))
        start = np.datetime64(t0 + first * f, "m")
        return cls(f, block, str(start), city.n_channels, city.region_ids, h.astype("<u4").tobytes())

    @property
    def array(self) -> np.ndarray:
        """``(n_blocks, n_regions)`` uint32."""
        return np.frombuffer(self.hashes, dtype="<u4").reshape(-1, len(self.regions))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["regions"] = list(self.regions)
        d["hashes"] = base64.b64encode(self.hashes).decode("ascii")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ContentFingerprint:
        fp = cls(int(d["freq_minutes"]), int(d["block_steps"]), str(d["start"]), int(d["n_channels"]),
                 tuple(d["regions"]), base64.b64decode(d["hashes"], validate=True))  # fmt: skip
        if len(fp.hashes) % (4 * max(1, len(fp.regions))):
            raise ValueError("content.hashes: length does not match the number of regions")
        return fp

    def match(self, other: ContentFingerprint, min_fraction: float = 0.5, min_blocks: int = 2) -> dict:
        """``{other region id: (self region id, shift)}`` for the regions of ``other`` whose series is a series
        of ``self`` (``shift``: ``other``'s time minus ``self``'s, whole blocks).

        A pair matches when at least ``min_blocks`` of its non-constant blocks are equal at one shift and they
        are at least ``min_fraction`` of the blocks the two series share at that shift: chance equalities of
        sparse blocks (a week with one event) are far below that, a copy is at 100%. Blocks that occur more
        than once in ``self`` are left out."""
        if (self.freq_minutes, self.block_steps, self.n_channels) != (
            other.freq_minutes, other.block_steps, other.n_channels
        ):
            return {}
        mine, theirs = self.array, other.array
        values, first, counts = np.unique(mine, return_index=True, return_counts=True)
        unique = (counts == 1) & (values != 0)  # a block seen twice (a sparse week) identifies no place or time
        keys = values[unique]
        tb, tn = np.unravel_index(first[unique], mine.shape)
        mine = np.where(np.isin(mine, keys), mine, np.uint32(0))
        eb, en = np.nonzero(theirs)
        pos = np.minimum(np.searchsorted(keys, theirs[eb, en]), max(len(keys) - 1, 0))
        hit = (keys[pos] == theirs[eb, en]) if len(keys) else np.zeros(len(eb), bool)
        eb, en, tb, tn = eb[hit], en[hit], tb[pos[hit]], tn[pos[hit]]
        d = eb - tb  # block offset of the pair: other's block index minus self's
        triples, counts = np.unique(np.stack([en, tn, d], axis=1), axis=0, return_counts=True)
        best: dict[int, tuple[int, int, int]] = {}
        for (e, t, off), k in zip(triples.tolist(), counts.tolist()):
            if k < min_blocks or k <= best.get(e, (0, 0, 0))[0]:
                continue
            j = np.arange(len(mine))
            inside = (j + off >= 0) & (j + off < len(theirs))
            shared = int(((mine[j[inside], t] != 0) & (theirs[j[inside] + off, e] != 0)).sum())
            if k >= min_fraction * shared:
                best[e] = (k, t, off)
        block = np.timedelta64(self.block_steps * self.freq_minutes, "m")
        base = np.datetime64(other.start, "m") - np.datetime64(self.start, "m")
        return {other.regions[e]: (self.regions[t], base + off * block) for e, (_, t, off) in best.items()}


@dataclass(frozen=True)
class SplitRecord:
    """What one part of a split covers: a city, region ids and a half-open time range [start, end), and
    (``content``) the fingerprint of the whole city, by which other data is recognised as this city."""

    city: str
    regions: tuple[str, ...]
    time_range: tuple[str, str]
    content: ContentFingerprint | None = None

    def __post_init__(self):
        object.__setattr__(self, "regions", tuple(str(r) for r in self.regions))
        object.__setattr__(self, "time_range", tuple(str(t) for t in self.time_range))

    def to_json(self) -> str:
        d = {"city": self.city, "regions": list(self.regions), "time_range": list(self.time_range)}
        text = json.dumps(d, sort_keys=True)
        if self.content is None:
            return text
        return text[:-1] + ', "content": ' + json.dumps(self.content.to_dict()) + "}"  # the blob last, for readers

    @classmethod
    def from_json(cls, text: str) -> SplitRecord:
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        content = ContentFingerprint.from_dict(d["content"]) if d.get("content") is not None else None
        return cls(d["city"], tuple(d["regions"]), tuple(d["time_range"]), content)

    @classmethod
    def load(cls, path: str | Path) -> SplitRecord:
        """Read a ``split.json``; a corrupt or truncated file raises ``ValueError`` naming it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"split record not found: {path}")
        try:
            record = cls.from_json(path.read_text(encoding="utf-8"))
            if len(record.time_range) != 2:
                raise ValueError(f"time_range must be [start, end], got {list(record.time_range)}")
            return record
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            raise ValueError(
                f"{path}: corrupt or truncated split record ({what}); restore it from the training run "
                "(it records what the checkpoint was trained on)"
            ) from None

    def digest(self) -> str:
        """sha256 of the fingerprint (or of the name when there is none): short, for keys and logs."""
        blob = self.content.hashes if self.content is not None else self.city.encode()
        return hashlib.sha256(blob).hexdigest()

    def matches(self, other: SplitRecord) -> dict[str, tuple[str, np.timedelta64]]:
        """``{other's region id: (this record's region id, time shift)}``: the regions of ``other``'s city
        that are regions of this record's city, by content. Same name: unmatched ids also pair with
        themselves (a constant series has no content to match). Without fingerprints, by name only."""
        if self.content is None or other.content is None:
            logger.warning("split record of %r has no content fingerprint (written by an older stllm): "
                           "cities are compared by name only", self.city if self.content is None else other.city)
            return {r: (r, np.timedelta64(0, "m")) for r in other.regions} if self.city == other.city else {}
        links = self.content.match(other.content)
        if self.city == other.city:
            shift = next(iter(links.values()))[1] if links else np.timedelta64(0, "m")
            known = set(self.content.regions)
            links = {**{r: (r, shift) for r in other.content.regions if r in known}, **links}
        return links


def _time_range(city: CityData, sl: slice) -> tuple[str, str]:
    """ISO strings of the half-open range covered by ``city`` steps ``sl``."""
    idx = np.arange(city.n_steps)[sl]
    if idx.size == 0:
        raise SplitError(f"{city.source}: empty time range {sl}")
    return str(city.timestamps[idx[0]]), str(city.timestamps[idx[-1]] + city.freq)


def _overlaps(a: tuple[str, str], b: tuple[str, str]) -> bool:
    a0, a1, b0, b1 = (np.datetime64(t, "m") for t in (*a, *b))
    return bool(a0 < b1 and b0 < a1)


@dataclass(frozen=True)
class RegionSplit:
    """Disjoint region id sets (train / val / test) of one city: the cross-region zero-shot setup."""

    train: tuple[str, ...]
    test: tuple[str, ...]
    val: tuple[str, ...] = ()
    zero_shot: bool = True

    def __post_init__(self):
        for part in ("train", "test", "val"):
            object.__setattr__(self, part, tuple(str(r) for r in getattr(self, part)))
        if self.zero_shot:
            for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
                common = sorted(set(getattr(self, a)) & set(getattr(self, b)))
                if common:
                    raise SplitError(
                        f"RegionSplit: field '{b}': {len(common)} region ids also in '{a}' in a zero-shot split: "
                        f"{common[:8]}"
                    )

    @classmethod
    def random(cls, city: CityData, test: float = 0.2, val: float = 0.0, seed: int = 0) -> RegionSplit:
        """Deterministic random split of the city's regions by fraction."""
        ids = np.array(city.region_ids)
        order = np.random.default_rng(seed).permutation(len(ids))
        n_test, n_val = round(test * len(ids)), round(val * len(ids))
        if len(ids) - n_test - n_val < 1 or n_test < 1:
            raise SplitError(f"{city.source}: cannot split {len(ids)} regions into test={test}, val={val}")
        return cls(train=tuple(sorted(ids[order[n_test + n_val:]], key=_natural)),
                   test=tuple(sorted(ids[order[:n_test]], key=_natural)),
                   val=tuple(sorted(ids[order[n_test:n_test + n_val]], key=_natural)))

    def validate(self, city: CityData) -> RegionSplit:
        """Raise naming the unknown ids if a part refers to regions ``city`` does not have."""
        for part in ("train", "val", "test"):
            city.region_index(getattr(self, part), field_name=f"RegionSplit.{part}")
        return self

    def indices(self, city: CityData, part: str) -> np.ndarray:
        return city.region_index(getattr(self, part), field_name=f"RegionSplit.{part}")


@dataclass(frozen=True)
class TimeSplit:
    """Chronological step ranges of one city: train [0, train_end), val [train_end, val_end), test after.

    ``gap`` steps are dropped at each boundary so that windows on one side never read the other.
    """

    train_end: int
    val_end: int
    n_steps: int
    gap: int = 0

    def __post_init__(self):
        if not 0 < self.train_end <= self.val_end < self.n_steps or self.gap < 0:
            raise SplitError(
                f"TimeSplit: need 0 < train_end <= val_end < n_steps and gap >= 0, got "
                f"{self.train_end}, {self.val_end}, {self.n_steps}, gap {self.gap}"
            )

    @classmethod
    def by_fraction(cls, city: CityData, train: float = 0.7, val: float = 0.1, gap: int = 0) -> TimeSplit:
        t = city.n_steps
        return cls(int(round(train * t)), int(round((train + val) * t)), t, gap)

    def slice(self, part: str) -> slice:
        g = self.gap
        return {
            "train": slice(0, self.train_end),
            "val": slice(self.train_end + g, self.val_end),
            "test": slice(self.val_end + g, self.n_steps),
        }[part]


@dataclass(frozen=True)
class CitySplit:
    """Cross-city split: train on some cities, evaluate on others (by ``CityData.name``)."""

    train: tuple[str, ...]
    test: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "train", tuple(self.train))
        object.__setattr__(self, "test", tuple(self.test))
        common = sorted(set(self.train) & set(self.test))
        if common:
            raise SplitError(f"CitySplit: field 'test': cities also in 'train': {common}")


def set_aside(ids: Sequence[str], held: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(kept, held)``: ``ids`` split by membership in ``held``, each in the order of ``ids``."""
    held = set(held)
    return tuple(r for r in ids if r not in held), tuple(r for r in ids if r in held)


def hold_out_regions(ids: Sequence[str], fraction: float, seed: int, what: str = "val_region_fraction"
                     ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(fit, held)``: ``round(fraction * len(ids))`` of the training region ``ids`` held out of fitting, drawn
    with ``seed``, to choose a zero-shot model on regions it never fitted. Both stages draw the same regions
    from the same ids and seed; ``fraction`` 0 holds out none."""
    ids = tuple(ids)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {fraction}")
    n = int(round(fraction * len(ids)))
    if fraction and not 1 <= n < len(ids):
        raise ValueError(f"{what}={fraction} of {len(ids)} regions leaves {n} for validation, {len(ids) - n} for "
                         "fitting: both need one")
    drawn = np.random.default_rng(seed).choice(len(ids), n, replace=False)
    return set_aside(ids, (ids[i] for i in drawn.tolist()))


def split_record(
    city: CityData,
    regions: Sequence[str] | None = None,
    time: slice | None = None,
    content: bool | ContentFingerprint = True,
) -> SplitRecord:
    """The record of what a (region subset, time slice) of ``city`` covers; validates the ids.

    ``content`` (default): with the fingerprint of the whole city (pass a precomputed one to reuse it)."""
    ids = city.region_ids if regions is None else tuple(str(r) for r in regions)
    city.region_index(ids, field_name="split.regions")
    fp = ContentFingerprint.of(city) if content is True else (content or None)
    return SplitRecord(city.name, ids, _time_range(city, time or slice(None)), fp)


def make_records(
    city: CityData, regions: RegionSplit | None = None, time: TimeSplit | None = None, part: str = "train"
) -> SplitRecord:
    """Record of one part ("train", "val", "test") of a region and/or time split of ``city``."""
    ids = None if regions is None else getattr(regions, part)
    return split_record(city, ids, None if time is None else time.slice(part))


def assert_zero_shot(
    train_record: SplitRecord | Iterable[SplitRecord],
    eval_record: SplitRecord | Iterable[SplitRecord],
    require: Sequence[str] = ("regions",),
) -> None:
    """Raise :class:`SplitError` unless every evaluated (city, region) was unseen in training.

    ``require`` lists what must be disjoint within one city: ``"regions"`` (cross-region zero-shot;
    a different city always passes) and/or ``"time"`` (evaluation time never trained on). Passing
    ``require=("city",)`` demands the evaluated cities never appear in training at all. "One city" is
    decided by content (:meth:`SplitRecord.matches`): the training data under another name, with renamed
    or reordered regions or relabelled times, is the training city, and its regions and times are
    compared after mapping them onto the training ones.
    """
    trains = [train_record] if isinstance(train_record, SplitRecord) else list(train_record)
    evals = [eval_record] if isinstance(eval_record, SplitRecord) else list(eval_record)
    unknown = set(require) - {"regions", "time", "city"}
    if unknown:
        raise ValueError(f"assert_zero_shot: unknown requirement(s) {sorted(unknown)}")
    for ev in evals:
        for tr in trains:
            links = tr.matches(ev)
            if not links:
                continue
            what = repr(ev.city) if ev.city == tr.city else f"{ev.city!r} (the training city {tr.city!r}, by content)"
            if "city" in require:
                raise SplitError(f"not zero-shot: evaluated city {what} was seen in training")
            if "regions" in require:
                _check_regions(tr, ev, links, what)
            if "time" in require:
                _check_time(tr, ev, links, what)


def _check_regions(tr: SplitRecord, ev: SplitRecord, links: dict, what: str) -> None:
    trained = set(tr.regions)
    common = sorted((r for r in ev.regions if r in links and links[r][0] in trained), key=_natural)
    if common:
        renamed = [f"{r}={links[r][0]}" for r in common if links[r][0] != r]
        note = f" (evaluated=trained ids: {renamed[:8]})" if renamed else ""
        raise SplitError(f"not zero-shot: {len(common)} evaluated regions of {what} were seen in training: "
                         f"{common[:8]}{note}")  # fmt: skip


def _check_time(tr: SplitRecord, ev: SplitRecord, links: dict, what: str) -> None:
    """The training time, moved onto the evaluated data's clock by each shift the content match found."""
    for shift in sorted({s for _, s in links.values()}):
        moved = tuple(str(np.datetime64(t, "m") + shift) for t in tr.time_range)
        if _overlaps(moved, ev.time_range):
            note = "" if shift == np.timedelta64(0, "m") else f" (the training data relabelled by {shift})"
            raise SplitError(f"not zero-shot: evaluated time {ev.time_range} of {what} overlaps training time "
                             f"{moved}{note}")  # fmt: skip


def _natural(region_id: str):
    return (0, int(region_id), "") if region_id.isdigit() else (1, 0, region_id)
