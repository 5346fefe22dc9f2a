"""Long-term mobility prediction (HuMob) as instruction samples: a user's history in, the cells of known slots out.

A sample is one user and one *window*: history days ``[h0, h1]`` and target days ``[t0, t1]``. The model does not
choose among the 40,000 cells of the grid: it chooses among the user's ``candidates`` most visited history cells
(the "places"). Why: a user spends most slots at a few places (measured on HuMob'24 city B: the true cell of a
target slot of days 60-74 is among the user's 16 most visited cells of days 0-59 for 72% of slots, among 64 for
83%, among 128 for 87%; city C is a few points lower), the slot baseline (most frequent cell at the same
weekday/weekend slot) is already a choice among them, and a choice over places described by scale-free features
transfers to another city zero-shot, where absolute cell ids mean nothing. A target slot whose true cell is not a
candidate is left out of the loss and is a (near) miss for every model that predicts a visited cell.

For each (target slot, candidate) the features (:data:`MOB_FEATURES`) are shares of the user's history rows:
at the same slot on the same kind of day, smoothed over neighbouring slots, on the same weekday, in the most
recent two weeks, overall; whether the candidate is the slot baseline's choice; how much evidence the slot
has; the candidate's distance from the user's most visited cell; three of the shares again in log scale. The
prompt carries the same history in a compact text form (the top place of each 3-hour block on weekdays and
weekends), and the answer holds one ``<MOB_PRE>`` slot per target row, grouped by day; the head reads the LLM's
hidden state there (:class:`stllm.models.mobility.CellChoiceHead`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stllm.data.collator import PromptCollator
from stllm.data.mobility_answers import (
    LABELS,
    MAX_RUNS,
    answer_conversation,
    day_headers,
    day_runs,
    nearest_named,
    place_legend,
    render_answer,
)
from stllm.data.prompts import VICUNA_SYSTEM, Conversation
from stllm.data.trajectories import (
    HUMOB_WEEKEND,
    SLOTS_PER_DAY,
    Trajectories,
    TrajectoryError,
    load_humob_csv,
    synthetic_trajectories,
)
from stllm.tokens import MOB_PRE_PLACEHOLDER, MOB_PRE_TOKEN

MOB_FEATURES = (
    "share_kind_slot", "share_slot", "share_kind_slot_pm2", "share_kind_slot_pm6", "share_weekday_slot_pm1",
    "share_recent_kind_slot_pm2", "share_overall", "is_slot_baseline", "log_evidence", "log_distance_top", "rank",
    "log_share_kind_slot_pm2", "log_share_weekday_slot_pm1", "log_share_overall",
)
N_CANDIDATES = 64
# what a mobility checkpoint trained on (city, users, days): evaluation refuses targets inside it
MOBILITY_DATA_FILE = "mobility_data.json"
RECENT_DAYS = 14
# log-share features: log(share + LOG_FLOOR) scaled to [-1, 0]; a score linear in them multiplies the shares,
# as a frequency prior does in logit space (the linear shares alone cannot tell 0.001 from 0.01)
LOG_FLOOR = 1e-3
BLOCK = 6  # slots per block in the prompt's text summary (3 hours)


@dataclass(frozen=True)
class MobilityWindow:
    """History days ``history`` and target days ``target`` (inclusive ranges) for the users of a table."""

    history: tuple[int, int]
    target: tuple[int, int]


def training_windows(last_day: int = 59, target_len: int = 15, n_windows: int = 4, stride: int = 5,
                     min_history: int = 20) -> list[MobilityWindow]:
    """Windows inside days ``0..last_day`` only: the last one predicts ``last_day - target_len + 1 .. last_day``
    from everything before, earlier ones slide back by ``stride`` days (while ``min_history`` days remain)."""
    out = []
    for k in range(n_windows):
        t1 = last_day - k * stride
        t0 = t1 - target_len + 1
        if t0 < min_history:
            break
        out.append(MobilityWindow((0, t0 - 1), (t0, t1)))
    if not out:
        raise ValueError(f"no training window of {target_len} target days fits in days 0..{last_day} after "
                         f"{min_history} history days")
    return out


def _day_kind(d: np.ndarray, weekend: tuple[int, ...]) -> np.ndarray:
    return np.isin(d % 7, weekend).astype(np.int64)


def _window_sum(counts: np.ndarray, half: int) -> np.ndarray:
    """Sum over slots ``t-half..t+half`` (clipped at the day's ends) along axis -2 of ``(..., 48, K)``."""
    c = np.cumsum(np.pad(counts, [(0, 0)] * (counts.ndim - 2) + [(1, 0), (0, 0)]), axis=-2)
    t = np.arange(SLOTS_PER_DAY)
    hi, lo = np.minimum(t + half + 1, SLOTS_PER_DAY), np.maximum(t - half, 0)
    return c[..., hi, :] - c[..., lo, :]


def _share(counts: np.ndarray) -> np.ndarray:
    total = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


@dataclass(frozen=True)
class UserPlaces:
    """One user's candidate places and the history counts the features are made of."""

    cells: np.ndarray  # (K,) cell ids 0..grid*grid-1, most visited first; -1 pads a user with fewer places
    kind_slot: np.ndarray  # (2, 48, K) history rows per (day kind, slot, candidate)
    weekday_slot: np.ndarray  # (7, 48, K)
    recent_kind_slot: np.ndarray  # (2, 48, K) in the last RECENT_DAYS history days
    grid: int

    @property
    def valid(self) -> np.ndarray:
        return self.cells >= 0


def user_places(history: Trajectories, k: int = N_CANDIDATES, weekend: tuple[int, ...] = HUMOB_WEEKEND) -> UserPlaces:
    """Candidates and counts of one user's history rows (``history`` holds that user only)."""
    if not len(history):
        raise TrajectoryError(f"{history.source}: field 'd': a user has no history rows to predict from")
    cell = history.cell_index()
    uniq, counts = np.unique(cell, return_counts=True)
    order = np.lexsort((uniq, -counts))[:k]  # most visited first, ties -> smaller cell id
    cells = np.full(k, -1, np.int64)
    cells[: len(order)] = uniq[order]
    lookup = np.full(len(uniq), -1, np.int64)
    lookup[order] = np.arange(len(order))
    cand = lookup[np.searchsorted(uniq, cell)]
    keep = cand >= 0
    d, t, cand = history.d[keep], history.t[keep], cand[keep]
    kind = _day_kind(d, weekend)

    def count(first: np.ndarray, n_first: int, rows: np.ndarray | None = None) -> np.ndarray:
        flat = (first * SLOTS_PER_DAY + t) * k + cand
        w = None if rows is None else rows.astype(np.float64)
        return np.bincount(flat, weights=w, minlength=n_first * SLOTS_PER_DAY * k).reshape(n_first, SLOTS_PER_DAY, k)

    recent = d > history.d.max() - RECENT_DAYS
    return UserPlaces(cells, count(kind, 2).astype(np.float64), count(d % 7, 7).astype(np.float64),
                      count(kind, 2, recent), history.grid)


def place_features(places: UserPlaces, d: np.ndarray, t: np.ndarray,
                   weekend: tuple[int, ...] = HUMOB_WEEKEND) -> np.ndarray:
    """``(Q, K, F)`` features (:data:`MOB_FEATURES`) of each candidate for target slots ``(d, t)`` (Q,)."""
    ks, kind = places.kind_slot, _day_kind(d, weekend)
    s_kind = _share(ks)[kind, t]
    s_slot = _share(ks.sum(axis=0))[t]
    pm2 = _window_sum(ks, 2)
    s_pm2 = _share(pm2)[kind, t]
    s_pm6 = _share(_window_sum(ks, 6))[kind, t]
    s_wd = _share(_window_sum(places.weekday_slot, 1))[d % 7, t]
    s_recent = _share(_window_sum(places.recent_kind_slot, 2))[kind, t]
    overall = _share(ks.sum(axis=(0, 1)))[None].repeat(len(t), 0)
    # the slot baseline's choice: same kind+slot, else same slot, else overall
    choice = np.where(s_kind.sum(1, keepdims=True) > 0, s_kind, np.where(s_slot.sum(1, keepdims=True) > 0, s_slot,
                                                                         overall))
    best = (choice == choice.max(1, keepdims=True)) & places.valid[None]
    tie_break = np.where(best, places.cells[None], np.iinfo(np.int64).max)  # as the baseline: the smaller cell id
    is_base = np.zeros_like(choice)
    is_base[np.arange(len(t)), tie_break.argmin(1)] = 1.0
    evidence = np.log1p(pm2.sum(-1)[kind, t])[:, None].repeat(ks.shape[-1], 1)
    xy = np.stack(np.divmod(np.maximum(places.cells, 0), places.grid), -1).astype(np.float64)
    dist = np.log1p(np.linalg.norm(xy - xy[:1], axis=-1))[None].repeat(len(t), 0)
    rank = (np.arange(ks.shape[-1]) / ks.shape[-1])[None].repeat(len(t), 0)
    logs = [np.log(s + LOG_FLOOR) / -np.log(LOG_FLOOR) for s in (s_pm2, s_wd, overall)]  # in [-1, 0]
    feats = np.stack([s_kind, s_slot, s_pm2, s_pm6, s_wd, s_recent, overall, is_base, evidence / 5.0, dist / 5.0,
                      rank, *logs], axis=-1)
    return (feats * places.valid[None, :, None]).astype(np.float32)


def describe_places(places: UserPlaces, names: str | None = None) -> str:
    """The history in words: the top place of every 3-hour block on weekdays and on weekends. ``names``: one letter
    per place (the generate mode's, which names only its first ``len(names)`` places: the top one among those)."""
    parts = []
    for kind, name in ((0, "weekdays"), (1, "weekends")):
        blocks = places.kind_slot[kind].reshape(SLOTS_PER_DAY // BLOCK, BLOCK, -1).sum(1)
        if names is not None:
            blocks = blocks[:, :len(names)]
        words = [f"{b * 3}-{b * 3 + 3}h " + ((names[int(c.argmax())] if names else f"place {int(c.argmax()) + 1}")
                                             if c.sum() else "unknown") for b, c in enumerate(blocks)]
        parts.append(f"On {name}: " + ", ".join(words) + ".")
    if names is not None:
        return " ".join(parts)
    n = int(places.valid.sum())
    return f"The user's {n} most visited places are place 1 (most visited) to place {n}. " + " ".join(parts)


def mobility_prompt(places: UserPlaces, d: np.ndarray, weekend: tuple[int, ...] = HUMOB_WEEKEND) -> Conversation:
    """The question and an answer with one ``<MOB_PRE>`` per target row, grouped by day (``d`` sorted)."""
    days, counts = np.unique(d, return_counts=True)
    user = (f"{describe_places(places)} Where will the user be at each observed half-hour of days {int(days[0])} "
            f"to {int(days[-1])}?")
    kinds = np.isin(days % 7, weekend)
    answer = " ".join(f"Day {int(x)} ({'weekend' if w else 'weekday'}): {MOB_PRE_PLACEHOLDER * int(n)}."
                      for x, w, n in zip(days, kinds, counts))
    return Conversation(VICUNA_SYSTEM, user, answer)


class MobilityDataset(torch.utils.data.Dataset):
    """One sample per (user, window) of ``traj``: history rows of the window's history days, targets its target rows.

    ``targets`` (evaluation) gives the target rows directly (their cells may be unknown placeholders: the answer
    indices are then meaningless and only the slots matter). Users without target rows in a window are skipped;
    a user with target rows but no history is an error naming the user.

    ``text_answers`` > 0 adds, after the head samples (``slots``; False: none), one generate-mode sample per (user,
    window): the user's top ``text_answers`` places named by letters and the days written as text
    (:mod:`stllm.data.mobility_answers`), no ``<MOB_PRE>``; its LM loss trains the model to write them.
    """

    def __init__(self, traj: Trajectories, windows: Sequence[MobilityWindow], candidates: int = N_CANDIDATES,
                 weekend: tuple[int, ...] = HUMOB_WEEKEND, targets: Trajectories | None = None,
                 text_answers: int = 0, slots: bool = True, max_runs: int = MAX_RUNS):
        most = min(candidates, len(LABELS))
        if candidates < 1 or not 0 <= text_answers <= most or not (slots or text_answers):
            raise ValueError(f"need candidates >= 1 (got {candidates}), text_answers in 0..{most} (got "
                             f"{text_answers}) and slot or text samples")
        self.traj, self.windows, self.k, self.weekend = traj, list(windows), candidates, weekend
        self.kinds = (["slots"] if slots else []) + (["text"] if text_answers else [])
        self.text_answers, self.max_runs = text_answers, max_runs
        uids, starts, ends = traj.user_bounds()
        self._rows = {int(u): (int(s), int(e)) for u, s, e in zip(uids, starts, ends)}
        self.targets = targets
        self.items: list[tuple[int, int]] = []  # (window index, uid)
        for w, win in enumerate(self.windows):
            src = targets if targets is not None else traj
            in_target = (src.d >= win.target[0]) & (src.d <= win.target[1])
            users = np.unique(src.uid[in_target])
            for u in users.tolist():
                s, e = self._rows.get(u, (0, 0))
                d = traj.d[s:e]
                if not ((d >= win.history[0]) & (d <= win.history[1])).any():
                    raise TrajectoryError(f"{traj.source}: field 'd': user {u} has target rows in days "
                                          f"{win.target[0]}..{win.target[1]} but no history in days "
                                          f"{win.history[0]}..{win.history[1]}")
                self.items.append((w, u))

    def __len__(self) -> int:
        return len(self.items) * len(self.kinds)

    def rows(self, i: int) -> tuple[Trajectories, Trajectories]:
        """``(history, target)`` rows of sample ``i``."""
        w, u = self.items[i % len(self.items)]
        win = self.windows[w]
        s, e = self._rows[u]
        user = self.traj.subset(np.arange(s, e))
        hist = user.subset((user.d >= win.history[0]) & (user.d <= win.history[1]))
        src = self.targets if self.targets is not None else user
        sel = (src.uid == u) & (src.d >= win.target[0]) & (src.d <= win.target[1])
        return hist, src.subset(sel)

    def __getitem__(self, i: int) -> dict:
        hist, target = self.rows(i)
        places = user_places(hist, self.k, self.weekend)
        cell = target.with_base(hist.base).cell_index() if target.base != hist.base else target.cell_index()
        w, u = self.items[i % len(self.items)]
        if self.kinds[i // len(self.items)] == "text":
            return self.text_sample(places, target, cell, f"{u}@{self.windows[w].target}:text", hist.base)
        feats = place_features(places, target.d, target.t, self.weekend)
        match = cell[:, None] == places.cells[None, :]
        answer = np.where(match.any(1), match.argmax(1), -1)
        return {
            "id": f"{u}@{self.windows[w].target}",
            "conversation": mobility_prompt(places, target.d, self.weekend),
            "features": feats,
            "valid": np.broadcast_to(places.valid, feats.shape[:2]),
            "slot": (_day_kind(target.d, self.weekend) * SLOTS_PER_DAY + target.t).astype(np.int64),
            "answer": answer.astype(np.int64),
            "cells": places.cells,
        }

    def text_sample(self, places: UserPlaces, target: Trajectories, cell: np.ndarray, sid: str, base: int) -> dict:
        """The generate-mode sample: named places, history summary in their letters, the days as text (the
        nearest named place of each true row, :func:`~stllm.data.mobility_answers.day_runs`); no head rows."""
        named = places.cells[:self.text_answers][places.valid[:self.text_answers]]
        days = np.unique(target.d)
        headers = day_headers(days, self.weekend)
        label = nearest_named(cell, named, places.grid)
        runs = [day_runs(label[target.d == x], target.t[target.d == x], self.max_runs) for x in days.tolist()]
        conv = answer_conversation(place_legend(named, places.grid, base), describe_places(places, LABELS[:len(named)]),
                                   headers, render_answer(headers, runs))
        f = len(MOB_FEATURES)
        return {"id": sid, "conversation": conv, "features": np.zeros((0, self.k, f), np.float32),
                "valid": np.zeros((0, self.k), bool), "slot": np.zeros(0, np.int64), "answer": np.zeros(0, np.int64),
                "cells": places.cells, "headers": headers, "days": days, "n_places": len(named)}


class MobilityCollator(PromptCollator):
    """Samples of :class:`MobilityDataset` -> model inputs, one row per ``<mob_pre>`` in reading order:
    ``mob_features`` (Q, K, F), ``mob_valid`` (Q, K), ``mob_slot`` (Q,) day kind * 48 + slot, ``mob_targets`` (Q,)
    candidate index of the true cell (-1: not a candidate), and ``mob_cells`` (Q, K) candidate cell ids (not a
    model input; popped by prediction). ``answer="full"`` adds LM ``labels``."""

    def __init__(self, tokenizer, answer: str = "full", max_length: int | None = None, return_meta: bool = False):
        if answer not in ("full", "prefix"):
            raise ValueError(f"answer must be 'full' or 'prefix', got {answer!r}")
        super().__init__(tokenizer, "right", max_length)
        if MOB_PRE_TOKEN not in self.vocab:
            raise ValueError(f"tokenizer lacks {MOB_PRE_TOKEN}; call stllm.tokens.add_mobility_token(tokenizer) first")
        self.answer, self.return_meta, self.mob_id = answer, return_meta, self.vocab[MOB_PRE_TOKEN]

    def texts(self, sample: dict) -> tuple[str, str]:
        prompt, answer = self.formatter(sample["conversation"])
        n = answer.count(MOB_PRE_PLACEHOLDER)
        if n != len(sample["slot"]) or MOB_PRE_PLACEHOLDER in prompt:
            raise ValueError(f"sample {sample.get('id', '?')}: {n} {MOB_PRE_PLACEHOLDER} in the answer for "
                             f"{len(sample['slot'])} target rows")
        return prompt, answer.replace(MOB_PRE_PLACEHOLDER, MOB_PRE_TOKEN)

    def __call__(self, samples: Sequence[dict]) -> dict:
        input_ids, filled, labels = self.tokenize(samples)
        n = np.array([len(s["slot"]) for s in samples])
        self.check_slots(input_ids, filled, samples, (("<mob_pre>", self.mob_id, n),))
        cat = {k: torch.from_numpy(np.ascontiguousarray(np.concatenate([s[k] for s in samples])))
               for k in ("features", "valid", "slot", "answer")}
        out = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(filled.astype(np.int64)),
            "mob_features": cat["features"],
            "mob_valid": cat["valid"],
            "mob_slot": cat["slot"],
            "mob_targets": cat["answer"],
        }
        if not n.any():  # only generate-mode samples: an LM batch, no head rows
            out = {k: v for k, v in out.items() if not k.startswith("mob_")}
        if self.answer == "full":
            out["labels"] = torch.from_numpy(labels)
        elif n.any():
            out["mob_cells"] = torch.from_numpy(np.concatenate([np.broadcast_to(s["cells"], s["features"].shape[:2])
                                                                for s in samples]))
        if self.return_meta:
            out["meta"] = [s.get("id", i) for i, s in enumerate(samples)]
        return out


def synthetic_mobility_city(seed: int, n_users: int, city: str = "S", first_uid: int = 0) -> Trajectories:
    """The embedded default: 75 days of :func:`synthetic_trajectories` (1-based cells)."""
    return synthetic_trajectories(seed=seed, n_users=n_users, days=75, city=city, first_uid=first_uid)


def resolve_trajectories(spec: str, base: int | None, city: str | None, seed: int = 0, n_users: int = 40
                         ) -> Trajectories:
    """'synthetic' or a HuMob CSV (``base`` required), restricted to ``city`` when given."""
    if spec == "synthetic":
        return synthetic_mobility_city(seed, n_users)
    if base is None:
        raise ValueError(f"{spec}: pass --base 1 (cells 1..200, the HuMob'24 files) or --base 0; it is never guessed")
    return load_humob_csv(spec, base=base, city=city)
