"""Constrained decoding of mobility text answers: every generated answer parses and covers the asked days.

The format (:mod:`stllm.data.mobility_answers`) is one line per asked day, ``header`` + ``A B@16 A@36``: a place
letter among the row's named places, then changes ``place@half-hour`` with strictly increasing half-hours in
1..47, at most ``max_runs`` places, no place twice in a row. The headers are fixed per row (the asked days), so
the automaton writes them byte for byte, and EOS is allowed only once the last asked day's line holds a place.
An answer is at most :meth:`AnswerGrammar.max_bytes` bytes, so a generation budget of that many tokens always
ends with a complete answer. Tokens are matched by their bytes (:func:`~stllm.models.activity_decoding.token_bytes`,
the activity grammar's reading of byte-level BPE and SentencePiece vocabularies); allowed tokens are found by
walking a trie of the vocabulary's byte strings with the automaton, cached per state. A state carries the row's
remaining headers and its number of places, so rows asking the same days share the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

from stllm.data.mobility_answers import LABELS, MAX_RUNS
from stllm.data.trajectories import SLOTS_PER_DAY
from stllm.models.activity_decoding import token_bytes

DONE = ("done",)
_SPACE, _NEWLINE, _AT = ord(" "), ord("\n"), ord("@")


@dataclass(frozen=True)
class AnswerGrammar:
    """States: ``("lit", texts, pos, n)`` writing the fixed ``texts[0]`` (a day's header, with the answer prefix
    or the newline before it), ``("lab", texts, n, runs, prev, t)`` a place letter next, ``("at", ...)`` its
    ``@``, ``("num", ..., digits)`` its half-hour, ``("sep", texts, n, runs, place, t)`` a complete run; ``n`` is
    the row's number of named places, ``texts[1:]`` the days still to write."""

    max_runs: int = MAX_RUNS
    slots: int = SLOTS_PER_DAY

    def start(self, headers: Sequence[str], n_places: int, prefix: str = "") -> tuple:
        if not headers or not 1 <= n_places <= len(LABELS):
            raise ValueError(f"an answer needs at least one day and 1..{len(LABELS)} places, got {len(headers)} days "
                             f"and {n_places} places")
        texts = (prefix + headers[0], *("\n" + h for h in headers[1:]))
        return ("lit", tuple(t.encode() for t in texts), 0, n_places)

    def max_bytes(self, state: tuple) -> int:
        """The longest answer from a start state: headers, ``max_runs`` places a line (`` X@47`` after the first)."""
        texts = state[1]
        return sum(len(t) for t in texts) + len(texts) * (1 + (self.max_runs - 1) * len(" X@47"))

    def _half_hour(self, digits: bytes, t: int) -> int | None:
        """``digits`` as a complete half-hour after ``t`` (no leading zero), else None."""
        if not digits or digits[:1] == b"0":
            return None
        v = int(digits)
        return v if t < v < self.slots else None

    def advance(self, state: tuple, byte: int) -> tuple | None:
        """The state after one byte, or None when the byte is not allowed there."""
        kind = state[0]
        if kind == "lit":
            _, texts, pos, n = state
            if texts[0][pos] != byte:
                return None
            return ("lit", texts, pos + 1, n) if pos + 1 < len(texts[0]) else ("lab", texts, n, 0, -1, -1)
        if kind == "lab":
            _, texts, n, runs, prev, t = state
            place = LABELS.find(chr(byte)) if byte < 128 else -1
            if place < 0 or place >= n or place == prev:
                return None
            return ("sep", texts, n, 1, place, 0) if runs == 0 else ("at", texts, n, runs + 1, place, t)
        if kind == "at":
            return ("num", *state[1:], b"") if byte == _AT else None
        if kind == "num":
            _, texts, n, runs, place, t, digits = state
            if 48 <= byte <= 57:
                s = digits + bytes([byte])
                ok = any(str(v).encode().startswith(s) for v in range(t + 1, self.slots))
                return ("num", texts, n, runs, place, t, s) if ok and s[:1] != b"0" else None
            v = self._half_hour(digits, t)
            return None if v is None else self.advance(("sep", texts, n, runs, place, v), byte)
        if kind == "sep":
            _, texts, n, runs, place, t = state
            if byte == _SPACE and runs < self.max_runs and t < self.slots - 1 and n > 1:  # another place fits
                return ("lab", texts, n, runs, place, t)
            if byte == _NEWLINE and len(texts) > 1:
                return self.advance(("lit", texts[1:], 0, n), byte)
        return None

    def eos_allowed(self, state: tuple) -> bool:
        if state == DONE:
            return True
        if state[0] == "num":
            return len(state[1]) == 1 and self._half_hour(state[6], state[5]) is not None
        return state[0] == "sep" and len(state[1]) == 1


class MobilityAnswerProcessor(LogitsProcessor):
    """Masks every token that would leave the answer grammar, per row from its own start state (its asked days and
    places). Each call advances each row by the token it generated last (greedy or sampled, no beams)."""

    def __init__(self, grammar: AnswerGrammar, tokenizer, prompt_len: int, starts: Sequence[tuple]):
        self.grammar, self.prompt_len = grammar, prompt_len
        self.eos_id = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.after_done = sorted({self.eos_id, self.eos_id if pad is None else int(pad)})
        self.tokens = token_bytes(tokenizer)
        self.trie: dict = {}  # nested {byte: subtrie}; key None: the tokens spelt by the path to here
        for tok, data in self.tokens.items():
            node = self.trie
            for b in data:
                node = node.setdefault(b, {})
            node.setdefault(None, []).append(tok)
        self.states = list(starts)
        self.cache: dict[tuple, torch.Tensor] = {}

    def allowed(self, state: tuple) -> torch.Tensor:
        if state not in self.cache:
            ids = list(self.after_done) if state == DONE else ([self.eos_id] if self.grammar.eos_allowed(state) else [])
            stack = [] if state == DONE else [(self.trie, state)]
            while stack:
                node, st = stack.pop()
                for b, sub in node.items():
                    after = None if b is None else self.grammar.advance(st, b)
                    if after is not None:
                        ids.extend(sub.get(None, ()))
                        stack.append((sub, after))
            if not ids:
                raise RuntimeError(f"mobility answer grammar: no token can follow state {state[:1]}")
            self.cache[state] = torch.tensor(sorted(set(ids)), dtype=torch.long)
        return self.cache[state]

    def _step(self, state: tuple, tok: int) -> tuple:
        if state == DONE or tok == self.eos_id:
            return DONE
        for b in self.tokens.get(tok, b"\xff"):
            state = self.grammar.advance(state, b)
            if state is None:
                raise ValueError(f"token {tok} was generated where the mobility answer grammar does not allow it")
        return state

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.prompt_len:
            last = input_ids[:, -1].tolist()
            self.states = [self._step(s, t) for s, t in zip(self.states, last)]
        allow = torch.zeros_like(scores, dtype=torch.bool)
        for row, state in enumerate(self.states):
            allow[row, self.allowed(state).to(scores.device)] = True
        return scores.masked_fill(~allow, float("-inf"))
