"""The generate-based mode end to end: a tiny model trained a few steps on one user's repeated day (home until 8:00,
work until 18:00, home) learns to write it (the LM loss falls) and, on days it never trained on, generates it: the
cells of the asked slots are the true ones."""

import json

import numpy as np
import pytest

from stllm.cli import main
from stllm.data.trajectories import Trajectories, split_by_day, write_humob_csv
from stllm.eval.mobility import evaluate_mobility, generate_cells, load_mobility_checkpoint

HOME, WORK = (10, 10), (20, 25)


@pytest.fixture(scope="module")
def routine(tmp_path_factory):
    """One user, 75 days, every half-hour observed but a few (the asked slots differ by day)."""
    d, t = np.divmod(np.arange(75 * 48), 48)
    keep = (np.arange(len(d)) * 7919) % 13 != 0
    d, t = d[keep], t[keep]
    at_work = (t >= 16) & (t < 36)
    x, y = np.where(at_work, WORK[0], HOME[0]), np.where(at_work, WORK[1], HOME[1])
    traj = Trajectories(np.zeros(len(d), np.int64), d, t, x, y, base=1, source="routine")
    root = tmp_path_factory.mktemp("gen")
    data = write_humob_csv(traj, root / "routine.csv")
    out = root / "ckpt"
    argv = ["train-mobility", "--data", str(data), "--base", "1", "--output_dir", str(out), "--max_steps", "30",
            "--n_windows", "1", "--per_device_train_batch_size", "4", "--learning_rate", "5e-3", "--candidates", "4",
            "--text_answers", "2", "--logging_steps", "5", "--save_strategy", "no", "--disable_tqdm", "true",
            "--report_to", "none", "--seed", "0"]
    assert main(argv) == 0
    return traj, data, out


def test_lm_loss_falls(routine):
    _, _, out = routine
    logs = [h["lm_loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "lm_loss" in h]
    assert len(logs) >= 3 and logs[-1] < 0.5 * logs[0]


def test_generates_the_routine_on_unseen_days(routine):
    traj, _, out = routine
    model, tokenizer, record = load_mobility_checkpoint(out)
    split = split_by_day(traj, (0, 59), (60, 74))
    pred = generate_cells(model.eval(), tokenizer, split.history, split.target, record["candidates"],
                          record["text_answers"], record["max_runs"], batch_size=4)
    assert pred.keys_equal(split.target)  # every asked slot, once
    assert np.mean((pred.x == split.target.x) & (pred.y == split.target.y)) > 0.95


def test_eval_generate_row_and_refusal(routine, tmp_path):
    _, data, out = routine
    result = evaluate_mobility(out, tmp_path, data=str(data), base=1, decode="argmax", generate=True)
    assert {"stllm", "stllm (generate)"} <= set(result.metrics) and "stllm (generate) in" in result.table
    assert result.metrics["stllm (generate)"]["geobleu"] > 0.9
    record = json.loads((out / "mobility_data.json").read_text())
    model, tokenizer, _ = load_mobility_checkpoint(out)
    split = split_by_day(routine[0], (0, 59), (60, 74))
    with pytest.raises(ValueError, match="--text_answers"):
        generate_cells(model, tokenizer, split.history, split.target, record["candidates"], 0)
