"""stllm train-mobility + stllm eval mobility end to end on a tiny synthetic city: the table holds stllm and every
baseline, predictions are a valid HuMob submission for exactly the target rows, training days are refused."""

import json
import shutil

import numpy as np
import pytest

from stllm.cli import main
from stllm.data.mobility import MOBILITY_DATA_FILE, synthetic_mobility_city
from stllm.data.trajectories import load_humob_csv, write_humob_csv
from stllm.eval.mobility import evaluate_mobility
from stllm.eval.mobility_baselines import BASELINES


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
    truth = synthetic_mobility_city(1000, 4, city="T", first_uid=1040)
    target = truth.subset(truth.d >= 60)
    assert pred.keys_equal(target)  # exactly the target rows, in the submission format
    metrics = json.loads((tmp_path / "metrics.json").read_text())["methods"]
    assert set(metrics) == {"stllm", *BASELINES}
    assert 0 < metrics["stllm"]["geobleu"] <= 1 and metrics["stllm"]["dtw"] >= 0


def test_refuses_targets_inside_training_windows(checkpoint, tmp_path):
    train_city = synthetic_mobility_city(0, 4)  # the training users themselves, their days 45-59 were training targets
    path = write_humob_csv(train_city, tmp_path / "seen.csv")
    with pytest.raises(ValueError, match="inside the training windows"):
        evaluate_mobility(checkpoint, tmp_path / "out", data=str(path), base=1, history_days=(0, 44),
                          target_days=(45, 59))
    # the same users on later days are a temporal hold-out: allowed
    result = evaluate_mobility(checkpoint, tmp_path / "out", data=str(path), base=1)
    assert np.isfinite(result.metrics["stllm"]["geobleu"])


def test_checkpoint_of_other_features_is_refused_by_name(checkpoint, tmp_path):
    """A head trained on another feature list (an older version) would read shifted columns: refused, file named."""
    old = tmp_path / "old"
    shutil.copytree(checkpoint, old)
    record = json.loads((old / MOBILITY_DATA_FILE).read_text())
    record["features"] = record["features"][:-3]
    (old / MOBILITY_DATA_FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match=f"{MOBILITY_DATA_FILE}: field 'features'.*retrain"):
        evaluate_mobility(old, tmp_path / "eval")


def test_csv_needs_base(checkpoint, tmp_path, capsys):
    path = write_humob_csv(synthetic_mobility_city(5, 2), tmp_path / "other.csv")
    assert main(["eval", "mobility", str(checkpoint), "--data", str(path), "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "eval mobility" in err and "--base" in err and "other.csv" in err


def test_choose_cells_rules_on_hand_computed_cases():
    import torch

    from stllm.eval.mobility import choose_cells

    grid = 100
    # slot 0: A (0, 0) p=.4 alone; B (50, 0) and C (51, 0) p=.3 each, 1 cell apart. argmax bets on A; GEO-BLEU's
    # expected proximity of B is .3 + .3 exp(-.5) = .48 > A's .4 (A is 50 cells from both)
    # slot 1: D (0, 0) and E (0, 40) p=.45 each, F (0, 20) between them p=.1: expected distance D 18 + 2 = 20,
    # F 0.9 * 20 = 18 -> distance picks F; argmax picks D (first maximum)
    probs = torch.tensor([[0.4, 0.3, 0.3], [0.45, 0.45, 0.1]])
    cells = torch.tensor([[0 * grid + 0, 50 * grid + 0, 51 * grid + 0], [0, 40, 20]])
    scores = probs.log()
    assert choose_cells(scores, cells, grid, "argmax").tolist() == [0, 0]
    assert choose_cells(scores, cells, grid, "geo").tolist()[0] in (50 * grid, 51 * grid)
    assert choose_cells(scores, cells, grid, "distance").tolist()[1] == 20
    # a padded candidate (score -inf, cell -1) is never chosen, even where it would be "central"
    padded = torch.tensor([[0.0, 0.0, float("-inf")]])
    assert choose_cells(padded, torch.tensor([[0, 40, -1]]), grid, "distance").item() in (0, 40)
    with pytest.raises(ValueError, match="decode"):
        choose_cells(scores, cells, grid, "mode")


def test_quota_decoding_gives_each_day_the_expected_mix_of_places_where_they_fit_best():
    import torch

    from stllm.eval.mobility import choose_cells, fill_day_quotas

    # day 0: place 0 is the likelier at every row, but the head expects place 1 for 1.1 of the 4 rows: it gets
    # round-by-largest-remainder 1 row, the one where it is worth most relative to the rest (greedy, best first)
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.6, 0.4], [0.5, 0.5], [0.5, 0.5]])
    day = torch.tensor([7, 7, 7, 7, 3, 3])  # day ids need only be equal within a day and contiguous
    pick = fill_day_quotas(probs.log(), probs, day)
    assert pick[:4].tolist() in ([0, 0, 0, 1], [0, 0, 1, 0]) and sorted(pick[4:].tolist()) == [0, 1]
    assert probs.log().argmax(1)[:4].tolist() == [0, 0, 0, 0]  # what per-slot argmax does instead
    # through choose_cells: same-place candidates far apart (no proximity between them), padded candidates unused
    cells = torch.tensor([[0, 5000, -1]]).repeat(6, 1)
    scores = torch.cat([probs.log(), torch.full((6, 1), float("-inf"))], 1)
    chosen = choose_cells(scores, cells, grid=100, decode="quota", day=day, temperature=1.0)
    assert (chosen[:4] == 5000).sum() == 1 and sorted(chosen[4:].tolist()) == [0, 5000] and (chosen >= 0).all()
    with pytest.raises(ValueError, match="needs the day"):
        choose_cells(scores, cells, grid=100, decode="quota")


def test_anchored_decoding_sends_far_places_to_the_place_the_day_ends_at():
    import torch

    from stllm.eval.mobility import anchor_far_places, choose_cells

    # candidates 0 (0, 0), 1 (0, 5), 2 (0, 30). Day 4 = rows 0-2: its last row's best is 0, so row 0's place 2
    # (30 cells away) becomes 0 and row 1's place 1 (5 cells) stays. Day 9 = rows 3-4, anchor 2: row 3's 0 -> 2
    xy = torch.tensor([[0.0, 0.0], [0.0, 5.0], [0.0, 30.0]])
    dist = torch.cdist(xy, xy).expand(5, 3, 3)
    pick, best, day = torch.tensor([2, 1, 0, 0, 2]), torch.tensor([1, 1, 0, 1, 2]), torch.tensor([4, 4, 4, 9, 9])
    assert anchor_far_places(pick, best, dist, day, 10.0).tolist() == [0, 1, 0, 2, 2]
    assert anchor_far_places(pick, best, dist, day, 30.0).tolist() == [2, 1, 0, 0, 2]  # 30 is not beyond 30
    # through choose_cells: an unbounded radius is quota; radius 0 fills each day with its last row's geo choice
    gen = torch.Generator().manual_seed(0)
    scores, day = torch.randn(7, 4, generator=gen), torch.tensor([0, 0, 0, 0, 1, 1, 1])
    cells = torch.tensor([[0, 3, 40 * 100, 41 * 100]]).repeat(7, 1)
    quota = choose_cells(scores, cells, 100, "quota", day)
    assert torch.equal(choose_cells(scores, cells, 100, "anchored", day, radius=1e9), quota)
    ends = choose_cells(scores / 0.7, cells, 100, "geo")[[3, 6]]  # anchored's value uses quota's temperature
    anchored = choose_cells(scores, cells, 100, "anchored", day, radius=0.0)
    assert anchored.tolist() == [ends[0].item()] * 4 + [ends[1].item()] * 3
    with pytest.raises(ValueError, match="needs the day"):
        choose_cells(scores, cells, 100, "anchored")


def test_heldout_users_stay_out_of_training_and_can_be_evaluated_on_training_days(tmp_path):
    """--heldout_users: the last users never train, so their days 45-59 may choose settings; trained users may not."""
    out = tmp_path / "ckpt"
    assert main(["train-mobility", "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4",
                 "--synthetic_users", "5", "--heldout_users", "2", "--n_windows", "1", "--candidates", "16",
                 "--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none"]) == 0
    record = json.loads((out / MOBILITY_DATA_FILE).read_text())
    assert record["users"] == [0, 1, 2] and record["heldout_users"] == [3, 4]
    data = write_humob_csv(synthetic_mobility_city(0, 5), tmp_path / "same_city.csv")  # the training city itself
    days = dict(history_days=(0, 44), target_days=(45, 59))
    result = evaluate_mobility(out, tmp_path / "eval", data=str(data), base=1, users=np.array([3, 4]), **days)
    assert 0.0 < result.metrics["stllm"]["geobleu"] <= 1.0
    assert sorted(set(load_humob_csv(tmp_path / "eval" / "predictions.csv", base=1).uid.tolist())) == [3, 4]
    with pytest.raises(ValueError, match="inside the training windows"):
        evaluate_mobility(out, tmp_path / "eval2", data=str(data), base=1, users=np.array([0, 3]), **days)
    assert main(["train-mobility", "--output_dir", str(tmp_path / "x"), "--heldout_users", "-1"]) == 2
    assert main(["train-mobility", "--output_dir", str(tmp_path / "y"), "--synthetic_users", "3", "--heldout_users",
                 "3", "--report_to", "none"]) == 2


def _switches(pred) -> int:
    same_day = (pred.uid[1:] == pred.uid[:-1]) & (pred.d[1:] == pred.d[:-1])
    return int((pred.cell_index()[1:] != pred.cell_index()[:-1])[same_day].sum())


def test_viterbi_decoding_follows_the_users_transitions(checkpoint, tmp_path, capsys):
    """Weight 0: each slot on its own (= argmax); a heavy weight on the history's transitions (mostly stays) gives
    days with fewer moves; a bad transition setting is a user error naming the field."""
    runs = {}
    for name, flags in (("argmax", ["--decode", "argmax", "--transition_weight", "0"]),
                        ("free", ["--decode", "viterbi", "--transition_weight", "0"]),
                        ("heavy", ["--decode", "viterbi", "--transition_weight", "50"])):
        assert main(["eval", "mobility", str(checkpoint), "--output_dir", str(tmp_path / name), *flags]) == 0
        runs[name] = load_humob_csv(tmp_path / name / "predictions.csv", base=1)
    assert np.array_equal(runs["free"].cell_index(), runs["argmax"].cell_index())
    assert _switches(runs["heavy"]) < _switches(runs["argmax"])
    capsys.readouterr()
    assert main(["eval", "mobility", str(checkpoint), "--output_dir", str(tmp_path / "bad"),
                 "--transition_smoothing", "0"]) == 2
    assert "smoothing" in capsys.readouterr().err
