"""Distil the population intent model into an on-device student, export it to ONNX, measure its footprint.

The student is the same class (:class:`~stllm.models.intent.STLlamaForIntent`) with the teacher's tokenizer and a
much smaller Llama (:class:`StudentSpec`); it learns from the teacher's softened logits on the population users'
training samples (Hinton et al.: ``alpha T^2 KL(teacher_T || student_T) + (1 - alpha) CE``). The ONNX graph is the
prediction path only (:class:`~stllm.models.intent.IntentLogits`: ids, mask, features -> logits, dynamic batch and
length) and is checked against PyTorch with onnxruntime. :func:`footprint` reports parameters, bytes on disk,
single-thread latency of one prediction and the peak memory of a fresh process that loads and runs the student.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stllm.data.intent import IntentCollator, dataset_targets
from stllm.models.configuration import STLlamaConfig
from stllm.models.intent import (
    INTENT_DATA_FILE,
    IntentLogits,
    STLlamaForIntent,
    intent_config_kwargs,
    prior_logit_offsets,
    run_intent,
)
from stllm.safe_io import staged_dir

ONNX_FILE = "student.onnx"


@dataclass
class StudentSpec:
    """Backbone size of the on-device student."""

    hidden_size: int = 32
    layers: int = 1
    heads: int = 2
    kv_heads: int = 1
    intermediate_size: int = 64
    head_dim: int = 16


@dataclass
class DistillConfig:
    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    temperature: float = 2.0
    alpha: float = 0.7  # weight of the teacher's soft targets
    logit_adjust: float = 0.0  # tau of the logit-adjusted hard-target loss (prior: the distillation targets); 0 = plain
    seed: int = 0


def build_student(teacher: STLlamaForIntent, spec: StudentSpec) -> STLlamaForIntent:
    """A fresh student sharing the teacher's vocabulary and slot-token ids."""
    text = copy.deepcopy(teacher.config.text_config)
    text.hidden_size, text.num_hidden_layers = spec.hidden_size, spec.layers
    text.num_attention_heads, text.num_key_value_heads = spec.heads, spec.kv_heads
    text.intermediate_size = spec.intermediate_size
    if hasattr(text, "head_dim"):
        text.head_dim = spec.hidden_size // spec.heads
    tc = teacher.config
    ids = {n: getattr(tc, n) for n in (*STLlamaConfig.SLOT_TOKEN_FIELDS, "intent_pre_token_id")}
    config = STLlamaConfig(text_config=text, **ids,
                           **intent_config_kwargs(tc.intent_classes, tc.intent_features, spec.head_dim))
    config._attn_implementation = tc._attn_implementation
    return STLlamaForIntent(config)


def distill(teacher: STLlamaForIntent, tokenizer, dataset, spec: StudentSpec, cfg: DistillConfig,
            progress: bool = False) -> STLlamaForIntent:
    """Train a student on ``dataset`` against the teacher's logits (computed once, in one pass per batch). With
    ``cfg.logit_adjust`` the hard-target cross-entropy is logit-adjusted by the intent shares of ``dataset``'s
    targets (training targets only; stored as the student's ``intent_loss_offsets``); the soft term matches the
    plain logits, which for a logit-adjusted teacher are already prior-free."""
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    collator = IntentCollator(tokenizer)
    soft = run_intent(teacher, collator, dataset, batch_size=64)
    student = build_student(teacher, spec).train()
    if cfg.logit_adjust:
        n_classes = teacher.config.intent_classes
        student.config.intent_loss_offsets = prior_logit_offsets(dataset_targets(dataset), n_classes, cfg.logit_adjust)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    rng = np.random.default_rng(cfg.seed)
    t = cfg.temperature
    for _ in tqdm(range(cfg.steps), disable=not progress, desc="distil"):
        idx = rng.choice(len(dataset), size=min(cfg.batch_size, len(dataset)), replace=False)
        batch = collator([dataset[int(i)] for i in idx])
        out = student(batch["input_ids"], batch["attention_mask"], batch["intent_features"], batch["intent_targets"])
        kl = F.kl_div(F.log_softmax(out.intent_logits / t, -1), F.log_softmax(soft[idx] / t, -1),
                      reduction="batchmean", log_target=True)
        loss = cfg.alpha * t * t * kl + (1 - cfg.alpha) * out.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return student.eval()


def save_student(student: STLlamaForIntent, tokenizer, path: str | os.PathLike, record: dict) -> Path:
    """Checkpoint (safetensors + tokenizer + the teacher's ``intent_data.json`` + how it was distilled), atomically."""
    path = Path(path)
    with staged_dir(path) as staging:
        student.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / INTENT_DATA_FILE).write_text(json.dumps(record, indent=1))
    return path


def export_onnx(student: STLlamaForIntent, batch: dict, path: str | os.PathLike) -> Path:
    """The prediction path as ONNX (dynamic batch and length); ``batch`` is an example collated batch."""
    from torch.export import Dim

    b, length = Dim("batch"), Dim("length")
    args = (batch["input_ids"], batch["attention_mask"], batch["intent_features"])
    # the exporter narrates each stage on stdout, logs that torchvision ops are skipped and warns about axis names
    # and pytree internals: all noise for this graph
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*")
            warnings.filterwarnings("ignore", category=FutureWarning)
            torch.onnx.export(IntentLogits(student).eval(), args, str(path), dynamo=True, verbose=False,
                              input_names=["input_ids", "attention_mask", "intent_features"], output_names=["logits"],
                              dynamic_shapes={"input_ids": {0: b, 1: length}, "attention_mask": {0: b, 1: length},
                                              "intent_features": {0: b}})
    finally:
        onnx_log.setLevel(level)
    return Path(path)


def onnx_session(path: str | os.PathLike, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_max_abs_diff(student: STLlamaForIntent, path: str | os.PathLike, batches: list[dict]) -> float:
    """Largest |onnxruntime - PyTorch| logit over ``batches`` (other batch sizes and lengths than the export's)."""
    sess, worst = onnx_session(path), 0.0
    for batch in batches:
        feed = {k: batch[k].numpy() for k in ("input_ids", "attention_mask", "intent_features")}
        got = sess.run(["logits"], feed)[0]
        with torch.inference_mode():
            want = IntentLogits(student.eval())(*(batch[k] for k in feed)).numpy()
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dir_bytes(path: str | os.PathLike, suffixes: tuple[str, ...] = (".safetensors",)) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and f.suffix in suffixes)


_PROBE = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from stllm.models.intent import STLlamaForIntent, IntentLogits


def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))


try:  # reset the high-water mark so that importing torch does not count as the model's peak (Linux)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = status("VmRSS")
model = IntentLogits(STLlamaForIntent.from_pretrained(sys.argv[1]).eval())
batch = torch.load(sys.argv[2])
args = (batch["input_ids"], batch["attention_mask"], batch["intent_features"])
times = []
with torch.inference_mode():
    for i in range(int(sys.argv[3]) + 5):
        t = time.perf_counter(); model(*args); times.append(time.perf_counter() - t)
peak = status("VmHWM")
print(json.dumps({"latency_ms": 1000 * sorted(times[5:])[len(times[5:]) // 2], "peak_rss_mb": peak,
                  "model_peak_mb": peak - base}))
"""


def footprint(checkpoint: str | os.PathLike, one: dict, repeats: int = 50) -> dict:
    """Parameters, bytes of the safetensors, and -- in a fresh single-threaded process -- the median latency of
    one prediction (``one``: a collated batch of one sample) and the peak RSS while loading the model and
    predicting (``peak_rss_mb``: the whole process, torch included; ``model_peak_mb``: above the process after
    its imports; Linux /proc)."""
    import tempfile

    model = STLlamaForIntent.from_pretrained(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        example = Path(tmp) / "one.pt"
        torch.save({k: one[k] for k in ("input_ids", "attention_mask", "intent_features")}, example)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        res = subprocess.run([sys.executable, "-c", _PROBE, str(checkpoint), str(example), str(repeats)],
                             capture_output=True, text=True, env=env, check=True)
    probe = json.loads(res.stdout.strip().splitlines()[-1])
    return {"parameters": n_parameters(model), "disk_bytes": dir_bytes(checkpoint), **probe}


def onnx_latency_ms(path: str | os.PathLike, one: dict, repeats: int = 50) -> float:
    """Median single-thread onnxruntime latency of one prediction."""
    sess = onnx_session(path)
    feed = {k: one[k].numpy() for k in ("input_ids", "attention_mask", "intent_features")}
    times = []
    for _ in range(repeats + 5):
        t = time.perf_counter()
        sess.run(["logits"], feed)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times[5:]))


def distill_record(record: dict, spec: StudentSpec, cfg: DistillConfig, teacher_dir: str | os.PathLike) -> dict:
    """The teacher's data record plus how the student was made (the split is the teacher's: same held-out users)."""
    return {**record, "distilled_from": str(teacher_dir), "student": asdict(spec), "distill": asdict(cfg)}
