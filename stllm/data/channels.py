"""Which channel of a new city feeds which channel a checkpoint was trained on.

A checkpoint's encoder, heads and scaler read channel ``k`` as "the k-th trained quantity"
(``inflow`` then ``outflow``, say). Another dataset may store the same quantities in another order or
under other names (``dropoff, pickup``), so feeding channels by position would silently swap them.
The rule here: channels are matched **by name**; a city whose names differ needs an explicit
``new=trained`` map; only data that carries no names at all (``channel_0``, ``channel_1``, ... as
:func:`stllm.data.load_npz` names them) or a checkpoint that stored none is fed by position, and
that is said in a warning. The mapped city carries the trained names, so prompts read as in training.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from stllm.data.city import CityData

logger = logging.getLogger("stllm")
MAP_SYNTAX = "--channel_map new=trained,... (e.g. --channel_map pickup=outflow,dropoff=inflow)"


def is_unnamed(channels: Sequence[str]) -> bool:
    """True for the placeholder names a loader gives channels of a file without names: ``channel_0..``."""
    return tuple(channels) == tuple(f"channel_{i}" for i in range(len(channels)))


def parse_channel_map(text: str | Mapping[str, str] | None) -> dict[str, str] | None:
    """``"pickup=outflow,dropoff=inflow"`` (the ``--channel_map`` flag) -> ``{"pickup": "outflow", ...}``."""
    if text is None or isinstance(text, Mapping):
        return None if text is None else {str(k): str(v) for k, v in text.items()}
    out: dict[str, str] = {}
    for item in (s.strip() for s in str(text).split(",")):
        new, sep, old = (p.strip() for p in item.partition("="))
        if not sep or not new or not old:
            raise ValueError(f"channel_map (--channel_map): {item!r} is not new=trained; use {MAP_SYNTAX}")
        if new in out:
            raise ValueError(f"channel_map (--channel_map): channel {new!r} of the data is mapped twice")
        out[new] = old
    return out


def describe(mapping: Mapping[str, str]) -> str:
    """``pickup -> outflow, dropoff -> inflow``: the line logged and recorded with results."""
    return ", ".join(f"{new} -> {old}" for new, old in mapping.items())


def map_channels(
    city: CityData,
    trained: Sequence[str] | None,
    mapping: Mapping[str, str] | str | None = None,
    what: str | None = None,
) -> tuple[CityData, dict[str, str]]:
    """``city`` with its channels reordered (and renamed) to ``trained``, and the mapping used
    (``{city channel: trained channel}`` in trained order).

    ``mapping`` (``{new: trained}`` or ``"new=trained,..."``) must feed every trained channel exactly
    once; channels of ``city`` it leaves out are dropped. Without it, names must match (a superset is
    fine: the extra channels are dropped); positional feeding happens only when ``trained`` is empty
    (an old checkpoint) or ``city`` has no names, with a warning. ``what`` names the data in errors.
    """
    what = what or f"data {city.name!r} ({city.source})"
    new = list(city.channels)
    trained = [str(c) for c in trained or ()]
    mapping = parse_channel_map(mapping)
    if mapping is not None:
        pairs = _explicit(new, trained, mapping, what)
        how = "as given by --channel_map"
    elif trained and set(trained) <= set(new):
        pairs = {t: t for t in trained}
        how = "by name"
    elif not trained or is_unnamed(new) or is_unnamed(trained):
        if trained and len(new) != len(trained):
            raise ValueError(_refusal(what, new, trained, f"{what} has {len(new)} channels {new} without names"))
        pairs = dict(zip(new, trained or new))
        why = "the checkpoint stores no channel names" if not trained else f"{what} has no channel names"
        logger.warning("channels fed by position (%s): %s; check the order or pass %s", why, describe(pairs),
                       MAP_SYNTAX)  # fmt: skip
        how = None
    else:
        raise ValueError(_refusal(what, new, trained))
    dropped = [c for c in new if c not in pairs]
    if how is not None:
        logger.warning("channels (%s): %s%s", how, describe(pairs), f"; dropped {dropped}" if dropped else "")
    return _reordered(city, [new.index(c) for c in pairs], list(pairs.values())), pairs


def _explicit(new: list[str], trained: list[str], mapping: dict[str, str], what: str) -> dict[str, str]:
    """Check a ``new=trained`` map against both name lists; returns it ordered as ``trained``."""
    unknown = [c for c in mapping if c not in new]
    if unknown:
        raise ValueError(f"channel_map (--channel_map): {what} has no channel(s) {unknown}; its channels are {new}")
    if not trained:
        raise ValueError("channel_map (--channel_map): the checkpoint stores no channel names (scaler.json has no "
                         "'channels'), so channels can only be fed by position; leave --channel_map out")
    unknown = sorted({t for t in mapping.values() if t not in trained})
    if unknown:
        raise ValueError(f"channel_map (--channel_map): the checkpoint has no channel(s) {unknown}; it was trained "
                         f"on {trained}")  # fmt: skip
    fed: dict[str, list[str]] = {}
    for n, t in mapping.items():
        fed.setdefault(t, []).append(n)
    twice = {t: ns for t, ns in fed.items() if len(ns) > 1}
    if twice:
        t, ns = next(iter(twice.items()))
        raise ValueError(f"channel_map (--channel_map): trained channel {t!r} is fed twice (by {ns}); each of "
                         f"{trained} must be fed exactly once")  # fmt: skip
    missing = [t for t in trained if t not in fed]
    if missing:
        raise ValueError(f"channel_map (--channel_map): trained channel(s) {missing} are fed by nothing; each of "
                         f"{trained} must be fed exactly once, e.g. {','.join(f'<new>={t}' for t in missing)}")
    return {fed[t][0]: t for t in trained}


def _refusal(what: str, new: list[str], trained: list[str], head: str | None = None) -> str:
    head = head or f"{what} has {len(new)} channels {new}"
    return (f"{head}; the checkpoint was trained on {len(trained)} channels {trained}. Channels are matched by name, "
            f"never by position when the names differ: say which feeds which with {MAP_SYNTAX}")


def _reordered(city: CityData, idx: list[int], names: list[str]) -> CityData:
    """``city`` with channels ``idx`` (in that order) named ``names``; the same object when nothing changes."""
    if idx == list(range(city.n_channels)) and tuple(names) == city.channels:
        return city
    sel = np.asarray(idx, dtype=np.int64)
    mask = None if city.mask is None else city.mask[..., sel]
    return replace(city, values=city.values[..., sel], mask=mask, channels=tuple(names))
