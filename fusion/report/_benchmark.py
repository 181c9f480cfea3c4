"""The HTML page of a benchmark directory: leaderboard, metric plot, comparisons, robustness.

:func:`write_benchmark_report` reads ``benchmark.json`` (written by ``fusion benchmark``)
and writes ``report.html`` beside it, self-contained like the run report.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .._errors import DataError
from ._html import _CSS, _escape, _figure, _format_number, _table, _write_atomically
from ._plots import FIGURE_SIZE, NothingToPlot, _plain

__all__ = ["plot_leaderboard", "plot_robustness_curves", "write_benchmark_report"]

_FAMILY_COLORS = {
    "unimodal": "#4c72b0",
    "early": "#8172b3",
    "intermediate": "#55a868",
    "late": "#c0392b",
    "linear": "#937860",
}
_OTHER_COLOR = "#333333"


def plot_leaderboard(leaderboard: pd.DataFrame, metric: str) -> Figure:
    """Plot each strategy's mean ``metric`` over folds with its 95% interval, best first.

    ``leaderboard`` needs the columns ``strategy``, ``family``, ``<metric>_mean``,
    ``<metric>_ci_low`` and ``<metric>_ci_high``. Colors mark the strategy family.
    """
    means = leaderboard[f"{metric}_mean"].to_numpy(float)
    if not np.isfinite(means).any():
        raise NothingToPlot(f"every strategy has a NaN mean for {metric!r}")

    height = max(FIGURE_SIZE[1], 0.32 * len(leaderboard) + 1.2)
    figure = Figure(figsize=(FIGURE_SIZE[0] + 1, height), layout="constrained")
    axes = figure.add_subplot()
    positions = np.arange(len(leaderboard))[::-1]       # best at the top
    for position, row in zip(positions, leaderboard.itertuples()):
        mean = getattr(row, f"{metric}_mean")
        if not math.isfinite(mean):
            continue
        low, high = getattr(row, f"{metric}_ci_low"), getattr(row, f"{metric}_ci_high")
        color = _FAMILY_COLORS.get(row.family, _OTHER_COLOR)
        if math.isfinite(low) and math.isfinite(high):
            axes.errorbar(mean, position, xerr=[[max(mean - low, 0)], [max(high - mean, 0)]], fmt="o",
                          color=color, capsize=3)
        else:
            axes.plot(mean, position, "o", color=color)
    axes.set_yticks(positions, [_plain(s) for s in leaderboard["strategy"]], fontsize=8)
    axes.set_xlabel(f"{_plain(metric)} (mean over folds, 95% t interval)")
    families = [f for f in _FAMILY_COLORS if f in set(leaderboard["family"])]
    for family in families:
        axes.plot([], [], "o", color=_FAMILY_COLORS[family], label=family)
    if families:
        axes.legend(loc="best", fontsize=8)
    axes.grid(axis="x", alpha=0.3)
    axes.set_title(f"Strategies by {_plain(metric)}")
    return figure


def plot_robustness_curves(robustness: pd.DataFrame, metric: str) -> Figure:
    """Plot ``metric`` against the fraction of subjects missing each modality, one panel per family.

    Fraction 0 is the full data. A point is hollow where the strategy did not predict
    every subject it predicts with the full data (``handled`` False).
    """
    curve = robustness[robustness["kind"].isin(["full data", "removed in training and test"])]
    curve = curve.dropna(subset=[f"{metric}_mean"])
    if curve.empty or curve["fraction"].nunique() < 2:
        raise NothingToPlot("no missing-fraction scenario has a defined metric")

    families = list(dict.fromkeys(s.split(":", 1)[0] for s in curve["strategy"]))
    columns = min(3, len(families))
    rows = math.ceil(len(families) / columns)
    figure = Figure(figsize=(3.4 * columns, 2.8 * rows + 0.4), layout="constrained")
    axes_grid = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    markers = "os^vD<>ph*"
    for axes, family in zip(axes_grid.flat, families):
        part_family = curve[curve["strategy"].str.split(":").str[0] == family]
        for index, (strategy, part) in enumerate(part_family.groupby("strategy", sort=False)):
            part = part.sort_values("fraction")
            marker = markers[index % len(markers)]
            line = axes.plot(part["fraction"], part[f"{metric}_mean"], "-", marker=marker, label=_plain(strategy),
                             linewidth=1)[0]
            unhandled = part[~part["handled"].astype(bool)]
            axes.plot(unhandled["fraction"], unhandled[f"{metric}_mean"], marker, color="white",
                      markeredgecolor=line.get_color())
        axes.set_title(family, fontsize=9)
        axes.legend(fontsize=6, loc="best")
        axes.grid(alpha=0.3)
    for axes in list(axes_grid.flat)[len(families):]:
        axes.set_visible(False)
    figure.supxlabel("fraction of subjects missing each modality (training and test)", fontsize=9)
    figure.supylabel(_plain(metric), fontsize=9)
    figure.suptitle("Robustness to missing modalities (hollow: not every subject predicted)", fontsize=10)
    return figure


def write_benchmark_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` into a benchmark directory and return its path."""
    run_dir = Path(run_dir)
    path = run_dir / "benchmark.json"
    if not path.is_file():
        raise DataError(f"{path} not found; run 'fusion benchmark' to create the benchmark directory first")
    summary = json.loads(path.read_text())
    metric = summary["primary_metric"]
    leaderboard = pd.DataFrame(summary["leaderboard"])
    comparisons = pd.DataFrame(summary["comparisons"])
    robustness = pd.DataFrame(summary["robustness"])

    sections = [
        ("leaderboard", "Leaderboard", _leaderboard_html(leaderboard, metric)),
        ("plot", "Metric with intervals", _figure(lambda: plot_leaderboard(leaderboard, metric),
                                                  f"{metric}: mean over folds with 95% t interval")),
        ("comparisons", "Paired comparisons", _comparisons_html(comparisons)),
        ("robustness", "Missing-modality robustness", _robustness_html(robustness, metric)),
        ("timings", "Encoders", _encoders_html(summary)),
    ]
    generated = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    body = "\n".join(f'<section id="{a}"><h2>{_escape(t)}</h2>\n{html}</section>' for a, t, html in sections)
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_escape(summary['name'])}: fusion benchmark</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{_escape(summary['name'])}: benchmark</h1>\n"
        f'<p class="meta">task: <b>{_escape(summary["task"])}</b> · primary metric: <b>{_escape(metric)}</b> · '
        f"{summary['n_subjects']} subjects · modalities: {_escape(', '.join(summary['modalities']))} · "
        f"generated {_escape(generated)}</p></header>\n{body}\n</body>\n</html>\n"
    )
    report = run_dir / "report.html"
    _write_atomically(report, page)
    return report


def _interval(row: Any, metric: str) -> str:
    mean = row.get(f"{metric}_mean")
    low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    return f"{_format_number(mean)} [{_format_number(low)}, {_format_number(high)}]"


def _leaderboard_html(leaderboard: pd.DataFrame, metric: str) -> str:
    others = [c[:-5] for c in leaderboard.columns if c.endswith("_mean") and c != f"{metric}_mean"]
    header = ["rank", "strategy", "family", f"{metric} [95% CI]", *others, "coverage", "fit s", "with encoders s",
              "parameters"]
    rows = []
    for row in leaderboard.to_dict(orient="records"):
        parameters = row.get("n_parameters")
        rows.append([
            str(row["rank"]), _escape(row["strategy"]), _escape(row["family"]), _interval(row, metric),
            *[_interval(row, m) for m in others], f"{row['coverage']:.0%}", _format_number(row["fit_seconds"], 1),
            _format_number(row["total_seconds"], 1),
            "" if parameters is None or not math.isfinite(parameters) else f"{parameters:,.0f}",
        ])
    note = ('<p class="note">Means over outer folds with a 95% t interval, which treats folds as independent '
            "and is therefore too narrow; see the paired comparisons. Coverage: share of test subjects the "
            "strategy predicts (a unimodal model predicts only subjects with its modality). Fit time is the "
            "strategy's own fitting and prediction over all folds; strategies on cached encoder outputs add "
            "the encoders' cross-fitting time.</p>")
    return _table(header, rows, numeric=range(3, len(header))) + note


def _comparisons_html(comparisons: pd.DataFrame) -> str:
    if comparisons.empty:
        return '<p class="note">No comparison: fewer than two strategies have a defined metric.</p>'
    name = comparisons["test"].iloc[0]
    parts = [f"<p>Test: <b>{_escape(name)}</b>, two-sided, on the per-fold differences of "
             f"{_escape(comparisons['metric'].iloc[0])}. The variance is inflated by n_test / n_train to "
             "account for overlapping training sets.</p>"]
    for kind, part in comparisons.groupby("reference_kind", sort=False):
        reference = part["reference"].iloc[0]
        rows = [[_escape(r.strategy), _format_number(r.mean_difference), _format_number(r.t, 2),
                 _format_number(r.p_value), str(r.n_folds)] for r in part.itertuples()]
        parts.append(f"<h3>Against the {_escape(kind)} strategy: {_escape(reference)}</h3>")
        parts.append(_table(["strategy", "mean difference", "t", "p", "folds"], rows, numeric=[1, 2, 3, 4]))
    return "".join(parts)


def _robustness_html(robustness: pd.DataFrame, metric: str) -> str:
    if robustness.empty:
        return '<p class="note">No robustness scenario was run.</p>'
    parts = [_figure(lambda: plot_robustness_curves(robustness, metric),
                     f"{metric} against the fraction of subjects missing each modality")]
    removed = robustness[robustness["kind"] == "removed at test time"]
    if not removed.empty:
        modalities = list(dict.fromkeys(removed["modality"]))
        full = robustness[robustness["kind"] == "full data"].set_index("strategy")
        rows = []
        for strategy, part in removed.groupby("strategy", sort=False):
            part = part.set_index("modality")
            cells = [_escape(strategy), _format_number(full.loc[strategy, f"{metric}_mean"])]
            for modality in modalities:
                entry = part.loc[modality]
                value = _format_number(entry[f"{metric}_mean"])
                cells.append(value if entry["handled"] else f"not handled ({entry['coverage']:.0%} predicted)")
            rows.append(cells)
        parts.append(f"<h3>Each modality removed from every test subject ({_escape(metric)})</h3>")
        parts.append(_table(["strategy", "full data", *[f"without {m}" for m in modalities]], rows,
                            numeric=range(1, len(modalities) + 2)))
    parts.append('<p class="note">"Not handled": the strategy predicted fewer test subjects than with the full '
                 "data, because it needs the removed modality. Removal at test time reuses the strategy fitted on "
                 "the full data; the missing-fraction curve fits it again on the reduced training data, while the "
                 "cached encoders are not retrained.</p>")
    return "".join(parts)


def _encoders_html(summary: dict[str, Any]) -> str:
    seconds = summary.get("encoder_seconds") or {}
    if not seconds:
        return '<p class="note">Encoder outputs were reused from another run; their training time is not known.</p>'
    rows = [[_escape(name), _format_number(value, 1)] for name, value in seconds.items()]
    return _table(["modality", "cross-fitting seconds, all folds"], rows, numeric=[1])
