"""stllm eval end to end on a tiny synthetic city: table, files, and the zero-shot checks."""

import json
import shutil

import numpy as np
import pytest

from stllm.data import SplitError
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
                     "encoder_only"]  # fmt: skip
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
