"""``stllm eval intent CHECKPOINT``: next-intent scores of a population (or student) checkpoint and the baselines on
the held-out users' later days, the same targets for all.

The checkpoint's ``intent_data.json`` names the data and the split it trained on; the data are rebuilt from it and
:func:`stllm.data.intent.check_heldout` refuses any target that is not a held-out user's later day (or, with
``--part population_test``, a population user's later day). One forward pass per batch reads the intent head at
``<intent_pre>``; no token is generated. Writes ``metrics.json``, ``per_user.csv`` and prints the table.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stllm.data.intent import (
    INTENTS,
    IntentCollator,
    PreparedIntent,
    check_heldout,
    prepare_from_record,
)
from stllm.errors import run_command
from stllm.eval.intent_baselines import baseline_table
from stllm.eval.intent_metrics import format_intent_table, gap_target, per_user_scores, score_table, user_changes
from stllm.eval.zero_shot import EvalResult, _write_json, print_result
from stllm.models.intent import load_intent_checkpoint, read_intent_record, run_intent


def predict_part(model, tokenizer, data: PreparedIntent, part: str, history: int, batch_size: int = 64
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, logits (n, C))`` for the targets of ``part`` (checked held out first)."""
    rows = data.rows_of(part)
    check_heldout(data.log, rows, data.split, allow_population=part == "population_test")
    logits = run_intent(model, IntentCollator(tokenizer), data.dataset(part, history=history), batch_size)
    return rows, logits.numpy()


def evaluate_intent(checkpoint: str | os.PathLike, output_dir: str | os.PathLike, part: str = "user_test",
                    batch_size: int = 64) -> EvalResult:
    data = prepare_from_record(read_intent_record(checkpoint))  # a leaked split is refused before any loading
    model, tokenizer, record = load_intent_checkpoint(checkpoint)
    start = time.perf_counter()
    rows, logits = predict_part(model, tokenizer, data, part, int(record.get("history", 8)), batch_size)
    seconds = time.perf_counter() - start
    y, users = data.log.intent[rows], data.log.user[rows]
    pred = logits.argmax(-1)
    metrics = {"stllm": score_table(y, pred, users, len(INTENTS)), **baseline_table(data, part)}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = (f"{record['data']} ({data.log.source}), {part}: {len(np.unique(users))} users, {len(rows)} targets; "
             f"stllm = {checkpoint} ({seconds:.1f} s, one pass per batch of {batch_size})")
    files = [_write_json(out / "metrics.json", {"part": part, "seconds": seconds, "methods": metrics}),
             write_per_user(out / "per_user.csv", data, rows, {"stllm": pred})]
    return EvalResult(metrics=metrics, table=format_intent_table(metrics, title), output_dir=out, files=files)


def write_per_user(path: Path, data: PreparedIntent, rows: np.ndarray, preds: dict[str, np.ndarray]) -> Path:
    """``method,user,n,accuracy,weighted_f1,macro_f1,gap`` per user."""
    y, users = data.log.intent[rows], data.log.user[rows]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write("method,user,n,accuracy,weighted_f1,macro_f1,gap\n")
        for name, p in preds.items():
            ids, per = per_user_scores(y, p, users, len(INTENTS))
            counts = np.bincount(np.searchsorted(ids, users), minlength=len(ids))
            for i, u in enumerate(ids.tolist()):
                f.write(f"{name},{data.log.user_ids[u]},{counts[i]}," + ",".join(
                    f"{per[k][i]:.6f}" for k in ("accuracy", "weighted_f1", "macro_f1", "gap")) + "\n")
    os.replace(tmp, path)
    return path


def plot_user_macro_f1(path: str | os.PathLike, users: list[str], before: np.ndarray, after: dict[str, np.ndarray]):
    """Per-user macro F1 before (x) and after (y) individual tuning, one marker set per variant; None without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, a in after.items():
        ax.scatter(before, a, s=18, label=f"{name}: {int((a > before).sum())}/{len(users)} users improve")
    hi = max(float(np.max(before)), *(float(np.max(a)) for a in after.values())) + 0.05
    ax.plot([0, hi], [0, hi], "k--", lw=0.8)
    ax.set_xlabel("macro F1 before tuning (student)")
    ax.set_ylabel("macro F1 after tuning")
    ax.set_title("Held-out users, later days")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="stllm eval intent", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a stllm train-intent output directory (or a distilled student)")
    parser.add_argument("--output_dir", default=None, help="where metrics.json/per_user.csv go "
                        "(default CHECKPOINT/eval_intent)")
    parser.add_argument("--part", default="user_test", choices=("user_test", "population_test"),
                        help="held-out users' later days (default) or population users' later days")
    parser.add_argument("--batch_size", type=int, default=64)
    return parser


def run(args: argparse.Namespace) -> int:
    out = args.output_dir or os.path.join(args.checkpoint, "eval_intent")
    return print_result(evaluate_intent(args.checkpoint, out, args.part, args.batch_size))


def main(argv: list[str] | None = None) -> int:
    return run_command("eval intent", lambda: run(build_parser().parse_args(argv)))


def report_models(data: PreparedIntent, rows: np.ndarray, preds: dict[str, np.ndarray], output_dir: str | os.PathLike,
                  title: str, before: str, after: tuple[str, ...]) -> EvalResult:
    """Table of ``preds`` (each aligned with ``rows``, checked held out) and the baselines on the same targets,
    ``per_user.csv`` and the per-user macro-F1 plot of ``after`` variants against ``before``."""
    check_heldout(data.log, rows, data.split)
    y, users = data.log.intent[rows], data.log.user[rows]
    metrics = {name: score_table(y, p, users, len(INTENTS)) for name, p in preds.items()}
    metrics.update(baseline_table(data))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [_write_json(out / "metrics.json", {"methods": metrics}), write_per_user(out / "per_user.csv", data, rows,
                                                                                     preds)]
    ids, per_before = per_user_scores(y, preds[before], users, len(INTENTS))
    per_after = {name: per_user_scores(y, preds[name], users, len(INTENTS))[1]["macro_f1"] for name in after}
    plot = plot_user_macro_f1(out / "user_macro_f1.png", data.log.user_ids[ids].tolist(), per_before["macro_f1"],
                              per_after)
    files += [plot] if plot is not None else []
    return EvalResult(metrics=metrics, table=format_intent_table(metrics, title), output_dir=out, files=files)


def intent_summary(data: PreparedIntent, rows: np.ndarray, preds: dict[str, np.ndarray], choices: dict,
                   val_scores: dict[str, dict[str, float]], model: str, population: str, baselines: Sequence[str]
                   ) -> list[str]:
    """Lines under the table: how many users ``model`` improves, ties and worsens over ``population`` (macro F1),
    the strict gap target (:func:`stllm.eval.intent_metrics.gap_target`; ``baselines`` are rows of ``preds`` or
    count baselines), and each post-hoc row's validation choice (``choices``: name -> ``Posthoc``)."""
    check_heldout(data.log, rows, data.split)
    y, users = data.log.intent[rows], data.log.user[rows]
    table = {**{n: score_table(y, p, users, len(INTENTS)) for n, p in preds.items()}, **baseline_table(data)}
    ch = user_changes(y, preds[population], preds[model], users, len(INTENTS))
    met, why = gap_target(table, model, population, baselines)
    return [f"users whose macro F1 rises / ties / falls ({model} over {population}): {ch['improved']} / {ch['tied']} / "
            f"{ch['worse']} of {sum(ch.values())}",
            f"gap target (gap below every baseline's, macro F1 >= {population}'s, accuracy within 0.05 of it): "
            f"{'MET' if met else 'MISSED'} ({why})",
            "chosen on validation days: " + ", ".join(
                f"{n} {f'loss_tau={c.loss_tau:g} ' if getattr(c, 'loss_tau', 0) else ''}k={c.k:g} "
                f"{'' if getattr(c, 'mix_m', None) is None else f'mix m={c.mix_m:g} '}"
                f"{'' if getattr(c, 'neighbours', None) is None else 'neighbours K={} w={:g} '.format(*c.neighbours)}"
                f"tau={c.tau:g} "
                f"alpha={c.alpha:g} offsets=[{' '.join(f'{v:.1f}' for v in c.bias)}] "
                f"(val acc {val_scores[n]['accuracy']:.4f}, macro F1 {val_scores[n]['macro_f1']:.4f}, gap "
                f"{val_scores[n]['gap']:.4f})" for n, c in choices.items()),
            "validation gaps of the baselines: " + ", ".join(
                f"{n} {v['gap']:.4f}" for n, v in val_scores.items() if n not in choices)]
