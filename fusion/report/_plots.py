"""Matplotlib figures of a run: model comparison, prediction plots and attributions.

Every function builds a :class:`matplotlib.figure.Figure` directly, without ``pyplot``,
so no figure enters pyplot's global registry and each one is freed with its last
reference. :func:`figure_to_png` renders a figure with the Agg canvas. A function that
has nothing to draw (for example every score is NaN) raises :class:`NothingToPlot`
with the reason, which the HTML report prints in place of the figure.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve
from sksurv.compare import compare_survival
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from ..evaluation import HIGHER_IS_BETTER

__all__ = [
    "NothingToPlot",
    "figure_to_png",
    "metric_higher_is_better",
    "plot_confusion_matrix",
    "plot_feature_attributions",
    "plot_kaplan_meier",
    "plot_modality_distribution",
    "plot_modality_importance",
    "plot_model_comparison",
    "plot_predicted_vs_observed",
    "plot_roc_curves",
]

FIGURE_SIZE = (6.0, 4.0)  # inches
DPI = 100
TOP_FEATURES = 15

_FUSED_COLOR = "#c0392b"
_UNIMODAL_COLOR = "#4c72b0"
_POSITIVE_COLOR = "#c0392b"
_NEGATIVE_COLOR = "#2e6da4"


class NothingToPlot(Exception):
    """Error raised when the data leave nothing to draw. Its message gives the reason."""


def figure_to_png(figure: Figure, dpi: int = DPI) -> bytes:
    """Render a figure to PNG bytes with the Agg canvas.

    The PNG carries no ``Software`` text chunk, so the file contains no web address.
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def plot_model_comparison(
    summaries: Mapping[str, Mapping[str, float]],
    metric: str,
    fused_models: Sequence[str] = ("fused",),
) -> Figure:
    """Plot one metric's mean and confidence interval for every model.

    Parameters
    ----------
    summaries
        Model name to ``{"mean", "ci_low", "ci_high"}`` of ``metric``; NaN values are
        allowed. A model with a NaN mean is listed on the axis without a point.
    metric
        Name of the metric, used as the axis label.
    fused_models
        Models drawn in the highlight color; the others are unimodal.

    Returns
    -------
    Figure
        One panel, models on the x axis. A dashed line marks the best unimodal mean.
    """
    names = list(summaries)
    means = np.array([_as_float(summaries[name].get("mean")) for name in names])
    if not np.isfinite(means).any():
        raise NothingToPlot(f"every model has a NaN mean for {metric!r}")

    figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
    axes = figure.add_subplot()
    for position, name in enumerate(names):
        mean = means[position]
        if not math.isfinite(mean):
            continue
        color = _FUSED_COLOR if name in fused_models else _UNIMODAL_COLOR
        low = _as_float(summaries[name].get("ci_low"))
        high = _as_float(summaries[name].get("ci_high"))
        if math.isfinite(low) and math.isfinite(high):
            # A bootstrap interval need not contain the fold mean, so clip the bar lengths at 0.
            error = [[max(mean - low, 0.0)], [max(high - mean, 0.0)]]
            axes.errorbar(position, mean, yerr=error, fmt="o", color=color, capsize=5, markersize=8)
        else:
            axes.plot(position, mean, "o", color=color, markersize=8)
        axes.annotate(
            f"{mean:.3f}",
            (position, mean),
            xytext=(8, 0),
            textcoords="offset points",
            va="center",
            fontsize=9,
        )

    unimodal_means = [means[i] for i, name in enumerate(names) if name not in fused_models]
    finite_unimodal = [value for value in unimodal_means if math.isfinite(value)]
    if finite_unimodal:
        best = max(finite_unimodal) if metric_higher_is_better(metric) else min(finite_unimodal)
        axes.axhline(best, color="grey", linestyle="--", linewidth=1, label="best unimodal")
        axes.legend(loc="best", fontsize=9)

    axes.set_xticks(range(len(names)), [_plain(name) for name in names])
    for label, name in zip(axes.get_xticklabels(), names):
        if name in fused_models:
            label.set_fontweight("bold")
            label.set_color(_FUSED_COLOR)
    axes.set_xlim(-0.5, len(names) - 0.5)
    axes.set_ylabel(_plain(metric))
    axes.set_title(f"Unimodal versus fused: {_plain(metric)} (mean and CI)")
    axes.grid(axis="y", alpha=0.3)
    return figure


def plot_roc_curves(y: np.ndarray, scores: Mapping[str, np.ndarray]) -> Figure:
    """Plot the ROC curve of every model from pooled out-of-fold scores.

    Parameters
    ----------
    y
        Binary labels, shape ``(n,)``, values 0 and 1 (NaN rows are skipped).
    scores
        Model name to scores of shape ``(n,)``, higher meaning class 1. Rows where a
        model's score is NaN (its modality was absent) are skipped for that model only.

    Returns
    -------
    Figure
        One panel with a curve per model; the legend gives the AUROC and the number of
        subjects each curve uses. The fused model is drawn thicker.
    """
    y = np.asarray(y, dtype=float)
    figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
    axes = figure.add_subplot()
    skipped = []
    for name, model_scores in scores.items():
        model_scores = np.asarray(model_scores, dtype=float)
        keep = np.isfinite(model_scores) & np.isfinite(y)
        labels = y[keep].astype(int)
        if np.unique(labels).size < 2:
            skipped.append(name)
            continue
        false_positive_rate, true_positive_rate, _ = roc_curve(labels, model_scores[keep])
        auroc = roc_auc_score(labels, model_scores[keep])
        is_fused = name == "fused"
        axes.plot(
            false_positive_rate,
            true_positive_rate,
            linewidth=2.5 if is_fused else 1.5,
            color=_FUSED_COLOR if is_fused else None,
            label=f"{_plain(name)} (AUROC {auroc:.3f}, n={int(keep.sum())})",
        )
    if len(skipped) == len(scores):
        raise NothingToPlot("no model has scored subjects of both classes")

    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_aspect("equal")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title("ROC curves, pooled out-of-fold scores")
    axes.legend(loc="lower right", fontsize=8)
    return figure


def plot_kaplan_meier(time: np.ndarray, event: np.ndarray, risk_score: np.ndarray) -> Figure:
    """Plot Kaplan–Meier curves of the high- and low-risk halves of the cohort.

    Subjects with a score above the median score form the high-risk group, the others
    the low-risk group.

    Parameters
    ----------
    time
        Follow-up time, shape ``(n,)``, in the target's unit.
    event
        True where the event was observed, shape ``(n,)``.
    risk_score
        Risk score, shape ``(n,)``, higher meaning higher risk. NaN rows are skipped.

    Returns
    -------
    Figure
        One panel with both curves and their pointwise 95% log-log confidence bands.
        The legend gives each group's size; the title gives the log-rank p-value.
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=bool)
    risk_score = np.asarray(risk_score, dtype=float)
    keep = np.isfinite(risk_score) & np.isfinite(time)
    time, event, risk_score = time[keep], event[keep], risk_score[keep]
    if time.size == 0:
        raise NothingToPlot("no subject has both a follow-up time and a finite risk score")

    high_risk = risk_score > np.median(risk_score)
    if high_risk.all() or not high_risk.any():
        raise NothingToPlot("every risk score equals the median, so the groups cannot be split")

    figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
    axes = figure.add_subplot()
    for label, mask, color in (
        ("high risk", high_risk, _FUSED_COLOR),
        ("low risk", ~high_risk, _NEGATIVE_COLOR),
    ):
        curve_time, survival, band = kaplan_meier_estimator(
            event[mask], time[mask], conf_type="log-log"
        )
        # The estimator starts at the first observed time; draw every curve from (0, 1).
        start = min(0.0, float(curve_time[0]))
        curve_time = np.concatenate([[start], curve_time])
        survival = np.concatenate([[1.0], survival])
        band = np.concatenate([np.ones((2, 1)), band], axis=1)
        axes.step(
            curve_time, survival, where="post", color=color, label=f"{label} (n={int(mask.sum())})"
        )
        axes.fill_between(curve_time, band[0], band[1], step="post", color=color, alpha=0.15)

    title = "Kaplan–Meier, fused model risk groups (median split)"
    p_value = _log_rank_p_value(time, event, high_risk)
    if p_value is not None:
        title += f"\nlog-rank p = {p_value:.3g}"
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("time")
    axes.set_ylabel("survival probability")
    axes.set_title(title, fontsize=11)
    axes.legend(loc="best", fontsize=9)
    axes.grid(alpha=0.3)
    return figure


def plot_predicted_vs_observed(observed: np.ndarray, predicted: np.ndarray) -> Figure:
    """Scatter the predicted against the observed value with the identity line.

    Parameters
    ----------
    observed, predicted
        Shape ``(n,)``, in the target's unit; rows with a NaN in either are skipped.
    """
    observed = np.asarray(observed, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    keep = np.isfinite(observed) & np.isfinite(predicted)
    if not keep.any():
        raise NothingToPlot("no subject has both an observed and a predicted value")

    figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
    axes = figure.add_subplot()
    axes.scatter(
        observed[keep], predicted[keep], s=18, alpha=0.7, color=_FUSED_COLOR, edgecolor="none"
    )
    low = min(observed[keep].min(), predicted[keep].min())
    high = max(observed[keep].max(), predicted[keep].max())
    axes.plot([low, high], [low, high], color="grey", linestyle=":", linewidth=1, label="identity")
    axes.set_xlabel("observed")
    axes.set_ylabel("predicted (fused)")
    axes.set_title(f"Fused model: predicted versus observed (n={int(keep.sum())})")
    axes.legend(loc="best", fontsize=9)
    axes.grid(alpha=0.3)
    return figure


def plot_confusion_matrix(y: np.ndarray, scores: np.ndarray) -> Figure:
    """Plot the confusion matrix of class predictions taken as the arg max of the scores.

    Parameters
    ----------
    y
        Observed class labels ``0..K-1``, shape ``(n,)``; NaN rows are skipped.
    scores
        Class scores, shape ``(n, K)``; rows with any NaN are skipped.

    Returns
    -------
    Figure
        Counts in the cells, colored by the share of the observed class (row).
    """
    y = np.asarray(y, dtype=float)
    scores = np.asarray(scores, dtype=float)
    keep = np.isfinite(y) & np.isfinite(scores).all(axis=1)
    if not keep.any():
        raise NothingToPlot("no subject has both a label and finite class scores")

    n_classes = scores.shape[1]
    counts = confusion_matrix(
        y[keep].astype(int), scores[keep].argmax(axis=1), labels=list(range(n_classes))
    )
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)

    figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for row in range(n_classes):
        for column in range(n_classes):
            color = "white" if shares[row, column] > 0.5 else "black"
            axes.text(column, row, str(counts[row, column]), ha="center", va="center", color=color)
    figure.colorbar(image, ax=axes, label="share of observed class")
    axes.set_xticks(range(n_classes))
    axes.set_yticks(range(n_classes))
    axes.set_xlabel("predicted class")
    axes.set_ylabel("observed class")
    axes.set_title(f"Fused model: confusion matrix (n={int(keep.sum())})")
    return figure


def plot_modality_importance(contributions: pd.DataFrame) -> Figure:
    """Plot the mean absolute Shapley value of each modality with its share in percent.

    Parameters
    ----------
    contributions
        Shape ``(n_subjects, n_modalities)``: one column of Shapley values per modality,
        in the unit of the model's raw score. NaN values are ignored.
    """
    importance = contributions.abs().mean(axis=0, skipna=True).sort_values(ascending=False)
    total = importance.sum(skipna=True)
    if not np.isfinite(total) or total <= 0:
        raise NothingToPlot("every Shapley value is zero or NaN")

    figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
    axes = figure.add_subplot()
    positions = np.arange(importance.size)
    axes.bar(positions, importance.to_numpy(), color=_UNIMODAL_COLOR)
    for position, value in zip(positions, importance.to_numpy()):
        share = 100.0 * value / total if np.isfinite(value) else float("nan")
        axes.annotate(
            f"{value:.3f} ({share:.0f}%)",
            (position, value),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=9,
        )
    axes.set_xticks(positions, [_plain(str(name)) for name in importance.index])
    axes.set_ylabel("mean |Shapley value|")
    axes.set_title("Modality importance (share of the total)")
    axes.margins(y=0.15)
    axes.grid(axis="y", alpha=0.3)
    return figure


def plot_modality_distribution(contributions: pd.DataFrame, seed: int = 0) -> Figure:
    """Plot each modality's per-subject Shapley values as a box with the points over it.

    Parameters
    ----------
    contributions
        Shape ``(n_subjects, n_modalities)``, as for :func:`plot_modality_importance`.
    seed
        Seed of the horizontal jitter of the points, so the figure is reproducible.
    """
    columns = [str(name) for name in contributions.columns]
    values = [contributions[name].to_numpy(dtype=float) for name in contributions.columns]
    values = [column[np.isfinite(column)] for column in values]
    if not any(column.size for column in values):
        raise NothingToPlot("every Shapley value is NaN")

    figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
    axes = figure.add_subplot()
    rng = np.random.default_rng(seed)
    positions = np.arange(1, len(values) + 1)
    axes.boxplot(values, positions=positions, widths=0.5, showfliers=False)
    for position, column in zip(positions, values):
        jitter = rng.uniform(-0.15, 0.15, size=column.size)
        axes.scatter(
            position + jitter, column, s=8, alpha=0.4, color=_UNIMODAL_COLOR, edgecolor="none"
        )
    axes.axhline(0.0, color="grey", linewidth=1)
    axes.set_xticks(positions, [_plain(name) for name in columns])
    axes.set_ylabel("Shapley value (raw score unit)")
    axes.set_title("Per-subject modality contributions")
    axes.grid(axis="y", alpha=0.3)
    return figure


def plot_feature_attributions(attributions: pd.DataFrame, top: int = TOP_FEATURES) -> Figure:
    """Plot the ``top`` features of each modality by mean absolute attribution.

    Parameters
    ----------
    attributions
        Long table with columns ``modality``, ``feature`` and ``attribution``, one row
        per subject and feature. NaN attributions are ignored.
    top
        Number of features shown per modality.

    Returns
    -------
    Figure
        One panel of horizontal bars per modality, stacked vertically, the largest on
        top. A bar is red when the feature's mean signed attribution is at least 0, blue
        when it is negative.
    """
    table = attributions.dropna(subset=["attribution"])
    if table.empty:
        raise NothingToPlot("every feature attribution is NaN")

    grouped = table.assign(absolute=table["attribution"].abs()).groupby(
        ["modality", "feature"], sort=False
    )
    per_feature = grouped.agg(mean_absolute=("absolute", "mean"), mean=("attribution", "mean"))
    modalities = list(dict.fromkeys(table["modality"]))
    panels = []
    for modality in modalities:
        ranked = per_feature.loc[modality].sort_values("mean_absolute", ascending=False)
        panels.append((modality, ranked.head(top)))

    heights = [0.6 + 0.24 * len(ranked) for _, ranked in panels]
    figure = Figure(figsize=(FIGURE_SIZE[0], sum(heights) + 0.3), layout="constrained")
    grid = figure.add_gridspec(len(panels), 1, height_ratios=heights)
    for row, (modality, ranked) in enumerate(panels):
        axes = figure.add_subplot(grid[row])
        # Reverse so that barh, which draws from the bottom, puts the largest on top.
        ranked = ranked.iloc[::-1]
        colors = [_POSITIVE_COLOR if mean >= 0 else _NEGATIVE_COLOR for mean in ranked["mean"]]
        axes.barh(np.arange(len(ranked)), ranked["mean_absolute"].to_numpy(), color=colors)
        axes.set_yticks(np.arange(len(ranked)), [_plain(str(name)) for name in ranked.index])
        axes.tick_params(axis="y", labelsize=8)
        axes.set_title(f"{_plain(str(modality))}: top {len(ranked)} features", fontsize=10)
        axes.grid(axis="x", alpha=0.3)
        if row == 0:
            signs = [
                Patch(color=_POSITIVE_COLOR, label="mean attribution ≥ 0"),
                Patch(color=_NEGATIVE_COLOR, label="mean attribution < 0"),
            ]
            axes.legend(handles=signs, loc="lower right", fontsize=8)
        if row == len(panels) - 1:
            axes.set_xlabel("mean |attribution|")
    return figure


def metric_higher_is_better(metric: str) -> bool:
    """Return whether a larger value of ``metric`` is better.

    Metrics of :data:`fusion.evaluation.HIGHER_IS_BETTER` take their direction from it.
    Any other name is an error metric (lower is better) when it is ``brier``, ``log_loss``,
    ``rmse``, ``mae`` or ``mse``, or contains ``brier`` (an integrated Brier score).
    """
    if metric in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[metric]
    name = metric.lower()
    return name not in {"brier", "log_loss", "rmse", "mae", "mse"} and "brier" not in name


def _log_rank_p_value(time: np.ndarray, event: np.ndarray, group: np.ndarray) -> float | None:
    """Return the log-rank test's p-value between two groups, or None where it is undefined."""
    if not event.any():
        return None
    outcome = Surv.from_arrays(event=event, time=time)
    _, p_value = compare_survival(outcome, group.astype(int))
    return float(p_value) if np.isfinite(p_value) else None


def _as_float(value: object) -> float:
    """Convert a JSON number or null to a float, null to NaN."""
    if value is None:
        return float("nan")
    return float(value)  # type: ignore[arg-type]


def _plain(text: str) -> str:
    """Escape dollar signs so matplotlib draws a label as plain text, never as math."""
    return text.replace("$", r"\$")
