"""Intent metrics equal sklearn on random cases (overall and per user, classes absent from a user included) and
on a hand-worked case."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from stllm.eval.intent_metrics import (
    gap_target,
    intent_scores,
    oracle_user_gains,
    per_user_scores,
    score_table,
    tie_profile,
    user_changes,
)


def _sk(y, p):
    return {"accuracy": accuracy_score(y, p), "weighted_f1": f1_score(y, p, average="weighted", zero_division=0),
            "macro_f1": f1_score(y, p, average="macro", zero_division=0)}


@pytest.mark.parametrize("seed", range(6))
def test_equal_to_sklearn_overall_and_per_user(seed):
    rng = np.random.default_rng(seed)
    n, c = 300, 9
    y = rng.choice(c, size=n, p=np.r_[0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.0])  # class 8 never true
    p = np.where(rng.random(n) < 0.5, y, rng.integers(0, c, size=n))
    users = rng.integers(0, 7, size=n)
    got = intent_scores(y, p, c)
    for k, v in _sk(y, p).items():
        assert got[k] == pytest.approx(v, abs=1e-12)
    assert got["gap"] == pytest.approx(got["weighted_f1"] - got["macro_f1"])
    ids, per = per_user_scores(y, p, users, c)
    for i, u in enumerate(ids):
        m = users == u
        for k, v in _sk(y[m], p[m]).items():
            assert per[k][i] == pytest.approx(v, abs=1e-12)
    row = score_table(y, p, users, c)
    assert row["user_macro_f1"] == pytest.approx(per["macro_f1"].mean())


def test_hand_worked_case():
    # true 0,0,0,1 ; pred 0,0,1,2: F1(0)=2*2/(3+2)=0.8, F1(1)=0, F1(2)=0 (predicted, never true); class 3 absent
    got = intent_scores(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 2]), 4)
    assert got["accuracy"] == 0.5
    assert got["macro_f1"] == pytest.approx(0.8 / 3)
    assert got["weighted_f1"] == pytest.approx(0.8 * 3 / 4)


def test_bad_labels_named():
    with pytest.raises(ValueError, match="y_pred holds labels outside"):
        intent_scores(np.array([0, 1]), np.array([0, 5]), 3)


def test_user_changes_counts_ties():
    # user a: 0/2 right -> 2/2 (improves); b: unchanged (ties); c: 1/1 right -> 0/1 (worse)
    y = np.array([0, 1, 0, 1, 2])
    users = np.array(["a", "a", "b", "b", "c"])
    before = np.array([1, 0, 0, 0, 2])
    after = np.array([0, 1, 0, 0, 0])
    assert user_changes(y, before, after, users, 3) == {"improved": 1, "tied": 1, "worse": 1}


def test_gap_target_needs_macro_and_accuracy_too():
    row = lambda acc, macro, gap: {"accuracy": acc, "macro_f1": macro, "gap": gap}  # noqa: E731
    rows = {"pop": row(0.41, 0.15, 0.18), "markov": row(0.38, 0.06, 0.145), "tuned": row(0.37, 0.20, 0.14)}
    met, why = gap_target(rows, "tuned", "pop", ["pop", "markov"])
    assert met and "< markov 0.1450: yes" in why
    rows["tuned"] = row(0.35, 0.20, 0.10)  # smaller gap, but accuracy 0.06 below the population model's
    met, why = gap_target(rows, "tuned", "pop", ["pop", "markov"])
    assert not met and "accuracy 0.3500 >= population 0.4100 - 0.05: NO" in why
    rows["tuned"] = row(0.40, 0.14, 0.10)  # macro F1 below the population model's
    assert not gap_target(rows, "tuned", "pop", ["pop", "markov"])[0]
    rows["tuned"] = row(0.40, 0.20, 0.145)  # equal gap is not smaller
    assert not gap_target(rows, "tuned", "pop", ["pop", "markov"])[0]


def test_tie_profile_tells_unmoved_from_chance_ties():
    """User 0: after = before (tie, same). User 1: after differs on both rows but both are wrong either way (tie,
    not same). User 2: after fixes one row (no tie)."""
    y = np.array([0, 1, 0, 1, 0, 1])
    users = np.array([0, 0, 1, 1, 2, 2])
    before = np.array([0, 0, 1, 0, 1, 1])
    after = np.array([0, 0, 2, 2, 0, 1])
    p = tie_profile(y, before, after, users, 3, {"other": after})
    assert p["tied"].tolist() == [True, True, False]
    assert p["same"].tolist() == [True, False, False] and p["same_other"].tolist() == [True, True, True]
    assert p["n_test"].tolist() == [2, 2, 2]


def test_oracle_user_gains_hand_worked():
    """User 0: targets (0, 0, 1), base predicts 0 everywhere: F1 0.8 for intent 0 and 0 for 1, macro 0.4. Candidate
    A (0, 0, 1) is perfect (gain 0.6); B predicts 1 everywhere (F1 0 and 0.5, macro 0.25: a loss). User 1 is perfect
    already: no candidate gains, so 0 and -1."""
    y, users = np.array([0, 0, 1, 2, 2]), np.array([0, 0, 0, 1, 1])
    base = np.array([0, 0, 0, 2, 2])
    cands = np.array([[0, 0, 1, 0, 0], [1, 1, 1, 1, 1]])
    ids, gain, best = oracle_user_gains(y, base, cands, users, 3)
    assert ids.tolist() == [0, 1] and gain == pytest.approx([0.6, 0.0]) and best.tolist() == [0, -1]
