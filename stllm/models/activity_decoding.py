"""Constrained decoding of activity days: a ``LogitsProcessor`` that only lets the model write lines that parse.

The answer format is regular and its vocabularies are known from the training days, so a byte-level automaton
is enough (no grammar library): a line is ``A `` + a time + `` | `` + a category [+ `` | `` + coordinates] +
``\n``, each field a choice from a trie of allowed strings (times ``HH:MM``; the training categories, or the
training places as (category, coordinates) pairs at the written precision), and EOS only where a line is
complete. The automaton also keeps what a grammar library would not: start times never decrease, at most
``max_lines`` lines, and a new line is only begun when the remaining token budget can still finish it (worst
case one byte per token), so every generated answer parses. Tokens are matched by their bytes (byte-level BPE
and SentencePiece with byte fallback), so categories with non-ASCII letters work too. Allowed-token masks are
cached per automaton state, and found by walking a trie of the vocabulary's byte strings with the automaton.

Why not outlines / xgrammar / transformers-cfg: each couples to specific transformers versions (5.x here) and
would still need the monotone-time and budget rules written by hand; this automaton is ~200 lines and exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

FINISHED = ("finished",)


class ChoiceTrie:
    """Byte trie over complete field strings (each ends with its terminator byte). ``value`` (optional, per
    string) is kept at the leaf and bounded per node (``max_value``), to prune choices below a floor."""

    def __init__(self, strings: Sequence[str], values: Sequence[int] | None = None, eos_after: str | None = None):
        self.children: list[dict[int, int]] = [{}]
        self.leaf_value: list[int | None] = [None]
        self.max_value: list[int] = [-1]
        self.eos_ok: list[bool] = [False]
        if not strings:
            raise ValueError("a field needs at least one allowed string")
        for i, s in enumerate(strings):
            v = values[i] if values is not None else -1
            data = s.encode("utf-8")
            node = 0
            self.max_value[0] = max(self.max_value[0], v)
            for j, b in enumerate(data):
                nxt = self.children[node].get(b)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][b] = nxt
                    self.children.append({})
                    self.leaf_value.append(None)
                    self.max_value.append(-1)
                    self.eos_ok.append(False)
                node = nxt
                self.max_value[node] = max(self.max_value[node], v)
                if eos_after is not None and j == len(data) - 2 and data[-1:] == eos_after.encode():
                    self.eos_ok[node] = True  # the string is complete before its terminator: EOS may end it here
            if self.children[node]:
                raise ValueError(f"field string {s!r} is a prefix of another")
            self.leaf_value[node] = v
        self.max_line = max(len(s.encode("utf-8")) for s in strings)


@dataclass(frozen=True)
class ActivityGrammar:
    """The fields of one answer line and its limits; states are ``(lines done, field, trie node, time floor)``."""

    prefix: ChoiceTrie | None
    fields: tuple[ChoiceTrie, ...]
    time_field: int
    max_lines: int

    @property
    def max_line_bytes(self) -> int:
        return sum(f.max_line for f in self.fields)

    def start(self):
        return (0, -1, 0, -1) if self.prefix is not None else (0, 0, 0, -1)

    def trie(self, field: int) -> ChoiceTrie:
        return self.prefix if field < 0 else self.fields[field]

    def advance(self, state, byte: int, may_start_line: bool = True):
        """The state after one byte, or None when the byte is not allowed there."""
        if state == FINISHED:
            return None
        lines, field, node, floor = state
        trie = self.trie(field)
        child = trie.children[node].get(byte)
        if child is None:
            return None
        if field == self.time_field and trie.max_value[child] < floor:
            return None  # every time below this prefix is earlier than the previous line's
        if trie.children[child]:
            return lines, field, child, floor
        if field == self.time_field:
            floor = trie.leaf_value[child]
        if field == len(self.fields) - 1:  # the line's '\n': a next line must fit
            if lines + 1 >= self.max_lines or not may_start_line:
                return None
            return lines + 1, 0, 0, floor
        return lines, field + 1, 0, floor

    def eos_allowed(self, state) -> bool:
        if state == FINISHED:
            return True
        _, field, node, _ = state
        return field == len(self.fields) - 1 and self.fields[field].eos_ok[node]


def time_strings(resolution_minutes: int = 1) -> tuple[list[str], list[int]]:
    minutes = list(range(0, 24 * 60, resolution_minutes))
    return [f"{m // 60:02d}:{m % 60:02d}" for m in minutes], minutes


def activity_grammar(categories: Iterable[str], places: Iterable[tuple[str, str]] | None = None,
                     answer_prefix: str = "", max_lines: int = 20, time_resolution_minutes: int = 1) -> ActivityGrammar:
    """The grammar of :func:`stllm.data.activity.render_steps` lines (``A HH:MM | cat[ | lat,lon]``).

    With ``places`` (``(category, "lat,lon")`` pairs seen in training) category and coordinates are one choice:
    a coffee shop is written where a coffee shop was, never at an office's coordinates."""
    times, minutes = time_strings(time_resolution_minutes)
    last = "\n"
    fields = [ChoiceTrie(["A "]), ChoiceTrie([f"{t} | " for t in times], minutes)]
    if places is not None:
        pairs = sorted({(c.replace("|", "/").strip(), xy) for c, xy in places})
        fields.append(ChoiceTrie([f"{c} | {xy}{last}" for c, xy in pairs], eos_after=last))
    else:
        cats = sorted({c.replace("|", "/").strip() for c in categories} - {""})
        fields.append(ChoiceTrie([f"{c}{last}" for c in cats], eos_after=last))
    prefix = _literal(answer_prefix) if answer_prefix else None
    return ActivityGrammar(prefix, tuple(fields), time_field=1, max_lines=max_lines)


def _literal(text: str) -> ChoiceTrie:
    """A one-string trie whose leaf is the last byte of ``text`` (no terminator)."""
    t = ChoiceTrie.__new__(ChoiceTrie)
    data = text.encode("utf-8")
    t.children = [{b: i + 1} for i, b in enumerate(data)] + [{}]
    t.leaf_value, t.max_value, t.eos_ok = [None] * len(t.children), [-1] * len(t.children), [False] * len(t.children)
    t.max_line = len(data)
    return t


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode -> byte map (how byte-level BPE vocabularies spell bytes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_bytes(tokenizer) -> dict[int, bytes]:
    """Byte string of every ordinary token (special tokens left out: they never appear in an answer line)."""
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.get_vocab()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    byte_level = backend is not None and "ByteLevel" in type(backend.decoder).__name__ + repr(backend.decoder)
    decoder = _byte_decoder()
    out = {}
    for tok, i in vocab.items():
        if i in special:
            continue
        if byte_level:
            try:
                out[i] = bytes(decoder[ch] for ch in tok)
            except KeyError:
                continue
        elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            out[i] = bytes([int(tok[3:5], 16)])
        else:
            out[i] = tok.replace("\u2581", " ").encode("utf-8")
    return {i: b for i, b in out.items() if b}


class ActivityLogitsProcessor(LogitsProcessor):
    """Masks every token the grammar does not allow after what each row has generated so far.

    ``prompt_len`` is the (padded) prompt length of the batch; ``max_new_tokens`` the generation budget (a new
    line starts only when a whole line still fits). Rows are replayed from a cache keyed by their generated
    ids, so each step advances each row by one token."""

    def __init__(self, grammar: ActivityGrammar, tokenizer, prompt_len: int, max_new_tokens: int):
        self.grammar, self.prompt_len, self.max_new_tokens = grammar, prompt_len, max_new_tokens
        self.eos_ids = {int(tokenizer.eos_token_id)}
        self.pad_id = tokenizer.pad_token_id
        self.tokens = token_bytes(tokenizer)
        self.trie: list[dict[int, int]] = [{}]
        self.ends: list[list[int]] = [[]]
        for i, data in self.tokens.items():
            node = 0
            for b in data:
                nxt = self.trie[node].get(b)
                if nxt is None:
                    nxt = len(self.trie)
                    self.trie[node][b] = nxt
                    self.trie.append({})
                    self.ends.append([])
                node = nxt
            self.ends[node].append(i)
        self.states: dict[tuple[int, ...], tuple] = {(): grammar.start()}
        self.masks: dict[tuple, list[int]] = {}

    def _advance_bytes(self, state, data: bytes, may_start_line: bool):
        for b in data:
            state = self.grammar.advance(state, b, may_start_line)
            if state is None:
                return None
        return state

    def state_of(self, generated: tuple[int, ...]):
        if generated in self.states:
            return self.states[generated]
        prev = self.state_of(generated[:-1])
        tok = generated[-1]
        if prev == FINISHED or tok in self.eos_ids:
            state = FINISHED
        else:
            state = self._advance_bytes(prev, self.tokens.get(tok, b"\xff\xff"), True)
            if state is None:
                raise ValueError(f"token {tok} was generated where the activity grammar does not allow it")
        self.states[generated] = state
        return state

    def allowed(self, state, may_start_line: bool) -> list[int]:
        key = (state, may_start_line)
        if key not in self.masks:
            ids = [*self.eos_ids] if self.grammar.eos_allowed(state) else []
            if state != FINISHED:
                stack = [(0, state)]
                while stack:
                    node, st = stack.pop()
                    for b, child in self.trie[node].items():
                        nxt = self.grammar.advance(st, b, may_start_line)
                        if nxt is not None:
                            ids.extend(self.ends[child])
                            stack.append((child, nxt))
            elif self.pad_id is not None:
                ids.append(int(self.pad_id))
            if not ids:
                raise RuntimeError(f"activity grammar: no token can follow state {state}")
            self.masks[key] = ids
        return self.masks[key]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        done = input_ids.shape[1] - self.prompt_len
        may_start_line = self.max_new_tokens - done > self.grammar.max_line_bytes + 1
        allow = torch.zeros_like(scores, dtype=torch.bool)
        for row, ids in enumerate(input_ids[:, self.prompt_len:].tolist()):
            allow[row, self.allowed(self.state_of(tuple(ids)), may_start_line)] = True
        return scores.masked_fill(~allow, float("-inf"))
