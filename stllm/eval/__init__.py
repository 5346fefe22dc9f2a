"""Evaluation: masked metrics and baselines on the canonical evaluation layout.

The canonical layout: an evaluation set is ``starts (W,)`` (first history step of each window) and
``regions (R,)`` (region indices) with ``input_len`` and ``output_len``; targets, masks and every
prediction are ``(W, R, H, C)`` in original units (:func:`eval_targets`). Metrics live in
:mod:`stllm.eval.metrics`, baselines (each reading only the past of each window) in
:mod:`stllm.eval.baselines`. Next-POI ranking: metrics in :mod:`stllm.eval.ranking`, baselines in
:mod:`stllm.eval.poi_baselines`, the evaluation (``stllm eval next-poi``) in :mod:`stllm.eval.next_poi`.
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
    scale_free_logistic,
    scale_free_ridge,
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
from stllm.eval.poi_baselines import (
    MarkovTransition,
    MostPopular,
    NearestPOI,
    UserMostFrequent,
    evaluate_poi_baselines,
    poi_baseline_ranks,
)
from stllm.eval.ranking import format_ranking_table, metrics_from_ranks, ranking_metrics, target_ranks

__all__ = [
    "MarkovTransition", "MostPopular", "NearestPOI", "UserMostFrequent", "evaluate_poi_baselines",
    "poi_baseline_ranks",
    "format_ranking_table", "metrics_from_ranks", "ranking_metrics", "target_ranks",
    "BASELINES", "NOT_ZERO_SHOT", "baseline_label", "check_layout", "encoder_only", "eval_targets",
    "historical_average", "last_value", "run_baselines", "scale_free_logistic", "scale_free_ridge", "seasonal_naive",
    "supervised_encoder",
    "event_counts", "event_metrics", "flow_metrics", "masked_mae", "masked_mape", "masked_rmse",
    "precision_recall_f1", "to_numpy",
]  # fmt: skip
