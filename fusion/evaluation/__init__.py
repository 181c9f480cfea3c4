"""Evaluation: cross-validation splits, metrics, confidence intervals and paired tests."""

from fusion.evaluation._metrics import (
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    PRIMARY_METRIC,
    compute_metrics,
)
from fusion.evaluation._splits import SPLIT_COLUMNS, inner_folds, iter_folds, make_splits
from fusion.evaluation._stats import bootstrap_ci, corrected_resampled_ttest, summarize_folds

__all__ = [
    "HIGHER_IS_BETTER",
    "METRIC_NAMES",
    "PRIMARY_METRIC",
    "SPLIT_COLUMNS",
    "bootstrap_ci",
    "compute_metrics",
    "corrected_resampled_ttest",
    "inner_folds",
    "iter_folds",
    "make_splits",
    "summarize_folds",
]
