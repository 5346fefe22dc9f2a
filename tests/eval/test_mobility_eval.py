"""stllm train-mobility + stllm eval mobility end to end on a tiny synthetic city: the table holds stllm and every
baseline, predictions are a valid HuMob submission for exactly the target rows, training days are refused."""

import json

import numpy as np
import pytest

from stllm.cli import main
from stllm.data.trajectories import load_humob_csv, write_humob_csv
from stllm.eval.mobility import evaluate_mobility
from stllm.eval.mobility_baselines import BASELINES
from stllm.train.train_mobility import MOBILITY_DATA_FILE, synthetic_city


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("mob") / "ckpt"
    argv = ["train-mobility", "--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size", "4",
            "--synthetic_users", "4", "--n_windows", "2", "--candidates", "16", "--save_strategy", "no",
            "--disable_tqdm", "true", "--report_to", "none"]
    assert main(argv) == 0
    return out


def test_checkpoint_records_training_days_and_users(checkpoint):
    record = json.loads((checkpoint / MOBILITY_DATA_FILE).read_text())
    assert record["days"] == [0, 59] and record["users"] == [0, 1, 2, 3] and record["cities"] == ["S"]
    assert all(w["target"][1] <= 59 for w in record["windows"])


def test_eval_synthetic_table_and_submission(checkpoint, tmp_path, capsys):
    assert main(["eval", "mobility", str(checkpoint), "--output_dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    for name in ("stllm", *BASELINES):
        assert name in text
    pred = load_humob_csv(tmp_path / "predictions.csv", base=1)
    truth = synthetic_city(1000, 4, city="T", first_uid=1040)
    target = truth.subset(truth.d >= 60)
    assert pred.keys_equal(target)  # exactly the target rows, in the submission format
    metrics = json.loads((tmp_path / "metrics.json").read_text())["methods"]
    assert set(metrics) == {"stllm", *BASELINES}
    assert 0 < metrics["stllm"]["geobleu"] <= 1 and metrics["stllm"]["dtw"] >= 0


def test_refuses_targets_inside_training_windows(checkpoint, tmp_path):
    train_city = synthetic_city(0, 4)  # the training users themselves, their days 45-59 were training targets
    path = write_humob_csv(train_city, tmp_path / "seen.csv")
    with pytest.raises(ValueError, match="inside the training windows"):
        evaluate_mobility(checkpoint, tmp_path / "out", data=str(path), base=1, history_days=(0, 44),
                          target_days=(45, 59))
    # the same users on later days are a temporal hold-out: allowed
    result = evaluate_mobility(checkpoint, tmp_path / "out", data=str(path), base=1)
    assert np.isfinite(result.metrics["stllm"]["geobleu"])


def test_csv_needs_base(checkpoint, tmp_path, capsys):
    path = write_humob_csv(synthetic_city(5, 2), tmp_path / "other.csv")
    assert main(["eval", "mobility", str(checkpoint), "--data", str(path), "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "eval mobility" in err and "--base" in err and "other.csv" in err
