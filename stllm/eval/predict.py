"""Batched prediction: one teacher-forced causal pass over prompt + answer template per batch.

The answer template is fixed, so the heads read the ``<st_pre>`` hidden states without generating
a token (DESIGN rule 4). The pass skips what the heads cannot see (:class:`SlotPass`: the batch
cut after its last ``<st_pre>``, the prefix its rows share run once into the backbone's cache, one
logit row), with the values of a plain ``model(**batch)``; samples are taken in prompt order so
that the rows of a batch share long prefixes.
Rows stream to a JSONL file keyed by (region, window) as they are produced: a killed run resumes
where it stopped, without duplicates, and refuses a file written by another run (the header holds
the caller's ``run`` dict; :func:`stllm.eval.zero_shot.evaluate` puts in it everything that decides
the rows: weights, tokenizer, data, scaler and options; a mismatch names the parts that differ). A
line cut by a kill is skipped, the rows after it are kept. ``overwrite`` starts fresh. The final file
is written atomically (temp file + rename).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from stllm.data import STDataCollator, STInstructionDataset, STScaler
from stllm.eval.slot_pass import SlotPass
from stllm.models.st_llama import SPLICE_INPUTS

logger = logging.getLogger("stllm")


def sample_key(dataset: STInstructionDataset, i: int) -> str:
    """``region_id|first target timestamp``: stable across runs, readable in the file."""
    w, r = divmod(i, dataset.n_regions)
    city = dataset.city
    t = int(dataset.starts[w]) + dataset.input_len
    return f"{city.regions[int(dataset.region_idx[r])].id}|{city.timestamps[t]}"


def _batches(indices: list[int], batch_size: int) -> Iterator[list[int]]:
    for k in range(0, len(indices), batch_size):
        yield indices[k : k + batch_size]


def _prefix_sorted(
    dataset, collator: STDataCollator, todo: list[int], batch_size: int, chunk_batches: int = 32
) -> Iterator[tuple[list[int], list[dict]]]:
    """``(indices, samples)`` batches, sorted by prompt text within chunks of ``chunk_batches`` batches:
    the rows of a batch then share a longer prefix (run once by :class:`SlotPass`) and have similar
    lengths (less padding). Predictions do not depend on the order; rows are keyed, not positional."""
    step = batch_size * chunk_batches
    for k in range(0, len(todo), step):
        samples = {i: dataset[i] for i in todo[k : k + step]}
        # the rendered prompt is a fixed frame around (system, user): sorting those sorts the prompts' starts
        order = sorted(samples, key=lambda i: (samples[i]["conversation"].system, samples[i]["conversation"].user))
        for idx in _batches(order, batch_size):
            yield idx, [samples[i] for i in idx]


def model_inputs(model, batch: dict, keys: tuple[str, ...] = ()) -> dict:
    """``keys`` plus the city inputs the splice consumes, on the model's device (no labels or targets:
    prediction never computes a loss)."""
    device = next(model.parameters()).device
    return {k: batch[k].to(device) for k in (*keys, *SPLICE_INPUTS) if k in batch}


@torch.inference_mode()
def predict_batch(
    model, batch: dict, task: str, scaler: STScaler | None, slot_pass: SlotPass | None = None
) -> np.ndarray:
    """``(B, horizon, C)`` predictions in original units (flows) or probabilities (events).

    The heads come from :class:`~stllm.eval.slot_pass.SlotPass` (same values as ``model(**batch)``,
    less work); pass one to reuse its shared-prefix memo across batches.
    """
    reg_pred, cls_logits = (slot_pass or SlotPass(model))(batch)
    if task == "event":
        return torch.sigmoid(cls_logits.float()).cpu().numpy()
    pred = reg_pred.float().cpu().numpy()
    return pred if scaler is None else np.asarray(scaler.inverse(pred), dtype=np.float32)


@torch.inference_mode()
def predict_generated(
    model, batch: dict, task: str, scaler: STScaler | None, extra_tokens: int = 8
) -> np.ndarray | None:
    """UrbanGPT-style, one sample: generate the answer from the prompt, find the generated ``<st_pre>``
    run, and read the heads there with one forward over prompt + generation.

    Returns ``(horizon, C)`` or None when the generation holds no complete prediction run (a parse
    failure: counted by the caller, never replaced by a fallback value).
    """
    cfg, k = model.config, model.config.st_slots
    device = next(model.parameters()).device
    ids, labels = batch["input_ids"][:1], batch["labels"][:1]
    answer_at = int((labels[0] != -100).nonzero()[0])
    n_answer = int((labels[0] != -100).sum())
    st = model_inputs(model, batch)
    prompt = ids[:, :answer_at].to(device)
    seq = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **st, do_sample=False,
                         max_new_tokens=n_answer + extra_tokens, pad_token_id=cfg.text_config.pad_token_id)  # fmt: skip
    gen = seq[0, answer_at:]
    is_pre = (gen == cfg.st_pre_token_id).long()
    run = torch.nn.functional.conv1d(is_pre[None, None].float(), torch.ones(1, 1, k)).flatten()
    starts = (run == k).nonzero().flatten()
    if starts.numel() == 0:
        return None
    end = answer_at + int(starts[0]) + k  # keep the first complete run, drop anything after it
    out = model(input_ids=seq[:, :end], **st, logits_to_keep=1)
    if task == "event":
        return torch.sigmoid(out.cls_logits[-1].float()).cpu().numpy()
    pred = out.reg_pred[-1].float().cpu().numpy()
    return pred if scaler is None else np.asarray(scaler.inverse(pred), dtype=np.float32)


def run_diff(old, new, prefix: str = "") -> list[str]:
    """Names of the parts of two run dicts that differ (nested dicts by ``part.sub``)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [prefix or "run"] if old != new else []
    out = []
    for k in sorted(set(old) | set(new), key=str):
        name = f"{prefix}.{k}" if prefix else str(k)
        if k not in old or k not in new:
            out.append(name)
        elif isinstance(old[k], dict) and isinstance(new[k], dict):
            out += run_diff(old[k], new[k], name)
        elif old[k] != new[k]:
            out.append(name)
    return out


class PredictionFile:
    """Append-only JSONL of predictions with a header naming the run; resumable, atomically finalised."""

    def __init__(self, path: str | os.PathLike, run: dict):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.run = run

    def clear(self) -> None:
        """Forget earlier rows (``--overwrite``): the next run starts fresh."""
        self.partial.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)

    @staticmethod
    def _header(first: str) -> dict | None:
        try:
            header = json.loads(first)
            return header if isinstance(header, dict) else None
        except json.JSONDecodeError:
            return None

    def done(self) -> dict[str, list]:
        """Rows already written by this run (from the partial file); refuses another run's file.

        A broken line (cut by a kill, or a later row glued to it) is skipped; every other row is kept."""
        for candidate in (self.partial, self.path):
            if not candidate.is_file():
                continue
            with candidate.open(encoding="utf-8", errors="replace") as f:
                first = f.readline()
                header = self._header(first)
                if header is None and candidate == self.partial and not f.read(1):
                    candidate.unlink()  # killed before the header was complete: nothing to resume
                    continue
                if header is None or header.get("run") != self.run:
                    parts = run_diff(header.get("run"), self.run) if header is not None else ["header (unreadable)"]
                    raise ValueError(
                        f"{candidate} holds predictions of another run (differs in: {', '.join(parts)}); pass "
                        "--overwrite (overwrite=True) to start fresh, or choose another output directory"
                    )
                return self._rows(f, candidate)
        return {}

    @staticmethod
    def _rows(lines, candidate: Path) -> dict[str, list]:
        rows, broken = {}, 0
        for line in lines:
            try:
                row = json.loads(line)
                rows[row["key"]] = row["pred"]
            except (json.JSONDecodeError, KeyError, TypeError):  # cut by a kill: recomputed
                broken += line.strip() != ""
        if broken:
            logger.warning("%s: %d broken line(s) skipped (a killed run); their rows are recomputed", candidate, broken)
        return rows

    def open_for_append(self):
        fresh = not self.partial.is_file()
        if fresh and self.path.is_file():  # resume from a finished file: start a partial from it
            self.partial.write_bytes(self.path.read_bytes())
            fresh = False
        f = self.partial.open("a", encoding="utf-8")
        if fresh:
            f.write(json.dumps({"run": self.run}) + "\n")
        elif not _ends_with_newline(self.partial):
            f.write("\n")  # a line cut by a kill: the next row starts on its own line
        return f

    def finalise(self, keys: list[str], rows: dict[str, list]) -> None:
        """Write all rows in dataset order to a temp file and rename it over the final path."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write(json.dumps({"run": self.run}) + "\n")
            for key in keys:
                f.write(json.dumps({"key": key, "pred": rows[key]}) + "\n")
        os.replace(tmp, self.path)
        self.partial.unlink(missing_ok=True)


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def predict(
    model,
    tokenizer,
    dataset: STInstructionDataset,
    scaler: STScaler | None = None,
    batch_size: int = 32,
    output: str | os.PathLike | None = None,
    run: dict | None = None,
    progress: bool = True,
    max_batches: int | None = None,
    generate: bool = False,
    overwrite: bool = False,
    slot_pass: SlotPass | None = None,
) -> np.ndarray:
    """Predictions ``(W, R, horizon, C)`` for every (window, region) of ``dataset``.

    ``scaler`` inverts flow predictions to original units. With ``output`` rows stream to
    ``output.partial`` and a rerun with the same ``run`` dict skips finished rows; ``max_batches``
    stops early (what a killed run looks like, for tests). ``generate`` switches to UrbanGPT's
    per-sample generation (slow; for parity checks): samples whose generation holds no prediction
    slots are NaN rows in the result (never a fallback value) and their number is logged. Batches
    are formed in prompt-text order (within chunks of 32 batches); the result and the final file
    are in dataset order. ``overwrite`` discards rows of an earlier run in ``output`` instead of
    resuming them (or refusing them when they belong to another run). ``slot_pass`` (a fresh
    :class:`SlotPass` by default) holds the shared-prefix memo; its ``tokens`` count what the run
    computed, logged at the end.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size (--batch_size) must be a positive integer, got {batch_size!r}")
    model.eval()
    collator = STDataCollator(tokenizer, st_slots=model.config.st_slots, padding_side="right")
    keys = [sample_key(dataset, i) for i in range(len(dataset))]
    file = PredictionFile(output, run or {}) if output is not None else None
    if file is not None and overwrite:
        file.clear()
    rows = file.done() if file is not None else {}
    todo = [i for i, k in enumerate(keys) if k not in rows]
    sink = file.open_for_append() if (file is not None and todo) else None
    task = dataset.city.task
    slot_pass = SlotPass(model) if slot_pass is None else slot_pass
    try:
        bar = tqdm(total=len(todo), desc="predict", unit="sample", disable=not progress)
        batches = (((idx, None) for idx in _batches(todo, batch_size)) if generate
                   else _prefix_sorted(dataset, collator, todo, batch_size))  # fmt: skip
        for n, (idx, samples) in enumerate(batches):
            if max_batches is not None and n >= max_batches:
                return np.empty(0)
            if generate:
                pred = [predict_generated(model, collator([dataset[i]]), task, scaler) for i in idx]
            else:
                pred = predict_batch(model, collator(samples), task, scaler, slot_pass)
            for i, p in zip(idx, pred):
                rows[keys[i]] = None if p is None else np.round(p, 6).tolist()
                if sink is not None:
                    sink.write(json.dumps({"key": keys[i], "pred": rows[keys[i]]}) + "\n")
            if sink is not None:
                sink.flush()
            bar.update(len(idx))
        bar.close()
        if not generate and slot_pass.tokens.samples:
            logger.info("predict: %s", slot_pass.tokens.per_sample())
    finally:
        if sink is not None:
            sink.close()
    if file is not None:
        file.finalise(keys, rows)
    shape = next((np.shape(r) for r in rows.values() if r is not None), (dataset.output_len, dataset.city.n_channels))
    failed = [k for k in keys if rows[k] is None]
    if failed:
        logger.warning("generate: %d of %d samples hold no prediction slots (failed to parse), left as NaN",
                       len(failed), len(keys))  # fmt: skip
    out = np.stack([np.full(shape, np.nan, np.float32) if rows[k] is None else np.asarray(rows[k], np.float32)
                    for k in keys])  # fmt: skip
    return out.reshape(dataset.n_windows, dataset.n_regions, *out.shape[1:])
