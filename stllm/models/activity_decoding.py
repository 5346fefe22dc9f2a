"""Constrained decoding of activity days: a ``LogitsProcessor`` that only lets the model write lines that parse.

The answer format is regular and its vocabularies are known from the training days, so a byte-level automaton
is enough (no grammar library): a line is ``A `` + a time + `` | `` + a category [+ `` | `` + coordinates] +
``\n``, each field a choice from a trie of allowed strings (times ``HH:MM``; the training categories, or the
training places as (category, coordinates) pairs at the written precision), and EOS only where a line is
complete. The automaton also keeps what a grammar library would not: start times never decrease, at most
``max_lines`` lines, a new line is only begun when the remaining token budget can still finish it (worst
case one byte per token), so every generated answer parses, and (with a :class:`ReachRule`) a place is only
written when the previous place lies within what the fastest mode covers in the minutes between the two
lines: the time comes first on a line, so a far place needs a later time (the speed validator's own rule).
Per row, the processor can also favour a set of choices (the user's own places or categories from their
training days): a logit bonus on the tokens that lead towards them. Tokens are matched by their bytes (byte-level BPE
and SentencePiece with byte fallback), so categories with non-ASCII letters work too. Allowed-token masks are
cached per automaton state, and found by walking a trie of the vocabulary's byte strings with the automaton.

Why not outlines / xgrammar / transformers-cfg: each couples to specific transformers versions (5.x here) and
would still need the monotone-time and budget rules written by hand; this automaton is ~200 lines and exact.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import LogitsProcessor

from stllm.data.activity import parse_coord
from stllm.data.activity_checks import haversine_m
from stllm.data.activity_prior import START, UserPrior

FINISHED = ("finished",)


class ChoiceTrie:
    """Byte trie over complete field strings (each ends with its terminator byte). ``value`` (optional, per
    string) is kept at the leaf and bounded per node (``min_value``/``max_value``): to prune times below a floor,
    and, with values = the rank of the string in sorted order, each node's strings are the ranks ``min..max``."""

    def __init__(self, strings: Sequence[str], values: Sequence[int] | None = None, eos_after: str | None = None):
        self.children: list[dict[int, int]] = [{}]
        self.leaf_value: list[int | None] = [None]
        self.max_value: list[int] = [-1]
        self.min_value: list[int] = [-1]
        self.eos_ok: list[bool] = [False]
        if not strings:
            raise ValueError("a field needs at least one allowed string")
        for i, s in enumerate(strings):
            v = values[i] if values is not None else -1
            data = s.encode("utf-8")
            node = 0
            self.max_value[0] = max(self.max_value[0], v)
            self.min_value[0] = v if i == 0 else min(self.min_value[0], v)
            for j, b in enumerate(data):
                nxt = self.children[node].get(b)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][b] = nxt
                    self.children.append({})
                    self.leaf_value.append(None)
                    self.max_value.append(-1)
                    self.min_value.append(v)
                    self.eos_ok.append(False)
                node = nxt
                self.max_value[node] = max(self.max_value[node], v)
                self.min_value[node] = min(self.min_value[node], v)
                if eos_after is not None and j == len(data) - 2 and data[-1:] == eos_after.encode():
                    self.eos_ok[node] = True  # the string is complete before its terminator: EOS may end it here
            if self.children[node]:
                raise ValueError(f"field string {s!r} is a prefix of another")
            self.leaf_value[node] = v
        self.max_line = max(len(s.encode("utf-8")) for s in strings)


@dataclass(frozen=True)
class ReachRule:
    """How far a place may be from the previous one: ``free_m`` always, else at most ``max_speed_kmh`` over the
    minutes between the lines (at least ``min_seconds``): :func:`stllm.data.activity_checks.check_speed`'s rule
    for a move of unknown mode, which is what a generated line is."""

    max_speed_kmh: float
    min_seconds: int = 60
    free_m: float = 25.0


@dataclass(frozen=True)
class ActivityGrammar:
    """The fields of one answer line and its limits; states are ``(lines done, field, trie node, time floor,
    last choice, its time)``. The last field is the line's choice (category, or category and place); its
    strings are ranked in sorted order (``choices`` are their keys), so a trie node covers a range of ranks."""

    prefix: ChoiceTrie | None
    fields: tuple[ChoiceTrie, ...]
    time_field: int
    max_lines: int
    choices: tuple = ()
    coords: np.ndarray | None = None  # (n choices, 2) lat/lon of each place choice
    reach: ReachRule | None = None
    choice_texts: tuple[str, ...] = ()  # what a line writes for each choice (without the newline)
    prefix_text: str = ""
    _reach_cache: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    _rank_cache: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def choice_field(self) -> int:
        return len(self.fields) - 1

    def choice_range(self, node: int) -> tuple[int, int]:
        """Ranks of the choices below ``node`` of the choice field."""
        trie = self.fields[-1]
        return trie.min_value[node], trie.max_value[node]

    def ranks(self, keys: Iterable) -> list[int | None]:
        """Rank in ``choices`` of each key (a category, or a ``(category, "lat,lon")`` pair); None when unknown."""
        rank = self._rank_cache.get("rank")
        if rank is None:
            rank = self._rank_cache["rank"] = {k: i for i, k in enumerate(self.choices)}
        return [rank.get(_clean(k) if isinstance(k, str) else (_clean(k[0]), k[1])) for k in keys]

    def preferred(self, keys: Iterable) -> np.ndarray:
        """Boolean mask over ``choices`` of ``keys``; unknown keys are ignored."""
        mask = np.zeros(len(self.choices), dtype=bool)
        mask[[r for r in self.ranks(keys) if r is not None]] = True
        return mask

    def _reachable(self, place: int, minutes: int) -> np.ndarray:
        """Prefix counts of the places reachable from ``place`` in ``minutes`` (cached per pair)."""
        key = (place, minutes)
        if key not in self._reach_cache:
            d = haversine_m(self.coords[place, 0], self.coords[place, 1], self.coords[:, 0], self.coords[:, 1])
            r = self.reach
            ok = (d <= r.free_m) | (d * 3.6 / max(60 * minutes, r.min_seconds) <= r.max_speed_kmh * (1 - 1e-9))
            self._reach_cache[key] = np.concatenate([[0], np.cumsum(ok)])
        return self._reach_cache[key]

    def reachable(self, place: int, minutes: int, lo: int, hi: int) -> bool:
        """Whether a choice ranked ``lo..hi`` can follow ``place`` written ``minutes`` earlier."""
        if self.reach is None or self.coords is None or place < 0:
            return True
        cum = self._reachable(place, minutes)
        return bool(cum[hi + 1] > cum[lo])

    @property
    def max_line_bytes(self) -> int:
        return sum(f.max_line for f in self.fields)

    def start(self):
        return (0, -1 if self.prefix is not None else 0, 0, -1, -1, -1)

    def trie(self, field: int) -> ChoiceTrie:
        return self.prefix if field < 0 else self.fields[field]

    def advance(self, state, byte: int, may_start_line: bool = True):
        """The state after one byte, or None when the byte is not allowed there."""
        if state == FINISHED:
            return None
        lines, field, node, floor, place, since = state
        trie = self.trie(field)
        child = trie.children[node].get(byte)
        if child is None:
            return None
        if field == self.time_field and trie.max_value[child] < floor:
            return None  # every time below this prefix is earlier than the previous line's
        last = field == self.choice_field
        if last and not self.reachable(place, floor - since, trie.min_value[child], trie.max_value[child]):
            return None  # every place below this prefix is too far from the previous one for the time between
        if trie.children[child]:
            return lines, field, child, floor, place, since
        if field == self.time_field:
            floor = trie.leaf_value[child]
        if last:  # the line's '\n': a next line must fit
            if lines + 1 >= self.max_lines or not may_start_line:
                return None
            return lines + 1, 0, 0, floor, trie.leaf_value[child], floor
        return lines, field + 1, 0, floor, place, since

    def eos_allowed(self, state) -> bool:
        if state == FINISHED:
            return True
        field, node = state[1], state[2]
        return field == self.choice_field and self.fields[field].eos_ok[node]


def time_strings(resolution_minutes: int = 1) -> tuple[list[str], list[int]]:
    minutes = list(range(0, 24 * 60, resolution_minutes))
    return [f"{m // 60:02d}:{m % 60:02d}" for m in minutes], minutes


def activity_grammar(categories: Iterable[str], places: Iterable[tuple[str, str]] | None = None,
                     answer_prefix: str = "", max_lines: int = 20, time_resolution_minutes: int = 1,
                     reach: ReachRule | None = None) -> ActivityGrammar:
    """The grammar of :func:`stllm.data.activity.render_steps` lines (``A HH:MM | cat[ | lat,lon]``).

    With ``places`` (``(category, "lat,lon")`` pairs seen in training) category and coordinates are one choice:
    a coffee shop is written where a coffee shop was, never at an office's coordinates; ``reach`` then keeps
    consecutive places within reach of each other. ``grammar.choices`` are the pairs (or categories) by rank."""
    times, minutes = time_strings(time_resolution_minutes)
    last = "\n"
    fields = [ChoiceTrie(["A "]), ChoiceTrie([f"{t} | " for t in times], minutes)]
    coords = None
    if places is not None:
        keyed = sorted((f"{c} | {xy}", (c, xy)) for c, xy in {(_clean(c), xy) for c, xy in places})
        coords = np.array([parse_coord(xy, "place") for _, (_, xy) in keyed], dtype=np.float64).reshape(-1, 2)
    else:
        keyed = [(c, c) for c in sorted({_clean(c) for c in categories} - {""})]
    fields.append(ChoiceTrie([f"{s}{last}" for s, _ in keyed], list(range(len(keyed))), eos_after=last))
    prefix = _literal(answer_prefix) if answer_prefix else None
    return ActivityGrammar(prefix, tuple(fields), time_field=1, max_lines=max_lines,
                           choices=tuple(k for _, k in keyed), coords=coords, reach=reach if places else None,
                           choice_texts=tuple(s for s, _ in keyed), prefix_text=answer_prefix)


def _clean(category: str) -> str:
    return category.replace("|", "/").strip()


clean_category = _clean  # the name a category has in the grammar (and in a decoder's category_mass)


def _literal(text: str) -> ChoiceTrie:
    """A one-string trie whose leaf is the last byte of ``text`` (no terminator)."""
    t = ChoiceTrie.__new__(ChoiceTrie)
    data = text.encode("utf-8")
    t.children = [{b: i + 1} for i, b in enumerate(data)] + [{}]
    n = len(t.children)
    t.leaf_value, t.max_value, t.min_value, t.eos_ok = [None] * n, [-1] * n, [-1] * n, [False] * n
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
    ids, so each step advances each row by one token. ``prefer`` (one boolean array over ``grammar.choices``
    per row, or None) and ``bonus``: allowed tokens that lead towards a preferred choice get ``bonus`` added to
    their logit (before temperature and top-p), e.g. the places the row's user visited in training;
    ``prefer_times`` (one boolean array over the minutes of the day per row) and ``time_bonus`` do the same for
    the line's start time while it is being written (e.g. the hours the user started activities in training).
    ``prior`` (a :class:`~stllm.data.activity_prior.UserPrior` over ``grammar.choices``), ``users`` (the user of
    each row) and ``prior_weight`` w in [0, 1]: a mixture with the user's history per line. When a line's place
    opens, with probability w it is drawn from the prior (given the previous place and this line's hour, among
    the places within reach) and the tokens are restricted to the tokenizer's own spelling of it; when its start
    time opens (once every allowed token leads to a time), with probability ``hour_weight`` its minute is drawn
    from the prior (hour given the previous place and hour, not before the previous line) and spelt the same
    way. ``length_weight``: the share of rows whose number of lines is drawn from the prior (per user and
    weekday/weekend, ``weekends`` per row); such a row may not end before it, nor begin a line after it.
    Not a product of experts (``+ w log q`` per token): the LM already reads the persona, so the product
    sharpens the users' top places, and the prior's mass lands on short prefix tokens the LM never writes, which
    then derails the day (measured on Tokyo validation days: activities/day JSD 0.054 -> 0.10 at w 0.5, category
    0.085 -> 0.157). ``seed`` makes the draws repeatable. ``category_bias`` (category -> b,
    :mod:`stllm.data.activity_bias`): b is added to the token that decides a line's category, and the prior's
    place draw is reweighted by exp(b). ``category_mass`` (a dict, filled in place): per row's user, the
    expected number of lines per category (index of :func:`choice_category_index`) under this decoding: at each
    line's first step where every allowed token leads to a place and several categories are open, the softmax of
    the final logits at ``temperature`` (top-p ignored) over the categories the tokens decide (a token that spans
    several spreads its mass as the deciding tokens within its range), mixed with the prior's place draw at
    ``prior_weight``. Far less noisy than counting the sampled lines' categories. ``time_gaps`` (lambda in [0, 1]):
    while a line's time is written after the previous line's start f, the token of f's hour gets ``lambda *
    log prior.stay_ratio(f)`` and, inside that hour, each minute token ``lambda * log`` the prior's same-hour gap
    mass it leads to (:meth:`gap_boost`): masking alone left the LM's whole hour to the minutes after f, so times
    piled up at HH:5x (see :mod:`stllm.data.activity_prior`). A prior time draw inside f's hour is shaped the
    same way. ``repeats`` (in [0, 1]; > 0 also makes the prior's place draws
    :meth:`~stllm.data.activity_prior.UserPrior.choice_repeat`): on that share of the lines the LM writes (those
    the prior did not draw), whether the line repeats the previous place is drawn from the prior (its
    probability of the previous place in this context, among the places open and within reach): the place is
    then forced to the previous one, or barred. With the bonus towards own places the LM repeated the previous
    place on 26% of NYC validation lines (4.4% real, 9.4% without the bonus), which made one-place days and
    short radii of gyration. ``first_weight``: the share of days whose first line's start minute is drawn from the
    prior (p_user(first hour), the population's minutes within it), as ``hour_weight`` does for every line."""

    def __init__(self, grammar: ActivityGrammar, tokenizer, prompt_len: int, max_new_tokens: int,
                 prefer: Sequence[np.ndarray | None] | None = None, bonus: float = 0.0,
                 prefer_times: Sequence[np.ndarray | None] | None = None, time_bonus: float = 0.0,
                 prior: UserPrior | None = None, users: Sequence | None = None, prior_weight: float = 0.0,
                 hour_weight: float = 0.0, seed: int = 0, weekends: Sequence[bool | None] | None = None,
                 length_weight: float = 0.0, category_bias: dict[str, float] | None = None,
                 user_category_bias: dict[Hashable, dict[str, float]] | None = None,
                 category_mass: dict[Hashable, np.ndarray] | None = None, temperature: float = 1.0,
                 time_gaps: float = 0.0, repeats: float = 0.0, first_weight: float = 0.0):
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
        self.masks: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        self.bonus, self.time_bonus = float(bonus), float(time_bonus)
        self.prefer_counts = _counts(prefer) if self.bonus else None
        self.time_counts = _counts(prefer_times) if self.time_bonus else None
        if not (0 <= prior_weight <= 1 and 0 <= hour_weight <= 1) or (
                (prior_weight or hour_weight) and (prior is None or users is None)):
            raise ValueError(f"prior_weight {prior_weight} and hour_weight {hour_weight} must lie in [0, 1], and need "
                             "a prior and each row's user")
        if prior is not None and prior.n_choices != len(grammar.choices):
            raise ValueError(f"user prior over {prior.n_choices} choices, grammar has {len(grammar.choices)}")
        self.prior, self.users = prior, users
        self.prior_weight, self.hour_weight = float(prior_weight), float(hour_weight)
        self.rng = np.random.default_rng(seed)
        self.tokenizer = tokenizer
        self._canonical: dict[str, list[int]] = {}
        times = grammar.fields[grammar.time_field]
        self._time_grid = np.zeros(24 * 60)
        self._time_grid[[v for v in times.leaf_value if v is not None]] = 1.0
        self.forced: dict[tuple[int, int, str], tuple[int, int] | None] = {}  # (row, line, what) -> allowed range
        if not 0 <= time_gaps <= 1 or (time_gaps and prior is None):
            raise ValueError(f"time_gaps {time_gaps} must lie in [0, 1] and needs a prior")
        self.time_gaps = float(time_gaps)
        if not 0 <= repeats <= 1 or (repeats and (prior is None or users is None)):
            raise ValueError(f"repeats {repeats} must lie in [0, 1] and needs a prior and each row's user")
        self.repeats = float(repeats)
        if not 0 <= first_weight <= 1 or (first_weight and (prior is None or users is None)):
            raise ValueError(f"first_weight {first_weight} must lie in [0, 1] and needs a prior and each row's user")
        self.first_weight = float(first_weight)
        self.excluded: dict[tuple[int, int], int] = {}  # (row, line) -> the previous place, barred on this line
        if not 0 <= length_weight <= 1 or (length_weight and (prior is None or users is None)):
            raise ValueError(f"length_weight {length_weight} must lie in [0, 1] and needs a prior and each row's user")
        if user_category_bias and users is None:
            raise ValueError("user_category_bias needs each row's user")
        self.choice_bias, self.choice_cat = choice_category_bias(grammar, category_bias)
        self.row_bias = row_category_bias(grammar, self.choice_bias, user_category_bias, users) \
            if user_category_bias else None
        if self.choice_cat is None and self.row_bias is not None:
            self.choice_cat = choice_category_index(grammar)
        if category_mass is not None and users is None:
            raise ValueError("category_mass needs each row's user")
        self.category_mass, self.temperature = category_mass, float(temperature)
        if category_mass is not None and self.choice_cat is None:
            self.choice_cat = choice_category_index(grammar)
        self._massed: set[tuple[int, int]] = set()  # (row, line) whose expected category is counted
        self._prior_draw: dict[tuple[int, int], np.ndarray] = {}  # (row, line) -> the prior's place shares
        self.lines = [self._draw(prior.lengths(u, None if weekends is None else weekends[i], grammar.max_lines),
                                 length_weight) for i, u in enumerate(users)] if length_weight else None

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

    def _time_range(self, before, after, rng: tuple[int, int]) -> tuple[int, int]:
        """The minutes a token's bytes lead towards as the line's start time (``rng`` when they touch none)."""
        g = self.grammar
        if after[1] == g.time_field:
            times = g.fields[g.time_field]
            return times.min_value[after[2]], times.max_value[after[2]]
        if before[1] == g.time_field and after[1] != g.time_field:  # the token completed the time
            return after[3], after[3]
        return rng

    def _time_open(self, state) -> bool:
        """Whether the line's start time is still to be chosen (the state before or inside an undecided time)."""
        if state == FINISHED:
            return False
        g, (field, node) = self.grammar, state[1:3]
        times = g.fields[g.time_field]
        return field < g.time_field or (field == g.time_field and times.min_value[node] != times.max_value[node])

    def _choice_range(self, before, after, rng: tuple[int, int]) -> tuple[int, int]:
        """The ranks of the choices a token's bytes lead towards (``rng`` carried when they touch none)."""
        field = self.grammar.choice_field
        if after[1] == field:
            return self.grammar.choice_range(after[2])
        if before[1] == field and after[1] != field:  # the token completed the choice: the line's last choice
            return after[4], after[4]
        return rng

    def _open_choices(self, state) -> tuple[int, int] | None:
        """The choice ranks still open once the line's time is decided (None while it is not, or finished)."""
        if state == FINISHED:
            return None
        g, (field, node) = self.grammar, state[1:3]
        if field == g.choice_field:
            return g.choice_range(node)
        times = g.fields[g.time_field]
        if field == g.time_field and node and times.min_value[node] == times.max_value[node]:
            return g.choice_range(0)
        return None

    def allowed(self, state, may_start_line: bool) -> tuple[np.ndarray, ...]:
        """Allowed token ids, and per token the rank range of the choices it leads towards and the range of
        minutes its line's time is led towards (-1: none)."""
        key = (state, may_start_line)
        if key not in self.masks:
            ids = [*self.eos_ids] if self.grammar.eos_allowed(state) else []
            ranges = [(-1, -1, -1, -1)] * len(ids)
            if state != FINISHED:
                stack = [(0, state, (-1, -1), (-1, -1))]
                while stack:
                    node, st, rng, trng = stack.pop()
                    for b, child in self.trie[node].items():
                        nxt = self.grammar.advance(st, b, may_start_line)
                        if nxt is not None:
                            r, tr = self._choice_range(st, nxt, rng), self._time_range(st, nxt, trng)
                            ids.extend(self.ends[child])
                            ranges.extend([(*r, *tr)] * len(self.ends[child]))
                            stack.append((child, nxt, r, tr))
            elif self.pad_id is not None:
                ids.append(int(self.pad_id))
                ranges.append((-1, -1, -1, -1))
            if not ids:
                raise RuntimeError(f"activity grammar: no token can follow state {state}")
            r = np.array(ranges, dtype=np.int64).reshape(-1, 4)
            if not self._time_open(state):
                r[:, 2:] = -1
            # favour tokens only while the line's place is open: not one ending a decided line against EOS, nor
            # one still writing the time (it would pull times towards the favoured choices)
            here = self._open_choices(state)
            if here is None or here[0] == here[1]:
                r[:, :2] = -1
            self.masks[key] = (np.array(ids, dtype=np.int64), r[:, 0], r[:, 1], r[:, 2], r[:, 3])
        return self.masks[key]

    def _bias(self, row: int) -> np.ndarray | None:
        """The row's bias per choice (population plus its user's), None without one."""
        return self.choice_bias if self.row_bias is None else self.row_bias[row]

    def _category_boost(self, state, lo: np.ndarray, hi: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """Per allowed token, the ``bias`` (per choice) of the category it decides: a token whose choices lie in
        one category while the line's open choices span several (the category's first deciding token; 0 for the
        others)."""
        here, cat = self._open_choices(state), self.choice_cat
        if here is None or cat[here[0]] == cat[here[1]]:
            return np.zeros(len(lo))
        a, b = np.maximum(lo, 0), np.maximum(hi, 0)
        return np.where((lo >= 0) & (cat[a] == cat[b]), bias[a], 0.0)

    def _add_mass(self, row: int, line: int, logits: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        """Adds the row's expected category of this line (see the class doc) to ``category_mass[user]``."""
        self._massed.add((row, line))
        cat = self.choice_cat
        p = np.exp((logits - logits.max()) / self.temperature)
        p /= p.sum()
        one = cat[lo] == cat[hi]
        mass = np.bincount(cat[lo[one]], weights=p[one], minlength=int(cat.max()) + 1)
        direct = mass.copy()
        for w, a, b in zip(p[~one], lo[~one], hi[~one]):
            cs = np.unique(cat[a:b + 1])  # the categories of its ranks (their indices need not be in rank order)
            d = direct[cs]
            mass[cs] += w * (d / d.sum() if d.sum() > 0 else 1.0 / len(cs))
        prior = self._prior_draw.get((row, line))
        if prior is not None:
            mass = (1 - self.prior_weight) * mass + self.prior_weight * np.bincount(cat, weights=prior,
                                                                                    minlength=len(mass))
        user = self.users[row]
        self.category_mass[user] = self.category_mass.get(user, 0.0) + mass

    def gap_boost(self, state, tlo: np.ndarray, thi: np.ndarray) -> np.ndarray:
        """Per token (its minute range ``tlo..thi``; -1: none), the log weight :attr:`time_gaps` adds: at the hour
        decision, the stay ratio on a token whose minutes all lie in the floor's hour; inside the floor's hour, the
        log of the same-hour gap mass of the token's minutes at or after the floor; 0 elsewhere, and on a day's
        first line."""
        out = np.zeros(len(tlo))
        if state == FINISHED or state[3] < 0 or not (tlo >= 0).any():
            return out
        g, (field, node), f = self.grammar, state[1:3], state[3]
        times = g.fields[g.time_field]
        a, b = (times.min_value[node], times.max_value[node]) if field == g.time_field else (0, 24 * 60 - 1)
        first, last = f // 60 * 60, f // 60 * 60 + 59
        ok = tlo >= 0
        if b > last:  # the hour is open: reweight the tokens that stay in the floor's hour
            stay = ok & (tlo >= first) & (thi <= last)
            out[stay] = np.log(self.prior.stay_ratio(f))
        elif a >= first:  # inside the floor's hour: the minutes follow the same-hour gaps from the floor
            cum = np.concatenate([[0.0], np.cumsum(self.prior.gaps())])
            lo, hi = np.clip(np.maximum(tlo, f) - f, 0, 60), np.clip(thi - f + 1, 0, 60)
            mass = np.where(ok & (hi > lo), cum[hi] - cum[np.minimum(lo, hi)], 1.0)
            out[ok] = np.log(np.maximum(mass[ok], 1e-12))
        return self.time_gaps * out

    def _line_minute(self, state) -> int:
        """The current line's start minute once decided (its time field may still be writing ' | ')."""
        g, (field, node) = self.grammar, state[1:3]
        return g.fields[g.time_field].min_value[node] if field == g.time_field else state[3]

    def _draw(self, p: np.ndarray, weight: float) -> int | None:
        """An index drawn with probability ``weight`` (None otherwise, or when ``p`` has no mass)."""
        if self.rng.random() >= weight or p.sum() <= 0:
            return None
        return int(self.rng.choice(len(p), p=p / p.sum()))

    def _forced_range(self, row: int, state, lo: np.ndarray, tlo: np.ndarray) -> tuple[str, tuple[int, int]] | None:
        """The line's place rank (``"choice"``) or minute range (``"time"``) drawn from the prior, if any."""
        g, user, prev, floor = self.grammar, self.users[row], state[4], state[3]
        here = self._open_choices(state)
        if here is not None and here[0] != here[1] and (lo >= 0).all():
            key = (row, state[0], "choice")
            if key not in self.forced:
                minute = self._line_minute(state)
                p = (self.prior.choice_repeat if self.repeats else self.prior.choice)(user, prev, minute // 60).copy()
                if self._bias(row) is not None:
                    p *= np.exp(self._bias(row))
                p[:here[0]], p[here[1] + 1:] = 0, 0
                if g.reach is not None and g.coords is not None and prev >= 0:
                    p *= np.diff(g._reachable(prev, minute - state[5])) > 0
                if self.category_mass is not None and p.sum() > 0:
                    self._prior_draw[(row, state[0])] = p / p.sum()
                c = self._draw(p, self.prior_weight)
                if self.repeats and c is None and prev >= 0 and p.sum() > 0 and self.rng.random() < self.repeats:
                    if self.rng.random() < p[prev] / p.sum():
                        c = prev
                    else:
                        self.excluded[(row, state[0])] = prev
                self.forced[key] = None if c is None else (c, c)
            return None if self.forced[key] is None else ("choice", self.forced[key])
        if self._time_open(state) and len(tlo) and (tlo >= 0).all():
            key = (row, state[0], "time")
            if key not in self.forced:
                p = self.prior.start_minutes(user, prev, START if floor < 0 else floor // 60) * self._time_grid
                if self.time_gaps and floor >= 0:  # the floor's hour: its mass times the stay ratio, spread as gaps
                    first = floor // 60 * 60
                    hour = p[first:first + 60].sum() * self.prior.stay_ratio(floor) ** self.time_gaps
                    shape = self.prior.gaps()[:first + 60 - floor] * self._time_grid[floor:first + 60]
                    p[floor:first + 60] = hour * shape / shape.sum() if shape.sum() > 0 else 0.0
                p[:max(floor, 0)] = 0
                m = self._draw(p, self.hour_weight if state[0] else max(self.hour_weight, self.first_weight))
                self.forced[key] = None if m is None else (m, m)
            return None if self.forced[key] is None else ("time", self.forced[key])
        return None

    def _canonical_next(self, ids: Sequence[int], state, what: str, value: int) -> int | None:
        """The next token of the tokenizer's own spelling of this line up to its forced time (``what`` "time":
        ``A HH:MM |``) or place (``"choice"``), when the line so far follows that spelling (None otherwise). A
        forced place left to the LM among all tokens that lead to it was spelt in pieces the LM never saw in
        training (' ' + 'Park' for ' Park': 90% of Tokyo days at share 1), and days drifted after them."""
        cut = max((i for i, t in enumerate(ids) if b"\n" in self.tokens.get(t, b"")), default=-1)
        if cut >= 0 and not self.tokens[ids[cut]].endswith(b"\n"):
            return None
        minute = value if what == "time" else self._line_minute(state)
        target = (f"{self.grammar.prefix_text if state[0] == 0 else ''}A {minute // 60:02d}:{minute % 60:02d} |"
                  + ("" if what == "time" else f" {self.grammar.choice_texts[value]}"))
        if target not in self._canonical:
            self._canonical[target] = self.tokenizer(target, add_special_tokens=False)["input_ids"]
        canon, line = self._canonical[target], list(ids[cut + 1:])
        return canon[len(line)] if len(canon) > len(line) and canon[:len(line)] == line else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        done = input_ids.shape[1] - self.prompt_len
        may_start_line = self.max_new_tokens - done > self.grammar.max_line_bytes + 1
        allow = torch.zeros_like(scores, dtype=torch.bool)
        boost = torch.zeros_like(scores)
        mass_rows = []
        for row, ids in enumerate(input_ids[:, self.prompt_len:].tolist()):
            state = self.state_of(tuple(ids))
            target = None if self.lines is None or state == FINISHED else self.lines[row]
            tok, lo, hi, tlo, thi = self.allowed(state, may_start_line and (target is None or state[0] + 1 < target))
            if target is not None and state[0] + 1 < target:  # the day is shorter than its drawn length: no EOS
                more = ~np.isin(tok, list(self.eos_ids))
                if more.any():
                    tok, lo, hi, tlo, thi = tok[more], lo[more], hi[more], tlo[more], thi[more]
            allow[row, torch.from_numpy(tok)] = True
            if (self.category_mass is not None and state != FINISHED and (row, state[0]) not in self._massed
                    and len(lo) and (lo >= 0).all()):
                here = self._open_choices(state)
                if here is not None and self.choice_cat[here[0]] != self.choice_cat[here[1]]:
                    mass_rows.append((row, state[0], tok, lo, hi))
            forced = self._forced_range(row, state, lo, tlo) if self.prior is not None and state != FINISHED else None
            if forced is not None:
                (a, b), (flo, fhi) = (lo, hi) if forced[0] == "choice" else (tlo, thi), forced[1]
                keep = (a <= fhi) & (b >= flo)
                nxt = self._canonical_next(ids, state, forced[0], flo)
                if nxt is not None and nxt in set(tok[keep].tolist()):
                    keep = tok == nxt
                if keep.any():
                    allow[row] = False
                    allow[row, torch.from_numpy(tok[keep])] = True
            if self._bias(row) is not None and state != FINISHED:
                boost[row, torch.from_numpy(tok)] += torch.from_numpy(
                    self._category_boost(state, lo, hi, self._bias(row))).to(boost)
            barred = None if forced is not None or state == FINISHED else self.excluded.get((row, state[0]))
            if barred is not None:
                keep = ~((lo == barred) & (hi == barred))
                if keep.any() and not keep.all():
                    allow[row] = False
                    allow[row, torch.from_numpy(tok[keep])] = True
            if self.time_gaps and state != FINISHED and self._time_open(state):
                boost[row, torch.from_numpy(tok)] += torch.from_numpy(self.gap_boost(state, tlo, thi)).to(boost)
            for counts, a, b, bonus in ((self.prefer_counts, lo, hi, self.bonus),
                                        (self.time_counts, tlo, thi, self.time_bonus)):
                if counts is not None and counts[row] is not None:
                    hit = (a >= 0) & (counts[row][b + 1] > counts[row][np.maximum(a, 0)])
                    boost[row, torch.from_numpy(tok[hit])] += bonus
        for row, line, tok, lo, hi in mass_rows:
            logits = (scores[row] + boost[row])[torch.from_numpy(tok).to(scores.device)]
            self._add_mass(row, line, logits.double().cpu().numpy(), lo, hi)
        return (scores + boost).masked_fill(~allow, float("-inf"))


def choice_category_bias(grammar: ActivityGrammar, bias: dict[str, float] | None
                         ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per choice of ``grammar``, its category's ``bias`` (0 for a category without one) and its category's index
    (choices of one category are consecutive ranks); (None, None) without a bias."""
    if not bias:
        return None, None
    cats = [c if isinstance(c, str) else c[0] for c in grammar.choices]
    clean = {_clean(c): v for c, v in bias.items()}
    return np.array([clean.get(c, 0.0) for c in cats]), choice_category_index(grammar)


def choice_category_index(grammar: ActivityGrammar) -> np.ndarray:
    """Per choice of ``grammar``, the index of its category (equal indices: one category)."""
    return np.unique([c if isinstance(c, str) else c[0] for c in grammar.choices], return_inverse=True)[1]


def choice_category_names(grammar: ActivityGrammar) -> list[str]:
    """The category of each index of :func:`choice_category_index` (the grammar's cleaned names)."""
    return [str(c) for c in np.unique([c if isinstance(c, str) else c[0] for c in grammar.choices])]


def row_category_bias(grammar: ActivityGrammar, base: np.ndarray | None,
                      per_user: dict[Hashable, dict[str, float]] | None, users: Sequence | None
                      ) -> list[np.ndarray | None]:
    """Per row, the bias per choice: ``base`` (population) plus the row's user's own (:func:`choice_category_bias`
    of ``per_user[user]``; a user without one gets ``base`` alone); one array per user, shared by their rows."""
    if not per_user or users is None:
        return [base] * (0 if users is None else len(users))
    own: dict[Hashable, np.ndarray | None] = {}
    for u in dict.fromkeys(users):
        b = choice_category_bias(grammar, per_user.get(u))[0]
        own[u] = base if b is None else b if base is None else base + b
    return [own[u] for u in users]


def _counts(masks: Sequence[np.ndarray | None] | None) -> list[np.ndarray | None] | None:
    """Per row, prefix counts of a boolean mask (None passes through): a range holds a preferred item when the
    counts at its two ends differ."""
    if masks is None:
        return None
    return [None if m is None else np.concatenate([[0], np.cumsum(np.asarray(m, dtype=bool))]) for m in masks]
