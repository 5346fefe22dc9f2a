"""Evaluation: masked metrics and baselines on the canonical evaluation layout.

The canonical layout: an evaluation set is ``starts (W,)`` (first history step of each window) and
``regions (R,)`` (region indices) with ``input_len`` and ``output_len``; targets, masks and every
prediction are ``(W, R, H, C)`` in original units (:func:`eval_targets`). Metrics live in
:mod:`stllm.eval.metrics`, baselines (each reading only the past of each window) in
:mod:`stllm.eval.baselines`.
"""

from stllm.eval.baselines import (
    BASELINES,
    NOT_ZERO_SHOT,
    baseline_label,
    check_layout,
    encoder_only,
    eval_targets,
    historical_average,
    last_value,
    run_baselines,
    seasonal_naive,
    supervised_encoder,
)
from stllm.eval.metrics import (
    event_counts,
    event_metrics,
    flow_metrics,
    masked_mae,
    masked_mape,
    masked_rmse,
    precision_recall_f1,
    to_numpy,
)

__all__ = [
    "BASELINES", "NOT_ZERO_SHOT", "baseline_label", "check_layout", "encoder_only", "eval_targets",
    "historical_average", "last_value", "run_baselines", "seasonal_naive", "supervised_encoder",
    "event_counts", "event_metrics", "flow_metrics", "masked_mae", "masked_mape", "masked_rmse",
    "precision_recall_f1", "to_numpy",
]  # fmt: skip
