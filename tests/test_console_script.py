"""The installed ``stllm`` console script as a process: exit codes and stderr as a user sees them."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _stllm(*args: str) -> subprocess.CompletedProcess:
    """Run the ``stllm`` entry point (setup.py: ``stllm=stllm.cli:main``), or the same function where the
    script is not on PATH, importing this checkout, with STLLM_DEBUG unset."""
    exe = shutil.which("stllm")
    cmd = [exe] if exe else [sys.executable, "-c", "import sys; from stllm.cli import main; sys.exit(main())"]
    env = {k: v for k, v in os.environ.items() if k != "STLLM_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


def test_entry_point_is_the_cli_main():
    assert 'console_scripts": ["stllm=stllm.cli:main"]' in (ROOT / "setup.py").read_text()


def test_env_prints_versions_and_exits_0():
    run = _stllm("env", "--no-check")
    assert run.returncode == 0, run.stderr
    assert re.search(rf"^torch\s+{re.escape(torch.__version__)}$", run.stdout, re.M)
    assert "model check" not in run.stdout  # --no-check skipped the forward


def test_user_error_exits_2_with_one_line_and_debug_shows_the_traceback(tmp_path):
    missing = str(tmp_path / "no-checkpoint")
    run = _stllm("eval", missing)
    assert run.returncode == 2
    assert run.stderr.startswith("stllm eval: error: ") and missing in run.stderr
    assert "Traceback" not in run.stderr and "error" not in run.stdout
    debug = _stllm("eval", missing, "--debug")
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr and missing in debug.stderr
