"""Generate activity days with a ``stllm train-gen`` checkpoint: ``stllm generate CHECKPOINT ...``.

Requests (user, persona, date) come from a data split's held-out days (``--data``) or from a file of compact
headers (``--requests``, blocks of ``persona: ...`` / ``date: ...`` lines separated by blank lines). Prompts are
batched (left padding) and sampled with temperature / top-p under the activity grammar
(:class:`~stllm.models.activity_decoding.ActivityLogitsProcessor`), so every answer parses and (with
coordinates) no place lies beyond reach of the previous one in the time between them; ``prefer_own`` favours
the places (or categories) the request's user visited on the days the checkpoint trained on, and the user prior
(:mod:`stllm.data.activity_prior`) draws a share of lines' places, start times or whole days' lengths from that
user's trained days (``stllm generate``, after selection: its trained and validation days, as the baselines
know them). Output: JSONL, one line per generated day (``request`` index, ``sample``, ``user``,
``date``, ``text``), written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from stllm.data.activity import ActivityChain, load_activity_split, parse_chain, parse_steps
from stllm.data.activity_bias import user_share_bias
from stllm.data.activity_checks import BOXES, CheckConfig, passes, run_checks
from stllm.data.activity_prior import PriorDay, UserPrior
from stllm.data.activity_prompts import day_choices, gen_conversation, own_choices, own_start_minutes
from stllm.data.prompts import ChatFormatter, Conversation
from stllm.errors import run_command
from stllm.eval.run_identity import load_task_checkpoint
from stllm.models.activity_decoding import (
    ActivityLogitsProcessor,
    ReachRule,
    activity_grammar,
    choice_category_names,
)

ACTIVITY_DATA_FILE = "activity_data.json"  # written by stllm.train.train_gen (eval must not import train)


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 0.95
    batch_size: int = 32
    max_new_tokens: int | None = None  # default: 16 per allowed line
    seed: int = 0
    n: int = 1  # days per request
    prefer_own: float = 0.0  # logit bonus towards the user's own training places/categories
    prefer_hours: float = 0.0  # logit bonus towards the hours the user started activities in training
    user_prior: float = 0.0  # share of lines whose place is drawn from the user's history prior
    user_prior_hours: float = 0.0  # share of lines whose start hour is drawn from it
    user_prior_lines: float = 0.0  # share of days whose number of activities is drawn from it
    reach: bool = True  # places within reach of the previous one (data with coordinates)
    category_bias: tuple[tuple[str, float], ...] = ()  # (category, logit correction) pairs: activity_bias
    user_category_bias: tuple[tuple[Hashable, tuple[tuple[str, float], ...]], ...] = ()  # per user, such pairs
    time_gaps: float = 0.0  # weight of the prior's same-hour stay ratio and gaps on the times after a line's
    repeats: float = 0.0  # share of the LM's lines whose repeat-the-previous-place-or-not is drawn from the prior
    user_prior_first: float = 0.0  # share of days whose first line's start time is drawn from the user's history
    category_prior: float = 0.0  # s: per-user category logit bias s * log(p_user(c) / p_population(c)) (activity_bias;
    # s < 0: towards the population's mix)

    def __post_init__(self):
        if (self.temperature <= 0 or not 0 < self.top_p <= 1 or self.batch_size < 1 or self.n < 1
                or self.prefer_own < 0 or self.prefer_hours < 0 or not 0 <= self.user_prior <= 1
                or not 0 <= self.user_prior_hours <= 1 or not 0 <= self.user_prior_lines <= 1
                or not 0 <= self.time_gaps <= 1 or not 0 <= self.repeats <= 1
                or not 0 <= self.user_prior_first <= 1):
            raise ValueError("sampling: need temperature > 0, 0 < top_p <= 1, batch_size >= 1, n >= 1, prefer_own, "
                             "prefer_hours >= 0 and user_prior, user_prior_hours, user_prior_lines, time_gaps, "
                             "repeats, user_prior_first in [0, 1]; "
                             f"got {self}")

    @property
    def uses_prior(self) -> bool:
        return bool(self.user_prior or self.user_prior_hours or self.user_prior_lines or self.time_gaps
                    or self.repeats or self.user_prior_first)


def load_gen_checkpoint(path: str | os.PathLike):
    """``(model, tokenizer, record)`` of a ``stllm train-gen`` checkpoint; names a missing part."""
    return load_task_checkpoint(path, ("config.json", ACTIVITY_DATA_FILE), ACTIVITY_DATA_FILE, "train-gen")


def check_not_trained_on(requests: Sequence[ActivityChain], record: dict) -> None:
    """Refuse a request for a (user, date) the checkpoint trained on: its answer was a training target."""
    trained = set(record.get("trained_days", ()))
    for r in requests:
        if f"{r.user}/{r.date}" in trained:
            raise ValueError(f"request for user {r.user} on {r.date}: field 'date': the checkpoint trained on this "
                             "day; evaluate on held-out days")


def checks_for(record: dict) -> CheckConfig:
    """The validators' settings for a checkpoint's data: its area's box and its time grid."""
    return CheckConfig(box=BOXES.get(record["name"]), time_resolution_s=record.get("time_resolution_s", 60))


@dataclass(frozen=True)
class OwnHistory:
    """Per user, what their trained days hold: places (or categories) and start-hour minute masks; and the
    trained days themselves (the user prior is fitted on them)."""

    choices: dict
    minutes: dict
    days: tuple[ActivityChain, ...] = ()


def trained_own_choices(record: dict, train: Sequence[ActivityChain], with_validation: bool = False) -> OwnHistory:
    """Per user, the places (or categories) and start hours of the days this checkpoint trained on (not its
    validation days: settings chosen there must not see them); ``with_validation`` adds its validation days (at
    test time, once the settings are chosen: the Markov and copy baselines know every training day too)."""
    trained = set(record.get("trained_days", ())) | (set(record.get("validation_days", ())) if with_validation
                                                     else set())
    days = [c for c in train if f"{c.user}/{c.date}" in trained]
    return OwnHistory(own_choices(days, record["with_coords"], record["digits"]), own_start_minutes(days), tuple(days))


def fit_user_prior(grammar, record: dict, days: Sequence[ActivityChain]) -> UserPrior:
    """The history prior over ``grammar``'s choices from ``days`` (activities outside the vocabulary left out)."""
    prior_days = []
    for c in days:
        pairs = day_choices(c, record["with_coords"], record["digits"])
        ranked = [(r, m) for r, (_, m) in zip(grammar.ranks(k for k, _ in pairs), pairs) if r is not None]
        prior_days.append(PriorDay(c.user, tuple(r for r, _ in ranked), tuple(m for _, m in ranked), c.weekend,
                                   len(c.activities)))
    return UserPrior(len(grammar.choices)).fit(prior_days)


def with_category_prior(cfg: SamplingConfig, own: OwnHistory | None) -> SamplingConfig:
    """``cfg`` with ``category_prior`` turned into per-user category biases from ``own.days``
    (:func:`~stllm.data.activity_bias.user_share_bias`), added to any ``user_category_bias`` it holds."""
    if not cfg.category_prior:
        return cfg
    if own is None:
        raise ValueError("category_prior needs the users' own days")
    merged = {u: dict(b) for u, b in cfg.user_category_bias}
    for u, b in user_share_bias(own.days, cfg.category_prior).items():
        into = merged.setdefault(u, {})
        for c, v in b.items():
            into[c] = into.get(c, 0.0) + v
    return replace(cfg, category_prior=0.0, user_category_bias=tuple((u, tuple(b.items())) for u, b in merged.items()))


def answer_prefix(formatter: ChatFormatter) -> str:
    """What the chat format puts between the prompt and the answer text (e.g. one space)."""
    return formatter(Conversation("", "", "\x00"))[1].split("\x00")[0]


def _prompts_and_grammar(tokenizer, record: dict, requests: Sequence[ActivityChain], cfg: SamplingConfig,
                         own: OwnHistory | None):
    """Prompts, the grammar, per request the masks of preferred choices and minutes (None: none) and its user,
    and the user prior (None unless ``cfg.user_prior``)."""
    formatter = ChatFormatter(tokenizer)
    places = [tuple(p) for p in record["places"]] if record["with_coords"] else None
    checks = checks_for(record)
    reach = ReachRule(checks.max_speed_kmh[None], checks.time_resolution_s, checks.continuity_m) if cfg.reach else None
    grammar = activity_grammar(record["categories"], places,
                               answer_prefix(formatter), max_lines=record.get("max_lines", 20),
                               time_resolution_minutes=max(1, record.get("time_resolution_s", 60) // 60), reach=reach)
    prompts = [formatter(gen_conversation(replace(r, steps=()), record["with_coords"], record["digits"]))[0]
               for r in requests]
    prefer = [grammar.preferred(own.choices.get(r.user, ())) if own and cfg.prefer_own else None for r in requests]
    times = [own.minutes.get(r.user) if own and cfg.prefer_hours else None for r in requests]
    prior = fit_user_prior(grammar, record, own.days) if own and cfg.uses_prior else None
    return prompts, grammar, (prefer, times, [r.user for r in requests], [r.weekend for r in requests]), prior


def _sample(model, tokenizer, grammar, prompts: list[str], cfg: SamplingConfig, bar,
            prefer: tuple[list, list, list] | None = None, prior: UserPrior | None = None,
            category_mass: dict | None = None) -> list[str]:
    """One answer per prompt, in batches of ``cfg.batch_size`` (left padding, grammar-constrained);
    ``category_mass`` (filled in place, needs ``prefer``): per user, the expected lines per category."""
    max_new = cfg.max_new_tokens or 16 * grammar.max_lines
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for start in range(0, len(prompts), cfg.batch_size):
        batch = prompts[start:start + cfg.batch_size]
        enc = tokenizer(batch, add_special_tokens=False, padding=True, padding_side="left",
                        return_tensors="pt").to(device)
        rows = slice(start, start + cfg.batch_size)
        proc = ActivityLogitsProcessor(grammar, tokenizer, enc["input_ids"].shape[1], max_new,
                                       prefer[0][rows] if prefer else None, cfg.prefer_own,
                                       prefer[1][rows] if prefer else None, cfg.prefer_hours,
                                       prior, prefer[2][rows] if prefer else None, cfg.user_prior if prior else 0.0,
                                       cfg.user_prior_hours if prior else 0.0,
                                       seed=int(torch.randint(2**31 - 1, ()).item()),
                                       weekends=prefer[3][rows] if prefer else None,
                                       length_weight=cfg.user_prior_lines if prior else 0.0,
                                       category_bias=dict(cfg.category_bias),
                                       user_category_bias={u: dict(b) for u, b in cfg.user_category_bias},
                                       category_mass=category_mass, temperature=cfg.temperature,
                                       time_gaps=cfg.time_gaps if prior else 0.0,
                                       repeats=cfg.repeats if prior else 0.0,
                                       first_weight=cfg.user_prior_first if prior else 0.0)
        with torch.no_grad():
            seqs = model.generate(**enc, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
                                  max_new_tokens=max_new, logits_processor=[proc], pad_token_id=pad,
                                  eos_token_id=tokenizer.eos_token_id)
        out += [t.strip() for t in tokenizer.batch_decode(seqs[:, enc["input_ids"].shape[1]:],
                                                           skip_special_tokens=True)]
        bar.update(len(batch))
    return out


def generate_texts(model, tokenizer, record: dict, requests: Sequence[ActivityChain], cfg: SamplingConfig,
                   progress: bool = True, own: OwnHistory | None = None,
                   category_mass: dict[Hashable, dict[str, float]] | None = None) -> list[list[str]]:
    """``cfg.n`` answer texts per request (batched, constrained: each parses); ``own`` (per user, their training
    choices: :func:`trained_own_choices`) is favoured by ``cfg.prefer_own``. ``category_mass`` (filled in place):
    per user, the expected number of lines per category under this decoding (the decoder's probabilities, not
    the sampled categories: :class:`ActivityLogitsProcessor`)."""
    cfg = with_category_prior(cfg, own)
    prompts, grammar, prefer, prior = _prompts_and_grammar(tokenizer, record, requests, cfg, own)
    torch.manual_seed(cfg.seed)
    mass: dict | None = None if category_mass is None else {}
    with tqdm(total=len(prompts) * cfg.n, desc="generate", disable=not progress, unit="day") as bar:
        draws = [_sample(model, tokenizer, grammar, prompts, cfg, bar, prefer, prior, mass) for _ in range(cfg.n)]
    if mass is not None:
        names = choice_category_names(grammar)
        for u, m in mass.items():
            into = category_mass.setdefault(u, {})
            for i in np.flatnonzero(m):
                into[names[i]] = into.get(names[i], 0.0) + float(m[i])
    return [[d[i] for d in draws] for i in range(len(prompts))]


def redraw_invalid(model, tokenizer, record: dict, requests: Sequence[ActivityChain], texts: list[list[str]],
                   cfg: SamplingConfig, checks: CheckConfig, redraws: int, progress: bool = True,
                   own: OwnHistory | None = None) -> tuple[list[list[str]], int]:
    """Generate again, up to ``redraws`` times, each day that fails a validator (the validators judge, the model
    writes; a day failing every draw stays as last drawn). Returns the texts and how many days were redrawn."""
    cfg = with_category_prior(cfg, own)
    prompts, grammar, prefer, prior = _prompts_and_grammar(tokenizer, record, requests, cfg, own)
    texts = [list(ts) for ts in texts]
    redrawn: set[tuple[int, int]] = set()
    for _ in range(redraws):
        bad = [(i, k) for i, ts in enumerate(texts) for k, t in enumerate(ts)
               if not passes(run_checks(replace(requests[i], steps=parse_steps(t)), checks))]
        if not bad:
            break
        redrawn.update(bad)
        with tqdm(total=len(bad), desc="redraw", disable=not progress, unit="day") as bar:
            new = _sample(model, tokenizer, grammar, [prompts[i] for i, _ in bad], cfg, bar,
                          tuple([p[i] for i, _ in bad] for p in prefer), prior)
        for (i, k), t in zip(bad, new):
            texts[i][k] = t
    return texts, len(redrawn)


def as_chains(requests: Sequence[ActivityChain], texts: Sequence[Sequence[str]], source: str = "<generated>"
              ) -> list[ActivityChain]:
    """One chain per generated text (request order, then sample order), persona and date from the request."""
    return [replace(r, steps=parse_steps(t, f"{source}: request {i} sample {k}"), source=source)
            for i, (r, ts) in enumerate(zip(requests, texts)) for k, t in enumerate(ts)]


def write_generated(path: str | os.PathLike, requests: Sequence[ActivityChain], texts: Sequence[Sequence[str]]
                    ) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for i, (r, ts) in enumerate(zip(requests, texts)):
            for k, t in enumerate(ts):
                fh.write(json.dumps({"request": i, "sample": k, "user": r.user,
                                     "date": r.date.isoformat() if r.date else None, "text": t},
                                    ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def read_generated(path: str | os.PathLike, requests: Sequence[ActivityChain]) -> list[ActivityChain]:
    """Chains of a :func:`write_generated` file, each checked against its request (user and date)."""
    path = Path(path)
    chains = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        rec = json.loads(line)
        i = rec.get("request")
        if not isinstance(i, int) or not 0 <= i < len(requests):
            raise ValueError(f"{path}: line {n}: field 'request' {i!r} is not one of the {len(requests)} requests")
        r = requests[i]
        if rec.get("user") != r.user or rec.get("date") != (r.date.isoformat() if r.date else None):
            raise ValueError(f"{path}: line {n}: field 'user'/'date' ({rec.get('user')}, {rec.get('date')}) differs "
                             f"from request {i} ({r.user}, {r.date}): generated for other requests")
        chains.append(replace(r, steps=parse_steps(rec["text"], f"{path}: line {n}"), source=str(path)))
    return chains


def read_requests(path: str | os.PathLike) -> list[ActivityChain]:
    """Requests from a text file: blocks of header lines (``user:``, ``persona:``, ``date:``) split by blank lines."""
    text = Path(path).read_text(encoding="utf-8")
    blocks = [b for b in text.split("\n\n") if b.strip()]
    if not blocks:
        raise ValueError(f"{path}: no request (blocks of 'persona: ...' and 'date: ...' lines)")
    return [parse_chain(b.strip(), f"{path}: request {i}") for i, b in enumerate(blocks)]


def evenly_spaced(days: Sequence[ActivityChain], max_requests: int | None) -> list[ActivityChain]:
    """At most ``max_requests`` of ``days``, evenly spaced (every caller picks the same ones)."""
    if max_requests is None or max_requests >= len(days):
        return list(days)
    step = len(days) / max_requests
    return [days[int(i * step)] for i in range(max_requests)]


def test_requests(data: str, data_root: str | None, max_requests: int | None, seed: int = 0) -> list[ActivityChain]:
    """The held-out days of ``data`` as requests (evenly spaced when capped)."""
    split = load_activity_split(data, data_root, seed=seed)
    return [replace(c, steps=()) for c in evenly_spaced(split.test, max_requests)]


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a stllm train-gen output directory")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_p", type=float, default=0.95)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_new_tokens", type=int, default=None, help="default: 16 per allowed line")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_root", default=None, help="where real data lives (default ../shared/data)")
    p.add_argument("--max_requests", type=int, default=None, help="at most this many held-out days (evenly spaced)")
    p.add_argument("--redraws", type=int, default=0, help="generate a day failing a validator again, up to this "
                                                          "many times")
    p.add_argument("--prefer_own", type=float, default=0.0, help="logit bonus towards the places (or categories) "
                                                                 "the user visited on trained days")
    p.add_argument("--prefer_hours", type=float, default=0.0, help="logit bonus towards the hours the user started "
                                                                   "activities on trained days")
    p.add_argument("--user_prior", type=float, default=0.0, help="share (0-1) of lines whose place is drawn from "
                   "the user's history, p_user(place | previous place, this hour); the LM writes the rest")
    p.add_argument("--user_prior_hours", type=float, default=0.0, help="share (0-1) of lines whose start hour is "
                   "drawn from the user's history, p_user(hour | previous place and hour)")
    p.add_argument("--user_prior_lines", type=float, default=0.0, help="share (0-1) of days whose number of "
                   "activities is drawn from the user's history (weekday/weekend); the day then has exactly that many")
    p.add_argument("--no_reach", action="store_true", help="do not restrict places to those within reach")
    p.add_argument("--time_gaps", type=float, default=0.0, help="weight (0-1) of the trained days' chance of a next "
                   "line in the previous line's hour given its minute, and of their same-hour gaps, on the tokens of "
                   "a line's time (without it times pile up at HH:5x)")
    p.add_argument("--user_prior_first", type=float, default=0.0, help="share (0-1) of days whose first line's "
                   "start time is drawn from the user's history (p_user(first hour))")
    p.add_argument("--category_prior", type=float, default=0.0, help="strength s of a per-user category logit bias "
                   "s * log(user's share / population's share) from the user's days (s < 0: towards the population)")
    p.add_argument("--repeats", type=float, default=0.0, help="share (0-1) of the lines the LM writes whose "
                   "repeating the previous place or not is drawn from the user's history (the LM repeats too often)")


def sampling_config(args: argparse.Namespace) -> SamplingConfig:
    return SamplingConfig(temperature=args.temperature, top_p=args.top_p, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens, seed=args.seed, n=getattr(args, "n", 1),
                          prefer_own=args.prefer_own, prefer_hours=args.prefer_hours, user_prior=args.user_prior,
                          user_prior_hours=args.user_prior_hours, user_prior_lines=args.user_prior_lines,
                          reach=not args.no_reach, time_gaps=args.time_gaps,
                          repeats=args.repeats, user_prior_first=args.user_prior_first,
                          category_prior=args.category_prior)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="stllm generate", allow_abbrev=False)
    p.description = "Generate activity days for personas with a stllm train-gen checkpoint (constrained decoding)."
    add_sampling_args(p)
    p.add_argument("--data", default=None, help="requests = the held-out days of this data (default: the "
                                                "checkpoint's)")
    p.add_argument("--requests", default=None, help="a text file of request headers (instead of --data)")
    p.add_argument("--n", type=int, default=1, help="days per request")
    p.add_argument("--output", required=True, help="JSONL file of generated days")
    return p


def run(args: argparse.Namespace) -> int:
    model, tokenizer, record = load_gen_checkpoint(args.checkpoint)
    if args.requests:
        requests = read_requests(args.requests)
    else:
        requests = test_requests(args.data or record["name"], args.data_root, args.max_requests,
                                 record.get("synthetic_seed", 0))
    check_not_trained_on(requests, record)
    cfg = sampling_config(args)
    own = trained_own_choices(record, load_activity_split(record["name"], args.data_root,
                                                          seed=record.get("synthetic_seed", 0)).train,
                              with_validation=True) \
        if cfg.prefer_own or cfg.prefer_hours or cfg.uses_prior or cfg.category_prior else None
    texts = generate_texts(model, tokenizer, record, requests, cfg, own=own)
    if args.redraws:
        texts, n = redraw_invalid(model, tokenizer, record, requests, texts, cfg, checks_for(record), args.redraws,
                                  own=own)
        print(f"{n} day(s) failed a validator and were drawn again (up to {args.redraws} times)")
    as_chains(requests, texts)  # every answer parses: the grammar guarantees it, this proves it
    path = write_generated(args.output, requests, texts)
    print(f"{sum(map(len, texts))} days for {len(requests)} requests -> {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return run_command("generate", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
