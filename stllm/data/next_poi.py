"""Next-POI recommendation data: samples from check-ins, prompts with ``<GEO>`` slots, a collator.

A :class:`NextPOITask` is a set of samples over one :class:`~stllm.data.checkins.CheckIns` table: for
each target check-in, the row indices of the same user's earlier check-ins. Training uses one file;
evaluation (:func:`next_poi_eval_task`) merges the training file with a later test file so a seen
user's history includes what they did during training, while targets come from the test file only.
The candidate set is the training POI table: a test POI absent from it cannot be ranked and counts as
a miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stllm.data.checkins import CheckIns, merge_checkins, next_poi_rows
from stllm.data.collator import PromptCollator
from stllm.data.prompts import next_poi_prompt
from stllm.tokens import GEO_PLACEHOLDER, GEO_TOKEN, POI_PRE_PLACEHOLDER, POI_PRE_TOKEN


@dataclass(frozen=True)
class NextPOITask:
    """Samples over ``checkins``: ``hist`` (N, H) earlier rows of the same user (right-aligned, -1 pad),
    ``rows`` (N,) target rows, ``seen_user`` (N,) whether the user had check-ins in training."""

    checkins: CheckIns
    hist: np.ndarray
    rows: np.ndarray
    seen_user: np.ndarray

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def target(self) -> np.ndarray:
        """(N,) target POI index in the table; -1 when the POI is not in it."""
        return self.checkins.poi[self.rows]

    def subset(self, idx) -> NextPOITask:
        idx = np.asarray(idx)
        return NextPOITask(self.checkins, self.hist[idx], self.rows[idx], self.seen_user[idx])


def next_poi_train_task(train: CheckIns, history: int = 100) -> NextPOITask:
    """Every check-in after a user's first in ``train`` is a target (all users are seen)."""
    hist, rows = next_poi_rows(train, history=history)
    return NextPOITask(train, hist, rows, np.ones(len(rows), dtype=bool))


def next_poi_eval_task(train: CheckIns, test: CheckIns, history: int = 100) -> NextPOITask:
    """Targets are ``test``'s check-ins (after each user's first overall); history may reach into ``train``."""
    merged, is_test = merge_checkins(train, test)
    hist, rows = next_poi_rows(merged, history=history, target_mask=is_test)
    trained_users = np.zeros(len(merged.user_ids), dtype=bool)
    trained_users[np.unique(train.user)] = True
    return NextPOITask(merged, hist, rows, trained_users[merged.user[rows]])


class NextPOIDataset(torch.utils.data.Dataset):
    """Lazy samples of a :class:`NextPOITask`; the prompt shows the last ``prompt_visits`` check-ins,
    the relation features (``poi_history``) see the whole ``hist`` window."""

    def __init__(self, task: NextPOITask, prompt_visits: int = 8):
        if prompt_visits < 1:
            raise ValueError(f"prompt_visits must be >= 1, got {prompt_visits}")
        self.task, self.prompt_visits = task, prompt_visits

    def __len__(self) -> int:
        return len(self.task)

    def __getitem__(self, i: int) -> dict:
        task, c = self.task, self.task.checkins
        hist = task.hist[i]
        shown = hist[hist >= 0][-self.prompt_visits:]
        if shown.size == 0:
            raise ValueError(f"next-POI sample {i} has no earlier check-in")
        minutes = c.time[shown].astype(np.int64)
        visits = [(int(m), str(c.categories[k])) for m, k in zip(minutes, c.category[shown])]
        row = int(task.rows[i])
        target = int(c.poi[row])
        conv = next_poi_prompt(visits, int(c.time[row].astype(np.int64)), target)
        last = int(hist[-1])
        return {
            "id": f"{c.user_ids[c.user[row]]}@{np.datetime_as_string(c.time[row])}",
            "conversation": conv,
            "geo": np.stack([c.lat[shown], c.lon[shown]], axis=-1),
            "poi_history": np.where(hist >= 0, c.poi[np.clip(hist, 0, None)], -1),
            "poi_anchor": np.array([c.lat[last], c.lon[last]]),
            "poi_target": target,
        }


def category_token_ids(tokenizer, categories: Sequence[str]) -> torch.Tensor:
    """``(C, L)`` token ids of each category name, right-padded with -1."""
    enc = tokenizer([str(c) for c in categories], add_special_tokens=False)["input_ids"]
    width = max(1, max((len(e) for e in enc), default=1))
    out = torch.full((len(enc), width), -1, dtype=torch.long)
    for i, e in enumerate(enc):
        out[i, : len(e)] = torch.tensor(e, dtype=torch.long)
    return out


class NextPOICollator(PromptCollator):
    """Samples of :class:`NextPOIDataset` -> model inputs for next-POI scoring.

    Adds the candidate table of ``table`` (its POIs' coordinates and categories) to every batch:
    ``poi_coords`` (P, 2), ``poi_category`` (P,), ``poi_category_tokens`` (C, L); per sample
    ``poi_history`` (B, H), ``poi_anchor`` (B, 2), ``poi_targets`` (B,); ``geo_coords`` (G, 2) for the
    ``<GEO>`` slots. ``answer="prefix"`` (evaluation) stops each sequence at ``<poi_pre>``: the answer's
    POI name after it is the ground truth, so it is never fed in.

    ``transitions`` (a fitted :class:`~stllm.eval.poi_baselines.MarkovTransition`) adds ``poi_transition``
    (B, P): training transition counts out of each sample's last POI. ``leave_one_out`` (training on the
    same check-ins the counts came from) subtracts the sample's own (last -> target) transition, so the
    feature never carries its own answer.
    """

    def __init__(self, tokenizer, table: CheckIns, padding_side: str = "right", answer: str = "full",
                 max_length: int | None = None, return_meta: bool = False, transitions=None,
                 leave_one_out: bool = False):
        if answer not in ("full", "prefix"):
            raise ValueError(f"answer must be 'full' or 'prefix', got {answer!r}")
        super().__init__(tokenizer, padding_side, max_length)
        self.answer, self.return_meta = answer, return_meta
        self.transitions, self.leave_one_out = transitions, leave_one_out
        self.geo_id, self.poi_id = self.vocab[GEO_TOKEN], self.vocab[POI_PRE_TOKEN]
        self.poi_coords = torch.from_numpy(np.stack([table.poi_lat, table.poi_lon], axis=-1).astype(np.float32))
        self.poi_category = torch.from_numpy(table.poi_category.astype(np.int64))
        self.poi_category_tokens = category_token_ids(tokenizer, table.categories)

    def texts(self, sample: dict) -> tuple[str, str]:
        prompt, answer = self.formatter(sample["conversation"])
        sid = sample.get("id", "?")
        n_geo = prompt.count(GEO_PLACEHOLDER)
        if n_geo != len(sample["geo"]) or GEO_PLACEHOLDER in answer:
            raise ValueError(f"sample {sid}: {n_geo} {GEO_PLACEHOLDER} in the prompt for {len(sample['geo'])} visits")
        if answer.count(POI_PRE_PLACEHOLDER) != 1 or POI_PRE_PLACEHOLDER in prompt:
            raise ValueError(f"sample {sid}: the answer must hold exactly one {POI_PRE_PLACEHOLDER}")
        if self.answer == "prefix":
            answer = answer[: answer.index(POI_PRE_PLACEHOLDER) + len(POI_PRE_PLACEHOLDER)]
        expand = ((GEO_PLACEHOLDER, GEO_TOKEN), (POI_PRE_PLACEHOLDER, POI_PRE_TOKEN))
        for ph, tok in expand:
            prompt, answer = prompt.replace(ph, tok), answer.replace(ph, tok)
        return prompt, answer

    def __call__(self, samples: Sequence[dict]) -> dict:
        input_ids, filled, labels = self.tokenize(samples)
        n_geo = np.array([len(s["geo"]) for s in samples])
        self.check_slots(input_ids, filled, samples, (("<geo>", self.geo_id, n_geo), ("<poi_pre>", self.poi_id, 1)))
        b = len(samples)
        width = max(len(s["poi_history"]) for s in samples)
        hist = np.full((b, width), -1, dtype=np.int64)
        for i, s in enumerate(samples):
            h = np.asarray(s["poi_history"], dtype=np.int64)
            hist[i, width - len(h):] = h  # right-aligned: the last column is the last visit
        out = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(filled.astype(np.int64)),
            "geo_coords": torch.from_numpy(np.concatenate([s["geo"] for s in samples]).astype(np.float32)),
            "poi_coords": self.poi_coords,
            "poi_category": self.poi_category,
            "poi_category_tokens": self.poi_category_tokens,
            "poi_history": torch.from_numpy(hist),
            "poi_anchor": torch.from_numpy(np.stack([s["poi_anchor"] for s in samples]).astype(np.float32)),
            "poi_targets": torch.tensor([int(s["poi_target"]) for s in samples], dtype=torch.long),
        }
        if self.transitions is not None:
            trans = self.transitions.scores_after(hist[:, -1])
            if self.leave_one_out:
                target = out["poi_targets"].numpy()
                own = np.flatnonzero((hist[:, -1] >= 0) & (target >= 0))
                trans[own, target[own]] -= 1.0
            out["poi_transition"] = torch.from_numpy(np.maximum(trans, 0.0))
        if self.answer == "full":
            out["labels"] = torch.from_numpy(labels)
        if self.return_meta:
            out["meta"] = [s.get("id", i) for i, s in enumerate(samples)]
        return out
