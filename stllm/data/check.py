"""``stllm data check``: what a city file holds and everything wrong with it, before hours of training.

Loading stops at the first error; a user fixing a file wants them all. So the check first looks at
the raw file for every problem it can name independently (each key's shape, irregular time steps,
duplicated region ids), then loads it through the same reader training and evaluation use (an
error found only there is one more problem, with the message ``stllm train``/``stllm eval`` would
stop with), and on a loaded city adds warnings: things that are legal but rarely meant (a channel
that is zero everywhere, regions or time steps never observed, missing coordinates).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stllm.data.city import CityData, CityDataError
from stllm.data.city_files import freq_string, load_city_file, npz_keys
from stllm.data.loaders import _open_npz, npz_problems


@dataclass
class CheckReport:
    """The outcome of :func:`check_city_file`: ``summary`` is None when the file could not be loaded."""

    path: str
    summary: dict | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def summarize(city: CityData) -> dict:
    """The numbers ``stllm data check`` prints: size, clock, missing share, per-channel level, metadata.

    Shares and means count observed entries only (``city.observed``): the mean of a channel is its mean
    observed value (flows), its event rate the share of observed (step, region) cells with a count > 0."""
    obs = city.observed
    n_obs = obs.sum(axis=(0, 1))
    masked_values = np.where(obs, city.values, 0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = masked_values.sum(axis=(0, 1)) / n_obs
        rate = ((city.values > 0) & obs).sum(axis=(0, 1)) / n_obs
    level = rate if city.task == "event" else mean
    return {
        "name": city.name, "task": city.task, "regions": city.n_regions, "steps": city.n_steps,
        "freq": freq_string(city.freq), "start": str(city.timestamps[0]), "end": str(city.timestamps[-1]),
        "channels": list(city.channels), "missing": float(1 - obs.mean()),
        "missing_per_channel": dict(zip(city.channels, (1 - obs.mean(axis=(0, 1))).tolist())),
        ("event_rate" if city.task == "event" else "mean"): dict(zip(city.channels, level.tolist())),
        "coordinates": int(sum(r.has_coords for r in city.regions)),
        "adjacency": city.adjacency is not None, "pois": int(sum(bool(r.pois) for r in city.regions)),
    }  # fmt: skip


def city_warnings(city: CityData) -> list[str]:
    """Legal but suspicious: each names the file, the field and what to look at."""
    src, obs, out = city.source, city.observed, []
    seen = obs.any(axis=(0, 1))
    for c in np.flatnonzero(~seen):
        out.append(f"{src}: field 'values': channel {city.channels[c]!r} is never observed (all masked)")
    zero = seen & ~((city.values != 0) & obs).any(axis=(0, 1))
    for c in np.flatnonzero(zero):
        out.append(f"{src}: field 'values': channel {city.channels[c]!r} is 0 everywhere it is observed")
    never = np.flatnonzero(~obs.any(axis=(0, 2)))
    if never.size:
        ids = [city.region_ids[i] for i in never[:8]]
        out.append(f"{src}: field 'mask': {never.size} of {city.n_regions} region(s) never observed: {ids}"
                   f"{' ...' if never.size > 8 else ''}")
    empty = np.flatnonzero(~obs.any(axis=(1, 2)))
    if empty.size:
        out.append(f"{src}: field 'mask': {empty.size} of {city.n_steps} time step(s) with no observation at all "
                   f"(gaps), first {city.timestamps[empty[0]]}")
    coords = sum(r.has_coords for r in city.regions)
    if 0 < coords < city.n_regions:
        out.append(f"{src}: field 'lat': {city.n_regions - coords} of {city.n_regions} regions have no coordinates")
    return out


def _raw_npz_problems(path: Path, keys: Mapping[str, str] | None) -> list[CityDataError]:
    """Problems visible in the archive before :class:`CityData` sees it: every key's shape, every
    irregular time step, every duplicated region id."""
    data = _open_npz(path)
    mapping = npz_keys(list(data), keys)
    mapping.setdefault("values", "values")
    problems = npz_problems(data, mapping, str(path))
    named = {p.field for p in problems}
    time = data.get(mapping.get("time", "time"))
    if time is not None and time.ndim == 1 and len(time) > 2 and "time" not in named:
        try:
            steps = np.diff(time.astype("datetime64[m]"))
        except (ValueError, TypeError):
            steps = None
        if steps is not None:
            values, counts = np.unique(steps, return_counts=True)
            usual = values[np.argmax(counts)]
            bad = np.flatnonzero(steps != usual)
            if bad.size:
                i = int(bad[0])
                problems.append(CityDataError(str(path), "timestamps", f"{bad.size} irregular time step(s) (the usual "
                                              f"step is {usual}), first {time[i]} -> {time[i + 1]} at index {i + 1}"))
    ids = data.get(mapping.get("region_ids", "region_ids"))
    if ids is not None and ids.ndim == 1 and "region_ids" not in named:
        uniq, counts = np.unique(ids.astype(str), return_counts=True)
        if (counts > 1).any():
            problems.append(CityDataError(str(path), "regions", f"region ids must be unique; duplicated: "
                                                                f"{uniq[counts > 1][:8].tolist()}"))
    return problems


def check_city_file(path: str | os.PathLike, *, task: str | None = None, freq: str | None = None,
                    channels: Sequence[str] | None = None, keys: Mapping[str, str] | None = None) -> CheckReport:
    """Load and validate a city file as training would (same reader, same overrides), collecting every
    problem it can rather than stopping at the first."""
    from stllm.errors import user_error_types

    path = Path(path)
    report = CheckReport(str(path))
    fields: set[str] = set()
    if path.suffix == ".npz" and path.is_file():
        try:
            raw = _raw_npz_problems(path, keys)
        except user_error_types() as e:
            raw = [e]
        report.errors += [str(e) for e in raw]
        fields |= {getattr(e, "field", None) for e in raw}
    try:
        city = load_city_file(path, task=task, freq=freq, channels=channels, keys=keys)
    except user_error_types() as e:
        if not (isinstance(e, CityDataError) and e.field in fields) and str(e) not in report.errors:
            report.errors.append(str(e))
        return report
    report.summary = summarize(city)
    report.warnings = city_warnings(city)
    return report


def _percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def format_report(report: CheckReport) -> str:
    """The summary as aligned ``label  value`` lines, then one line per warning and error."""
    lines = [f"{'file':<12}{report.path}"]
    s = report.summary
    if s is not None:
        chans = s["channels"]
        level_key = "event_rate" if s["task"] == "event" else "mean"
        level = ", ".join(f"{c} {s[level_key][c]:.4g}" for c in chans)
        missing = ", ".join(f"{c} {_percent(s['missing_per_channel'][c])}" for c in chans)
        lines += [
            f"{'name':<12}{s['name']}", f"{'task':<12}{s['task']}", f"{'regions':<12}{s['regions']}",
            f"{'steps':<12}{s['steps']} x {s['freq']}", f"{'dates':<12}{s['start']} .. {s['end']}",
            f"{'channels':<12}{', '.join(chans)}", f"{'missing':<12}{_percent(s['missing'])} ({missing})",
            f"{level_key.replace('_', ' '):<12}{level}",
            f"{'coordinates':<12}{s['coordinates']} of {s['regions']} regions",
            f"{'adjacency':<12}{'yes' if s['adjacency'] else 'no'}",
            f"{'POIs':<12}{s['pois']} of {s['regions']} regions",
        ]  # fmt: skip
    lines += [f"warning: {w}" for w in report.warnings]
    lines += [f"error: {e}" for e in report.errors]
    if not report.warnings and not report.errors:
        lines.append("no problems found")
    return "\n".join(lines)
