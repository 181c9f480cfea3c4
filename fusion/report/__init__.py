"""Figures and the self-contained HTML report of a run directory."""

from __future__ import annotations

from ._html import write_report
from ._plots import (
    NothingToPlot,
    figure_to_png,
    metric_higher_is_better,
    plot_confusion_matrix,
    plot_feature_attributions,
    plot_kaplan_meier,
    plot_modality_distribution,
    plot_modality_importance,
    plot_model_comparison,
    plot_predicted_vs_observed,
    plot_roc_curves,
)

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
    "write_report",
]
