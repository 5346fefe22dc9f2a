"""torchrun with 2 CPU processes: plain DDP (gloo), DeepSpeed ZeRO-2 and ZeRO-3 (CPU accelerator)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stllm import STLlamaForCausalLM
from stllm.train.export import export_checkpoint

PROBE = Path(__file__).with_name("dist_probe.py")
ROOT = Path(__file__).resolve().parents[2]


def torchrun(tmp_path, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(PROBE),
           str(tmp_path / "rep"), "--output_dir", str(tmp_path / "out"), "--synthetic_regions", "8",
           "--synthetic_days", "6", "--context_days", "1", "--context_weeks", "0", "--val_fraction", "0",
           "--max_steps", "3", "--per_device_train_batch_size", "4", "--disable_tqdm", "true",
           *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers: a hang leaves no orphans
        raise
    assert proc.returncode == 0, err[-3000:]
    return [json.loads((tmp_path / "rep" / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("stage", [None, "zero2", "zero3"])
def test_two_processes_train_disjoint_samples_and_rank0_saves(tmp_path, stage):
    extra = ["--save_strategy", "steps", "--save_steps", "3"]
    if stage:
        extra += ["--deepspeed", str(ROOT / "ds_configs" / f"{stage}.json")]
    r0, r1 = torchrun(tmp_path, *extra)
    assert r0["world_size"] == r1["world_size"] == 2
    assert (r0["should_save"], r1["should_save"]) == (True, False)
    assert r0["steps"] == r1["steps"] == 3
    assert len(r0["seen"]) >= 12 and len(r1["seen"]) >= 12  # 3 steps x 4 samples each
    assert not set(r0["seen"]) & set(r1["seen"])  # each rank trains on its own shard of the data
    if stage:
        assert r0["deepspeed"] and r0["engine"] == "DeepSpeedEngine" and r0["zero_stage"] == int(stage[-1])
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and (out / "split.json").is_file()
    if stage:  # the ZeRO shards of the checkpoint export to the same weights the run saved
        ckpt = out / "checkpoint-3"
        assert any(ckpt.glob("global_step*"))
        exported = STLlamaForCausalLM.from_pretrained(export_checkpoint(ckpt, tmp_path / "exported")).state_dict()
        final = STLlamaForCausalLM.from_pretrained(out).state_dict()
        assert exported.keys() == final.keys()
        for k in final:
            torch.testing.assert_close(exported[k], final[k], msg=k)
        assert (tmp_path / "exported" / "scaler.json").read_text() == (out / "scaler.json").read_text()
