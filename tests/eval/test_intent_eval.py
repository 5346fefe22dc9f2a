"""report_models: the table holds every model and baseline on the same held-out targets, per-user rows and the
before/after plot are written, and targets that are not held out are refused."""

import json

import numpy as np
import pytest

from stllm.data.intent import IntentDataError, prepare_intent, synthetic_events
from stllm.eval.intent import report_models
from stllm.eval.intent_baselines import user_markov, user_most_frequent


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
