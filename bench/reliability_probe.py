"""Bad inputs and faults against the ``stllm`` CLI, as a user would make them; one verdict per case.

Each case runs the installed console script as a process and is judged from its exit code and output:

- ``clear``: refused with exit 2, an ``error:`` line naming what the case says it must name, no traceback;
- ``ok``: a valid command (``--help``, a correct run) exits 0;
- ``SILENT``: a command that must be refused exited 0 (a silent wrong result);
- ``TRACEBACK``: a raw traceback for a user error (or a crash of a valid command);
- ``UNNAMED``: refused, but the message does not name the file, flag or field;
- ``CODE RAN``: a planted pickle payload ran.

``python bench/reliability_probe.py`` builds a tiny checkpoint and the broken inputs under a temp
folder (about a minute), runs every case (a few seconds each) and prints the table and the counts.
Exit 1 if any case is SILENT, TRACEBACK, UNNAMED or CODE RAN.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--synthetic_regions", "8", "--synthetic_days", "21", "--context_days", "1", "--context_weeks", "0",
        "--per_device_train_batch_size", "8", "--disable_tqdm", "true", "--report_to", "none"]  # fmt: skip


@dataclass
class Case:
    name: str
    args: list[str]
    expect: str = "refuse"  # or "ok"
    names: tuple[str, ...] = ()  # what the message must name (any of them, case-insensitive)
    marker: Path | None = None  # must not exist afterwards (code execution)


class Payload:
    """Unpickling this writes ``path``: what a planted checkpoint file does."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


def stllm_cmd() -> list[str]:
    exe = shutil.which("stllm")
    return [exe] if exe else [sys.executable, "-m", "stllm.cli"]


def sh(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([*stllm_cmd(), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def build_fixtures(work: Path) -> dict[str, Path]:
    """A tiny trained checkpoint and broken copies of it and of data files."""
    from stllm.train.arguments import DataArguments
    from stllm.train.train_mem import load_city

    f = {"work": work}
    ckpt = work / "run"
    proc = sh(["train", "--output_dir", str(ckpt), "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "4",
               *TINY])
    if proc.returncode != 0:
        raise SystemExit(f"could not train the probe checkpoint:\n{proc.stderr[-3000:]}")
    f["ckpt"] = ckpt
    for name, breaks in (
        ("bad_split", lambda d: (d / "split.json").write_text('{"city": "synthetic", "regions": [')),
        ("bad_scaler", lambda d: (d / "scaler.json").write_text("not json")),
        ("no_tokenizer", lambda d: (d / "tokenizer.json").unlink()),
        ("cut_weights", lambda d: _truncate(d / "model.safetensors")),
        ("planted", lambda d: _plant(d, work / "PWNED")),
    ):
        copy = work / name
        shutil.copytree(ckpt, copy)
        breaks(copy)
        f[name] = copy
    city = load_city(DataArguments(**json.loads((ckpt / "data_args.json").read_text())))  # the training data
    np.savez(work / "good.npz", values=city.values, time=city.timestamps.astype("datetime64[m]").astype(str))
    f["renamed"] = work / "another_city.npz"  # the training data under another name
    other = load_city(DataArguments(synthetic_regions=8, synthetic_days=21, synthetic_seed=5))
    np.savez(work / "other.npz", values=other.values, time=other.timestamps.astype("datetime64[m]").astype(str))
    shutil.copy(work / "good.npz", f["renamed"])
    (work / "empty.npz").write_bytes(b"")
    (work / "text.npz").write_text("time,region,value\n2020-01-01,1,3\n")
    raw = (work / "good.npz").read_bytes()
    (work / "cut.npz").write_bytes(raw[: len(raw) // 2])
    np.savez(work / "novalues.npz", counts=city.values)
    neg = city.values.copy()
    neg[0, 0, 0] = -5
    np.savez(work / "negative.npz", values=neg, time=city.timestamps.astype("datetime64[m]").astype(str))
    enc = work / "st_encoder"
    enc.mkdir()
    (enc / "encoder_config.json").write_text(json.dumps({"kind": "st", "config": {}}))
    (enc / "model.safetensors").write_bytes(b"")
    f["st_encoder"] = enc
    f["marker"] = work / "PWNED"
    return f


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _plant(ckpt: Path, marker: Path) -> None:
    shards = ckpt / "global_step4"
    shards.mkdir()
    (ckpt / "latest").write_text("global_step4")
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        (shards / name).write_bytes(pickle.dumps({"payload": Payload(str(marker))}))


def cases(f: dict[str, Path]) -> list[Case]:
    ck, w = str(f["ckpt"]), f["work"]
    out = lambda name: str(w / "out" / name)  # noqa: E731
    ev = lambda *a, o="e": ["eval", ck, "--output_dir", out(o), "--no_progress", *a]  # noqa: E731
    tr = lambda *a, o="t": ["train", "--output_dir", out(o), *TINY, *a]  # noqa: E731
    pre = lambda *a, o="p": ["pretrain-encoder", "--output_dir", out(o), "--no_progress", *a]  # noqa: E731
    mem = ["estimate-memory"]
    c = [
        # help of every command
        *[Case(f"help {cmd}", [*cmd.split(), "--help"], "ok") for cmd in (
            "env", "train", "train-poi", "eval", "eval next-poi", "pretrain-encoder", "pretrain-encoder --encoder geo",
            "export", "estimate-memory", "demo")],  # fmt: skip
        Case("no command", [], names=("command",)),
        Case("unknown command", ["frobnicate"], names=("frobnicate", "choose")),
        # evaluation: flags
        Case("eval missing checkpoint", ["eval", str(w / "nope")], names=("nope",)),
        Case("eval checkpoint is a file", ["eval", str(w / "good.npz")], names=("good.npz",)),
        Case("eval --batch_size 0", ev("--batch_size", "0"), names=("batch_size",)),
        Case("eval --batch_size -1", ev("--batch_size", "-1"), names=("batch_size",)),
        Case("eval --stride 0", ev("--stride", "0"), names=("stride",)),
        Case("eval --stride -4", ev("--stride", "-4"), names=("stride",)),
        Case("eval --eval_days 0", ev("--eval_days", "0"), names=("eval_days",)),
        Case("eval --eval_days -2", ev("--eval_days", "-2"), names=("eval_days",)),
        Case("eval --eval_start past the data", ev("--eval_start", "2099-01-01"), names=("eval_start",)),
        Case("eval --eval_start before the data", ev("--eval_start", "1990-01-01"), names=("eval_start",)),
        Case("eval --eval_start not a date", ev("--eval_start", "yesterday"), names=("eval_start", "yesterday")),
        Case("eval --mode bogus", ev("--mode", "bogus"), names=("mode",)),
        Case("eval --rescale maybe", ev("--rescale", "maybe"), names=("rescale",)),
        Case("eval --baselines unknown", ev("--baselines", "oracle"), names=("oracle",)),
        # evaluation: data files
        Case("eval empty .npz", ev("--mode", "cross-city", "--data", str(w / "empty.npz")), names=("empty.npz",)),
        Case("eval text file as .npz", ev("--mode", "cross-city", "--data", str(w / "text.npz")), names=("text.npz",)),
        Case("eval truncated .npz", ev("--mode", "cross-city", "--data", str(w / "cut.npz")), names=("cut.npz",)),
        Case("eval .npz without values", ev("--mode", "cross-city", "--data", str(w / "novalues.npz")),
             names=("values",)),  # fmt: skip
        Case("eval .npz with a negative count", ev("--mode", "cross-city", "--data", str(w / "negative.npz")),
             names=("negative.npz", "values")),  # fmt: skip
        Case("eval missing .npz", ev("--mode", "cross-city", "--data", str(w / "nope.npz")), names=("nope.npz",)),
        Case("eval unknown preset", ev("--data", "atlantis"), names=("atlantis",)),
        Case("eval training data renamed as another city", ev("--mode", "cross-city", "--data", str(f["renamed"])),
             names=("train", "overlap", "zero-shot")),  # fmt: skip
        Case("eval cross-region on another city", ev("--data", str(w / "other.npz")), names=("city", "cross-region")),
        # evaluation: broken checkpoints
        Case("eval corrupt split.json", ["eval", str(f["bad_split"]), "--no_progress"], names=("split.json",)),
        Case("eval corrupt scaler.json", ["eval", str(f["bad_scaler"]), "--no_progress"], names=("scaler.json",)),
        Case("eval without tokenizer.json", ["eval", str(f["no_tokenizer"]), "--no_progress"],
             names=("tokenizer.json", "tokenizer")),  # fmt: skip
        Case("eval truncated weights", ["eval", str(f["cut_weights"]), "--no_progress"],
             names=("model.safetensors",)),  # fmt: skip
        Case("eval next-poi missing checkpoint", ["eval", "next-poi", str(w / "nope")], names=("nope",)),
        # training
        Case("train --max_steps 0", tr("--max_steps", "0"), names=("max_steps",)),
        Case("train --num_train_epochs 0", tr("--num_train_epochs", "0"), names=("num_train_epochs", "epochs")),
        Case("train --num_train_epochs -1", tr("--num_train_epochs", "-1"), names=("num_train_epochs", "epochs")),
        Case("train --test_regions -0.5", tr("--test_regions", "-0.5"), names=("test_regions",)),
        Case("train --test_regions 1.5", tr("--test_regions", "1.5"), names=("test_regions",)),
        Case("train --train_time 0", tr("--train_time", "0"), names=("train_time",)),
        Case("train --input_len 0", tr("--input_len", "0"), names=("input_len",)),
        Case("train --output_len -1", tr("--output_len", "-1"), names=("output_len",)),
        Case("train --stride 0", tr("--stride", "0"), names=("stride",)),
        Case("train --val_fraction 1", tr("--val_fraction", "1"), names=("val_fraction",)),
        Case("train --context_days -1", tr("--context_days", "-1"), names=("context_days",)),
        Case("train missing .npz", tr("--data", str(w / "nope.npz")), names=("nope.npz",)),
        Case("train empty .npz", tr("--data", str(w / "empty.npz")), names=("empty.npz",)),
        Case("train unknown flag", tr("--learning_rat", "1"), names=("learning_rat",)),
        Case("train into an existing run", ["train", "--output_dir", ck, *TINY, "--max_steps", "1"],
             names=("overwrite_output_dir",)),  # fmt: skip
        Case("train resume from missing checkpoint", tr("--resume_from_checkpoint", str(w / "nope")),
             names=("nope",)),  # fmt: skip
        Case("train resume without optimizer state", tr("--resume_from_checkpoint", ck, "--max_steps", "6"),
             names=("optimizer",)),  # fmt: skip
        Case("train resume with other data",
             tr("--resume_from_checkpoint", str(f["ckpt"] / "checkpoint-4"), "--max_steps", "6",
                "--synthetic_seed", "7"),
             names=("synthetic_seed", "data", "tokenizer")),
        Case("train --deepspeed config missing", tr("--deepspeed", str(w / "nope.json"), "--max_steps", "1"),
             names=("nope.json",)),  # fmt: skip
        Case("train-poi --max_steps 0", ["train-poi", "--output_dir", out("poi"), "--max_steps", "0"],
             names=("max_steps",)),  # fmt: skip
        # stage 1
        Case("pretrain-encoder --steps_per_epoch -3", pre("--steps_per_epoch", "-3"), names=("steps_per_epoch",)),
        Case("pretrain-encoder --epochs 0", pre("--epochs", "0"), names=("epochs",)),
        Case("pretrain-encoder --test_regions -0.5", pre("--test_regions", "-0.5"), names=("test_regions",)),
        Case("pretrain-encoder --test_regions 1", pre("--test_regions", "1"), names=("test_regions",)),
        Case("pretrain-encoder --lr -1", pre("--lr", "-1"), names=("lr",)),
        Case("pretrain-encoder --data atlantis", pre("--data", "atlantis"), names=("atlantis", "data")),
        Case("pretrain-encoder --encoder_config missing", pre("--encoder_config", str(w / "nope.json")),
             names=("nope.json",)),  # fmt: skip
        Case("pretrain-encoder into a run directory", ["pretrain-encoder", "--output_dir", ck, "--no_progress"],
             names=("training run", "overwrite")),  # fmt: skip
        Case("geo encoder over an ST encoder", ["pretrain-encoder", "--encoder", "geo", "--synthetic", "--steps", "2",
                                                "--output_dir", str(f["st_encoder"])], names=("st encoder", "encoder")),
        Case("geo encoder --steps 0", ["pretrain-encoder", "--encoder", "geo", "--synthetic", "--steps", "0",
                                       "--output_dir", out("g")], names=("steps",)),  # fmt: skip
        Case("geo encoder coords csv missing", ["pretrain-encoder", "--encoder", "geo", "--coords_csv",
                                                str(w / "nope.csv"), "--output_dir", out("g2")], names=("nope.csv",)),
        # export
        Case("export missing checkpoint", ["export", str(w / "nope"), out("x")], names=("nope",)),
        Case("export into the run directory of another run", ["export", ck, str(f["bad_split"])],
             names=("training run", "bad_split")),  # fmt: skip
        Case("export into itself", ["export", ck, ck], names=("run",)),
        Case("export of a planted pickle", ["export", str(f["planted"]), out("x2")],
             names=("trust_checkpoint", "pickle"), marker=f["marker"]),  # fmt: skip
        Case("export truncated weights", ["export", str(f["cut_weights"]), out("x3")], names=("model.safetensors",)),
        # memory estimate
        Case("estimate-memory --num_gpus 0", [*mem, "--num_gpus", "0"], names=("num_gpus",)),
        Case("estimate-memory --gpu_memory_gb -80", [*mem, "--gpu_memory_gb", "-80"], names=("gpu_memory_gb",)),
        Case("estimate-memory --seq_len -5", [*mem, "--seq_len", "-5"], names=("seq_len",)),
        Case("estimate-memory --micro_batch 0", [*mem, "--micro_batch", "0"], names=("micro_batch",)),
        Case("estimate-memory --lora_r -8", [*mem, "--lora_r", "-8"], names=("lora_r",)),
        Case("estimate-memory --config missing", [*mem, "--config", str(w / "nope.json")], names=("nope.json",)),
        Case("estimate-memory --model unknown", [*mem, "--model", "gpt-9"], names=("gpt-9", "model")),
        # demo
        Case("demo --data atlantis", ["demo", "--data", "atlantis"], names=("atlantis",)),
        Case("demo --seeds empty", ["demo", "--seeds", ""], names=("seeds",)),
        # valid commands
        Case("env", ["env", "--no-check"], "ok"),
        Case("estimate-memory", mem, "ok"),
    ]
    return c


def judge(case: Case, proc: subprocess.CompletedProcess) -> str:
    text = proc.stdout + proc.stderr
    if case.marker is not None and case.marker.exists():
        return "CODE RAN"
    if "Traceback (most recent call last)" in text:
        return "TRACEBACK"
    if case.expect == "ok":
        return "ok" if proc.returncode == 0 else "FAILED"
    if proc.returncode == 0:
        return "SILENT"
    lower = text.lower()
    if case.names and not any(n.lower() in lower for n in case.names):
        return "UNNAMED"
    return "clear"


def first_error_line(proc: subprocess.CompletedProcess) -> str:
    for line in (proc.stderr + proc.stdout).splitlines():
        if "error" in line.lower():
            return line.strip()[:150]
    lines = (proc.stderr + proc.stdout).strip().splitlines()
    return lines[-1][:150] if lines else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None, help="folder for the fixtures (default: a new temp folder)")
    p.add_argument("-k", default=None, help="run only cases whose name contains this")
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="stllm-probe-"))
    t0 = time.perf_counter()
    fixtures = build_fixtures(work)
    print(f"fixtures in {work} ({time.perf_counter() - t0:.0f} s)", flush=True)
    todo = [c for c in cases(fixtures) if args.k is None or args.k in c.name]
    counts: dict[str, int] = {}
    for i, case in enumerate(todo, 1):
        try:
            proc = sh(case.args, timeout=900)
        except subprocess.TimeoutExpired:
            verdict, line, rc = "HUNG", "", "-"
        else:
            verdict, line, rc = judge(case, proc), first_error_line(proc), proc.returncode
        counts[verdict] = counts.get(verdict, 0) + 1
        print(f"{i:3d} {verdict:<10} {case.name:<48} rc={rc:<3} {line}", flush=True)
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + f" ({len(todo)} cases)")
    return int(any(k not in ("clear", "ok") for k in counts))


if __name__ == "__main__":
    sys.exit(main())
