"""stllm demo runs every stage for real (quick mode: tiny sizes) and prints the table."""

import json

from stllm.cli import main


def test_quick_demo_runs_all_stages_and_prints_the_table(tmp_path, capsys):
    assert main(["demo", "--quick", "--output_dir", str(tmp_path), "--no_progress"]) == 0
    out = capsys.readouterr().out
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert step in out
    rows = [line.split("  ")[0] for line in out.splitlines() if line and line.split()[0] in
            ("stllm", "last_value", "historical_average", "ridge", "encoder_only")]  # fmt: skip
    assert rows == ["stllm", "stllm without LLM", "last_value", "historical_average", "ridge", "encoder_only"]
    no_llm = json.loads((tmp_path / "model-no-llm" / "config.json").read_text())
    assert no_llm["text_config"]["num_hidden_layers"] == 0  # the ablation row really has no LLM
    split = json.loads((tmp_path / "encoder" / "split.json").read_text())
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["regions"]
    assert not set(split["regions"]) & set(evaluated)
    assert (tmp_path / "eval" / "forecasts.png").is_file() and (tmp_path / "model" / "model.safetensors").is_file()


def test_quick_demo_with_geo_tokens_uses_the_pretrained_geo_encoder(tmp_path, capsys):
    import torch

    from stllm import STLlamaForCausalLM, load_encoder

    assert main(["demo", "--quick", "--with_geo", "--output_dir", str(tmp_path), "--no_progress"]) == 0
    geo = load_encoder(tmp_path / "geo_encoder")
    model = STLlamaForCausalLM.from_pretrained(tmp_path / "model")
    for k, v in geo.state_dict().items():  # loaded, then kept frozen through stage 2
        assert torch.equal(model.geo_encoder.state_dict()[k], v)
    assert json.loads((tmp_path / "model" / "data_args.json").read_text())["with_geo"] is True


def test_quick_next_poi_demo_trains_then_ranks_against_baselines(tmp_path, capsys):
    assert main(["demo", "--data", "next-poi", "--quick", "--output_dir", str(tmp_path), "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "[1/2]" in out and "[2/2]" in out
    rows = [line.split("  ")[0] for line in out.splitlines() if line.startswith(("stllm", "most", "user", "nearest",
                                                                                   "markov"))]
    assert rows[:5] == ["stllm", "most popular", "user most frequent", "nearest to last", "markov"]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["all users"]
    n = len((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines())
    assert 0 < metrics["stllm"]["n"] == n <= 200 and 0.0 <= metrics["stllm"]["acc@5"] <= 1.0
    record = json.loads((tmp_path / "model" / "poi_data.json").read_text())
    assert record["checkins"] == "synthetic" and record["synthetic_users"] == 12
