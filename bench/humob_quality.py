"""HuMob'24 zero-shot quality on CPU: train stllm (tiny Llama, cell-choice head) on one city's days 0-59, predict
days 60-74 of the other city, and print the table beside the baselines and the published models.

    python bench/humob_quality.py [--data DIR] [--steps 250] [--pairs B:C C:B] [--seeds 0,1,2]
                                  [--train_flags "--lm_loss_weight 0.1"] [--out /tmp/humob_quality]
                                  [--select_radii 8,12,16,20,30] [--select_temperatures 0.4,0.55,0.7,1.0]
                                  [--transition_weights 0,0.2,0.3,0.5]
                                  [--variant humob24|giscup25] [--reuse] [--text_answers 16]

Decode settings are chosen without test data: ``--select_*`` leaves ``--heldout_users`` of the training city out of
training and scores them on windows inside days 0-59 (:data:`SELECTION_WINDOWS`). Quota's temperature maximises
their mean GEO-BLEU; anchored's radius (and temperature, ``--anchored_temperatures``) maximises its smallest
relative margin over the best history baseline, over both metrics (GEO-BLEU above the best, DTW below the best) and
every window: the target is to beat every baseline on both metrics. ``--transition_weights`` adds the weight of the
within-day transitions (:mod:`stllm.eval.mobility_transitions`) to both choices.

Each pair and seed trains from scratch (about 40 s of 250 steps on 2 idle cores) and evaluates with
``stllm eval mobility`` (a few seconds for 100 users); with several seeds a last table gives stllm's mean and
spread per pair. ``--text_answers N`` also trains the LM to write the days as text over the user's top N places and
adds the generate-based mode as a row ``stllm (generate)`` (the LM writes the answers, as Llama-3-8B-Mob does) with
its time per 100 users.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import numpy as np

from stllm.cli import main as stllm
from stllm.data.loaders import data_root
from stllm.data.mobility import MOBILITY_DATA_FILE
from stllm.eval.mobility import ANCHOR_RADIUS, QUOTA_TEMPERATURE, TRANSITIONS, evaluate_mobility
from stllm.eval.mobility_baselines import BASELINES
from stllm.eval.mobility_transitions import TransitionConfig

FILE = "groundtruth_days0-74_cityBC.csv"
# (history days, target days) of the held-out users that choose decode settings: inside days 0-59, two windows
SELECTION_WINDOWS = (((0, 44), (45, 59)), ((0, 29), (30, 44)))


def worst_margin(windows: list[dict[str, dict[str, float]]]) -> float:
    """stllm's smallest relative margin over the best history baseline, over both metrics (GEO-BLEU above the best,
    DTW below the best) and every selection window: the target is to beat every baseline on both, everywhere."""
    margins = []
    for m in windows:
        best_g = max(m[b]["geobleu"] for b in BASELINES)
        best_d = min(m[b]["dtw"] for b in BASELINES)
        margins += [m["stllm"]["geobleu"] / best_g - 1.0, 1.0 - m["stllm"]["dtw"] / best_d]
    return min(margins)


def mean_geobleu(windows: list[dict[str, dict[str, float]]]) -> float:
    return float(np.mean([m["stllm"]["geobleu"] for m in windows]))


def setting_name(kw: dict) -> str:
    return ", ".join(f"transition weight {v.weight:g}" if isinstance(v, TransitionConfig) else f"{k} {v:g}"
                     for k, v in kw.items())


def select(ckpt: Path, out: Path, data: Path, city: str, decode: str, settings: list[dict], objective,
           variant: str = "humob24") -> dict:
    """The settings (evaluate_mobility arguments) under which ``decode`` scores best by ``objective`` (of the
    metrics in each of :data:`SELECTION_WINDOWS`) on the checkpoint's held-out users of the training city."""
    heldout = np.array(json.loads((ckpt / MOBILITY_DATA_FILE).read_text())["heldout_users"])
    found = []
    for i, kw in enumerate(settings):
        found.append([evaluate_mobility(ckpt, out / f"{decode}{i}-{h[1]}", data=str(data), base=1, city=city,
                                        history_days=h, target_days=t, decode=decode, users=heldout,
                                        variant=variant, **kw).metrics for h, t in SELECTION_WINDOWS])
    best = max(range(len(settings)), key=lambda i: objective(found[i]))

    def mean(i: int, method: str) -> str:
        return " / ".join(f"{np.mean([w[method][k] for w in found[i]]):.4f}" for k in ("geobleu", "dtw"))

    rows = "; ".join(f"{setting_name(kw)}: {mean(i, 'stllm')} ({objective(found[i]):+.3f})"
                     for i, kw in enumerate(settings))
    print(f"\n== {decode} on {len(heldout)} held-out users of {city} (mean of {len(SELECTION_WINDOWS)} windows in days "
          f"0-59, GEO-BLEU / DTW; objective): {rows} -> {setting_name(settings[best])}; baselines there: "
          + ", ".join(f"{b} {mean(best, b)}" for b in BASELINES))
    return settings[best]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_root() / "humob24", help="folder with the HuMob'24 files")
    ap.add_argument("--steps", type=int, default=250, help="training steps per city (batch 8)")
    ap.add_argument("--pairs", nargs="+", default=["B:C", "C:B"], help="TRAIN:EVAL city pairs")
    ap.add_argument("--seeds", default="0", help="comma list of training seeds")
    ap.add_argument("--train_flags", default="", help="extra stllm train-mobility flags, e.g. '--lm_loss_weight 0.1'")
    ap.add_argument("--out", type=Path, default=Path("/tmp/humob_quality"))
    ap.add_argument("--select_temperatures", default="",
                    help="comma list, e.g. 0.4,0.55,0.7,1.0: leave --heldout_users of the training city out of "
                         "training, choose quota decoding's temperature by their GEO-BLEU in SELECTION_WINDOWS, "
                         "then evaluate the other city with it (no test data in the choice)")
    ap.add_argument("--select_radii", default="", help="comma list, e.g. 8,12,16,20,30: choose anchored decoding's "
                    "radius (cells) on --heldout_users of the training city (see above), then evaluate with it")
    ap.add_argument("--anchored_temperatures", default="", help="comma list: temperatures chosen jointly with "
                    "--select_radii for anchored decoding (default: quota's)")
    ap.add_argument("--transition_weights", default="", help="comma list, e.g. 0,0.2,0.3,0.5: transition weights "
                    "chosen jointly with --select_temperatures / --select_radii (default: the library's)")
    ap.add_argument("--heldout_users", type=int, default=20, help="users left out for --select_*")
    ap.add_argument("--reuse", action="store_true", help="evaluate the checkpoints already in --out (same pairs and "
                    "seeds) instead of training them again, e.g. with another --variant or --decodes")
    ap.add_argument("--variant", choices=("humob24", "giscup25"), default="humob24",
                    help="metric of the selection and the tables (giscup25: the 2025 one, DTW without a free start)")
    ap.add_argument("--text_answers", type=int, default=0, help="train-mobility --text_answers: also train the LM "
                    "to write the answers and score the generate-based mode as a row 'stllm (generate)'")
    ap.add_argument("--decodes", default="anchored,quota,geo",
                    help="comma list of stllm eval mobility --decode rules, each scored on the same checkpoint")
    args = ap.parse_args()
    data = args.data / FILE
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    scores: dict[str, list[tuple[float, float]]] = {}
    times: dict[str, list[float]] = {}  # generate-mode seconds per evaluation (100 users each on HuMob'24)
    temps = [float(t) for t in args.select_temperatures.split(",") if t.strip()]
    radii = [float(t) for t in args.select_radii.split(",") if t.strip()]
    anchored_temps = [float(t) for t in args.anchored_temperatures.split(",") if t.strip()]
    chains = [TransitionConfig(float(w), TRANSITIONS.smoothing, TRANSITIONS.scale, TRANSITIONS.stay_prior)
              for w in args.transition_weights.split(",") if w.strip()] or [TRANSITIONS]
    held = ["--heldout_users", str(args.heldout_users)] if temps or radii else []
    for pair in args.pairs:
        train_city, eval_city = pair.split(":")
        for seed in seeds:
            ckpt = args.out / f"train-{train_city}-seed{seed}"
            start = time.perf_counter()
            reuse = args.reuse and (ckpt / MOBILITY_DATA_FILE).is_file()
            flags = ["train-mobility", "--data", str(data), "--base", "1", "--city", train_city, "--output_dir",
                     str(ckpt), "--max_steps", str(args.steps), "--per_device_train_batch_size", "8",
                     "--learning_rate", "3e-3", "--save_strategy", "no", "--disable_tqdm", "true", "--report_to",
                     "none", "--logging_steps", "50", "--seed", str(seed), "--overwrite_output_dir", "true",
                     *held, "--text_answers", str(args.text_answers), *shlex.split(args.train_flags)]  # fmt: skip
            code = 0 if reuse else stllm(flags)
            if code:
                raise SystemExit(code)
            trained = "reused" if reuse else f"{time.perf_counter() - start:.0f} s"
            quota = {"temperature": QUOTA_TEMPERATURE, "transitions": TRANSITIONS}
            anchored = {"temperature": QUOTA_TEMPERATURE, "radius": ANCHOR_RADIUS, "transitions": TRANSITIONS}
            sel = args.out / f"select-{train_city}-seed{seed}"
            if temps:
                quota = select(ckpt, sel, data, train_city, "quota",
                               [{"temperature": t, "transitions": c} for t in temps for c in chains], mean_geobleu,
                               args.variant)
            if radii:
                anchored = select(ckpt, sel, data, train_city, "anchored",
                                  [{"temperature": t, "radius": r, "transitions": c}
                                   for t in anchored_temps or [quota["temperature"]] for r in radii for c in chains],
                                  worst_margin, args.variant)
            for i, decode in enumerate(args.decodes.split(",")):
                chosen = anchored if decode == "anchored" else quota
                gen = bool(args.text_answers) and i == 0  # the generate-based mode once per checkpoint
                result = evaluate_mobility(ckpt, args.out / f"{train_city}-to-{eval_city}-seed{seed}-{decode}",
                                           data=str(data), base=1, city=eval_city, decode=decode,
                                           variant=args.variant, generate=gen, **chosen)
                print(f"\n== seed {seed}: trained on {train_city} ({trained}), zero-shot on {eval_city}, "
                      f"decode {decode} ({setting_name(chosen)}) ==\n{result.table}")
                m = result.metrics["stllm"]
                scores.setdefault(f"{pair} decode {decode}", []).append((m["geobleu"], m["dtw"]))
                if gen:
                    m = result.metrics["stllm (generate)"]
                    rate = json.loads((result.output_dir / "metrics.json").read_text())["generate_seconds"]
                    scores.setdefault(f"{pair} stllm (generate)", []).append((m["geobleu"], m["dtw"]))
                    times.setdefault(pair, []).append(rate)
    if scores:
        print(f"\nstllm over seeds {args.seeds} ({args.train_flags or 'default flags'}): mean +- std")
        for pair, rows in scores.items():
            a = np.array(rows)
            print(f"{pair}  GEO-BLEU {a[:, 0].mean():.4f} +- {a[:, 0].std():.4f}  DTW {a[:, 1].mean():.2f} +- "
                  f"{a[:, 1].std():.2f}")
        for pair, secs in times.items():
            print(f"{pair} stllm (generate): {np.mean(secs):.1f} s per evaluation of the city's users")


if __name__ == "__main__":
    main()
