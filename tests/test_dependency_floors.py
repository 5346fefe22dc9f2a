"""The transformers floor declared in setup.py is real: that exact release, installed beside the others, imports
stllm and passes the model tests (config, splice, heads, generate, save/load).

transformers moves fast (5.20 added ``SubConfigSpec``, which our config uses; 5.17 cannot import stllm), so the floor
is checked by installing it rather than trusted. The wheel comes from the package index; without network the test
skips with the reason (never a failure from a download)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ["tests/models/test_configuration.py", "tests/models/test_st_llama.py"]


def declared_floor(package: str) -> str:
    """``X`` of ``"package>=X"`` in setup.py's install_requires."""
    match = re.search(rf'"{re.escape(package)}>=([0-9][0-9.]*)"', (ROOT / "setup.py").read_text())
    assert match, f"setup.py declares no lower bound for {package}"
    return match.group(1)


def test_transformers_floor_is_newer_than_the_release_that_cannot_import_stllm():
    major, minor = (int(p) for p in declared_floor("transformers").split(".")[:2])
    assert (major, minor) >= (5, 20)


def test_stllm_model_tests_pass_on_the_declared_transformers_floor(tmp_path):
    floor = declared_floor("transformers")
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check"]
    fetch = subprocess.run([*pip, "--target", str(target), f"transformers=={floor}"], capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    if fetch.returncode != 0:
        pytest.skip(f"could not fetch transformers=={floor} from the package index: {fetch.stderr.strip()[-300:]}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    version = subprocess.run([sys.executable, "-c", "import transformers, stllm; print(transformers.__version__)"],
                             capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)  # fmt: skip
    assert version.returncode == 0, version.stderr[-2000:]
    assert Version(version.stdout.strip()) == Version(floor)  # the floor itself was imported, not the installed one
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SUBSET],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
