"""``stllm demo``: the whole pipeline on a CPU in minutes, with no downloads.

synthetic city (or the real Manhattan file) -> offline tokenizer -> tiny Llama -> stage-1 encoder
-> instruction tuning -> cross-region zero-shot table against the baselines -> plots. Every stage
is the library's real code path, the same one users run with a Vicuna on GPUs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from stllm.data import RegionSplit
from stllm.data.prompts import PROMPT_STYLES
from stllm.eval.zero_shot import aggregate_seeds, evaluate, format_seed_table
from stllm.runtime import DTYPES, inference_device, inference_dtype, trainer_flags
from stllm.train.arguments import parse_args
from stllm.train.pretrain_encoder import pretrain_st_encoder
from stllm.train.train_mem import encoder_config, load_city, train, train_time_slice

PRESETS = {
    # data flags for train_mem, stage-1 options, stage-2 steps, evaluation window
    "synthetic": (["--data", "synthetic", "--synthetic_regions", "24", "--synthetic_days", "84"],
                  {"epochs": 10}, 300, {}),
    # UrbanGPT's protocol: train on 2019 (a subset of zones), zero-shot on the other zones, 2020-01-01..14
    "manhattan": (["--data", "manhattan-taxi", "--train_end", "2020-01-01", "--max_train_windows", "2688"],
                  {"epochs": 3, "steps_per_epoch": 150, "regions_per_batch": 16}, 400,
                  {"eval_start": "2020-01-01", "eval_days": 14}),
    "manhattan-bike": (["--data", "manhattan-bike", "--train_end", "2020-01-01", "--max_train_windows", "2688"],
                       {"epochs": 3, "steps_per_epoch": 150, "regions_per_batch": 16}, 400,
                  {"eval_start": "2020-01-01", "eval_days": 14}),
    # NYC crime, daily counts of 4 categories on the 69 Manhattan zones: event classification
    "crime": (["--data", "crime"], {"epochs": 10}, 400, {}),
}  # fmt: skip


def _say(step: int, text: str) -> None:
    print(f"[{step}/4] {text}", flush=True)


def train_flags(steps: int, seed: int, progress: bool, batch: int = 16, logging_steps: int = 50) -> list[str]:
    """The stage-2 flags every demo trains with (a short CPU run that saves only at the end)."""
    return ["--max_steps", str(steps), "--per_device_train_batch_size", str(batch), "--learning_rate", "3e-3",
            "--logging_steps", str(logging_steps), "--save_strategy", "no", "--seed", str(seed),
            "--overwrite_output_dir", "true", "--disable_tqdm", str(not progress).lower()]


def backbone_flags(backbone: str | Path | None) -> list[str]:
    """Training flags of a demo on a pretrained model folder (none: the tiny Llama)."""
    return ["--model_name_or_path", str(backbone)] if backbone else []


def backbone_words(backbone: str | Path | None) -> str:
    return f"{backbone}, LoRA" if backbone else "tiny Llama"


def resolve_preset(
    output_dir: str | Path,
    data: str = "synthetic",
    data_root: str | None = None,
    steps: int | None = None,
    extra_views: str = "",
    seed: int = 0,
    progress: bool = True,
    quick: bool = False,
    with_geo: bool = False,
    extra_flags: tuple[str, ...] = (),
) -> tuple[list[str], dict, dict]:
    """What a preset means, without running it: stage-2 flags (``train_mem``'s parser, no
    ``--output_dir``), stage-1 options and evaluation options. Kept apart so that the presets'
    data, task and time split can be checked without training."""
    if data not in PRESETS:
        raise ValueError(f"--data must be one of {sorted(PRESETS)}, got {data!r}")
    flags, stage1, default_steps, eval_kwargs = PRESETS[data]
    if quick:
        if data != "synthetic":
            raise ValueError(f"--quick runs on the synthetic city only (--data synthetic), not {data!r}")
        flags = ["--data", "synthetic", "--synthetic_regions", "10", "--synthetic_days", "16"]
        stage1, default_steps, eval_kwargs = {"epochs": 1, "max_steps": 5}, 10, {"supervised": False}
        flags += ["--context_days", "2", "--context_weeks", "1"]
    out = Path(output_dir)
    flags = [*flags, "--extra_views", extra_views, *(["--data_root", data_root] if data_root else [])]
    if extra_views:  # separate day/week placeholders replace the encoder's multi-period context
        flags += ["--context_days", "0", "--context_weeks", "0"]
    if with_geo:  # a <GEO> slot with the region centroid in every prompt, read by a pretrained GeoEncoder
        flags += ["--with_geo", "true"]
    argv = [
        *flags, *train_flags(steps or default_steps, seed, progress, logging_steps=25),
        "--st_encoder_path", str(out / "encoder"),
        *(["--geo_encoder_path", str(out / "geo_encoder")] if with_geo else []),
        *extra_flags,  # last: they override the preset's defaults (batch size, validation)
    ]  # fmt: skip
    return argv, stage1, eval_kwargs


def run_demo(
    output_dir: str | Path = "runs/demo",
    data: str = "synthetic",
    data_root: str | None = None,
    steps: int | None = None,
    extra_views: str = "",
    seed: int = 0,
    progress: bool = True,
    quick: bool = False,
    with_geo: bool = False,
    no_llm_row: bool = True,
    extra_flags: tuple[str, ...] = (),
    backbone: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
):
    """Run the four stages into ``output_dir`` and return the evaluation result.

    ``no_llm_row`` also trains the "stllm without LLM" ablation (same encoder, normalisation, anchor,
    projector and heads on a zero-layer backbone, same samples and steps) and puts it in the table.
    ``extra_flags`` go to stage-2 training, after the preset's (and the stage-1 encoder for the context flags), e.g. the
    ablations ``--context_days 0 --context_weeks 0``. ``backbone``: a pretrained model folder (``stllm backbone``)
    for stage 2 instead of the tiny Llama (LoRA on it; the "without LLM" row stays the zero-layer tiny model).

    ``quick`` shrinks everything (smaller city, a few steps, no supervised reference): a smoke run of
    the same code path, for tests; its numbers mean nothing. ``device`` / ``dtype`` (``auto``: the GPU in bf16 when
    there is one, else the CPU in fp32) place stage-2 training (mixed precision) and the evaluation's passes."""
    out, t0 = Path(output_dir), time.time()
    placed = inference_device(device)
    placed_flags = tuple(trainer_flags(placed, inference_dtype(dtype, placed)))
    argv, stage1, eval_kwargs = resolve_preset(out, data, data_root, steps, extra_views, seed, progress, quick,
                                               with_geo, placed_flags + tuple(extra_flags))
    model_args, data_args, train_args = parse_args(["--output_dir", str(out / "model"), *argv,
                                                    *backbone_flags(backbone)])
    city = load_city(data_args)
    regions = RegionSplit.random(city, test=data_args.test_regions, seed=data_args.split_seed)
    train_time = train_time_slice(city, data_args)
    _say(1, f"{city.name}: {city.n_regions} regions x {city.n_steps} steps ({city.freq}), "
            f"{len(regions.train)} training regions, {len(regions.test)} held out for zero-shot")  # fmt: skip

    _say(2, "stage 1: pretraining the ST encoder on training regions and times")
    enc_cfg = encoder_config(city, data_args, None, model_args)
    pre = pretrain_st_encoder(city, regions.train, train_time, seed=seed, output_dir=out / "encoder", overwrite=True,
                              progress=progress, encoder_config=enc_cfg,
                              val_region_fraction=data_args.val_region_fraction, **stage1)  # fmt: skip
    val = pre.metrics["val"]
    last = val["last_value_mae_mean"]
    print(f"      encoder validation MAE {val['mae_mean']:.3f} (last value {last:.3f})", flush=True)

    if with_geo:
        from stllm.train.pretrain_geo import pretrain_geo_encoder, synthetic_coords

        coords = np.concatenate([synthetic_coords(4000, seed=seed), city.coords])  # city box + the centroids
        pretrain_geo_encoder(coords, steps=20 if quick else 300, seed=seed, output_dir=out / "geo_encoder")
        print(f"      geo encoder pretrained on {len(coords)} points -> {out / 'geo_encoder'}", flush=True)

    _say(3, f"stage 2: instruction tuning {backbone} (LoRA, encoder frozen)" if backbone
         else "stage 2: instruction tuning a tiny Llama (offline tokenizer, encoder frozen)")
    train(model_args, data_args, train_args)
    compare = {}
    if no_llm_row:
        print("      the same encoder and heads without the LLM (zero decoder layers), same samples and steps",
              flush=True)
        m, d, t = parse_args([*argv, "--no_llm", "true", "--output_dir", str(out / "model-no-llm")])
        train(m, d, t)
        compare["stllm without LLM"] = out / "model-no-llm"

    _say(4, "cross-region zero-shot evaluation against baselines")
    result = evaluate(out / "model", out / "eval", mode="cross-region", progress=progress, compare=compare,
                      device=device, dtype=dtype, **eval_kwargs)
    print()
    print(result.table)
    print(f"\nwrote: model {out / 'model'}, encoder {out / 'encoder'}, results and plots {out / 'eval'}")
    print(f"demo took {time.time() - t0:.0f} s")
    return result


POI_PRESETS = {
    # check-in source for train_poi, stage-2 steps, evaluation test file (None: the synthetic test part)
    "next-poi": ("synthetic", 300, None),
    "nyc-poi": ("{root}/foursquare_nyc/NYC_val.csv", 600, "{root}/foursquare_nyc/NYC_test.csv"),
}


def run_poi_demo(output_dir: str | Path = "runs/demo-poi", data: str = "next-poi", data_root: str | None = None,
                 steps: int | None = None, seed: int = 0, progress: bool = True, quick: bool = False,
                 backbone: str | Path | None = None):
    """Next-POI: check-ins -> offline tokenizer -> tiny Llama with the candidate head -> ranking table
    against the baselines (later check-ins; seen and unseen users). ``backbone``: a pretrained model folder
    (``stllm backbone``) instead of the tiny Llama, LoRA on it."""
    from stllm.data.loaders import data_root as default_root
    from stllm.eval.next_poi import evaluate_next_poi
    from stllm.train.train_poi import POIDataArguments, train_next_poi

    source, default_steps, test = POI_PRESETS[data]
    root = str(data_root or default_root())
    source, test = source.format(root=root), test and test.format(root=root)
    out, t0 = Path(output_dir), time.time()
    flags = ["--checkins", source]
    if quick:
        if data != "next-poi":
            raise ValueError("--quick runs on synthetic check-ins only")
        flags += ["--synthetic_users", "12", "--synthetic_pois", "40", "--synthetic_days", "10"]
        default_steps = 8
    model_args, data_args, train_args = parse_args([
        "--output_dir", str(out / "model"), *flags, *train_flags(steps or default_steps, seed, progress),
        *backbone_flags(backbone),
    ], data_class=POIDataArguments)  # fmt: skip
    print(f"[1/2] next-POI instruction tuning on {source} ({backbone_words(backbone)}, candidate head)", flush=True)
    train_next_poi(model_args, data_args, train_args)
    print("[2/2] ranking every POI for later check-ins, against baselines", flush=True)
    result = evaluate_next_poi(out / "model", out / "eval", test=test, progress=progress,
                               max_samples=200 if quick else None)  # fmt: skip
    print()
    print(result.table)
    print(f"\nwrote: model {out / 'model'}, results {out / 'eval'}")
    print(f"demo took {time.time() - t0:.0f} s")
    return result


MOBILITY_PRESETS = {
    # train-mobility data flags, stage-2 steps, (train city, evaluation city) pairs (None: the synthetic city,
    # evaluated on an unseen synthetic city)
    "mobility": (["--data", "synthetic", "--synthetic_users", "40"], 200, [None]),
    "humob": (["--data", "{root}/humob24/groundtruth_days0-74_cityBC.csv", "--base", "1", "--text_answers", "16"], 250,
              [("B", "C"), ("C", "B")]),
}


def run_mobility_demo(output_dir: str | Path = "runs/demo-humob", data: str = "humob", data_root: str | None = None,
                      steps: int | None = None, seed: int = 0, progress: bool = True, quick: bool = False,
                      backbone: str | Path | None = None):
    """Long-term mobility (HuMob): train on one city's days 0-59, predict the other city's days 60-74 zero-shot;
    GEO-BLEU / DTW beside the history baselines and the published models (Llama-3-8B-Mob, LP-BERT).
    ``backbone``: a pretrained model folder instead of the tiny Llama, LoRA on it."""
    from stllm.data.loaders import data_root as default_root
    from stllm.eval.mobility import evaluate_mobility
    from stllm.train.train_mobility import MobilityDataArguments, train_mobility

    flags, default_steps, pairs = MOBILITY_PRESETS[data]
    root = str(data_root or default_root())
    flags = [f.format(root=root) for f in flags]
    if quick:
        if data != "mobility":
            raise ValueError("--quick runs on the synthetic trajectories only (--data mobility)")
        flags, default_steps = ["--data", "synthetic", "--synthetic_users", "6"], 6
    out, t0, results = Path(output_dir), time.time(), []
    for i, pair in enumerate(pairs, 1):
        name = f"{pair[0]}-to-{pair[1]}" if pair else "synthetic"
        city = ["--city", pair[0]] if pair else []
        model_args, data_args, train_args = parse_args([
            "--output_dir", str(out / name / "model"), *flags, *city,
            *train_flags(steps or default_steps, seed, progress, batch=8), *backbone_flags(backbone),
        ], data_class=MobilityDataArguments)  # fmt: skip
        where = f"city {pair[0]}, days 0-59" if pair else "synthetic trajectories"
        print(f"[{2 * i - 1}/{2 * len(pairs)}] mobility instruction tuning on {where} ({backbone_words(backbone)}, "
              "cell-choice head)", flush=True)
        train_mobility(model_args, data_args, train_args)
        target = f"city {pair[1]}, days 60-74" if pair else "an unseen synthetic city"
        print(f"[{2 * i}/{2 * len(pairs)}] zero-shot prediction of {target}, against baselines", flush=True)
        result = evaluate_mobility(out / name / "model", out / name / "eval", data=flags[1] if pair else None,
                                   base=1 if pair else None, city=pair[1] if pair else None,
                                   max_users=4 if quick else None, generate="--text_answers" in flags)  # fmt: skip
        print(f"\n{result.table}\n")
        results.append(result)
    print(f"wrote: models, predictions (HuMob submission format), per-user scores and plots under {out}")
    print(f"demo took {time.time() - t0:.0f} s")
    return results


GEN_PRESETS = {
    # activity generation: (data of stllm train-gen, training steps, held-out requests evaluated)
    "nyc-gen": ("nyc", 600, 400),
    "tokyo-gen": ("tokyo", 600, 400),
}


def run_gen_demo(output_dir: str | Path = "runs/demo-nyc-gen", data: str = "nyc-gen", data_root: str | None = None,
                 steps: int | None = None, seed: int = 0, progress: bool = True, max_requests: int | None = None):
    """Daily activity generation: train on the users' training days (each user's last one held out for
    validation), choose temperature and the user prior's place and hour shares on those, generate their held-out days
    under the activity grammar (seeds 0-2), table against copy and Markov baselines, map of generated over real
    days."""
    from stllm.eval.activity_eval import evaluate_generation, print_generation_table
    from stllm.eval.generate import SamplingConfig
    from stllm.train.train_gen import GenDataArguments, train_gen

    source, default_steps, requests = GEN_PRESETS[data]
    out, t0 = Path(output_dir), time.time()
    root = ["--data_root", data_root] if data_root else []
    model_args, data_args, train_args = parse_args([
        "--output_dir", str(out / "model"), "--data", source, *root, "--full_finetune", "true",
        *train_flags(steps or default_steps, seed, progress),
    ], data_class=GenDataArguments)  # fmt: skip
    print(f"[1/2] activity generation tuning on {source} training days (tiny Llama)", flush=True)
    train_gen(model_args, data_args, train_args)
    print("[2/2] generating held-out days (constrained decoding), against baselines", flush=True)
    result = evaluate_generation(out / "model", out / "eval", [0, 1, 2], SamplingConfig(top_p=1.0, batch_size=50),
                                 data_root, max_requests or requests, progress=progress, select=True)
    print_generation_table(result)
    print(f"\nwrote: model {out / 'model'}, generated days, metrics and map under {out / 'eval'}")
    print(f"demo took {time.time() - t0:.0f} s")
    return result


INTENT_PRESETS = {
    # on-device intent prediction: (events of stllm train-intent, population model training steps)
    "tokyo-intent": ("tokyo", 300),
    "synthetic-intent": ("synthetic", 100),
}


def run_intent_demo(output_dir: str | Path = "runs/demo-tokyo-intent", data: str = "tokyo-intent",
                    steps: int | None = None, seed: int = 0, progress: bool = True, data_root: str | None = None):
    """On-device intent prediction (PITuning-style): population model on population users' earlier days, distilled
    student (+ ONNX), each held-out user's head tuned (unlearning, history sizing, per-user logit adjustment and
    per-intent offsets chosen on validation days inside the users' earlier days) and its ablations; table against
    the baselines on the held-out users' later days, users improved / tied / worse, the strict gap target and a
    per-user macro-F1 before/after plot."""
    from stllm.eval.intent import intent_summary, report_models
    from stllm.eval.intent_baselines import INTENT_BASELINES
    from stllm.train.intent_pipeline import (
        BEFORE,
        PLAIN,
        POPULATION,
        POPULATION_ADJUSTED,
        TUNED,
        PipelineConfig,
        run_pipeline,
    )

    source, default_steps = INTENT_PRESETS[data]
    out, t0 = Path(output_dir), time.time()
    print(f"[1/2] population model, student, per-user tuning on {source} ({steps or default_steps} steps)", flush=True)
    cfg = PipelineConfig(data=source, seed=seed, teacher_steps=steps or default_steps, data_root=data_root)
    r = run_pipeline(cfg, out, progress)
    print("[2/2] held-out users' later days, against baselines", flush=True)
    title = f"{source}: {len(np.unique(r.data.log.user[r.rows]))} held-out users, {len(r.rows)} later-day targets"
    result = report_models(r.data, r.rows, r.preds, out / "eval", title, BEFORE, (TUNED, PLAIN))
    print(result.table)
    print("\n".join(intent_summary(r.data, r.rows, r.preds, r.choices, r.val_scores, TUNED, POPULATION,
                                   [*INTENT_BASELINES, POPULATION, POPULATION_ADJUSTED, BEFORE])))
    for who, size in r.sizes.items():
        print(f"{who}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in size.items()))
    print(f"\nwrote: {', '.join(str(f) for f in result.files)}\ndemo took {time.time() - t0:.0f} s")
    return result


def run_demo_seeds(seeds: list[int], output_dir: str | Path = "runs/demo", **kwargs):
    """:func:`run_demo` once per seed (into ``output_dir/seed<k>``), then the table of mean +- std per
    method and metric; writes ``seeds.json`` (every run's metrics and the aggregate)."""
    out, runs = Path(output_dir), []
    for s in seeds:
        print(f"=== seed {s} ===", flush=True)
        runs.append(run_demo(out / f"seed{s}", seed=s, **kwargs))
    agg = aggregate_seeds([r.metrics for r in runs])
    table = format_seed_table(agg, runs[0].columns, seeds)
    (out / "seeds.json").write_text(json.dumps({"seeds": seeds, "runs": [r.metrics for r in runs],
                                                "mean_std": agg}, indent=2))  # fmt: skip
    print()
    print(table)
    print(f"\nwrote {out / 'seeds.json'}")
    return agg


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="stllm demo", description=__doc__, allow_abbrev=False)
    p.add_argument("--data", choices=sorted({**PRESETS, **POI_PRESETS, **MOBILITY_PRESETS, **GEN_PRESETS,
                                             **INTENT_PRESETS}), default="synthetic",
                   help="flows/events: synthetic city, real Manhattan taxi, NYC crime; next-POI: synthetic check-ins "
                        "(next-poi) or Foursquare NYC (nyc-poi); long-term mobility: synthetic trajectories "
                        "(mobility) or HuMob'24 cities B and C (humob); daily activity generation: Foursquare "
                        "NYC days (nyc-gen) or LLMob Tokyo days (tokyo-gen); on-device intent: LLMob Tokyo "
                        "(tokyo-intent) or synthetic phone events (synthetic-intent)")
    p.add_argument("--data_root", default=None, help="real data folder (default ../shared/data)")
    p.add_argument("--output_dir", default="runs/demo", help="where everything is written")
    p.add_argument("--steps", type=int, default=None, help="stage-2 optimizer steps (default per preset)")
    p.add_argument("--extra_views", default="", help="extra history placeholders day,week (older mechanism; "
                   "the encoder's multi-period context already reads those slots)")
    p.add_argument("--seed", type=int, default=0, help="seed of every stage")
    p.add_argument("--seeds", default=None,
                   help="comma list, e.g. 0,1,2: run the whole demo once per seed and print mean +- std")
    p.add_argument("--no_llm_row", action="store_true",
                   help="skip training the 'stllm without LLM' ablation row (faster)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (numbers mean nothing)")
    p.add_argument("--with_geo", action="store_true", help="add <GEO> region-centroid tokens (pretrained GeoEncoder)")
    p.add_argument("--prompt_style", default="urbangpt", choices=PROMPT_STYLES,
                   help="flow/event demos: compact states the same facts without UrbanGPT's filler (half the tokens)")
    p.add_argument("--device", default="auto", help="flow/event demos: auto (the GPU when there is one), cpu or cuda")
    p.add_argument("--dtype", default="auto", choices=("auto", *DTYPES),
                   help="flow/event demos: mixed-precision training and the evaluation backbone's dtype "
                        "(auto: bf16 on a GPU, fp32 on the CPU)")
    p.add_argument("--backbone", default=None, help="flow/event, next-POI and mobility demos: a pretrained model "
                   "folder instead of the tiny Llama (LoRA on it), e.g. the one `stllm backbone smollm2-135m "
                   "--output_dir DIR` writes")
    p.add_argument("--val_region_fraction", type=float, default=0.0,
                   help="flow/event demos: both stages keep the weights that validate best on this fraction of the "
                        "training regions, never fitted (0: on the fitted regions' last weeks)")
    return p


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` -> ``[0, 1, 2]``; refuses an empty list, non-integers and repeats (a repeated
    seed would count one run twice in the mean +- std)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be a comma list of integers such as 0,1,2, got {text!r}") from None
    if not seeds:
        raise ValueError(f"--seeds must name at least one seed, such as 0,1,2; got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds repeats a seed: {text!r}; each seed is one run of the mean +- std")
    return seeds


def check_args(args: argparse.Namespace) -> None:
    """Refuse flag combinations the chosen demo would silently ignore, naming the flag."""
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be a positive number of optimizer steps, got {args.steps}")
    if args.quick and args.data not in ("synthetic", "next-poi", "mobility"):
        raise ValueError(f"--quick runs on the synthetic data only (--data synthetic, next-poi or mobility), not "
                         f"{args.data!r}")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise NotADirectoryError(f"--data_root {args.data_root}: no such directory; pass the folder that holds "
                                 "nyc_manhattan_flows/, nyc_crime/, foursquare_nyc/")
    if args.backbone is not None and args.data in (*GEN_PRESETS, *INTENT_PRESETS):
        raise ValueError(f"--backbone applies to the flow/event, next-POI and mobility demos, not --data {args.data} "
                         "(its own command takes --model_name_or_path)")
    if args.data not in PRESETS:  # next-POI, mobility, generation, intent
        ignored = [flag for flag, on in (("--seeds", args.seeds is not None), ("--with_geo", args.with_geo),
                                         ("--extra_views", bool(args.extra_views)),
                                         ("--val_region_fraction", bool(args.val_region_fraction)),
                                         ("--prompt_style", args.prompt_style != "urbangpt"),
                                         ("--device", args.device != "auto"),
                                         ("--dtype", args.dtype != "auto")) if on]  # fmt: skip
        if ignored:
            verb = "applies" if len(ignored) == 1 else "apply"
            raise ValueError(f"{', '.join(ignored)} {verb} to the flow/event demos only, not --data {args.data}")
    if args.seeds is not None:
        parse_seeds(args.seeds)
    if args.backbone is not None and not Path(args.backbone).exists():
        raise FileNotFoundError(f"--backbone {args.backbone}: no such model folder or .gguf file; write one with "
                                "`stllm backbone smollm2-135m --output_dir DIR`")
    from stllm.data.prompts import VIEW_WORDS

    unknown = [v for v in args.extra_views.split(",") if v and v not in VIEW_WORDS]
    if unknown:  # refused by stage 2 too, but only after stage 1 has run
        raise ValueError(f"--extra_views {args.extra_views!r}: unknown view(s) {unknown}; use a comma list of "
                         f"{', '.join(sorted(VIEW_WORDS))}")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    if args.data in INTENT_PRESETS:
        out = args.output_dir if args.output_dir != "runs/demo" else f"runs/demo-{args.data}"
        run_intent_demo(out, args.data, args.steps, args.seed, not args.no_progress, args.data_root)
        return 0
    if args.data in GEN_PRESETS:
        out = args.output_dir if args.output_dir != "runs/demo" else f"runs/demo-{args.data}"
        run_gen_demo(out, args.data, args.data_root, args.steps, args.seed, not args.no_progress)
        return 0
    if args.data in MOBILITY_PRESETS:
        out = args.output_dir if args.output_dir != "runs/demo" else f"runs/demo-{args.data}"
        run_mobility_demo(out, args.data, args.data_root, args.steps, args.seed, not args.no_progress, args.quick,
                          args.backbone)
        return 0
    if args.data in POI_PRESETS:
        out = args.output_dir if args.output_dir != "runs/demo" else "runs/demo-poi"
        run_poi_demo(out, args.data, args.data_root, args.steps, args.seed, not args.no_progress, args.quick,
                     args.backbone)
        return 0
    kwargs = dict(data=args.data, data_root=args.data_root, steps=args.steps, extra_views=args.extra_views,
                  progress=not args.no_progress, quick=args.quick, with_geo=args.with_geo,
                  no_llm_row=not args.no_llm_row, backbone=args.backbone, device=args.device, dtype=args.dtype,
                  extra_flags=(*(("--prompt_style", args.prompt_style) if args.prompt_style != "urbangpt" else ()),
                               *(("--val_region_fraction", str(args.val_region_fraction))
                                 if args.val_region_fraction else ())))  # fmt: skip
    if args.seeds is not None:
        run_demo_seeds(parse_seeds(args.seeds), args.output_dir, **kwargs)
    else:
        run_demo(args.output_dir, seed=args.seed, **kwargs)
    return 0
