"""Instruction samples for activity generation: one day per sample, prompt = persona + date, answer = the day.

Training and generation share :func:`gen_conversation` (the same header text for the same request). The answer
is the model's view of the day (:func:`~stllm.data.activity.lm_view`): ``A HH:MM | category[ | lat,lon]`` per
activity, coordinates at ``digits`` decimals. :func:`answer_vocabulary` lists what a line may contain (from
training days only); the constrained decoder (:mod:`stllm.models.activity_decoding`) allows nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from stllm.data.activity import (
    INSTRUCTION,
    SYSTEM,
    Activity,
    ActivityChain,
    format_coord,
    lm_view,
    render_header,
    render_steps,
)
from stllm.data.collator import PromptCollator
from stllm.data.prompts import Conversation


def prompt_header(chain: ActivityChain) -> str:
    """Persona and weekday of a request: what the model is told about the day. Not the calendar date: held-out
    days lie after the training days (NYC), and an unseen year in the prompt moved the tiny model's start hours
    to the evening (first-hour probabilities matched real days on training prompts, not on 2013 test prompts)."""
    return "\n".join(render_header(replace(chain, user=None, steps=(), date=None, context_date=None, origin=None)))


def gen_conversation(chain: ActivityChain, with_coords: bool, digits: int = 3) -> Conversation:
    answer = "\n".join(render_steps(lm_view(chain, with_coords, digits).steps, digits if with_coords else None))
    return Conversation(SYSTEM, f"{INSTRUCTION}\n{prompt_header(chain)}", answer)


def place_key(a: Activity, digits: int = 3) -> tuple[str, str]:
    """(category, rounded ``lat,lon``) of a located activity: the place choice a line writes for it."""
    return a.category, format_coord((round(a.lat, digits), round(a.lon, digits)), digits)


def day_places(chain: ActivityChain, digits: int = 3) -> set[tuple[str, str]]:
    """The place choices of a day's located activities."""
    return {place_key(a, digits) for a in chain.activities if a.coord is not None}


def day_choices(chain: ActivityChain, with_coords: bool, digits: int = 3) -> list[tuple[str | tuple[str, str], int]]:
    """(choice, start minute) of a day's timed activities in order: places with coordinates (activities without
    them left out), else categories."""
    return [(place_key(a, digits) if with_coords else a.category, a.start // 60) for a in chain.activities
            if a.start is not None and (a.coord is not None or not with_coords)]


def answer_vocabulary(train: Sequence[ActivityChain], with_coords: bool, digits: int = 3
                      ) -> tuple[list[str], list[tuple[str, str]] | None]:
    """Categories and (category, rounded ``lat,lon``) places of the training days, sorted: the choices of a
    generated line."""
    cats = sorted({a.category for c in train for a in c.activities})
    if not with_coords:
        return cats, None
    return cats, sorted(set().union(*(day_places(c, digits) for c in train)))


def own_choices(train: Sequence[ActivityChain], with_coords: bool, digits: int = 3) -> dict[str | None, set]:
    """Per user, the choices of their own training days (places with coordinates, else categories): what
    generation may favour for that user (72% of held-out NYC activities are at a place the user visited in
    training)."""
    out: dict[str | None, set] = {}
    for c in train:
        out.setdefault(c.user, set()).update(day_places(c, digits) if with_coords else
                                             {a.category for a in c.activities})
    return out


def own_start_minutes(train: Sequence[ActivityChain]) -> dict[str | None, np.ndarray]:
    """Per user, a boolean mask over the day's minutes: the hours in which they started an activity on their
    training days (what generation may favour for their start times)."""
    out: dict[str | None, np.ndarray] = {}
    for c in train:
        hours = [a.start // 3600 for a in c.activities if a.start is not None and a.start < 86400]
        mask = out.setdefault(c.user, np.zeros(24 * 60, dtype=bool))
        for h in hours:
            mask[h * 60:(h + 1) * 60] = True
    return out


class ActivityGenDataset(torch.utils.data.Dataset):
    """One sample per training day (lazy conversations)."""

    def __init__(self, chains: Sequence[ActivityChain], with_coords: bool, digits: int = 3):
        self.chains, self.with_coords, self.digits = list(chains), with_coords, digits

    def __len__(self) -> int:
        return len(self.chains)

    def __getitem__(self, i: int) -> dict:
        c = self.chains[i]
        return {"conversation": gen_conversation(c, self.with_coords, self.digits), "id": f"{c.user}/{c.date}"}


class ActivityGenCollator(PromptCollator):
    """Prompt + answer tokens, labels on the answer only (LM loss)."""

    def texts(self, sample: dict) -> tuple[str, str]:
        return self.formatter(sample["conversation"])

    def __call__(self, samples: Sequence[dict]) -> dict:
        input_ids, filled, labels = self.tokenize(samples)
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(filled.astype(np.int64)),
                "labels": torch.from_numpy(labels)}
