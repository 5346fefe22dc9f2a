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


def test_pretrain_encoder_geo_dispatches_to_the_geo_trainer(tmp_path, capsys):
    from stllm import load_encoder

    out = tmp_path / "geo"
    assert main(["pretrain-encoder", "--encoder", "geo", "--synthetic", "--n_synthetic", "300", "--steps", "5",
                 "--batch", "32", "--n_buckets", "64", "--output_dir", str(out)]) == 0  # fmt: skip
    assert type(load_encoder(out)).__name__ == "GeoEncoder"
