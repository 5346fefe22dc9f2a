"""stllm demo runs every stage for real (quick mode: tiny sizes) and prints the table."""

import json

from stllm.cli import main


def test_quick_demo_runs_all_stages_and_prints_the_table(tmp_path, capsys):
    assert main(["demo", "--quick", "--output_dir", str(tmp_path), "--no_progress"]) == 0
    out = capsys.readouterr().out
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert step in out
    rows = [line.split()[0] for line in out.splitlines() if line and line.split()[0] in
            ("stllm", "last_value", "historical_average", "encoder_only")]  # fmt: skip
    assert rows == ["stllm", "last_value", "historical_average", "encoder_only"]
    split = json.loads((tmp_path / "encoder" / "split.json").read_text())
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["regions"]
    assert not set(split["regions"]) & set(evaluated)
    assert (tmp_path / "eval" / "forecasts.png").is_file() and (tmp_path / "model" / "model.safetensors").is_file()
