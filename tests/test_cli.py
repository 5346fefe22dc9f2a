import re
from pathlib import Path

from stllm.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_env_reports_backend_and_runs_model_check(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^attention\s+(sdpa|flash_attention_2)$", out, re.M)
    assert re.search(r"model check\s+ok: .*reg_pred \(2, 12, 2\)", out)


def test_ci_runs_exactly_readme_test_command():
    """README's second fenced command is the command .ci/run executes."""
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    ci_lines = [ln for ln in (ROOT / ".ci/run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert blocks[1].strip() in ci_lines
