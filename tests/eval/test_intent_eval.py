"""report_models: the table holds every model and baseline on the same held-out targets, per-user rows and the
before/after plot are written, and targets that are not held out are refused."""

import json

import numpy as np
import pytest

from stllm.data.intent import IntentDataError, prepare_intent, synthetic_events
from stllm.eval.intent import intent_summary, report_models
from stllm.eval.intent_baselines import INTENT_BASELINES, user_markov, user_most_frequent
from stllm.eval.intent_metrics import user_changes
from stllm.train.tune_intent import Posthoc


def test_report_scores_same_targets_and_refuses_training_rows(tmp_path):
    data = prepare_intent(synthetic_events(seed=4, n_users=10, days=20), seed=1)
    rows = data.rows_of("user_test")
    preds = {"before": user_most_frequent(data.tables, data.log, rows).argmax(-1),
             "after": user_markov(data.tables, data.log, rows).argmax(-1)}
    result = report_models(data, rows, preds, tmp_path, "t", "before", ("after",))
    # a model that predicts exactly what a baseline predicts scores exactly like it
    assert result.metrics["after"] == result.metrics["user Markov"]
    assert result.metrics["before"] == result.metrics["user most frequent"]
    assert json.loads((tmp_path / "metrics.json").read_text())["methods"]["after"]["macro_f1"] == pytest.approx(
        result.metrics["after"]["macro_f1"])
    lines = (tmp_path / "per_user.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * len(np.unique(data.log.user[rows]))
    assert (tmp_path / "user_macro_f1.png").stat().st_size > 0
    leaky = data.rows_of("user_train", "user_test")
    with pytest.raises(IntentDataError, match="not held out"):
        report_models(data, leaky, {"before": np.zeros(len(leaky), dtype=int)}, tmp_path, "t", "before", ())


def test_summary_counts_every_user_and_reads_the_gap_target(tmp_path):
    data = prepare_intent(synthetic_events(seed=4, n_users=10, days=20), seed=1)
    rows = data.rows_of("user_test")
    y, users = data.log.intent[rows], data.log.user[rows]
    preds = {"pop": user_most_frequent(data.tables, data.log, rows).argmax(-1), "model": y.copy()}  # an oracle
    val = {"model": {"accuracy": 1.0, "macro_f1": 1.0, "gap": 0.0}, "user Markov": {"gap": 0.1}}
    lines = intent_summary(data, rows, preds, {"model": Posthoc(k=30, tau=0.5, bias=(0.1, -0.2))}, val, "model", "pop",
                           [*INTENT_BASELINES, "pop"])
    ch = user_changes(y, preds["pop"], preds["model"], users, 9)
    assert f"{ch['improved']} / {ch['tied']} / {ch['worse']} of {len(np.unique(users))}" in lines[0]
    assert ch["worse"] == 0 and "MET" in lines[1]  # the oracle has gap 0, top macro F1 and accuracy
    assert "k=30 tau=0.5 alpha=1 offsets=[0.1 -0.2]" in lines[2] and "user Markov 0.1000" in lines[3]
    preds["model"] = preds["pop"]  # the same model: its gap is not below its own
    assert "MISSED" in intent_summary(data, rows, preds, {}, {}, "model", "pop", ["pop"])[1]
    with pytest.raises(IntentDataError, match="not held out"):
        intent_summary(data, data.rows_of("user_train"), {"pop": np.zeros(0)}, {}, {}, "pop", "pop", ["pop"])
