"""Leaderboard, paired comparisons and robustness tables from per-fold metrics."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

from .._errors import MetricWarning
from .._task import Task
from ..evaluation import (
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    PRIMARY_METRIC,
    corrected_resampled_ttest,
    summarize_folds,
)
from ..evaluation._stats import CORRECTED_TTEST_NAME
from ._interface import Strategy

__all__ = ["compare_strategies"]

FULL = "full"

# Bounded metrics: a t interval over few folds can cross the bounds otherwise.
_NON_NEGATIVE = {"rmse", "mae", "log_loss"}
_UNIT_INTERVAL = {"auroc", "auprc", "balanced_accuracy", "brier", "accuracy", "auroc_macro", "c_index", "c_index_uno"}


def _summary(metric: str, values: pd.Series) -> dict[str, float]:
    summary = summarize_folds(values.to_numpy(float))
    if metric in _UNIT_INTERVAL:
        for key in ("ci_low", "ci_high"):
            if math.isfinite(summary[key]):
                summary[key] = float(np.clip(summary[key], 0.0, 1.0))
    elif metric in _NON_NEGATIVE and math.isfinite(summary["ci_low"]):
        summary["ci_low"] = max(summary["ci_low"], 0.0)
    return summary


def compare_strategies(task: Task, metrics: pd.DataFrame, records: list[dict[str, Any]],
                       folds: list[dict[str, Any]], strategies: list[Strategy]) -> dict[str, Any]:
    """Build the leaderboard, the paired comparisons and the robustness table.

    Parameters
    ----------
    metrics
        One row per strategy, scenario, repeat and fold (``n_test``, ``n_predicted`` and
        every metric of the task).
    records
        One timing and parameter record per strategy and fold.
    folds
        Per outer fold: ``n_train``, ``n_test`` and the cached encoders' ``seconds``.
    strategies
        The benchmarked strategies, for their family and order.
    """
    primary = PRIMARY_METRIC[task.kind]
    leaderboard = _leaderboard(task, metrics, records, folds, strategies)
    comparisons = _comparisons(metrics, leaderboard, folds, primary)
    robustness = _robustness(metrics, primary)
    return {"primary_metric": primary, "leaderboard": leaderboard, "comparisons": comparisons,
            "robustness": robustness}


def _leaderboard(task: Task, metrics: pd.DataFrame, records: list[dict[str, Any]], folds: list[dict[str, Any]],
                 strategies: list[Strategy]) -> pd.DataFrame:
    primary = PRIMARY_METRIC[task.kind]
    full = metrics[metrics["scenario"] == FULL]
    runs = pd.DataFrame(records)
    rows = []
    for strategy in strategies:
        part = full[full["strategy"] == strategy.name]
        own = runs[runs["strategy"] == strategy.name]
        row: dict[str, Any] = {"strategy": strategy.name, "family": strategy.family,
                               "n_folds": len(part),
                               "coverage": float(part["n_predicted"].sum() / max(part["n_test"].sum(), 1))}
        for metric in METRIC_NAMES[task.kind]:
            if metric not in part:
                continue
            summary = _summary(metric, part[metric])
            row[f"{metric}_mean"] = summary["mean"]
            row[f"{metric}_ci_low"] = summary["ci_low"]
            row[f"{metric}_ci_high"] = summary["ci_high"]
            if metric == primary:
                row["undefined_folds"] = summary["n_nan"]
        fit = float(own["fit_seconds"].sum() + own["predict_seconds"].sum())
        row["fit_seconds"] = fit
        row["encoder_seconds"] = _encoder_seconds(strategy, folds)
        row["total_seconds"] = fit + row["encoder_seconds"]
        row["robustness_seconds"] = float(own["robustness_seconds"].sum())
        parameters = pd.to_numeric(own["n_parameters"], errors="coerce").dropna()
        row["n_parameters"] = float(parameters.mean()) if len(parameters) else np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    ascending = not HIGHER_IS_BETTER[primary]
    table = table.sort_values(f"{primary}_mean", ascending=ascending, na_position="last", kind="stable")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)


def _encoder_seconds(strategy: Strategy, folds: list[dict[str, Any]]) -> float:
    """Return the cross-fitting time of the encoders a strategy reads, over all folds.

    NaN when a fold's encoder outputs were copied from a run that did not record it.
    """
    if not strategy.uses_cached_encoders:
        return 0.0
    total = 0.0
    for entry in folds:
        for name, info in entry["encoders"].items():
            if strategy.encoder_modalities is not None and name not in strategy.encoder_modalities:
                continue
            if info.get("seconds") is None:
                return float("nan")
            total += info["seconds"]
    return total


def _comparisons(metrics: pd.DataFrame, leaderboard: pd.DataFrame, folds: list[dict[str, Any]],
                 primary: str) -> pd.DataFrame:
    """Compare every strategy with the best one and with the best unimodal one, fold by fold."""
    full = metrics[metrics["scenario"] == FULL]
    per_fold = full.pivot_table(index=["repeat", "fold"], columns="strategy", values=primary, dropna=False)
    n_train = float(np.mean([entry["n_train"] for entry in folds]))
    n_test = float(np.mean([entry["n_test"] for entry in folds]))
    ranked = leaderboard.dropna(subset=[f"{primary}_mean"])
    references = {}
    if len(ranked):
        references["best"] = ranked.iloc[0]["strategy"]
    unimodal = ranked[ranked["family"] == "unimodal"]
    if len(unimodal):
        references["best unimodal"] = unimodal.iloc[0]["strategy"]

    rows = []
    for kind, reference in references.items():
        for strategy in leaderboard["strategy"]:
            if strategy == reference or strategy not in per_fold or reference not in per_fold:
                continue
            diffs = (per_fold[strategy] - per_fold[reference]).to_numpy(float)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MetricWarning)
                test = corrected_resampled_ttest(diffs, n_train=n_train, n_test=n_test)
            rows.append({"strategy": strategy, "reference": reference, "reference_kind": kind,
                         "metric": primary, "mean_difference": test["mean_diff"], "t": test["t"],
                         "df": test["df"], "p_value": test["p_value"], "n_folds": test["n"],
                         "test": CORRECTED_TTEST_NAME})
    return pd.DataFrame(rows, columns=["strategy", "reference", "reference_kind", "metric", "mean_difference", "t",
                                       "df", "p_value", "n_folds", "test"])


def _robustness(metrics: pd.DataFrame, primary: str) -> pd.DataFrame:
    """Summarise every scenario per strategy; flag scenarios where it predicts fewer subjects.

    ``handled`` is False when the strategy predicted a smaller share of the test subjects
    than with the full data: it cannot predict without the removed modality.
    """
    rows = []
    full_coverage = {}
    for (strategy, scenario), part in metrics.groupby(["strategy", "scenario"], sort=False):
        coverage = float(part["n_predicted"].sum() / max(part["n_test"].sum(), 1))
        if scenario == FULL:
            full_coverage[strategy] = coverage
        kind, _, value = scenario.partition(":")
        fraction = np.nan
        if kind == FULL:
            fraction = 0.0
        elif kind == "missing":
            fraction = float(value)
        summary = _summary(primary, part[primary]) if primary in part else summarize_folds([np.nan])
        rows.append({"strategy": strategy, "scenario": scenario,
                     "kind": {"full": "full data", "without": "removed at test time",
                              "missing": "removed in training and test"}[kind],
                     "modality": value if kind == "without" else "",
                     "fraction": fraction,
                     f"{primary}_mean": summary["mean"], f"{primary}_ci_low": summary["ci_low"],
                     f"{primary}_ci_high": summary["ci_high"], "coverage": coverage})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["handled"] = [row.coverage >= full_coverage.get(row.strategy, 0.0) - 1e-9 for row in table.itertuples()]
    return table
