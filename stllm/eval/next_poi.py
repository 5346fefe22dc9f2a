"""``stllm eval next-poi``: rank every POI of the training table for each later check-in, against baselines.

Targets are the check-ins of the test file (later in time than training); each sample's history is
the user's earlier check-ins from both files, as a deployed recommender would have them. stllm scores
all candidates in one batched forward pass per batch of prompts (the candidate head at ``<poi_pre>``);
the four baselines (most popular, user's most frequent, nearest to the last visit, Markov) score the
same samples with the same history window. Results are reported for all samples and separately for
users seen in training and users never seen. Test POIs missing from the training table cannot be
ranked by anyone: they count as misses and are reported. ``--generate N`` also runs GA-LLM-style text
answers (``generate``, then parse "POI <index>") on the first N samples: Acc@1 only, parse failures
counted, never filled in.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from stllm.data.checkins import CheckIns, load_checkins
from stllm.data.next_poi import NextPOICollator, NextPOIDataset, NextPOITask, next_poi_eval_task
from stllm.errors import run_command
from stllm.eval.plots import plot_acc_at_k
from stllm.eval.poi_baselines import MarkovTransition, poi_baseline_ranks
from stllm.eval.ranking import format_ranking_table, metrics_from_ranks, target_ranks
from stllm.eval.run_identity import load_task_checkpoint
from stllm.eval.zero_shot import EvalResult, _write_json, print_result
from stllm.train.train_poi import POI_DATA_FILE, POIDataArguments, resolve_checkins, table_fingerprint

REQUIRED = ("config.json", "tokenizer_config.json", POI_DATA_FILE)
GROUPS = ("all users", "seen users", "unseen users")
_POI_RE = re.compile(r"POI\s+(\d+)")
MISS_RANK = 1e9  # a wrong text answer: outside every cut-off, ~0 reciprocal rank


def load_poi_checkpoint(path: Path):
    """``(model, tokenizer, record)`` of a ``stllm train-poi`` checkpoint; names a missing part."""
    model, tokenizer, record = load_task_checkpoint(path, REQUIRED, POI_DATA_FILE, "train-poi")
    if model.config.poi_pre_token_id is None:
        raise ValueError(f"checkpoint {path} has no <poi_pre> token id: not a next-POI model")
    return model, tokenizer, record


@torch.inference_mode()
def score_ranks(model, tokenizer, task: NextPOITask, table: CheckIns, prompt_visits: int, batch_size: int = 64,
                top: int = 10, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank of each target among all candidates (``inf`` for unknown targets) and the ``top``
    candidates per sample, from one forward pass per batch."""
    dataset = NextPOIDataset(task, prompt_visits=prompt_visits)
    collator = NextPOICollator(tokenizer, table, answer="prefix", transitions=MarkovTransition().fit(table))
    device = next(model.parameters()).device
    ranks, tops = [], []
    for start in tqdm(range(0, len(dataset), batch_size), desc="stllm next-POI", disable=not progress):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        target = batch.pop("poi_targets").numpy()
        batch = {k: v.to(device) for k, v in batch.items()}
        scores = model(**batch, logits_to_keep=1).poi_scores.float().cpu().numpy()
        ranks.append(target_ranks(scores, target))
        k = min(top, scores.shape[1])
        tops.append(np.argsort(-scores, axis=1, kind="stable")[:, :k])
    if not ranks:
        return np.zeros(0), np.zeros((0, top), dtype=np.int64)
    return np.concatenate(ranks), np.concatenate(tops)


@torch.inference_mode()
def generate_ranks(model, tokenizer, task: NextPOITask, table: CheckIns, prompt_visits: int,
                   max_new_tokens: int = 16) -> tuple[np.ndarray, int]:
    """GA-LLM-style: generate the answer after the prompt, parse ``POI <index>``; rank 0 when it names the
    target, ``MISS_RANK`` otherwise (a text answer is one guess: no other candidate is ranked), ``inf`` when the
    target is not in the table. Returns ``(ranks, n_unparsed)``."""
    dataset = NextPOIDataset(task, prompt_visits=prompt_visits)
    collator = NextPOICollator(tokenizer, table, answer="prefix")
    device = next(model.parameters()).device
    ranks, failed = np.where(task.target >= 0, MISS_RANK, np.inf), 0
    for i in tqdm(range(len(dataset)), desc="generate", disable=len(dataset) < 20):
        sample = dataset[i]
        batch = collator([sample])
        ids = batch["input_ids"][:, :-1].to(device)  # drop <poi_pre>: the model writes the whole answer
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), geo_coords=batch["geo_coords"],
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        m = _POI_RE.search(text)
        if m is None:
            failed += 1
        elif int(m.group(1)) == sample["poi_target"]:
            ranks[i] = 0
    return ranks, failed


def _check_times(train: CheckIns, test: CheckIns, allow_overlap: bool) -> None:
    if allow_overlap or not len(train) or not len(test):
        return
    if test.time.min() < train.time.max():
        n = int((test.time < train.time.max()).sum())
        raise ValueError(f"{n} test check-ins are earlier than the last training check-in ({train.time.max()}); "
                         "next-POI evaluation must be later in time (pass --allow-overlap to evaluate anyway)")


def evaluate_next_poi(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    train: str | None = None,
    test: str | None = None,
    batch_size: int = 64,
    max_samples: int | None = None,
    generate: int = 0,
    allow_overlap: bool = False,
    progress: bool = True,
) -> EvalResult:
    """Evaluate a ``stllm train-poi`` checkpoint; ``train``/``test`` default to what it trained on (for
    synthetic check-ins, the later 20% is the test part). ``max_samples`` takes evenly spaced samples."""
    ckpt, out = Path(checkpoint), Path(output_dir)
    model, tokenizer, record = load_poi_checkpoint(ckpt)
    d_args = POIDataArguments(**{k: v for k, v in record.items() if k in POIDataArguments.__dataclass_fields__})
    train_c, default_test = resolve_checkins(train or d_args.checkins, **d_args.synthetic_kwargs())
    if table_fingerprint(train_c) != record["poi_table_sha256"]:
        raise ValueError(f"training check-ins {train or record['checkins']} give a different POI table from the one "
                         f"the checkpoint was trained on ({record['source']}, {record['n_pois']} POIs)")
    if test is None and default_test is None:
        raise ValueError("pass --test: a check-in CSV later in time than the training file")
    test_c = load_checkins(test) if test is not None else default_test
    _check_times(train_c, test_c, allow_overlap)
    task = next_poi_eval_task(train_c, test_c, history=record["history"])
    not_targets = len(test_c) - len(task)  # first check-ins of users new in the test file: no history
    if len(task) == 0:
        raise ValueError(f"{test_c.source}: no next-POI targets (no test user has an earlier check-in)")
    if max_samples is not None and max_samples < len(task):
        task = task.subset(np.unique(np.linspace(0, len(task) - 1, num=max_samples).astype(int)))
    out.mkdir(parents=True, exist_ok=True)

    ranks = {"stllm": score_ranks(model, tokenizer, task, train_c, record["prompt_visits"], batch_size,
                                  progress=progress)[0]}
    ranks.update(poi_baseline_ranks(train_c, task))
    groups = {"all users": np.ones(len(task), bool), "seen users": task.seen_user, "unseen users": ~task.seen_user}
    groups = {g: m for g, m in groups.items() if m.any()}  # an empty group has no metrics (not NaN rows)
    metrics = {g: {name: metrics_from_ranks(r[m]) for name, r in ranks.items()} for g, m in groups.items()}
    if generate:
        n = min(generate, len(task))
        gen, failed = generate_ranks(model, tokenizer, task.subset(np.arange(n)), train_c, record["prompt_visits"])
        name = f"stllm generate (first {n})"
        metrics["all users"][name] = {**metrics_from_ranks(gen), "unparsed": failed}
        note = f"\n\n{name}: one text answer per sample, so Acc@k = Acc@1; {failed} of {n} answers did not parse."
    parts = []
    for g, rows in metrics.items():
        n = int(groups[g].sum())
        if n:
            parts.append(f"{g} ({n} samples)\n{format_ranking_table(rows)}")
    unknown = int((task.target < 0).sum())
    table = "\n\n".join(parts) + (note if generate else "")
    table += f"\n\n{unknown} of {len(task)} test targets are POIs missing from the training table: misses for all."
    if not_targets:
        table += (f"\n{not_targets} test check-ins are not targets: each is the first check-in of a user new in the "
                  "test file (no earlier visit to predict from).")
    files = [_write_json(out / "metrics.json", metrics)]
    files.append(_write_predictions(out / "predictions.jsonl", task, ranks["stllm"]))
    files.append(plot_acc_at_k(out / "acc_at_k.png", ranks, groups))
    return EvalResult(metrics=metrics, table=table, output_dir=out, files=files)


def _write_predictions(path: Path, task: NextPOITask, ranks: np.ndarray) -> Path:
    c = task.checkins
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for i, row in enumerate(task.rows.tolist()):
            target = int(c.poi[row])
            f.write(json.dumps({
                "user": str(c.user_ids[c.user[row]]), "time": str(np.datetime_as_string(c.time[row])),
                "target": str(c.poi_ids[target]) if target >= 0 else None, "seen_user": bool(task.seen_user[i]),
                "rank": None if np.isinf(ranks[i]) else int(ranks[i]),
            }) + "\n")  # fmt: skip
    os.replace(tmp, path)
    return path


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="stllm eval next-poi", description=__doc__, allow_abbrev=False,
                                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("checkpoint", help="a checkpoint directory written by stllm train-poi")
    p.add_argument("--train", default=None, help="training check-ins (default: what the checkpoint trained on)")
    p.add_argument("--test", default=None, help="later check-ins to evaluate (CSV; synthetic: its test part)")
    p.add_argument("--output_dir", default=None, help="where results go (default: <checkpoint>/eval-next-poi)")
    p.add_argument("--batch_size", type=int, default=64, help="prompts per forward pass")
    p.add_argument("--max_samples", type=int, default=None, help="evaluate this many evenly spaced samples")
    p.add_argument("--generate", type=int, default=0, metavar="N",
                   help="also generate text answers for the first N samples (GA-LLM parity; slow)")
    p.add_argument("--allow-overlap", dest="allow_overlap", action="store_true",
                   help="evaluate even when test check-ins are not later than training")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> int:
    out = args.output_dir or str(Path(args.checkpoint) / "eval-next-poi")
    result = evaluate_next_poi(args.checkpoint, out, train=args.train, test=args.test, batch_size=args.batch_size,
                               max_samples=args.max_samples, generate=args.generate,
                               allow_overlap=args.allow_overlap, progress=not args.no_progress)  # fmt: skip
    return print_result(result)


def main(argv: list[str] | None = None) -> int:
    return run_command("eval next-poi", lambda: run(build_parser().parse_args(argv)))
