"""Instruction templates shared by training and evaluation: same inputs -> same text, always.

A template turns a :class:`PromptContext` (region, time ranges, task) into a :class:`Conversation`
(system, user, answer). The user turn carries the ``<ST_HIS>`` placeholder(s) (and ``<GEO>`` when
asked); the answer carries exactly one ``<ST_PRE>``. :class:`ChatFormatter` renders a conversation
with the tokenizer's chat template when it has one, else as a plain Vicuna v1.1 conversation.
Wording is fixed: POI categories are sorted by count then name, never by set order.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from stllm.data.city import Region, freq_words
from stllm.tokens import GEO_PLACEHOLDER, POI_PRE_PLACEHOLDER, ST_HIS_PLACEHOLDER, ST_PRE_PLACEHOLDER

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VIEW_WORDS = {"day": "one day earlier", "week": "one week earlier"}
# "urbangpt": UrbanGPT's wording (system prompt, instructions, an answer sentence around <ST_PRE>);
# "compact": the same facts without the filler, about a third fewer tokens (bench/smollm2_prompts.py)
PROMPT_STYLES = ("urbangpt", "compact")
COMPACT_SYSTEM = "You forecast urban data from the facts and encoder tokens given."


@dataclass(frozen=True)
class Conversation:
    """One instruction sample as text: the answer is the supervised part."""

    system: str
    user: str
    answer: str


@dataclass(frozen=True)
class PromptContext:
    """Everything a template may mention. Times are slot starts, in minutes since the epoch."""

    task: str
    region: Region
    channels: tuple[str, ...]
    history_start: int
    target_start: int
    input_len: int
    output_len: int
    freq_minutes: int
    quantity: str = ""
    place: str = ""
    extra_views: tuple[str, ...] = ()  # names in VIEW_WORDS, oldest first; their <ST_HIS> come first
    with_geo: bool = False
    top_pois: int = 5
    view_shifts: tuple[int, ...] = ()  # whole periods each extra view lies back (default 1 each)
    context_days: int = 0  # the one history placeholder also holds the target slots on this many days
    context_weeks: int = 0  # ... and weeks before (stllm.data.context)
    style: str = "urbangpt"  # one of PROMPT_STYLES


@lru_cache(maxsize=65536)
def describe_range(start_minutes: int, n_steps: int, freq_minutes: int) -> str:
    """``January 1, 2020, 00:00, Wednesday to January 1, 2020, 05:30, Wednesday, with data points
    recorded at 30-minute intervals`` (dates only for daily or coarser steps)."""
    first = _dt.datetime(1970, 1, 1) + _dt.timedelta(minutes=start_minutes)
    last = first + _dt.timedelta(minutes=freq_minutes * (n_steps - 1))
    daily = freq_minutes % 1440 == 0
    fmt = "%B {d}, %Y, %A" if daily else "%B {d}, %Y, %H:%M, %A"
    words = freq_words(np.timedelta64(freq_minutes, "m"))
    a, b = (t.strftime(fmt.replace("{d}", str(t.day))) for t in (first, last))
    return f"{a} to {b}, with data points recorded at {words} intervals"


def describe_region(region: Region, top_pois: int = 5) -> str:
    where = f" within the {region.borough} borough district" if region.borough else ""
    if region.pois:
        cats = ", ".join(f"{c} ({n})" for c, n in region.top_pois(top_pois))
        return f"{region.name} is located{where} and encompasses POIs covering {cats}."
    return f"{region.name} is located{where}; no POI description is available for this region."


def _list_words(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _view_words(view: str, shift: int) -> str:
    return VIEW_WORDS[view] if shift == 1 else f"{shift} {view}s earlier"


def _context_periods(ctx: PromptContext) -> list[str]:
    """``["7 days", "8 weeks"]``: the earlier periods whose target slots the history placeholder also holds."""
    return [f"{n} {unit}{'s' if n > 1 else ''}" for n, unit in ((ctx.context_days, "day"),
                                                                (ctx.context_weeks, "week")) if n]


def _history_sentence(ctx: PromptContext, what: str) -> str:
    shifts = ctx.view_shifts or (1,) * len(ctx.extra_views)
    views = "".join(
        f" The target time steps {_view_words(v, k)} are encoded as {ST_HIS_PLACEHOLDER}."
        for v, k in zip(ctx.extra_views, shifts)
    )
    periods = _context_periods(ctx)
    also = f" together with the target time steps on each of the previous {_list_words(periods)}" if periods else ""
    return (
        f"{views} To improve prediction accuracy, a spatio-temporal model encodes the historical {what} "
        f"data{also} as tokens {ST_HIS_PLACEHOLDER}, one per channel ({_list_words(ctx.channels)})."
    )


def _head(ctx: PromptContext, what: str) -> str:
    place = f" of {ctx.place}" if ctx.place else ""
    geo = f" Its centre is at {GEO_PLACEHOLDER}." if ctx.with_geo else ""
    hist = describe_range(ctx.history_start, ctx.input_len, ctx.freq_minutes)
    return (
        f"Given the historical data for {what} over {ctx.input_len} time steps in {ctx.region.name}, "
        f"a region{place}. The history runs from {hist}. Here is the region information: "
        f"{describe_region(ctx.region, ctx.top_pois)}{geo}"
    )


def flow_prompt(ctx: PromptContext) -> Conversation:
    """Regression of every channel (in/out flow) over the next ``output_len`` steps."""
    what = f"{ctx.quantity} flow".strip()
    target = describe_range(ctx.target_start, ctx.output_len, ctx.freq_minutes)
    user = (
        f"{_head(ctx, what)} Now we want to predict the {_list_words(ctx.channels)} for the next "
        f"{ctx.output_len} time steps, from {target}.{_history_sentence(ctx, what)} Please analyse the "
        "traffic patterns in this region, taking into account the provided time and regional information, "
        "and then generate the predictive tokens for regression."
    )
    answer = f"Based on the given information, the predictive tokens of {what} in this region are {ST_PRE_PLACEHOLDER}."
    return Conversation(VICUNA_SYSTEM, user, answer)


def event_prompt(ctx: PromptContext) -> Conversation:
    """Binary "will an event of each category happen" per step, over the next ``output_len`` steps."""
    what = ctx.quantity or "event"
    cats = _list_words([c.lower() for c in ctx.channels])
    target = describe_range(ctx.target_start, ctx.output_len, ctx.freq_minutes)
    user = (
        f"{_head(ctx, what)} Now we aim to predict whether each of these {what} categories will occur in this "
        f"region in each of the next {ctx.output_len} time steps, from {target}: {cats}."
        f"{_history_sentence(ctx, what)} Please analyse the {what} patterns in this region, considering the "
        "provided time and regional information, and then generate the prediction tokens for classification."
    )
    answer = f"Based on the given information, the predicted tokens of {what} in this region are {ST_PRE_PLACEHOLDER}."
    return Conversation(VICUNA_SYSTEM, user, answer)


TEMPLATES = {"flow": flow_prompt, "event": event_prompt}


@lru_cache(maxsize=65536)
def _moment(start_minutes: int, freq_minutes: int) -> str:
    """``Wed 2020-01-01 00:00`` (the date alone for daily or coarser steps)."""
    t = _dt.datetime(1970, 1, 1) + _dt.timedelta(minutes=start_minutes)
    return t.strftime("%a %Y-%m-%d" if freq_minutes % 1440 == 0 else "%a %Y-%m-%d %H:%M")


def _compact_facts(ctx: PromptContext, what: str) -> str:
    """Region, POIs, history span and the placeholders: every fact of the UrbanGPT wording, no filler."""
    place = f", {ctx.place}" if ctx.place else ""
    borough = f" ({ctx.region.borough})" if ctx.region.borough else ""
    pois = ", ".join(f"{c} {n}" for c, n in ctx.region.top_pois(ctx.top_pois)) if ctx.region.pois else "none listed"
    geo = f" Centre {GEO_PLACEHOLDER}." if ctx.with_geo else ""
    shifts = ctx.view_shifts or (1,) * len(ctx.extra_views)
    views = "".join(f" {_view_words(v, k).capitalize()}: {ST_HIS_PLACEHOLDER}."
                    for v, k in zip(ctx.extra_views, shifts))
    periods = _context_periods(ctx)
    also = f", with the target steps of the previous {_list_words(periods)}" if periods else ""
    every = freq_words(np.timedelta64(ctx.freq_minutes, "m"))
    return (
        f"{ctx.region.name}{place}{borough}. POIs: {pois}.{geo}{views} {what.capitalize()} history: "
        f"{ctx.input_len} {every} steps from {_moment(ctx.history_start, ctx.freq_minutes)}{also}, per channel "
        f"({', '.join(ctx.channels)}): {ST_HIS_PLACEHOLDER}."
    )


def compact_flow_prompt(ctx: PromptContext) -> Conversation:
    what = f"{ctx.quantity} flow".strip()
    user = (f"{_compact_facts(ctx, what)} Predict {', '.join(ctx.channels)} for {ctx.output_len} steps from "
            f"{_moment(ctx.target_start, ctx.freq_minutes)}.")
    return Conversation(COMPACT_SYSTEM, user, ST_PRE_PLACEHOLDER)


def compact_event_prompt(ctx: PromptContext) -> Conversation:
    what = ctx.quantity or "event"
    user = (f"{_compact_facts(ctx, what)} Predict whether each of {', '.join(c.lower() for c in ctx.channels)} "
            f"occurs in each of {ctx.output_len} steps from {_moment(ctx.target_start, ctx.freq_minutes)}.")
    return Conversation(COMPACT_SYSTEM, user, ST_PRE_PLACEHOLDER)


COMPACT_TEMPLATES = {"flow": compact_flow_prompt, "event": compact_event_prompt}


def when_words(minutes: int) -> str:
    """``Friday 08:29``: weekday and clock time of a check-in (minutes since the epoch, local time)."""
    t = _dt.datetime(1970, 1, 1) + _dt.timedelta(minutes=int(minutes))
    return t.strftime("%A %H:%M")


def next_poi_prompt(visits: list[tuple[int, str]], target_minutes: int, answer_poi: int | None) -> Conversation:
    """Next-POI recommendation: the user's recent check-ins ``(minutes, category)``, oldest first, each
    with a ``<GEO>`` slot for its coordinates; the answer opens with ``<POI_PRE>`` (where the candidate
    head reads, before any answer text) and names the POI by its table index (for ``generate``)."""
    lines = "; ".join(f"{when_words(m)}, {cat} at {GEO_PLACEHOLDER}" for m, cat in visits)
    user = (
        f"Here are a user's {len(visits)} most recent check-ins, oldest first: {lines}. "
        f"Which POI will the user visit next, on {when_words(target_minutes)}?"
    )
    named = f" The next POI is POI {answer_poi}." if answer_poi is not None and answer_poi >= 0 else ""
    return Conversation(VICUNA_SYSTEM, user, f"{POI_PRE_PLACEHOLDER}{named}")


def build_conversation(ctx: PromptContext) -> Conversation:
    if ctx.style not in PROMPT_STYLES:
        raise ValueError(f"prompt style {ctx.style!r} (--prompt_style): one of {', '.join(PROMPT_STYLES)}")
    try:
        template = (COMPACT_TEMPLATES if ctx.style == "compact" else TEMPLATES)[ctx.task]
    except KeyError:
        raise ValueError(f"no prompt template for task {ctx.task!r}; known: {sorted(TEMPLATES)}") from None
    return template(ctx)


class ChatFormatter:
    """Render a :class:`Conversation` as ``(prompt_text, answer_text)``; prompt + answer = full text.

    With a chat template, the template is rendered once with sentinel contents and cut into a frame
    that later conversations are pasted into (a jinja render per sample is the slowest part of
    collation otherwise); the frame is checked against a real render at construction. Without one,
    Vicuna v1.1: ``<s>{system} USER: {user} ASSISTANT: {answer}</s>``.
    """

    _SENTINELS = ("\x00SYS\x00", "\x00USR\x00", "\x00ANS\x00")

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self.bos = getattr(tokenizer, "bos_token", None) or ""
        self.eos = getattr(tokenizer, "eos_token", None) or ""
        self.frame = self._frame() if getattr(tokenizer, "chat_template", None) else None

    def _render(self, conv: Conversation, with_answer: bool) -> str:
        msgs = [{"role": "system", "content": conv.system}, {"role": "user", "content": conv.user}]
        if with_answer:
            msgs.append({"role": "assistant", "content": conv.answer})
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=not with_answer)

    def _frame(self) -> tuple[str, ...] | None:
        s, u, a = self._SENTINELS
        probe = Conversation(s, u, a)
        prompt, full = self._render(probe, False), self._render(probe, True)
        if not full.startswith(prompt) or prompt.count(s) != 1 or prompt.count(u) != 1 or full.count(a) != 1:
            return None  # unusual template: fall back to rendering each conversation
        pre, rest = prompt.split(s)
        mid, post_user = rest.split(u)
        ans_pre, ans_post = full[len(prompt):].split(a)
        return pre, mid, post_user, ans_pre, ans_post

    def __call__(self, conv: Conversation) -> tuple[str, str]:
        if self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None):
            if self.frame is None:
                prompt, full = self._render(conv, False), self._render(conv, True)
                if not full.startswith(prompt):
                    raise ValueError("chat template: the rendered prompt is not a prefix of the full conversation")
                return prompt, full[len(prompt):]
            pre, mid, post_user, ans_pre, ans_post = self.frame
            return f"{pre}{conv.system}{mid}{conv.user}{post_user}", f"{ans_pre}{conv.answer}{ans_post}"
        return f"{self.bos}{conv.system} USER: {conv.user} ASSISTANT:", f" {conv.answer}{self.eos}"


def tokenizer_corpus(dataset, n: int) -> list[str]:
    """``n`` evenly spaced samples of ``dataset`` (their ``conversation``) as plain text (no chat template): what
    the offline BPE of a tiny model is trained on, the same for every task."""
    formatter = ChatFormatter(None)
    picks = np.linspace(0, len(dataset) - 1, num=min(len(dataset), n)).astype(int)
    return ["\n".join(formatter(dataset[int(i)]["conversation"])) for i in picks]
