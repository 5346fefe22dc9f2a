"""stllm demo runs every stage for real (quick mode: tiny sizes) and prints the table."""

import json

import pytest

from stllm.cli import main


def test_quick_demo_runs_all_stages_and_prints_the_table(tmp_path, capsys):
    argv = ["demo", "--quick", "--output_dir", str(tmp_path), "--no_progress", "--val_region_fraction", "0.3"]
    assert main(argv) == 0
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
    # both stages chose their weights on training regions that neither fitted, and those are never evaluated
    held = json.loads((tmp_path / "encoder" / "metrics.json").read_text())["settings"]["val_regions"]
    assert len(held) == round(0.3 * len(split["regions"])) and set(held) < set(split["regions"])
    assert json.loads((tmp_path / "model" / "data_args.json").read_text())["val_region_fraction"] == 0.3
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


def test_quick_mobility_demo_trains_then_predicts_an_unseen_city_against_baselines(tmp_path, capsys):
    from stllm.data.trajectories import load_humob_csv

    assert main(["demo", "--data", "mobility", "--quick", "--output_dir", str(tmp_path), "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "[1/2]" in out and "[2/2]" in out and "an unseen synthetic city" in out
    rows = [line[:44].strip() for line in out.splitlines() if line.startswith(("stllm ", "most frequent", "last"))]
    assert rows[:4] == ["stllm", "most frequent cell (weekday/weekend, slot)", "most frequent cell",
                        "last observed cell"]
    metrics = json.loads((tmp_path / "synthetic" / "eval" / "metrics.json").read_text())["methods"]
    assert 0.0 < metrics["stllm"]["geobleu"] <= 1.0 and metrics["stllm"]["dtw"] >= 0.0
    pred = load_humob_csv(tmp_path / "synthetic" / "eval" / "predictions.csv", base=1)
    record = json.loads((tmp_path / "synthetic" / "model" / "mobility_data.json").read_text())
    assert len(pred.users) == 4 and not set(pred.users.tolist()) & set(record["users"])  # other users, unseen
    assert pred.d.min() == 60 and pred.d.max() <= 74


# -- flags and presets, without training ---------------------------------------------------------------
@pytest.mark.parametrize("flags,message", [
    (["--seeds", ","], "--seeds must name at least one seed"),
    (["--seeds", "0,x"], "--seeds must be a comma list of integers"),
    (["--seeds", "1,1"], "--seeds repeats a seed"),
    (["--steps", "0"], "--steps must be a positive number"),
    (["--data", "next-poi", "--seeds", "0,1"], "--seeds applies to the flow/event demos only"),
    (["--data", "crime"], "--quick runs on the synthetic data only"),
    (["--data", "humob"], "--quick runs on the synthetic data only"),
    (["--data", "mobility", "--seeds", "0,1"], "--seeds applies to the flow/event demos only"),
    (["--data_root", "{tmp}/absent"], "--data_root {tmp}/absent: no such directory"),
    (["--extra_views", "day,month"], "--extra_views 'day,month': unknown view(s) ['month']"),
    (["--data", "next-poi", "--device", "cpu"], "--device applies to the flow/event demos only"),
    (["--data", "mobility", "--prompt_style", "compact"], "--prompt_style applies to the flow/event demos only"),
    (["--device", "tpu-ish"], "--device 'tpu-ish': not a device"),
])  # fmt: skip
def test_demo_refuses_bad_flags_with_a_sentence_before_any_work(flags, message, tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--quick", "--no_progress", "--output_dir", str(out), *(f.format(tmp=tmp_path) for f in flags)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"stllm demo: error: {message.format(tmp=tmp_path)}")
    assert len(err.splitlines()) == 1 and not out.exists()  # refused before anything was written


def test_unknown_demo_data_is_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--data", "paris"])
    assert e.value.code == 2 and "invalid choice: 'paris'" in capsys.readouterr().err


REAL = [("manhattan", "manhattan-taxi", "flow"), ("manhattan-bike", "manhattan-bike", "flow"),
        ("crime", "nyc-crime-manhattan", "event")]


@pytest.mark.parametrize("preset,city_name,task", REAL)
def test_real_presets_resolve_to_their_data_task_and_a_split_before_evaluation(preset, city_name, task, tmp_path):
    """A real-data demo takes minutes (stage 1 alone on crime: ~1 min on 2 cores), so this checks what
    each preset resolves to without training: the file and task it loads, the steps and seed it
    passes, and that training ends before the evaluated window starts."""
    from stllm.data.loaders import data_root
    from stllm.demo import resolve_preset
    from stllm.train.arguments import parse_args
    from stllm.train.train_mem import load_city, train_time_slice

    if not (data_root() / "nyc_manhattan_flows").is_dir():
        pytest.skip(f"no real data under {data_root()}")
    argv, stage1, eval_kwargs = resolve_preset(tmp_path, preset, steps=7, seed=3)
    _, data_args, train_args = parse_args(["--output_dir", str(tmp_path / "model"), *argv])
    city = load_city(data_args)
    assert (city.name, city.task) == (city_name, task) and city.source.startswith(str(data_root()))
    assert (train_args.max_steps, train_args.seed) == (7, 3)
    train = train_time_slice(city, data_args)
    assert 0 <= train.start < train.stop <= city.n_steps
    if "eval_start" in eval_kwargs:  # the evaluated targets start at or after the end of training
        assert train.stop <= city.time_index(eval_kwargs["eval_start"])
    assert stage1.get("epochs", 1) >= 1 and "max_steps" not in stage1  # full stage 1, not the smoke run
