"""The floors declared in setup.py are real: those exact releases of transformers, peft and accelerate, installed
beside the others, import stllm and pass the model and LoRA tests (config, splice, heads, generate, save/load, LoRA
wrap, LoRA checkpoints, a LoRA training run through the Trainer).

transformers moves fast (5.20 added ``SubConfigSpec``, which our config uses; 5.17 cannot import stllm; peft 0.17
imports ``HybridCache``, which transformers 5 removed), so the floors are checked by installing them rather than
trusted. The wheels come from the package index; without network the test skips with the reason (never a failure
from a download). The torch floor (2.6, below which transformers 5.20 disables torch) is a 766 MB wheel plus CUDA
libraries, too heavy for CI; it was checked by hand (bench/README.md, "dependency floors")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ["tests/models/test_configuration.py", "tests/models/test_st_llama.py", "tests/models/test_lora.py",
          "tests/models/test_checkpoint.py",
          # the Trainer with LoRA: accelerate's floor shows here (1.2 lacks unwrap_model(keep_torch_compile))
          "tests/train/test_train_mem.py::test_lora_training_moves_only_trainable_weights_and_reloads"]
FLOORED = ("transformers", "peft", "accelerate")


def declared_floor(package: str) -> str:
    """``X`` of ``"package>=X"`` in setup.py's install_requires."""
    match = re.search(rf'"{re.escape(package)}>=([0-9][0-9.]*)"', (ROOT / "setup.py").read_text())
    assert match, f"setup.py declares no lower bound for {package}"
    return match.group(1)


def test_floors_are_at_least_the_releases_known_not_to_work():
    known_broken = {"transformers": "5.19", "peft": "0.17.1", "torch": "2.5.1", "accelerate": "1.2.1"}
    for package, broken in known_broken.items():
        assert Version(declared_floor(package)) > Version(broken), package


def test_stllm_model_tests_pass_on_the_declared_floors(tmp_path):
    floors = {package: declared_floor(package) for package in FLOORED}
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check"]
    fetch = subprocess.run([*pip, "--target", str(target), *(f"{p}=={v}" for p, v in floors.items())],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    if fetch.returncode != 0:
        pytest.skip(f"could not fetch {floors} from the package index: {fetch.stderr.strip()[-300:]}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    show = "import stllm, " + ", ".join(FLOORED) + "; print(" + ", ".join(f"{p}.__version__" for p in FLOORED) + ")"
    version = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, env=env, cwd=ROOT,
                             timeout=300)  # fmt: skip
    assert version.returncode == 0, version.stderr[-2000:]
    # the floors themselves were imported, not the installed releases
    assert [Version(v) for v in version.stdout.split()] == [Version(floors[p]) for p in FLOORED]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SUBSET],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
