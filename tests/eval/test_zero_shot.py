"""stllm eval end to end on a tiny synthetic city: table, files, and the zero-shot checks."""

import json
import shutil

import numpy as np
import pytest

from stllm import STLlamaForCausalLM
from stllm.data import SplitError, synthetic_city
from stllm.eval.zero_shot import evaluate, main
from stllm.train.arguments import parse_args
from stllm.train.train_mem import train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    train(*parse_args(["--output_dir", str(out), "--synthetic_regions", "8", "--synthetic_days", "21",
                       "--context_days", "2", "--context_weeks", "1",
                       "--max_steps", "10", "--per_device_train_batch_size", "8", "--save_strategy", "no",
                       "--disable_tqdm", "true"]))  # fmt: skip
    return out


def test_cross_region_table_files_and_honesty(checkpoint, tmp_path, capsys):
    assert main([str(checkpoint), "--output_dir", str(tmp_path), "--no_progress", "--no_supervised"]) == 0
    printed = capsys.readouterr().out
    header, *rows = printed.split("\n\n")[0].splitlines()
    assert header.split() == ["method", "MAE/inflow", "RMSE/inflow", "MAE/outflow", "RMSE/outflow"]
    names = [r.split()[0] for r in rows]
    assert names == ["stllm", "last_value", "seasonal_naive_day", "seasonal_naive_week", "historical_average",
                     "ridge", "encoder_only"]  # fmt: skip
    values = np.array([[float(v) for v in r.split()[1:]] for r in rows])
    assert np.isfinite(values).all() and (values > 0).all()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    trained = json.loads((checkpoint / "split.json").read_text())
    assert not set(metrics["regions"]) & set(trained["regions"])  # held-out regions only
    assert metrics["time_range"][0] >= trained["time_range"][1]  # later than anything trained on
    for f in ("predictions.jsonl", "forecasts.png", "error_map.png", "table.txt"):
        assert (tmp_path / f).stat().st_size > 0, f
    assert abs(metrics["metrics"]["stllm"]["MAE/inflow"] - values[0, 0]) < 1e-3 * max(1, values[0, 0])


def test_overlap_is_refused_and_named(checkpoint, tmp_path):
    with pytest.raises(SplitError, match="overlaps training time"):
        evaluate(checkpoint, tmp_path, eval_start="2024-01-02", supervised=False, progress=False, plots=False)


def test_missing_checkpoint_part_is_named(checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "scaler.json").unlink()
    assert main([str(broken), "--output_dir", str(tmp_path / "o"), "--no_progress"]) == 2
    with pytest.raises(FileNotFoundError, match="scaler.json"):
        evaluate(broken, tmp_path / "o")


def test_channel_mismatch_is_refused(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="4 channels"):
        evaluate(checkpoint, tmp_path, data_overrides={"synthetic_task": "event", "synthetic_days": 60},
                 supervised=False, progress=False)  # fmt: skip


def test_evaluation_rebuilds_the_training_data_from_the_checkpoint(checkpoint):
    from stllm.eval.zero_shot import _data_args

    args = _data_args(checkpoint, {"data": None, "data_root": None})
    assert (args.synthetic_regions, args.synthetic_days) == (8, 21)  # not the defaults (24, 28)
    assert _data_args(checkpoint, {"synthetic_days": 12}).synthetic_days == 12


def test_cross_city_rescales_on_the_new_citys_history(checkpoint, tmp_path):
    res = evaluate(checkpoint, tmp_path, mode="cross-city", data_overrides={"synthetic_seed": 5},
                   eval_start="2024-01-08", eval_days=1, supervised=False, progress=False, plots=False)  # fmt: skip
    meta = json.loads((tmp_path / "metrics.json").read_text())
    assert meta["city"] == "synthetic-5" and meta["rescaled"] is True and len(meta["regions"]) == 8
    assert np.isfinite(res.metrics["stllm"]["MAE"])
    with pytest.raises(ValueError, match="needs a city other than the training city"):
        evaluate(checkpoint, tmp_path / "x", mode="cross-city", supervised=False, progress=False)


@pytest.fixture(scope="module")
def views_checkpoint(tmp_path_factory):
    """The older prompt layout: separate day/week history placeholders and a <GEO> slot."""
    out = tmp_path_factory.mktemp("views")
    train(*parse_args(["--output_dir", str(out), "--synthetic_regions", "8", "--synthetic_days", "21",
                       "--context_days", "0", "--context_weeks", "0", "--extra_views", "day,week",
                       "--with_geo", "true", "--max_steps", "2", "--per_device_train_batch_size", "8",
                       "--save_strategy", "no", "--disable_tqdm", "true"]))  # fmt: skip
    return out


@pytest.mark.parametrize("fixture", ["checkpoint", "views_checkpoint"])
def test_evaluated_prompts_equal_the_training_template(fixture, request, tmp_path):
    """Evaluation rebuilds exactly the training prompts (views, geo slots, context) from the checkpoint."""
    from stllm.eval.zero_shot import _data_args, eval_dataset
    from stllm.train.train_mem import prepare_data

    ckpt = request.getfixturevalue(fixture)
    d_args = _data_args(ckpt, {"val_fraction": 0})  # the whole training time: no validation part cut off
    data = prepare_data(d_args)
    enc = STLlamaForCausalLM.from_pretrained(ckpt).config.st_encoder
    ev = eval_dataset(data.city, data.scaler, d_args, enc, list(data.regions.train), data.train_time, stride=1)
    for i in (0, len(ev) // 2, len(ev) - 1):
        a, b = data.train[i], ev[i]
        assert a["conversation"] == b["conversation"] and a["id"] == b["id"]
        assert [v.shape for _, v in a["history"]] == [v.shape for _, v in b["history"]]
        np.testing.assert_array_equal(a["geo"], b["geo"])
    if fixture == "views_checkpoint":
        assert ev[0]["conversation"].user.count("<ST_HIS>") == 3 and "<GEO>" in ev[0]["conversation"].user
        res = evaluate(ckpt, tmp_path, supervised=False, progress=False, plots=False, ridge=False)
        assert np.isfinite(res.metrics["stllm"]["MAE/inflow"])


def test_cross_city_from_npz_files_with_another_scale_region_count_and_step(checkpoint, tmp_path):
    """A city nobody prepared, as a plain npz (values, time): 5 regions at ten times the volume gives ten
    times the forecasts (scale-free inputs and the new city's own scaler), and a daily city evaluates."""
    from stllm.cli import main as cli

    city = synthetic_city(seed=9, n_regions=5, days=28, freq="1h")
    files = {}
    for name, factor in (("base", 1.0), ("busy", 10.0)):
        files[name] = tmp_path / f"{name}.npz"
        np.savez(files[name], values=city.values * factor, time=city.timestamps.astype("datetime64[m]").astype(str))
    preds = {}
    for name, path in files.items():
        out = tmp_path / f"eval-{name}"
        assert cli(["eval", str(checkpoint), "--mode", "cross-city", "--data", str(path), "--output_dir", str(out),
                    "--eval_start", "2024-01-22", "--no_supervised", "--no_progress"]) == 0  # fmt: skip
        rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()[1:]]
        preds[name] = np.array([r["pred"] for r in rows])
        meta = json.loads((out / "metrics.json").read_text())
        assert len(meta["regions"]) == 5 and meta["rescaled"] is True
        assert {"stllm", "historical_average", "ridge"} <= set(meta["metrics"])
    np.testing.assert_allclose(preds["busy"], 10.0 * preds["base"], rtol=2e-3, atol=1e-3)
    daily = synthetic_city(seed=9, n_regions=4, days=90, freq="1h")
    per_day = daily.values.reshape(90, 24, 4, 2).sum(axis=1)
    days = (daily.timestamps[::24]).astype("datetime64[m]").astype(str)
    np.savez(tmp_path / "daily.npz", values=per_day, time=days)
    res = evaluate(checkpoint, tmp_path / "eval-daily", mode="cross-city", data=str(tmp_path / "daily.npz"),
                   supervised=False, progress=False, plots=False)  # fmt: skip
    assert np.isfinite(res.metrics["stllm"]["MAE"]) and np.isfinite(res.metrics["ridge"]["MAE"])


def test_seed_aggregate_is_mean_and_population_std():
    from stllm.eval.zero_shot import aggregate_seeds, format_seed_table

    runs = [{"stllm": {"MAE": 1.0}, "ha": {"MAE": 4.0}}, {"stllm": {"MAE": 3.0}, "ha": {"MAE": 4.0}}]
    agg = aggregate_seeds(runs)
    assert agg == {"stllm": {"MAE": (2.0, 1.0)}, "ha": {"MAE": (4.0, 0.0)}}
    assert "2.0000 +- 1.0000" in format_seed_table(agg, ["MAE"], [0, 1])
    with pytest.raises(ValueError, match="'ha' is missing from run"):
        aggregate_seeds([runs[0], {"stllm": {"MAE": 1.0}}])
