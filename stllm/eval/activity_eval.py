"""``stllm eval gen CHECKPOINT``: generated days against real held-out days, beside the baselines.

For each held-out day of the checkpoint's data (user, persona, date; never a trained day, checked against the
checkpoint's record) stllm writes one day per seed under the activity grammar; the copy and Markov baselines sample
the same requests with the same seeds. With ``--select`` the sampling settings (:data:`SELECT_GRID`: temperature,
the bonus towards the user's own places, the shares of places, start hours and day lengths drawn from the user's
history prior, the per-category logit correction off / population / per user: :mod:`stllm.data.activity_bias`,
and the decoder fixes) are first chosen on the checkpoint's validation days (training users' days it did not train
on; never a test day, checked), with the user's history fitted on the trained days alone, by each JSD to those days
in units of its bootstrap SD with the one-SE rule (:func:`noise_score`; or relative to the per-user Markov's,
``--select_score margin``: :func:`margin_score`). The test days' generation then fits the user's history on the
trained and validation days, as the baselines are fitted. Prints the table
(JSDs, validity, copies; mean +- std over seeds), writes ``metrics.json``, the generated days
(``generated_seed{S}.jsonl``) and a map of a few generated days over real ones (data with coordinates).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from stllm.data.activity import ActivitySplit, load_activity_split
from stllm.data.activity_bias import fit_category_bias, fit_user_category_bias
from stllm.errors import run_command
from stllm.eval.activity_baselines import MarkovBaseline, fitted_baselines, generate_days, requests_of
from stllm.eval.activity_metrics import DISTRIBUTIONS, day_histograms, format_table, histogram_jsd, quality_row
from stllm.eval.activity_plots import plot_days_map
from stllm.eval.generate import (
    OwnHistory,
    SamplingConfig,
    add_sampling_args,
    as_chains,
    check_not_trained_on,
    checks_for,
    evenly_spaced,
    generate_texts,
    load_gen_checkpoint,
    redraw_invalid,
    trained_own_choices,
    write_generated,
)
from stllm.safe_io import write_text_atomic

SELECT_GRID = {  # SamplingConfig fields and the values tried (every combination); see README for what was dropped
    "temperature": (0.8, 1.0),
    "prefer_own": (4.0,),  # chosen in 3 of 4 earlier checkpoints; the one with 0 lost category on test days
    "user_prior": (0.5, 0.75),
    "user_prior_hours": (0.0, 1.0),  # NYC validation start JSD 0.038 -> 0.020 at 1.0 (T 0.8); Tokyo 0.005 -> 0.016
    "category_correction": (0, 1),  # per-category logit correction fitted on this point's own days: 0 off,
    # 1 population; 2 (per user, --correction user) lost on validation days on both cities' checkpoints (README)
    "decoder_fixes": (0, 1),  # --repeats, --time_gaps, --user_prior_first together (0 off, 1 all at 1): chosen on
    # NYC seed-0 validation days, not on Tokyo or NYC seed 1 (README); tried only at the best point without them
}
CORRECTION = "category_correction"  # grid key that is not a SamplingConfig field: it sets category_bias
FIXES = "decoder_fixes"  # grid key that is not a SamplingConfig field: sets repeats, time_gaps, user_prior_first
FIX_FIELDS = ("repeats", "time_gaps", "user_prior_first")
LATE = (FIXES, "category_prior")  # grid keys whose values after the first are tried only at the best point of the
# others (a key each value of which doubled the grid would double --select's time, and the demo's)
SELECT_DRAWS = 2  # days drawn per validation request and grid point: the same setting's JSDs moved more between
# sampling seeds (NYC start 0.016-0.029) than between settings; the real days are common to all, the draws are not
SELECT_REQUESTS = 400  # validation days a grid point is scored on (fewer when the test days are capped lower): all
# of NYC's 396 (--val_days 2) and Tokyo's 186: the score's noise (its bootstrap standard error, printed per point)
# was as large as the gaps between settings on fewer
SELECT_BOOTSTRAP = 200  # resamples of the validation requests for the score's standard error
MIN_SELECT_VALID = 0.95  # settings below this validity on validation days are chosen only when all are


def validation_days(record: dict, split: ActivitySplit) -> list:
    """The checkpoint's validation days (training users' days it did not train on); refuses test or trained
    days among them."""
    keys = set(record.get("validation_days", ()))
    if not keys:
        raise ValueError("checkpoint activity_data.json: field 'validation_days' is empty: train with --val_days >= 1 "
                         "to select sampling settings")
    bad = keys & ({f"{c.user}/{c.date}" for c in split.test} | set(record.get("trained_days", ())))
    if bad:
        raise ValueError(f"checkpoint activity_data.json: field 'validation_days': {len(bad)} are test or trained "
                         f"days (first: {sorted(bad)[0]})")
    return [c for c in split.train if f"{c.user}/{c.date}" in keys]


def margin_score(row: dict, reference: dict) -> float:
    """Mean over distributions of JSD / the reference's JSD (the per-user Markov on the same days): each
    distribution counts by how far it is from the bar, so the spatial JSDs (10x the others) do not decide alone."""
    return float(np.nanmean([row[d] / max(reference[d], 1e-6) for d in DISTRIBUTIONS
                             if np.isfinite(row[d]) and np.isfinite(reference[d])]))


def bootstrap_jsds(days: list, real: list, draws: int, vocab: dict[str, int], n_boot: int = SELECT_BOOTSTRAP,
                   seed: int = 0, tile: bool = False) -> np.ndarray:
    """Per resample of the requests (``n_boot``, with replacement; the same resamples for every caller with the
    same ``seed``, so two settings' JSDs are paired), the JSD per distribution (columns: :data:`DISTRIBUTIONS`) of
    ``days`` (``draws`` per request: request-major, or draw-major with ``tile``) against ``real`` (one per
    request)."""
    n = len(real)
    if len(days) != n * draws:
        raise ValueError(f"bootstrap: {len(days)} days for {n} requests x {draws}")
    gen, truth = day_histograms(days, vocab), day_histograms(real, vocab)
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, len(DISTRIBUTIONS)))
    for b in range(n_boot):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)  # times each request is drawn
        wg = np.tile(w, draws) if tile else np.repeat(w, draws)
        j = histogram_jsd({d: wg @ gen[d] for d in DISTRIBUTIONS}, {d: w @ truth[d] for d in DISTRIBUTIONS})
        out[b] = [j[d] for d in DISTRIBUTIONS]
    return out


def bootstrap_margins(days: list, real: list, reference: list, draws: int, n_boot: int = SELECT_BOOTSTRAP,
                      seed: int = 0) -> np.ndarray:
    """:func:`margin_score` of ``days`` (``draws`` per request, request-major) against ``real`` (one per request)
    relative to ``reference`` (``draws`` per request, draw-major: the Markov's seeds), on ``n_boot`` paired
    resamples of the requests (:func:`bootstrap_jsds`)."""
    if len(reference) != len(real) * draws:
        raise ValueError(f"bootstrap: {len(reference)} reference days for {len(real)} requests x {draws}")
    vocab = {c: i for i, c in enumerate(sorted({a.category for d in (*days, *real, *reference) for a in d.activities}))}
    gen = bootstrap_jsds(days, real, draws, vocab, n_boot, seed)
    ref = bootstrap_jsds(reference, real, draws, vocab, n_boot, seed, tile=True)
    return np.array([margin_score(dict(zip(DISTRIBUTIONS, g)), dict(zip(DISTRIBUTIONS, r))) for g, r in zip(gen, ref)])


def noise_score(jsds: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Sum over distributions of JSD / ``scale`` (per distribution: the bootstrap SD of its JSD, the median over
    the grid's points): each JSD in units of its own noise, so a distribution counts by how well the validation
    days measure it. The ratio to the per-user Markov's JSD (:func:`margin_score`) let NYC's spatial JSDs, divided
    by the chain's tiny ones, decide alone at a bootstrap SE as large as the gaps between points. Rows: points or
    resamples; a distribution undefined anywhere (nan) is left out."""
    jsds = np.atleast_2d(jsds)
    keep = np.isfinite(scale) & (scale > 0) & np.isfinite(jsds).all(axis=0)
    return (jsds[:, keep] / scale[keep]).sum(axis=1)


def one_se_choice(scores: np.ndarray, diff_se: np.ndarray, distance: np.ndarray, ok: np.ndarray) -> int:
    """The one-SE rule: among the ``ok`` points whose score is within one paired SE (``diff_se``: of each point's
    difference to the best) of the best ok point's, the one closest to the defaults (``distance``), then the
    lowest score."""
    idx = np.flatnonzero(ok) if ok.any() else np.arange(len(scores))
    best = idx[np.argmin(scores[idx])]
    near = [i for i in idx if scores[i] - scores[best] <= diff_se[i]]
    return int(min(near, key=lambda i: (distance[i], scores[i])))


def correction_settings(s: SamplingConfig, kind: int, own: OwnHistory, days: list, test: list,
                        expected: dict | None = None) -> SamplingConfig:
    """``s`` with the category correction ``kind`` (0 off, 1 population, 2 per user from the sampled categories,
    3 per user from the decoder's expected categories ``expected``) fitted on ``days`` (the model's days for
    validation requests under ``s`` uncorrected): one fixed-point step."""
    if kind == 1:
        return replace(s, category_bias=tuple(fit_category_bias(own.days, days, test).items()))
    if kind in (2, 3):
        if kind == 3 and expected is None:
            raise ValueError("correction 3 (per user, expected) needs the decoder's expected categories")
        b = fit_user_category_bias(own.days, days, test, expected if kind == 3 else None)
        return replace(s, user_category_bias=tuple((u, tuple(v.items())) for u, v in b.items()))
    return s


CORRECTIONS = {"off": 0, "population": 1, "user": 2, "user_expected": 3}  # --correction names of the kinds


def fit_correction(model, tokenizer, record: dict, split: ActivitySplit, sampling: SamplingConfig, own: OwnHistory,
                   kind: int, progress: bool = True, max_requests: int | None = SELECT_REQUESTS,
                   draws: int = SELECT_DRAWS) -> SamplingConfig:
    """``sampling`` with the correction ``kind`` fitted as :func:`select_sampling` fits it (on ``draws`` days per
    validation request under ``sampling`` uncorrected), without choosing anything else."""
    if not kind:
        return sampling
    requests = requests_of(evenly_spaced(validation_days(record, split), max_requests))
    check_not_trained_on(requests, record)
    plain = replace(sampling, seed=0, n=draws, category_bias=(), user_category_bias=())
    expected: dict = {}
    days = as_chains(requests, generate_texts(model, tokenizer, record, requests, plain, progress, own, expected))
    return replace(correction_settings(plain, kind, own, days, split.test, expected), seed=sampling.seed,
                   n=sampling.n)


SCORES = ("noise", "margin")  # selection scores: noise_score with the one-SE rule; margin_score (the earlier)


def select_sampling(model, tokenizer, record: dict, split: ActivitySplit, base: SamplingConfig, own: OwnHistory,
                    progress: bool = True, max_requests: int | None = SELECT_REQUESTS,
                    grid: dict[str, tuple] | None = None, draws: int = SELECT_DRAWS, score: str = "noise"
                    ) -> tuple[SamplingConfig, list[dict]]:
    """The sampling settings (every combination of ``grid``: SamplingConfig field -> values) whose days
    (``draws`` per request) are closest to the validation days (at most ``max_requests``, evenly spaced), among
    those with validity >= ``MIN_SELECT_VALID`` if any. ``score`` "noise": :func:`noise_score` and the one-SE rule
    (:func:`one_se_choice`; distance: how many settings differ from ``base``, a correction or the decoder fixes
    counting as one);
    "margin": the lowest :func:`margin_score` against the per-user Markov fitted on the trained days. Each row holds
    both scores, their bootstrap standard errors over the validation requests (``margin_se``, ``noise_se``), that
    of the chosen score's difference to the best point's (``diff_se``, paired resamples) and each distribution's
    bootstrap SD (``sd_<distribution>``). The values after the first of a :data:`LATE` key (``decoder_fixes``: 1
    sets ``repeats``, ``time_gaps`` and ``user_prior_first`` to 1; ``category_prior``) are tried only at the best
    point of the rest of the grid (by the score with the first values) and its correction, each combination once."""
    if score not in SCORES:
        raise ValueError(f"selection score {score!r}: not among {SCORES}")
    grid = dict(SELECT_GRID if grid is None else grid)
    corrections = grid.pop(CORRECTION, (0,))
    fields = set(SamplingConfig.__dataclass_fields__)
    unknown = set(grid) - fields - {FIXES}
    if unknown:
        raise ValueError(f"selection grid: field {sorted(unknown)[0]!r} is not a sampling setting")
    if set(corrections) - set(CORRECTIONS.values()):
        raise ValueError(f"selection grid: field '{CORRECTION}': {sorted(corrections)} not among "
                         f"{sorted(CORRECTIONS.values())}")
    if set(grid.get(FIXES, ())) - {0, 1}:
        raise ValueError(f"selection grid: field '{FIXES}': {sorted(grid[FIXES])} not among [0, 1]")
    late = {k: grid[k] for k in LATE if k in grid}
    early = {k: v[:1] if k in late else v for k, v in grid.items()}
    val = evenly_spaced(validation_days(record, split), max_requests)
    requests = requests_of(val)
    check_not_trained_on(requests, record)
    cfg = checks_for(record)
    chain = MarkovBaseline(per_user=True).fit(own.days)
    markov_days = [d for s in range(draws) for d in generate_days(chain, requests, seed=s)]
    markov = quality_row(markov_days, val, [], cfg)
    vocab = {c: i for i, c in enumerate(sorted({a.category for d in (*val, *markov_days, *own.days)
                                                for a in d.activities}))}
    ref = bootstrap_jsds(markov_days, val, draws, vocab, tile=True)
    rows, settings, boots, distance = [], [], [], []

    def run_point(point: dict, kinds: tuple) -> None:
        fields_of = {k: v for k, v in point.items() if k != FIXES}
        if FIXES in point:
            fields_of.update(dict.fromkeys(FIX_FIELDS, float(point[FIXES])))
        plain = replace(base, **fields_of, seed=0, n=draws, category_bias=(), user_category_bias=())
        expected: dict | None = {} if 3 in kinds else None
        first = as_chains(requests, generate_texts(model, tokenizer, record, requests, plain, progress, own, expected))
        for kind in sorted(set(kinds)):
            s = correction_settings(plain, kind, own, first, split.test, expected)
            days = first if s is plain else as_chains(
                requests, generate_texts(model, tokenizer, record, requests, s, progress, own))
            row = quality_row(days, val, own.days, cfg)
            for c in {a.category for d in days for a in d.activities} - set(vocab):
                vocab[c] = len(vocab)
            boots.append(bootstrap_jsds(days, val, draws, vocab))
            margins = [margin_score(dict(zip(DISTRIBUTIONS, g)), dict(zip(DISTRIBUTIONS, r)))
                       for g, r in zip(boots[-1], ref)]
            rows.append({**point, CORRECTION: kind, **row, "margin": margin_score(row, markov),
                         "margin_se": float(np.std(margins, ddof=1)),
                         "mean_jsd": float(np.nanmean([row[d] for d in DISTRIBUTIONS])),
                         **{f"sd_{d}": float(sd) for d, sd in zip(DISTRIBUTIONS, boots[-1].std(axis=0, ddof=1))}})
            settings.append(s)
            distance.append(sum((any(getattr(base, f) != float(v) for f in FIX_FIELDS) if k == FIXES
                                 else getattr(base, k) != v) for k, v in point.items()) + (kind != 0))

    def scored() -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """Each row's chosen score, its resampled scores, and which rows are valid enough (fills the rows)."""
        sds = np.stack([b.std(axis=0, ddof=1) for b in boots])
        scale = np.array([np.nanmedian(c) if np.isfinite(c).any() else np.nan for c in sds.T])
        noise = [noise_score(b, scale) for b in boots]
        for g, n in zip(rows, noise):
            g["noise"] = float(noise_score(np.array([[g[d] for d in DISTRIBUTIONS]]), scale)[0])
            g["noise_se"] = float(n.std(ddof=1))
        resampled = noise if score == "noise" else [
            np.array([margin_score(dict(zip(DISTRIBUTIONS, g)), dict(zip(DISTRIBUTIONS, r))) for g, r in zip(b, ref)])
            for b in boots]
        return (np.array([g[score] for g in rows]), resampled,
                np.array([g["valid"] >= MIN_SELECT_VALID for g in rows]))

    def best_of(values_of: np.ndarray, ok: np.ndarray) -> int:
        pool = np.flatnonzero(ok) if ok.any() else np.arange(len(rows))
        return int(pool[np.argmin(values_of[pool])])

    for values in itertools.product(*early.values()):
        run_point(dict(zip(early, values)), corrections)
    if any(len(v) > 1 for v in late.values()):
        values_of, _, ok = scored()
        top = rows[best_of(values_of, ok)]
        for values in list(itertools.product(*late.values()))[1:]:
            run_point({**{k: top[k] for k in early}, **dict(zip(late, values))}, (top[CORRECTION],))
    values_of, resampled, ok = scored()
    best = best_of(values_of, ok)
    for g, r in zip(rows, resampled):
        g["diff_se"] = float((r - resampled[best]).std(ddof=1))
    chosen = best if score == "margin" else one_se_choice(values_of, np.array([g["diff_se"] for g in rows]),
                                                          np.array(distance), ok)
    for i, g in enumerate(rows):
        g["chosen"] = i == chosen
    return replace(settings[chosen], seed=base.seed, n=base.n), rows


def evaluate_generation(checkpoint: str | os.PathLike, output_dir: str | os.PathLike, seeds: list[int],
                        sampling: SamplingConfig, data_root: str | None = None, max_requests: int | None = None,
                        progress: bool = True, redraws: int = 0, select: bool = False, correction: int = 0,
                        select_score: str = "noise", select_grid: dict[str, tuple] | None = None) -> dict:
    """Generate for the held-out requests with every seed, score stllm and the baselines; returns the rows.
    ``correction`` (without ``select``): the category correction kind (:data:`CORRECTIONS`) fitted on validation
    requests at the given settings."""
    model, tokenizer, record = load_gen_checkpoint(checkpoint)
    split = load_activity_split(record["name"], data_root, seed=record.get("synthetic_seed", 0))
    test = evenly_spaced(split.test, max_requests)
    requests = requests_of(test)
    check_not_trained_on(requests, record)
    cfg = checks_for(record)
    own = trained_own_choices(record, split.train)
    grid = None
    if select:
        sampling, grid = select_sampling(model, tokenizer, record, split, sampling, own, progress,
                                         min(SELECT_REQUESTS, max_requests or SELECT_REQUESTS), select_grid,
                                         score=select_score)
    elif correction:
        sampling = fit_correction(model, tokenizer, record, split, sampling, own, correction, progress,
                                  min(SELECT_REQUESTS, max_requests or SELECT_REQUESTS))
    own = trained_own_choices(record, split.train, with_validation=True)  # settings chosen: the prior and the
    # user's own places now know the validation days too, as the Markov and copy baselines do
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, float]]] = {"real test": [quality_row(test, test, split.train, cfg)]}
    for base in fitted_baselines(split.train):
        rows[base.name] = [quality_row(generate_days(base, requests, seed=s), test, split.train, cfg) for s in seeds]
    rows["stllm"], redrawn = [], []
    generated = []
    for s in seeds:
        seed_cfg = SamplingConfig(**{**sampling.__dict__, "seed": s})
        texts = generate_texts(model, tokenizer, record, requests, seed_cfg, progress=progress, own=own)
        write_generated(out / f"generated_seed{s}.jsonl", requests, texts)
        generated = as_chains(requests, texts)
        rows["stllm"].append(quality_row(generated, test, split.train, cfg))
        if redraws:
            texts, n = redraw_invalid(model, tokenizer, record, requests, texts, seed_cfg, cfg, redraws, progress, own)
            write_generated(out / f"generated_redraw_seed{s}.jsonl", requests, texts)
            generated = as_chains(requests, texts)
            rows.setdefault(f"stllm+redraw{redraws}", []).append(quality_row(generated, test, split.train, cfg))
            redrawn.append(n)
    result = {"data": split.name, "checkpoint": str(checkpoint), "n_requests": len(requests), "seeds": seeds,
              "rows": rows, "parsed": 1.0, "redrawn_days": redrawn,
              "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p,
                           "prefer_own": sampling.prefer_own, "prefer_hours": sampling.prefer_hours,
                           "user_prior": sampling.user_prior, "user_prior_hours": sampling.user_prior_hours,
                           "user_prior_lines": sampling.user_prior_lines,
                           "reach": sampling.reach, "time_gaps": sampling.time_gaps, "repeats": sampling.repeats,
                           "user_prior_first": sampling.user_prior_first,
                           "category_prior": sampling.category_prior, "history": "trained and validation days",
                           "category_bias": dict(sampling.category_bias),
                           "user_category_bias": {str(u): dict(b) for u, b in sampling.user_category_bias}},
              "selection_grid": grid}
    write_text_atomic(out / "metrics.json", json.dumps(result, indent=1, default=float))
    users = list(dict.fromkeys(c.user for c in test))[:3]
    pick = [i for i, c in enumerate(test) if c.user in users][:6]
    result["plot"] = plot_days_map(out / "days_map.png", [test[i] for i in pick], [generated[i] for i in pick],
                                   f"{split.name}: held-out days and stllm's days for the same requests")
    return result


def print_generation_table(result: dict) -> None:
    if result.get("selection_grid"):
        print("\nsampling chosen on validation days (training users' untrained days):")
        for g in result["selection_grid"]:
            setting = " ".join(f"{k} {v:g}" for k, v in g.items()
                               if k in SamplingConfig.__dataclass_fields__ or k in (CORRECTION, FIXES))
            sds = "/".join(f"{g.get('sd_' + d, np.nan):.4f}" for d in DISTRIBUTIONS)
            print(f"  {'*' if g.get('chosen') else ' '}{setting}: JSD / per-user Markov {g['margin']:.3f} +- "
                  f"{g.get('margin_se', np.nan):.3f}, JSD / its SD {g.get('noise', np.nan):.2f} +- "
                  f"{g.get('noise_se', np.nan):.2f} (difference to the best +- {g.get('diff_se', np.nan):.3f}), "
                  f"mean JSD {g['mean_jsd']:.4f}, JSD SDs {sds}, valid {g['valid']:.3f}, copies {g['copies']:.3f}")
    s = result["sampling"]
    print(f"\n{result['data']}: {result['n_requests']} held-out days, seeds {result['seeds']}; sampling temperature "
          f"{s['temperature']}, top_p {s['top_p']}, prefer_own {s['prefer_own']}, prefer_hours {s['prefer_hours']}, "
          f"user_prior {s['user_prior']}, user_prior_hours {s['user_prior_hours']}, "
          f"user_prior_lines {s.get('user_prior_lines', 0.0)}, time_gaps {s.get('time_gaps', 0.0)}, "
          f"repeats {s.get('repeats', 0.0)}, user_prior_first {s.get('user_prior_first', 0.0)}, "
          f"category_prior {s.get('category_prior', 0.0)}, "
          f"reach {s['reach']}, category correction {correction_name(s)}; "
          "JSD lower is better")
    print(format_table(result["rows"]))
    if result.get("plot"):
        print(f"map: {result['plot']}")


def correction_name(sampling: dict) -> str:
    return ("per user" if sampling.get("user_category_bias") else "population" if sampling.get("category_bias")
            else "off")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="stllm eval gen", allow_abbrev=False)
    p.description = "Evaluate activity generation on held-out days against copy and Markov baselines."
    add_sampling_args(p)
    p.add_argument("--seeds", default="0,1,2", help="sampling seeds (stllm and baselines)")
    p.add_argument("--output_dir", default=None, help="default: CHECKPOINT/eval-gen")
    p.add_argument("--select", action="store_true", help="choose temperature, --prefer_own, --user_prior, "
                   "--user_prior_hours, the per-category correction (off / population / per user) and the decoder "
                   "fixes (--repeats, --time_gaps, --user_prior_first together) on the checkpoint's validation days "
                   "first (overrides them); the test days' generation then fits the user's history on the trained "
                   "and validation days")
    p.add_argument("--correction", choices=tuple(CORRECTIONS), default="off",
                   help="without --select: the per-category correction, fitted on the validation requests' days at "
                        "these settings (population: one b per category; user: per user and category from the sampled "
                        "categories; user_expected: from the decoder's expected categories)")
    p.add_argument("--select_score", choices=SCORES, default="noise",
                   help="with --select: noise (each JSD over its bootstrap SD, summed; then the one-SE rule towards "
                        "the given settings) or margin (JSD / per-user Markov's, mean; the lowest)")
    return p


def run(args: argparse.Namespace) -> int:
    seeds = [int(s) for s in args.seeds.split(",")]
    result = evaluate_generation(args.checkpoint, args.output_dir or Path(args.checkpoint) / "eval-gen", seeds,
                                 SamplingConfig(temperature=args.temperature, top_p=args.top_p,
                                                batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                                prefer_own=args.prefer_own, prefer_hours=args.prefer_hours,
                                                user_prior=args.user_prior,
                                                user_prior_hours=args.user_prior_hours,
                                                user_prior_lines=args.user_prior_lines, reach=not args.no_reach,
                                                time_gaps=args.time_gaps, repeats=args.repeats,
                                                user_prior_first=args.user_prior_first,
                                                category_prior=args.category_prior),
                                 args.data_root, args.max_requests, redraws=args.redraws, select=args.select,
                                 correction=CORRECTIONS[args.correction], select_score=args.select_score)
    print_generation_table(result)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return run_command("eval gen", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
