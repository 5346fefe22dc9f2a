"""The text answer of a mobility sample, for the generate-based mode: the LM writes the user's days itself.

Why this format and not Llama-3-8B-Mob's: that model answers with JSON, one ``{"d": .., "t": .., "x": .., "y": ..}``
record per asked slot (~720 records, ~20,000 tokens for 15 days), so its users need a 24 GB GPU and minutes per user.
Here the prompt names the places the answer may use: the user's ``n`` most visited history cells as letters
(``A=(123,45) B=(130,50) ...``, A most visited), and an answer holds one line per asked day: the place at
midnight, then each change as ``place@half-hour`` (``60 weekday: A B@16 A@36`` = A until 8:00, B until 18:00, then
A). An asked slot ``(d, t)`` takes the place of the last change at or before ``t`` of its day's line, so a line
covers every asked slot of its day whichever slots are asked (the LM never has to know which ones: a run-length
count over the asked slots would need that list in the prompt), and 15 days are tens of tokens per day. Days hold
at most :data:`MAX_RUNS` places; a true day with more changes is smoothed for training (:func:`day_runs`). A true
cell that is not a named place is written as the nearest named place (the metrics reward nearness).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import numpy as np

from stllm.data.prompts import VICUNA_SYSTEM, Conversation
from stllm.data.trajectories import HUMOB_WEEKEND, SLOTS_PER_DAY

LABELS = string.ascii_uppercase
ANSWER_PLACES = 16  # the user's top 16 history cells hold the true cell of 72% of target slots (city B)
MAX_RUNS = 8  # places per written day, the midnight one included
_CHANGE = re.compile(r"([A-Z])@(\d+)")


class AnswerError(ValueError):
    """A text answer that does not parse; the message names the answer, its line and what was expected."""


def day_headers(days: np.ndarray, weekend: tuple[int, ...] = HUMOB_WEEKEND) -> list[str]:
    """The fixed start of each day's line (the grammar writes it; the LM fills the rest): ``"60 weekday: "``."""
    return [f"{int(d)} {'weekend' if int(d) % 7 in weekend else 'weekday'}: " for d in days]


def place_legend(cells: np.ndarray, grid: int, base: int) -> str:
    """``A=(x,y) B=(x,y) ...`` for the valid (>= 0) flat cells ``x * grid + y`` (0-based), in ``base`` numbering."""
    valid = cells[cells >= 0]
    x, y = np.divmod(valid, grid)
    return " ".join(f"{LABELS[i]}=({a + base},{b + base})" for i, (a, b) in enumerate(zip(x.tolist(), y.tolist())))


def nearest_named(cell: np.ndarray, named: np.ndarray, grid: int) -> np.ndarray:
    """Index into ``named`` (valid flat cells, most visited first) of the nearest one to each ``cell`` (ties: the
    more visited)."""
    a = np.stack(np.divmod(cell, grid), -1).astype(np.float64)
    b = np.stack(np.divmod(named, grid), -1).astype(np.float64)
    return np.linalg.norm(a[:, None] - b[None], axis=-1).argmin(1)


def day_runs(label: np.ndarray, t: np.ndarray, max_runs: int = MAX_RUNS) -> list[tuple[int, int]]:
    """One day's ``(place, start slot)`` runs of the labels of its rows (``t`` ascending), the first from slot 0;
    while there are more than ``max_runs``, the run of fewest rows joins the one before it (the first: after it)."""
    change = np.flatnonzero(np.r_[True, label[1:] != label[:-1]])
    runs = [[int(label[i]), int(t[i]) if k else 0, int(n)]
            for k, (i, n) in enumerate(zip(change, np.diff(np.r_[change, len(label)])))]
    while len(runs) > max_runs:
        i = min(range(len(runs)), key=lambda j: runs[j][2])
        keep = i - 1 if i else 1
        runs[keep][2] += runs[i][2]
        if not i:
            runs[1][1] = 0
        del runs[i]
        merged = [runs[0]]
        for r in runs[1:]:
            if r[0] == merged[-1][0]:
                merged[-1][2] += r[2]
            else:
                merged.append(r)
        runs = merged
    return [(p, s) for p, s, _ in runs]


def render_answer(headers: Sequence[str], runs: Sequence[Sequence[tuple[int, int]]]) -> str:
    """The answer text: one line per day, ``header`` + ``A B@16 A@36``."""
    return "\n".join(h + " ".join([LABELS[r[0][0]]] + [f"{LABELS[p]}@{s}" for p, s in r[1:]])
                     for h, r in zip(headers, runs))


def parse_answer(text: str, headers: Sequence[str], n_places: int, source: str = "answer"
                 ) -> list[list[tuple[int, int]]]:
    """The ``(place, start slot)`` runs of each line of ``text``; an :class:`AnswerError` names the line and field
    when a line is missing or extra, has the wrong header, an unknown place, or starts not increasing in 1..47."""
    lines = text.strip("\n").split("\n") if text.strip() else []
    if len(lines) != len(headers):
        raise AnswerError(f"{source}: {len(lines)} lines for {len(headers)} asked days")
    out = []
    for i, (line, head) in enumerate(zip(lines, headers), 1):
        line = line.strip()
        if not line.startswith(head.strip()):
            raise AnswerError(f"{source}: line {i}: field 'day': expected {head.strip()!r}, got {line[:20]!r}")
        parts = line[len(head.strip()):].split()
        if not parts or len(parts[0]) != 1 or parts[0] not in LABELS[:n_places]:
            raise AnswerError(f"{source}: line {i}: field 'place': the midnight place must be one of "
                              f"{LABELS[0]}..{LABELS[n_places - 1]}, got {(parts or [''])[0]!r}")
        runs, last = [(LABELS.index(parts[0]), 0)], 0
        for p in parts[1:]:
            m = _CHANGE.fullmatch(p)
            if m is None or LABELS.index(m[1]) >= n_places:
                raise AnswerError(f"{source}: line {i}: field 'change': expected place@half-hour with a place in "
                                  f"{LABELS[0]}..{LABELS[n_places - 1]}, got {p!r}")
            s = int(m[2])
            if not last < s < SLOTS_PER_DAY:
                raise AnswerError(f"{source}: line {i}: field 'change': half-hour {s} must lie in {last + 1}.."
                                  f"{SLOTS_PER_DAY - 1} (after the previous change)")
            runs.append((LABELS.index(m[1]), s))
            last = s
        out.append(runs)
    return out


def runs_to_rows(runs: Sequence[Sequence[tuple[int, int]]], days: np.ndarray, d: np.ndarray, t: np.ndarray
                 ) -> np.ndarray:
    """The place index of each asked row ``(d, t)``: the last change of its day's line at or before ``t``."""
    out = np.zeros(len(d), dtype=np.int64)
    for day, r in zip(days.tolist(), runs):
        rows = d == day
        place, start = np.array(r, dtype=np.int64).T
        out[rows] = place[np.searchsorted(start, t[rows], side="right") - 1]
    return out


def answer_conversation(legend: str, summary: str, headers: Sequence[str], answer: str = "") -> Conversation:
    """The generate-mode question: the named places, the history summary in their letters, the days to write."""
    user = (f"Places: {legend}. {summary} Write one line per day for days {headers[0].split()[0]} to "
            f"{headers[-1].split()[0]}: the user's place at midnight, then each change as place@half-hour (0-47).")
    return Conversation(VICUNA_SYSTEM, user, answer)
