"""Region, time and city splits that *record* what training saw, so zero-shot is checked in code.

A split produces :class:`SplitRecord` objects (city, region ids, time range) for its parts. Training
saves its record next to the checkpoint; evaluation calls :func:`assert_zero_shot` with the training
record and its own, and refuses to report "zero-shot" numbers when anything overlaps.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from stllm.data.city import CityData


class SplitError(ValueError):
    """A split that is inconsistent with its city or violates a zero-shot requirement."""


@dataclass(frozen=True)
class SplitRecord:
    """What one part of a split covers: a city, region ids and a half-open time range [start, end)."""

    city: str
    regions: tuple[str, ...]
    time_range: tuple[str, str]

    def __post_init__(self):
        object.__setattr__(self, "regions", tuple(str(r) for r in self.regions))
        object.__setattr__(self, "time_range", tuple(str(t) for t in self.time_range))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SplitRecord:
        d = json.loads(text)
        return cls(d["city"], tuple(d["regions"]), tuple(d["time_range"]))


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


def split_record(city: CityData, regions: Sequence[str] | None = None, time: slice | None = None) -> SplitRecord:
    """The record of what a (region subset, time slice) of ``city`` covers; validates the ids."""
    ids = city.region_ids if regions is None else tuple(str(r) for r in regions)
    city.region_index(ids, field_name="split.regions")
    return SplitRecord(city.name, ids, _time_range(city, time or slice(None)))


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
    ``require=("city",)`` demands the evaluated cities never appear in training at all.
    """
    trains = [train_record] if isinstance(train_record, SplitRecord) else list(train_record)
    evals = [eval_record] if isinstance(eval_record, SplitRecord) else list(eval_record)
    unknown = set(require) - {"regions", "time", "city"}
    if unknown:
        raise ValueError(f"assert_zero_shot: unknown requirement(s) {sorted(unknown)}")
    for ev in evals:
        for tr in trains:
            if tr.city != ev.city:
                continue
            if "city" in require:
                raise SplitError(f"not zero-shot: evaluated city {ev.city!r} was seen in training")
            if "regions" in require:
                common = sorted(set(tr.regions) & set(ev.regions), key=_natural)
                if common:
                    raise SplitError(
                        f"not zero-shot: {len(common)} evaluated regions of {ev.city!r} were seen in training: "
                        f"{common[:8]}"
                    )
            if "time" in require and _overlaps(tr.time_range, ev.time_range):
                raise SplitError(
                    f"not zero-shot: evaluated time {ev.time_range} of {ev.city!r} overlaps training time "
                    f"{tr.time_range}"
                )


def _natural(region_id: str):
    return (0, int(region_id), "") if region_id.isdigit() else (1, 0, region_id)
