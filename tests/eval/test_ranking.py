"""Ranking metrics against hand-worked rankings."""

import math

import numpy as np
import pytest

from stllm.eval.ranking import format_ranking_table, metrics_from_ranks, ranking_metrics, target_ranks


def test_hand_worked_ranks_and_metrics():
    scores = np.array([
        [0.9, 0.1, 0.5, 0.3],  # target 0 -> rank 0
        [0.9, 0.1, 0.5, 0.3],  # target 3 -> rank 2 (0.9, 0.5 above)
        [0.1, 0.2, 0.3, 0.4],  # target 0 -> rank 3
        [0.1, 0.2, 0.3, 0.4],  # target -1 -> unknown, miss
    ])
    targets = np.array([0, 3, 0, -1])
    np.testing.assert_array_equal(target_ranks(scores, targets), [0, 2, 3, np.inf])
    m = ranking_metrics(scores, targets, ks=(1, 3), ndcg_ks=(3,))
    assert m["acc@1"] == pytest.approx(1 / 4)
    assert m["acc@3"] == pytest.approx(2 / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 4 + 0) / 4)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert m["n"] == 4 and m["n_unknown"] == 1


def test_default_keys_and_out_of_range_target():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(6, 20))
    targets = np.argsort(-scores, axis=1)[:, [0, 4, 5, 9, 10, 0]][np.arange(6), np.arange(6)]
    targets[5] = 20  # outside the table: unknown
    m = ranking_metrics(scores, targets)
    assert set(m) == {"acc@1", "acc@5", "acc@10", "mrr", "ndcg@5", "ndcg@10", "n", "n_unknown"}
    assert (m["acc@1"], m["acc@5"], m["acc@10"]) == pytest.approx((1 / 6, 2 / 6, 4 / 6))
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(6)) / 6)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(6) + 1 / math.log2(7) + 1 / math.log2(11)) / 6)
    assert m["n_unknown"] == 1


def test_ties():
    scores = np.ones((1, 5))
    assert target_ranks(scores, [3])[0] == 3
    assert target_ranks(scores, [3], ties="optimistic")[0] == 0
    assert target_ranks(scores, [3], ties="pessimistic")[0] == 4
    assert target_ranks(np.array([[np.nan, 1.0]]), [1])[0] == 0


def test_batched_equals_unbatched_and_errors():
    rng = np.random.default_rng(1)
    scores, targets = rng.normal(size=(50, 30)), rng.integers(-1, 30, 50)
    assert ranking_metrics(scores, targets, batch_size=7) == ranking_metrics(scores, targets, batch_size=None)
    with pytest.raises(ValueError, match="targets"):
        ranking_metrics(scores, targets[:3])
    empty = metrics_from_ranks(np.zeros(0))
    assert empty["n"] == 0 and math.isnan(empty["acc@1"])


def test_table_rows_keep_method_order_and_print_each_metric_under_its_header():
    """Every number in the table is the metric of its row and column, to the printed 4 decimals."""
    rng = np.random.default_rng(2)
    scores, targets = rng.normal(size=(40, 25)), rng.integers(-1, 25, 40)
    rows = {"stllm": ranking_metrics(scores, targets),
            "user most frequent": ranking_metrics(scores + rng.normal(size=scores.shape), targets),
            "oracle": ranking_metrics(np.eye(25)[np.clip(targets, 0, None)], targets)}  # fmt: skip
    lines = format_ranking_table(rows).splitlines()
    header = lines[0].split()
    assert header == ["method", "acc@1", "acc@5", "acc@10", "mrr", "ndcg@5", "ndcg@10", "n", "unknown"]
    assert set(lines[1]) == {"-"}
    body = lines[2:]
    assert [line[: len(name)] for line, name in zip(body, rows)] == list(rows)  # given order, names intact
    for line, (name, m) in zip(body, rows.items()):
        cells = line[len(name):].split()
        assert len(cells) == len(header) - 1
        for key, cell in zip(header[1:], cells):
            value = m["n_unknown"] if key == "unknown" else m[key]
            assert abs(float(cell) - value) <= 5e-5, (name, key, cell, value)
    assert body[2].split()[1] == f"{1 - rows['oracle']['n_unknown'] / 40:.4f}"  # the oracle misses only unknowns
