"""STDataCollator: samples -> padded token ids, labels, deduplicated city windows and targets.

Placeholders are replaced by runs of slot tokens *before* tokenising (slot tokens are special
tokens, so the tokenizer never splits or merges them); prompts and answers are tokenised in one
batched call. Each distinct history window of the batch is stacked once into ``st_values``;
``st_window``/``st_region`` say which window and region each ``<ST_HIS>`` placeholder reads.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from stllm.data.prompts import ChatFormatter
from stllm.tokens import (
    GEO_PLACEHOLDER,
    GEO_TOKEN,
    SLOT_TOKENS,
    ST_HIS_PLACEHOLDER,
    ST_HIS_TOKEN,
    ST_PRE_PLACEHOLDER,
    ST_PRE_TOKEN,
)

# Split points: after sentence punctuation before a space, and around slot-token runs. With byte-level
# BPE these are pre-tokenizer boundaries, so per-segment ids concatenate to the whole-text ids.
_SEGMENT_RE = re.compile(r"(?<=[.:,;])(?= )|((?:<st_his>|<st_pre>|<geo>|<poi_pre>)+)")


def pack_prompts(
    prompts: list[list[int]],
    answers: list[list[int]],
    pad_id: int,
    padding_side: str = "right",
    max_length: int | None = None,
    pad_to_multiple_of: int | None = None,
    ids: Sequence | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids of prompt + answer per sample -> padded ``(input_ids, attention_mask, labels)`` (B, L).

    Labels are the answer tokens (-100 elsewhere). Over-long samples are refused, never truncated:
    truncation would cut placeholders. ``ids`` name the samples in that error.
    """
    b = len(prompts)
    p_len = np.fromiter((len(x) for x in prompts), dtype=np.int64, count=b)
    a_len = np.fromiter((len(x) for x in answers), dtype=np.int64, count=b)
    lens = p_len + a_len
    if max_length is not None and lens.max() > max_length:
        i = int(lens.argmax())
        name = ids[i] if ids is not None else i
        raise ValueError(
            f"sample {name} is {int(lens[i])} tokens, over max_length={max_length}; "
            "truncating would cut placeholders, so shorten the prompt or raise max_length"
        )
    length = int(lens.max())
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    pos = np.arange(length)[None, :]
    offset = (length - lens)[:, None] if padding_side == "left" else np.zeros((b, 1), np.int64)
    filled = (pos >= offset) & (pos < offset + lens[:, None])
    is_answer = (pos >= offset + p_len[:, None]) & filled
    flat = np.fromiter((t for i in range(b) for t in (*prompts[i], *answers[i])), dtype=np.int64, count=int(lens.sum()))
    input_ids = np.full((b, length), pad_id, dtype=np.int64)
    input_ids[filled] = flat  # row-major order == sample order, prompt then answer
    return input_ids, filled, np.where(is_answer, input_ids, -100)


class SegmentEncoder:
    """Tokenise texts as cached sentence segments: prompts repeat the same sentences (system prompt,
    region description, time range of a shared window), so most segments are cache hits.

    Exactness is not assumed: the first batch (and one sample every ``check_every`` batches) is also
    tokenised whole and compared; on any mismatch (e.g. SentencePiece prefix spaces) the cache is
    switched off for good with a warning and texts are tokenised whole.
    """

    def __init__(self, tokenizer, max_entries: int = 200_000, check_every: int = 64):
        self.tokenizer, self.max_entries, self.check_every = tokenizer, max_entries, check_every
        self.cache: dict[str, list[int]] = {}
        self.enabled, self.calls = True, 0

    def _whole(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if not self.enabled:
            return self._whole(texts)
        pieces = [[p for p in _SEGMENT_RE.split(t) if p] for t in texts]
        new = list({p for ps in pieces for p in ps if p not in self.cache})
        if new:
            if len(self.cache) + len(new) > self.max_entries:
                self.cache.clear()
                new = list({p for ps in pieces for p in ps})
            self.cache.update(zip(new, self._whole(new)))
        cache = self.cache
        out = [[t for p in ps for t in cache[p]] for ps in pieces]
        check = texts if self.calls == 0 else (texts[:1] if self.calls % self.check_every == 0 else [])
        self.calls += 1
        if check and self._whole(check) != out[: len(check)]:
            self.enabled = False
            warnings.warn("STDataCollator: this tokenizer does not tokenise sentence segments independently; "
                          "segment caching is off (slower, same result)", stacklevel=3)
            return self._whole(texts)
        return out


class PromptCollator:
    """What every stllm collator shares: the slot-token vocabulary check, the pad id, chat formatting,
    segment-cached tokenisation, packing (:func:`pack_prompts`) and the per-row slot-count check.
    Subclasses write ``texts(sample) -> (prompt, answer)`` with placeholders already expanded."""

    def __init__(self, tokenizer, padding_side: str = "right", max_length: int | None = None,
                 pad_to_multiple_of: int | None = None, cache_segments: bool = True):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.vocab = tokenizer.get_vocab()
        missing = [t for t in SLOT_TOKENS if t not in self.vocab]
        if missing:
            raise ValueError(f"tokenizer lacks slot tokens {missing}; call stllm.tokens.add_st_tokens(tokenizer) first")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("tokenizer has neither a pad nor an eos token to pad with")
        self.tokenizer, self.pad_id = tokenizer, int(pad)
        self.padding_side, self.max_length, self.pad_to_multiple_of = padding_side, max_length, pad_to_multiple_of
        self.formatter = ChatFormatter(tokenizer)
        self.encode = SegmentEncoder(tokenizer) if cache_segments else (
            lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"])

    def texts(self, sample: dict) -> tuple[str, str]:
        raise NotImplementedError

    def tokenize(self, samples: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Padded ``(input_ids, attention_mask, labels)`` (B, L) of the samples' texts."""
        if not samples:
            raise ValueError(f"{type(self).__name__}: empty batch")
        b = len(samples)
        pairs = [self.texts(s) for s in samples]
        enc = self.encode([p for p, _ in pairs] + [a for _, a in pairs])
        names = [s.get("id", i) for i, s in enumerate(samples)]
        return pack_prompts(enc[:b], enc[b:], self.pad_id, self.padding_side, self.max_length,
                            self.pad_to_multiple_of, names)

    @staticmethod
    def check_slots(input_ids: np.ndarray, filled: np.ndarray, samples, checks) -> None:
        """The tokenizer must keep each slot token whole: ``checks`` are ``(name, token id, expected count
        per row)`` (an int or a (B,) array), compared with the tokenised rows."""
        for name, tok, want in checks:
            got = ((input_ids == tok) & filled).sum(axis=1)
            bad = np.flatnonzero(got != want)
            if bad.size:
                i = int(bad[0])
                expected = int(np.broadcast_to(want, got.shape)[i])
                raise ValueError(
                    f"sample {samples[i].get('id', i)}: tokenised text holds {int(got[i])} {name} tokens, "
                    f"expected {expected}; the tokenizer splits slot tokens"
                )


class STDataCollator(PromptCollator):
    """Collate :class:`~stllm.data.dataset.STInstructionDataset` samples into model inputs.

    Returns ``input_ids``, ``attention_mask``, ``labels`` (B, L); ``st_values`` (W, T, N, C),
    ``st_window``/``st_region`` (P,) per ``<ST_HIS>`` in reading order; ``reg_targets``/``reg_mask``
    and ``cls_targets``/``cls_mask`` (Q, horizon, K), one row per ``<ST_PRE>`` (Q == P unless
    samples carry extra history views); ``geo_coords`` (G, 2) when any ``<GEO>`` is present;
    ``st_adj`` (N, N) when ``with_adjacency`` and the city has one; ``meta`` (list of sample ids,
    not a tensor) when ``return_meta``. ``cache_segments`` tokenises repeated sentences once
    (checked against whole-text tokenisation, see :class:`SegmentEncoder`).
    """

    def __init__(
        self,
        tokenizer,
        st_slots: int,
        geo_slots: int = 1,
        padding_side: str = "right",
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        with_adjacency: bool = False,
        return_meta: bool = False,
        cache_segments: bool = True,
    ):
        if st_slots < 1 or geo_slots < 1:
            raise ValueError(f"st_slots and geo_slots must be >= 1, got {st_slots}, {geo_slots}")
        super().__init__(tokenizer, padding_side, max_length, pad_to_multiple_of, cache_segments)
        self.st_slots, self.geo_slots = st_slots, geo_slots
        self.with_adjacency, self.return_meta = with_adjacency, return_meta
        self.his_id, self.pre_id, self.geo_id = (self.vocab[t] for t in (ST_HIS_TOKEN, ST_PRE_TOKEN, GEO_TOKEN))
        self._expand = (
            (ST_HIS_PLACEHOLDER, ST_HIS_TOKEN * st_slots),
            (ST_PRE_PLACEHOLDER, ST_PRE_TOKEN * st_slots),
            (GEO_PLACEHOLDER, GEO_TOKEN * geo_slots),
        )

    # -- text -----------------------------------------------------------------------------------------
    def texts(self, sample: dict) -> tuple[str, str]:
        """``(prompt, answer)`` of one sample with placeholders expanded, after checking their counts."""
        prompt, answer = self.formatter(sample["conversation"])
        sid = sample.get("id", "?")
        for slot in SLOT_TOKENS:
            if slot in prompt or slot in answer:
                raise ValueError(f"sample {sid}: text already contains slot token {slot}; write placeholders instead")
        expected = {
            (ST_HIS_PLACEHOLDER, "prompt"): (prompt.count(ST_HIS_PLACEHOLDER), len(sample["history"])),
            (ST_HIS_PLACEHOLDER, "answer"): (answer.count(ST_HIS_PLACEHOLDER), 0),
            (ST_PRE_PLACEHOLDER, "prompt"): (prompt.count(ST_PRE_PLACEHOLDER), 0),
            (ST_PRE_PLACEHOLDER, "answer"): (answer.count(ST_PRE_PLACEHOLDER), 1),
            (GEO_PLACEHOLDER, "prompt"): (prompt.count(GEO_PLACEHOLDER), len(sample.get("geo", ()))),
            (GEO_PLACEHOLDER, "answer"): (answer.count(GEO_PLACEHOLDER), 0),
        }
        for (ph, where), (got, want) in expected.items():
            if got != want:
                raise ValueError(f"sample {sid}: {where} has {got} {ph} placeholder(s), expected {want}")
        for ph, slots in self._expand:
            prompt, answer = prompt.replace(ph, slots), answer.replace(ph, slots)
        return prompt, answer

    # -- batch ----------------------------------------------------------------------------------------
    def __call__(self, samples: Sequence[dict]) -> dict:
        input_ids, filled, labels = self.tokenize(samples)
        want_his = np.array([len(s["history"]) * self.st_slots for s in samples])
        want_geo = np.array([len(s.get("geo", ())) * self.geo_slots for s in samples])
        self.check_slots(input_ids, filled, samples, (("<st_his>", self.his_id, want_his),
                                                      ("<st_pre>", self.pre_id, self.st_slots),
                                                      ("<geo>", self.geo_id, want_geo)))

        out = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(filled.astype(np.int64)),
            "labels": torch.from_numpy(labels),
        }
        out.update(self._windows(samples))
        out.update(self._targets(samples))
        geo = [np.asarray(s["geo"], dtype=np.float32).reshape(-1, 2) for s in samples if len(s.get("geo", ()))]
        if geo:
            out["geo_coords"] = torch.from_numpy(np.concatenate(geo))
        if self.with_adjacency and samples[0].get("adjacency") is not None:
            out["st_adj"] = torch.from_numpy(np.asarray(samples[0]["adjacency"], dtype=np.float32))
        if self.return_meta:
            out["meta"] = [s.get("id") for s in samples]
        return out

    def _windows(self, samples) -> dict:
        keys: dict = {}
        views, st_window, st_region = [], [], []
        for s in samples:
            for key, view in s["history"]:
                w = keys.get(key)
                if w is None:
                    w = keys[key] = len(views)
                    views.append(view)
                st_window.append(w)
                st_region.append(s["region"])
        shapes = {v.shape for v in views}
        if len(shapes) != 1:
            raise ValueError(f"history windows of one batch must share (T, N, C); got {sorted(shapes)}")
        return {
            "st_values": torch.from_numpy(np.stack(views).astype(np.float32, copy=False)),
            "st_window": torch.tensor(st_window, dtype=torch.long),
            "st_region": torch.tensor(st_region, dtype=torch.long),
        }

    def _targets(self, samples) -> dict:
        k = self.st_slots
        shapes = {np.shape(s["target"]) for s in samples}
        if len(shapes) != 1 or next(iter(shapes))[-1] != k:
            raise ValueError(f"targets must all be (horizon, st_slots={k}); got shapes {sorted(shapes)}")
        target = np.stack([s["target"] for s in samples]).astype(np.float32, copy=False)
        mask = np.stack([s["target_mask"] for s in samples]).astype(bool, copy=False)
        unknown = {s["task"] for s in samples} - {"flow", "event"}
        if unknown:
            raise ValueError(f"unknown task(s) {sorted(unknown)} in batch; expected 'flow' or 'event'")
        is_flow = np.array([s["task"] == "flow" for s in samples])[:, None, None]
        return {
            "reg_targets": torch.from_numpy(np.where(is_flow, target, np.float32(0))),
            "reg_mask": torch.from_numpy(mask & is_flow),
            "cls_targets": torch.from_numpy(np.where(is_flow, np.float32(0), target)),
            "cls_mask": torch.from_numpy(mask & ~is_flow),
        }
