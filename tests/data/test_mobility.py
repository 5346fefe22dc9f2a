"""Mobility samples: windows stay inside the training days, features are shares that point at the slot baseline's
choice, the prompt holds one <MOB_PRE> per target row, and the collator lines rows up with the slot tokens."""

import numpy as np
import pytest

from stllm.data.mobility import (
    MOB_FEATURES,
    MobilityCollator,
    MobilityDataset,
    MobilityWindow,
    place_features,
    training_windows,
    user_places,
)
from stllm.data.prompts import ChatFormatter
from stllm.data.tokenizer import train_tokenizer
from stllm.data.trajectories import Trajectories, TrajectoryError, synthetic_trajectories
from stllm.eval.mobility_baselines import most_frequent_cell_by_slot
from stllm.tokens import MOB_PRE_TOKEN, add_mobility_token


@pytest.fixture(scope="module")
def traj():
    return synthetic_trajectories(seed=3, n_users=5, days=60)


def test_training_windows_inside_last_day():
    wins = training_windows(last_day=59, target_len=15, n_windows=4, stride=5, min_history=20)
    assert [w.target for w in wins] == [(45, 59), (40, 54), (35, 49), (30, 44)]
    assert all(w.history == (0, w.target[0] - 1) for w in wins)
    assert len(training_windows(59, 15, 10, 5, 35)) == 3  # stops when fewer than 35 history days remain
    with pytest.raises(ValueError, match="no training window"):
        training_windows(last_day=20, target_len=15, min_history=20)


def test_features_point_at_slot_baseline(traj):
    """The is_slot_baseline feature marks exactly the cell most_frequent_cell_by_slot predicts (when a candidate)."""
    user = traj.subset(traj.uid == 2)
    hist, targ = user.subset(user.d < 45), user.subset(user.d >= 45)
    places = user_places(hist, k=64)
    assert (places.cells == -1).any()  # every visited cell is a candidate, so the baseline's choice is one
    feats = place_features(places, targ.d, targ.t)
    assert feats.shape == (len(targ), 64, len(MOB_FEATURES))
    share = feats[..., MOB_FEATURES.index("share_kind_slot")]
    assert np.allclose(share.sum(1)[share.sum(1) > 0], 1.0)  # shares over candidates sum to one
    base = most_frequent_cell_by_slot(hist, targ).cell_index()
    chosen = places.cells[feats[..., MOB_FEATURES.index("is_slot_baseline")].argmax(1)]
    assert np.mean(chosen == base) == 1.0
    counts = np.bincount(np.searchsorted(np.unique(hist.cell_index()), hist.cell_index()))
    assert places.kind_slot.sum() <= len(hist) and places.kind_slot.sum() >= counts.max()


def test_padded_candidates_have_zero_features():
    hist = Trajectories(np.zeros(4, int), np.array([0, 0, 1, 1]), np.array([1, 2, 1, 2]), np.array([5, 5, 5, 6]),
                        np.array([5, 5, 5, 6]), base=1)
    places = user_places(hist, k=6)
    assert places.cells.tolist()[:2] == [(5 - 1) * 200 + 4, (6 - 1) * 200 + 5] and (places.cells[2:] == -1).all()
    feats = place_features(places, np.array([2]), np.array([1]))
    assert (feats[:, 2:] == 0).all() and feats[0, 0, 0] == pytest.approx(1.0)
    # overall shares 3/4 and 1/4 -> log(share + 0.001) / log(1000), by hand: -0.28635 / 6.90776 and -1.38230 / 6.90776
    log_overall = feats[0, :2, MOB_FEATURES.index("log_share_overall")]
    assert log_overall.tolist() == pytest.approx([-0.041453, -0.200108], abs=1e-5)


def test_dataset_and_collator(traj):
    ds = MobilityDataset(traj, [MobilityWindow((0, 44), (45, 59))], candidates=16)
    assert len(ds) == 5
    texts = ["\n".join(ChatFormatter(None)(ds[i]["conversation"])) for i in range(len(ds))]
    tok = train_tokenizer(texts, vocab_size=400)
    add_mobility_token(tok)
    col = MobilityCollator(tok)
    samples = [ds[i] for i in range(3)]
    batch = col(samples)
    q = sum(len(s["slot"]) for s in samples)
    assert batch["mob_features"].shape == (q, 16, len(MOB_FEATURES))
    assert int((batch["input_ids"] == tok.convert_tokens_to_ids(MOB_PRE_TOKEN)).sum()) == q
    hist, targ = ds.rows(1)
    assert hist.d.max() <= 44 and targ.d.min() >= 45 and (targ.uid == ds.items[1][1]).all()
    answer = batch["mob_targets"].numpy()
    cells = np.concatenate([np.broadcast_to(s["cells"], s["features"].shape[:2]) for s in samples])
    truth = np.concatenate([ds.rows(i)[1].cell_index() for i in range(3)])
    hit = answer >= 0
    assert hit.mean() > 0.8 and (cells[hit, answer[hit]] == truth[hit]).all()
    assert "labels" in batch and "mob_cells" not in batch
    assert "mob_cells" in MobilityCollator(tok, answer="prefix")(samples)


def test_user_without_history_named(traj):
    late = traj.subset((traj.uid != 4) | (traj.d >= 45))
    with pytest.raises(TrajectoryError, match="user 4 has target rows"):
        MobilityDataset(late, [MobilityWindow((0, 44), (45, 59))])


def test_collator_needs_mobility_token(traj):
    tok = train_tokenizer(["a b c"], vocab_size=300)
    with pytest.raises(ValueError, match="add_mobility_token"):
        MobilityCollator(tok)


def test_collator_with_text_answers(traj):
    """Head and generate-mode samples in one batch: head rows only for the head samples, LM labels for both; a batch
    of text samples alone carries no head inputs."""
    ds = MobilityDataset(traj, [MobilityWindow((0, 44), (45, 59))], candidates=16, text_answers=8)
    texts = ["\n".join(ChatFormatter(None)(ds[i]["conversation"])) for i in range(len(ds))]
    tok = train_tokenizer(texts, vocab_size=400)
    add_mobility_token(tok)
    head, text = ds[0], ds[len(ds.items)]
    batch = MobilityCollator(tok)([head, text])
    assert batch["mob_features"].shape[0] == len(head["slot"])
    assert ((batch["labels"] != -100).sum(1) > 0).all()
    alone = MobilityCollator(tok)([text, ds[len(ds.items) + 1]])
    assert not any(k.startswith("mob_") for k in alone) and (alone["labels"] != -100).any()
