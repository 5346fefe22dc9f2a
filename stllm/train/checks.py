"""Range checks for numeric options, shared by the training entry points.

A value out of range must stop a run before it starts, with a sentence naming the flag: HF's
``max_steps 0`` falls back to epochs, a negative ``--steps_per_epoch`` ran whole epochs, a negative
held-out fraction held out nothing. Dataclass arguments call :func:`check_fields` from their
``__post_init__``; argparse options use the ``type=`` functions below.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from typing import Any

Rule = tuple[str, Callable[[Any], bool], str]  # (field, accepts the value, what it must be)

POSITIVE = (lambda v: v > 0, "> 0")
NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
FRACTION_OPEN = (lambda v: 0 < v < 1, "in (0, 1)")
FRACTION_HALF_OPEN = (lambda v: 0 <= v < 1, "in [0, 1)")
FRACTION_UPPER = (lambda v: 0 < v <= 1, "in (0, 1]")


def rule(name: str, kind: tuple[Callable[[Any], bool], str], optional: bool = False) -> Rule:
    """A rule for field ``name``; ``optional``: None is accepted too."""
    test, words = kind
    return name, (lambda v: v is None or test(v)) if optional else test, words + (" (or unset)" if optional else "")


def check_fields(obj: Any, rules: Iterable[Rule], prefix: str = "--") -> None:
    """Raise ValueError naming every field of ``obj`` whose value breaks its rule (NaN breaks them all)."""
    bad = []
    for name, test, words in rules:
        value = getattr(obj, name)
        nan = isinstance(value, float) and math.isnan(value)
        if nan or not test(value):
            bad.append(f"{prefix}{name} must be {words}, got {value!r}")
    if bad:
        raise ValueError("; ".join(bad))


def _typed(convert: Callable[[str], Any], test: Callable[[Any], bool], words: str) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {words}, got {text!r}") from None
        if (isinstance(value, float) and math.isnan(value)) or not test(value):
            raise argparse.ArgumentTypeError(f"must be {words}, got {text!r}")
        return value

    parse.__name__ = words  # argparse names the type in its own messages
    return parse


positive_int = _typed(int, lambda v: v > 0, "a positive integer")
non_negative_int = _typed(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _typed(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
non_negative_float = _typed(float, lambda v: 0 <= v < math.inf, "a number >= 0")
fraction_open = _typed(float, lambda v: 0 < v < 1, "a fraction in (0, 1)")
fraction_half_open = _typed(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
fraction_upper = _typed(float, lambda v: 0 < v <= 1, "a fraction in (0, 1]")


def at_least(n: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``n``."""
    return _typed(int, lambda v: v >= n, f"an integer >= {n}")


def claims_output_dir(kind: str, flag: str = "--overwrite_output_dir"):
    """Decorator: while the function runs, hold its ``output_dir`` argument (when not None) with
    :func:`stllm.outdir.claim_output_dir` as an artefact of ``kind``, replaced only when its ``overwrite``
    argument is true; a directory holding another artefact, or written by a live job, is refused."""
    import functools
    import inspect

    from stllm.outdir import claim_output_dir

    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            out = bound.arguments["output_dir"]
            if out is None:
                return fn(*args, **kwargs)
            with claim_output_dir(out, kind, overwrite=bool(bound.arguments["overwrite"]), flag=flag):
                return fn(*args, **kwargs)

        return run

    return wrap
