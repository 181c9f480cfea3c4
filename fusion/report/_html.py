"""A self-contained HTML report of a run directory.

:func:`write_report` reads the artifacts that a run writes and renders one HTML file
with inline CSS and every figure embedded as a base64 PNG, so the page opens offline
in any browser. ``metrics.json`` and ``predictions.csv`` are required. When any other
artifact is absent, its section states that instead of showing results.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from .._errors import DataError
from .._logging import logger
from .._task import TARGET_COLUMNS
from . import _plots

__all__ = ["write_report"]

REPORT_NAME = "report.html"
FUSED_MODEL = "fused"
MAX_LISTED_IDS = 5  # maximum number of missing subject ids listed per modality

_CONTRIBUTION_ID_COLUMNS = ("subject_id", "fold", "baseline", "prediction")
# Present when cross-validation is repeated; not a modality.
_CONTRIBUTION_OPTIONAL_COLUMNS = ("repeat",)
_ATTRIBUTION_COLUMNS = ("subject_id", "fold", "modality", "feature", "attribution")

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 980px; margin: 0 auto; padding: 1.5em; line-height: 1.45; }
header { border-bottom: 2px solid #c0392b; margin-bottom: 1em; }
h1 { margin: 0 0 0.2em 0; font-size: 1.7em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; font-size: 1.3em; }
.meta { color: #555; margin: 0 0 0.8em 0; }
nav ol { columns: 2; margin: 0.3em 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.note { color: #666; font-size: 0.9em; }
.absent { color: #8a6d3b; background: #fcf8e3; padding: 0.4em 0.7em; border-radius: 3px; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
details { margin: 0.6em 0; }
summary { cursor: pointer; color: #2e6da4; }
pre { background: #f7f7f7; padding: 0.7em; overflow-x: auto; font-size: 0.85em; }
"""


@dataclasses.dataclass
class _Run:
    """Artifacts of one run directory, with None for each absent optional artifact."""

    directory: Path
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    config: dict[str, Any] | None
    config_text: str | None
    alignment: dict[str, Any] | None
    contributions: pd.DataFrame | None
    attributions: pd.DataFrame | None
    tuning: dict[str, Any] | None
    timings: dict[str, Any] | None

    @property
    def task(self) -> str:
        return str(self.metrics["task"])

    @property
    def name(self) -> str:
        if self.config is not None and self.config.get("name"):
            return str(self.config["name"])
        return self.directory.name

    @property
    def models(self) -> dict[str, Any]:
        return self.metrics["models"]

    @property
    def fused_models(self) -> list[str]:
        return [name for name, model in self.models.items() if _is_fused(name, model)]


@dataclasses.dataclass
class _Section:
    anchor: str
    title: str
    body: str


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` into a run directory and return its path.

    The file is written to a temporary file in the same directory and then moved over
    any previous report, so a reader never sees a half-written page.

    Parameters
    ----------
    run_dir
        Run directory holding ``metrics.json`` and ``predictions.csv`` and, optionally,
        ``config.yaml``, ``alignment.json``, ``modality_contributions.csv``,
        ``feature_attributions.csv``, ``tuning.json`` and ``timings.json``.

    Returns
    -------
    Path
        ``run_dir / "report.html"``.

    Raises
    ------
    DataError
        If the directory, ``metrics.json`` or ``predictions.csv`` is missing, or an
        artifact does not follow its layout (the message names the file and the field).
    """
    started = time.perf_counter()
    directory = Path(run_dir)
    if not directory.is_dir():
        msg = f"run directory {str(directory)!r} not found; pass the folder that the run wrote"
        raise DataError(msg)

    run = _load_run(directory)
    page = _render_page(run)

    path = directory / REPORT_NAME
    _write_atomically(path, page)
    logger.info(
        "wrote %s (%d figures, %.1f kB) in %.1f s",
        path,
        page.count('<img src="data:image/png;base64,'),
        len(page.encode("utf-8")) / 1024,
        time.perf_counter() - started,
    )
    return path


# Reading and validating the artifacts


def _load_run(directory: Path) -> _Run:
    metrics = _read_json(directory, "metrics.json", required=True)
    _validate_metrics(metrics, directory / "metrics.json")
    task = str(metrics["task"])

    predictions = _read_csv(directory, "predictions.csv", required=True)
    _validate_predictions(predictions, task, list(metrics["models"]), directory / "predictions.csv")

    config, config_text = _read_config(directory)
    alignment = _read_json(directory, "alignment.json", required=False)
    if alignment is not None:
        _validate_alignment(alignment, directory / "alignment.json")

    contributions = _read_csv(directory, "modality_contributions.csv", required=False)
    if contributions is not None:
        _validate_contributions(contributions, directory / "modality_contributions.csv")

    attributions = _read_csv(directory, "feature_attributions.csv", required=False)
    if attributions is not None:
        path = directory / "feature_attributions.csv"
        _require_columns(attributions, _ATTRIBUTION_COLUMNS, path)
        attributions["attribution"] = _numeric_column(attributions, "attribution", path)

    tuning = _read_json(directory, "tuning.json", required=False)
    if tuning is not None:
        _validate_tuning(tuning, directory / "tuning.json")
    timings = _read_json(directory, "timings.json", required=False)
    if timings is not None:
        _validate_timings(timings, directory / "timings.json")

    return _Run(
        directory=directory,
        metrics=metrics,
        predictions=predictions,
        config=config,
        config_text=config_text,
        alignment=alignment,
        contributions=contributions,
        attributions=attributions,
        tuning=tuning,
        timings=timings,
    )


def _read_json(directory: Path, name: str, *, required: bool) -> Any:
    path = directory / name
    if not path.is_file():
        if required:
            raise _missing_artifact_error(directory, name)
        return None
    try:
        # Python's json accepts the NaN literal that metrics of undefined folds produce.
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        where = f"line {error.lineno}, column {error.colno}: {error.msg}"
        msg = f"{path} is not valid JSON ({where}); rewrite the file"
        raise DataError(msg) from error


def _read_csv(directory: Path, name: str, *, required: bool) -> pd.DataFrame | None:
    path = directory / name
    if not path.is_file():
        if required:
            raise _missing_artifact_error(directory, name)
        return None
    try:
        # Subject ids stay strings so that "007" is not read as the number 7.
        return pd.read_csv(path, dtype={"subject_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        msg = f"{path} could not be read as CSV ({error}); rewrite the file"
        raise DataError(msg) from error


def _read_config(directory: Path) -> tuple[dict[str, Any] | None, str | None]:
    path = directory / "config.yaml"
    if not path.is_file():
        return None, None
    text = path.read_text(encoding="utf-8")
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        msg = f"{path} is not valid YAML ({error}); rewrite the file"
        raise DataError(msg) from error
    if not isinstance(config, dict):
        msg = f"{path} must contain a mapping at the top level, got {type(config).__name__}"
        raise DataError(msg)
    return config, text


def _missing_artifact_error(directory: Path, name: str) -> DataError:
    msg = (
        f"{name} not found in run directory {str(directory)!r}; the report needs it. "
        "Finish the run (evaluation writes metrics.json and predictions.csv) "
        "or pass a complete run directory"
    )
    return DataError(msg)


def _validate_metrics(metrics: Any, path: Path) -> None:
    if not isinstance(metrics, dict):
        msg = f"{path} must contain a JSON object, got {type(metrics).__name__}"
        raise DataError(msg)
    _require_keys(metrics, ("task", "primary_metric", "models"), path)

    if metrics["task"] not in TARGET_COLUMNS:
        msg = f"{path}: task must be one of {sorted(TARGET_COLUMNS)}, got {metrics['task']!r}"
        raise DataError(msg)
    models = metrics["models"]
    if not isinstance(models, dict) or not models:
        msg = (
            f"{path}: 'models' must be a non-empty object of model name to results, got {models!r}"
        )
        raise DataError(msg)
    for name, model in models.items():
        if not isinstance(model, dict) or not isinstance(model.get("summary"), dict):
            msg = (
                f"{path}: model {name!r} has no 'summary' object of metric name to "
                "mean, sd, ci_low, ci_high and n"
            )
            raise DataError(msg)


def _validate_predictions(
    predictions: pd.DataFrame, task: str, models: list[str], path: Path
) -> None:
    required = ["subject_id", *TARGET_COLUMNS[task]]
    for model in models:
        if task == "multiclass":
            if not _class_score_columns(predictions, model):
                required.append(f"score_{model}_0")
        else:
            required.append(f"score_{model}")
    _require_columns(predictions, required, path)

    for column in TARGET_COLUMNS[task]:
        if column == "event":
            predictions["event"] = _event_column(predictions, path)
        else:
            predictions[column] = _numeric_column(predictions, column, path)
    for column in predictions.columns:
        if column.startswith("score_"):
            predictions[column] = _numeric_column(predictions, column, path)


def _validate_contributions(contributions: pd.DataFrame, path: Path) -> None:
    _require_columns(contributions, _CONTRIBUTION_ID_COLUMNS, path)
    modality_columns = _modality_columns(contributions)
    if not modality_columns:
        msg = (
            f"{path} has no modality column after {list(_CONTRIBUTION_ID_COLUMNS)}; "
            "expected one column of Shapley values per modality"
        )
        raise DataError(msg)
    for column in ("baseline", "prediction", *modality_columns):
        contributions[column] = _numeric_column(contributions, column, path)


def _validate_alignment(alignment: Any, path: Path) -> None:
    _require_keys(alignment, ("n_subjects", "modalities"), path)
    modalities = alignment["modalities"]
    if not isinstance(modalities, dict):
        kind = type(modalities).__name__
        msg = f"{path}: 'modalities' must be an object of modality name to counts, got {kind}"
        raise DataError(msg)
    for name, entry in modalities.items():
        if not isinstance(entry, dict):
            msg = (
                f"{path}: modality {name!r} must map to an object with "
                "n_present, only_here and missing_here"
            )
            raise DataError(msg)


def _validate_tuning(tuning: Any, path: Path) -> None:
    _require_keys(tuning, ("per_fold",), path)
    entries = tuning["per_fold"]
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        msg = (
            f"{path}: 'per_fold' must be a list of objects with "
            "fold, best_params, best_value and n_trials"
        )
        raise DataError(msg)


def _validate_timings(timings: Any, path: Path) -> None:
    if not isinstance(timings, dict):
        kind = type(timings).__name__
        msg = f"{path} must contain a JSON object of stage name to seconds, got {kind}"
        raise DataError(msg)
    not_numbers = {stage: value for stage, value in timings.items() if not _is_number(value)}
    if not_numbers:
        msg = f"{path}: every stage must map to a number of seconds, got {not_numbers}"
        raise DataError(msg)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require_keys(mapping: Any, keys: Iterable[str], path: Path) -> None:
    if not isinstance(mapping, dict):
        msg = f"{path} must contain a JSON object, got {type(mapping).__name__}"
        raise DataError(msg)
    missing = [key for key in keys if key not in mapping]
    if missing:
        msg = f"{path} lacks the key(s) {missing}; it has {sorted(mapping)}"
        raise DataError(msg)


def _require_columns(table: pd.DataFrame, columns: Iterable[str], path: Path) -> None:
    missing = [column for column in columns if column not in table.columns]
    if missing:
        msg = f"{path} lacks the column(s) {missing}; it has {list(table.columns)}"
        raise DataError(msg)


def _numeric_column(table: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = pd.to_numeric(table[column], errors="coerce")
    bad = values.isna() & table[column].notna()
    if bad.any():
        examples = table.loc[bad, column].astype(str).head(3).tolist()
        msg = (
            f"{path}: column {column!r} must be numeric, "
            f"but {int(bad.sum())} value(s) are not, e.g. {examples}"
        )
        raise DataError(msg)
    return values.astype(float)


def _event_column(table: pd.DataFrame, path: Path) -> pd.Series:
    spellings = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}
    as_text = table["event"].astype(str).str.strip().str.lower()
    unknown = ~as_text.isin(list(spellings))
    if unknown.any():
        examples = table.loc[unknown, "event"].astype(str).head(3).tolist()
        msg = f"{path}: column 'event' must be True/False or 1/0 in every row, got {examples}"
        raise DataError(msg)
    return as_text.map(spellings).astype(bool)


def _class_score_columns(predictions: pd.DataFrame, model: str) -> list[str]:
    """Return ``score_<model>_<k>`` columns ordered by the class index ``k``."""
    prefix = f"score_{model}_"
    indexed = [
        (int(column[len(prefix) :]), column)
        for column in predictions.columns
        if column.startswith(prefix) and column[len(prefix) :].isdigit()
    ]
    return [column for _, column in sorted(indexed)]


def _modality_columns(contributions: pd.DataFrame) -> list[str]:
    skipped = _CONTRIBUTION_ID_COLUMNS + _CONTRIBUTION_OPTIONAL_COLUMNS
    return [column for column in contributions.columns if column not in skipped]


def _is_fused(name: str, model: Mapping[str, Any]) -> bool:
    return name == FUSED_MODEL or model.get("kind") == "fused"


# Formatting


def _format_number(value: Any, digits: int = 3) -> str:
    """Format a number with ``digits`` decimals for HTML.

    None becomes "n/a", NaN "NaN", and a value that is not a number its escaped text.
    """
    if value is None:
        return "n/a"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return _escape(value)
    if math.isnan(number):
        return "NaN"
    return f"{number:.{digits}f}"


def _format_interval(summary: Mapping[str, Any]) -> str:
    """Format a summary for HTML as ``mean [ci_low, ci_high]``, or the mean alone without a CI."""
    mean = _format_number(summary.get("mean"))
    low = _finite_or_none(summary.get("ci_low"))
    high = _finite_or_none(summary.get("ci_high"))
    if low is None or high is None:
        return mean
    return f"{mean} [{low:.3f}, {high:.3f}]"


def _format_parameter(value: Any) -> str:
    # Three significant digits, because a learning rate of 1e-4 has no digit in three decimals.
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _finite_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _escape(value: Any) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[str]], numeric: Iterable[int] = ()) -> str:
    """Build an HTML table from a plain-text ``header`` and ``rows`` of already escaped cells."""
    numeric = set(numeric)
    head = "".join(f"<th>{_escape(title)}</th>" for title in header)
    body = []
    for row in rows:
        cells = []
        for position, cell in enumerate(row):
            attribute = ' class="num"' if position in numeric else ""
            cells.append(f"<td{attribute}>{cell}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _absent(name: str, what: str) -> str:
    text = f"{name} is absent from the run directory, so {what}."
    return f'<p class="absent">{_escape(text)}</p>'


def _figure(build: Callable[[], Figure], caption: str) -> str:
    """Draw a figure as an ``<img>`` holding a base64 PNG, or a note saying why it is missing."""
    try:
        figure = build()
    except _plots.NothingToPlot as reason:
        return f'<p class="note">Figure not drawn: {_escape(reason)}.</p>'
    encoded = base64.b64encode(_plots.figure_to_png(figure)).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{encoded}" alt="{_escape(caption)}">'
        f"<figcaption>{_escape(caption)}</figcaption></figure>"
    )


# Sections


def _render_page(run: _Run) -> str:
    sections = [
        _overview_section(run),
        _alignment_section(run),
        _performance_section(run),
        _predictions_section(run),
        _contributions_section(run),
        _attributions_section(run),
        _tuning_section(run),
        _timings_section(run),
    ]
    explanations = _explanations_section(run)
    if explanations is not None:
        sections.append(explanations)
    generated = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    contents = "".join(
        f'<li><a href="#{section.anchor}">{_escape(section.title)}</a></li>' for section in sections
    )
    body = "\n".join(
        f'<section id="{section.anchor}"><h2>{_escape(section.title)}</h2>\n'
        f"{section.body}</section>"
        for section in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_escape(run.name)}: fusion report</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{_escape(run.name)}</h1>\n"
        f'<p class="meta">task: <b>{_escape(run.task)}</b> · primary metric: '
        f"<b>{_escape(run.metrics['primary_metric'])}</b> · generated {_escape(generated)}<br>"
        f"run directory: <code>{_escape(run.directory.resolve())}</code></p>\n"
        f"<nav><b>Contents</b><ol>{contents}</ol></nav></header>\n"
        f"{body}\n</body>\n</html>\n"
    )


def _overview_section(run: _Run) -> _Section:
    parts = [
        (
            f"<p>Run <b>{_escape(run.name)}</b>, task <b>{_escape(run.task)}</b>, "
            f"{len(run.models)} model(s): {_escape(', '.join(run.models))}.</p>"
        )
    ]
    if run.config is None:
        parts.append(_absent("config.yaml", "the modalities and the configuration are not shown"))
        return _Section("run", "Run", "".join(parts))

    modalities = run.config.get("modalities") or {}
    rows = []
    for name, settings in modalities.items():
        kind = settings.get("kind", "n/a") if isinstance(settings, dict) else "n/a"
        rows.append([_escape(name), _escape(kind)])
    parts.append(_table(["modality", "kind"], rows))

    target = run.config.get("target")
    if isinstance(target, dict) and target.get("kind") not in (None, run.task):
        parts.append(
            f'<p class="note">config.yaml declares target kind {_escape(target.get("kind"))}, '
            f"metrics.json task {_escape(run.task)}; the report follows metrics.json.</p>"
        )
    parts.append(
        "<details><summary>Resolved configuration (config.yaml)</summary>"
        f"<pre>{_escape(run.config_text)}</pre></details>"
    )
    return _Section("run", "Run", "".join(parts))


def _alignment_section(run: _Run) -> _Section:
    title = "Cohort and modality alignment"
    alignment = run.alignment
    if alignment is None:
        return _Section(
            "alignment",
            title,
            _absent("alignment.json", "subject counts per modality are not shown"),
        )

    n_subjects = alignment.get("n_subjects")
    parts = [
        (
            f"<p>{_escape(n_subjects)} subjects, "
            f"{_escape(alignment.get('n_with_target', 'n/a'))} with a target; "
            f"{_escape(alignment.get('excluded_without_target', 'n/a'))} excluded "
            "for lack of a target.</p>"
        )
    ]
    rows = []
    for name, entry in (alignment.get("modalities") or {}).items():
        missing = [str(subject) for subject in entry.get("missing_here", [])]
        listed = ", ".join(missing[:MAX_LISTED_IDS]) + (
            ", …" if len(missing) > MAX_LISTED_IDS else ""
        )
        rows.append(
            [
                _escape(name),
                f"{_escape(entry.get('n_present', 'n/a'))} of {_escape(n_subjects)}",
                str(len(missing)),
                _escape(listed) if missing else "none",
                str(len(entry.get("only_here", []))),
            ]
        )
    parts.append(
        _table(
            [
                "modality",
                "subjects present",
                "missing",
                f"missing ids (first {MAX_LISTED_IDS})",
                "only in this modality",
            ],
            rows,
            numeric=(2, 4),
        )
    )
    return _Section("alignment", title, "".join(parts))


def _performance_section(run: _Run) -> _Section:
    primary = str(run.metrics["primary_metric"])
    metric_names = _metric_names(run.models, primary)

    best = {metric: _best_models(run.models, metric) for metric in metric_names}
    rows = []
    for name, model in run.models.items():
        row = [
            f"<b>{_escape(name)}</b>" if name in run.fused_models else _escape(name),
            _escape(model.get("kind", "n/a")),
        ]
        for metric in metric_names:
            summary = model["summary"].get(metric)
            if summary is None:
                row.append("n/a")
                continue
            cell = _format_interval(summary)
            if name in best[metric]:
                cell = f"<b>{cell}</b>"
            tooltip = f"sd {_format_number(summary.get('sd'))}, n {summary.get('n', 'n/a')}"
            row.append(f'<span title="{_escape(tooltip)}">{cell}</span>')
        rows.append(row)
    lower = [metric for metric in metric_names if not _plots.metric_higher_is_better(metric)]
    direction = (
        f"lower is better for {', '.join(lower)}, higher for the others"
        if lower
        else "higher is better for all"
    )
    parts = [
        _table(["model", "kind", *metric_names], rows, numeric=range(2, 2 + len(metric_names))),
        (
            '<p class="note">Summary mean [confidence interval] from metrics.json; '
            "hover a cell for the SD and n. "
            f"Bold: best model per metric ({_escape(direction)}).</p>"
        ),
    ]

    summaries = {name: model["summary"].get(primary, {}) for name, model in run.models.items()}
    parts.append(
        _figure(
            lambda: _plots.plot_model_comparison(summaries, primary, fused_models=run.fused_models),
            f"Unimodal versus fused models: {primary}, summary mean with its confidence interval.",
        )
    )
    parts.append(_per_fold_details(run, primary))
    return _Section("performance", "Model performance", "".join(parts))


def _metric_names(models: Mapping[str, Any], primary: str) -> list[str]:
    names = [primary]
    for model in models.values():
        for metric in model["summary"]:
            if metric not in names:
                names.append(metric)
    return names


def _best_models(models: Mapping[str, Any], metric: str) -> set[str]:
    """Return the models whose mean, rounded as displayed, is the best for ``metric``."""
    means = {}
    for name, model in models.items():
        mean = _finite_or_none((model["summary"].get(metric) or {}).get("mean"))
        if mean is not None:
            means[name] = round(mean, 3)
    if not means:
        return set()
    best = max(means.values()) if _plots.metric_higher_is_better(metric) else min(means.values())
    return {name for name, mean in means.items() if mean == best}


def _per_fold_details(run: _Run, metric: str) -> str:
    folds = sorted(
        {entry.get("fold") for model in run.models.values() for entry in model.get("per_fold", [])}
        - {None}
    )
    rows = []
    for name, model in run.models.items():
        by_fold = {entry.get("fold"): entry.get(metric) for entry in model.get("per_fold", [])}
        pooled = (model.get("pooled") or {}).get(metric)
        rows.append(
            [
                _escape(name),
                *(_format_number(by_fold.get(fold)) for fold in folds),
                _format_number(pooled),
            ]
        )
    header = ["model", *(f"fold {fold}" for fold in folds), "pooled"]
    table = _table(header, rows, numeric=range(1, len(header)))
    return f"<details><summary>Per-fold and pooled {_escape(metric)}</summary>{table}</details>"


def _predictions_section(run: _Run) -> _Section:
    title = "Out-of-fold predictions"
    predictions = run.predictions
    fused = run.fused_models[0] if run.fused_models else None

    if run.task == "binary":
        scores = {name: predictions[f"score_{name}"].to_numpy() for name in run.models}
        body = _figure(
            lambda: _plots.plot_roc_curves(predictions["y"].to_numpy(), scores),
            "ROC curve of every model from pooled out-of-fold scores; subjects without "
            "a model's modality are left out of its curve.",
        )
    elif fused is None:
        body = '<p class="note">Figure not drawn: metrics.json lists no fused model.</p>'
    elif run.task == "survival":
        # NOTE: the split pools the out-of-fold scores of every fold's model, so a fold whose
        # model has a higher score offset places more of its subjects in the high-risk group.
        body = _figure(
            lambda: _plots.plot_kaplan_meier(
                predictions["time"].to_numpy(),
                predictions["event"].to_numpy(),
                predictions[f"score_{fused}"].to_numpy(),
            ),
            f"Kaplan–Meier curves of the {fused} model's risk groups, split at the median "
            "of the pooled out-of-fold risk scores, with 95% confidence bands.",
        )
    elif run.task == "regression":
        body = _figure(
            lambda: _plots.plot_predicted_vs_observed(
                predictions["y"].to_numpy(), predictions[f"score_{fused}"].to_numpy()
            ),
            f"Out-of-fold predictions of the {fused} model against the observed values.",
        )
    else:
        columns = _class_score_columns(predictions, fused)
        body = _figure(
            lambda: _plots.plot_confusion_matrix(
                predictions["y"].to_numpy(), predictions[columns].to_numpy()
            ),
            f"Confusion matrix of the {fused} model; "
            "the predicted class is the one with the highest score.",
        )
    n_folds = predictions["fold"].nunique() if "fold" in predictions.columns else "n/a"
    intro = f"<p>{len(predictions)} subjects, {_escape(n_folds)} folds.</p>"
    return _Section("predictions", title, intro + body)


def _contributions_section(run: _Run) -> _Section:
    title = "Modality contributions"
    table = run.contributions
    if table is None:
        return _Section(
            "contributions",
            title,
            _absent("modality_contributions.csv", "modality contributions are not shown"),
        )

    shapley = table[_modality_columns(table)]
    mean_absolute = shapley.abs().mean(axis=0)
    total = mean_absolute.sum()
    rows = []
    for modality in shapley.columns:
        share = 100.0 * mean_absolute[modality] / total if total > 0 else float("nan")
        rows.append(
            [
                _escape(modality),
                _format_number(mean_absolute[modality]),
                f"{_format_number(share, 1)}%",
                _format_number(shapley[modality].mean()),
            ]
        )
    # Shapley values are additive: a subject's modality values sum to prediction minus baseline.
    deviation = (
        (shapley.sum(axis=1, min_count=1) - (table["prediction"] - table["baseline"])).abs().max()
    )
    parts = [
        (
            f"<p>Shapley values over modality coalitions for {len(table)} subjects, "
            "in the unit of the raw score.</p>"
        ),
        _table(
            ["modality", "mean |Shapley value|", "share", "mean Shapley value"],
            rows,
            numeric=(1, 2, 3),
        ),
        (
            '<p class="note">Additivity check: the largest '
            "|sum of modality values − (prediction − baseline)| "
            f"over subjects is {_format_number(deviation)}.</p>"
        ),
        _figure(
            lambda: _plots.plot_modality_importance(shapley),
            "Mean absolute Shapley value per modality and its share of the total.",
        ),
        _figure(
            lambda: _plots.plot_modality_distribution(shapley),
            "Per-subject Shapley values per modality: box of the quartiles, one point per subject.",
        ),
    ]
    return _Section("contributions", title, "".join(parts))


def _attributions_section(run: _Run) -> _Section:
    title = "Feature attributions"
    table = run.attributions
    if table is None:
        return _Section(
            "attributions",
            title,
            _absent("feature_attributions.csv", "feature attributions are not shown"),
        )

    counts = table.groupby("modality", sort=False)["feature"].nunique()
    summary = ", ".join(
        f"{_escape(modality)} ({count} features)" for modality, count in counts.items()
    )
    body = (
        f"<p>Attributions for {table['subject_id'].nunique()} subjects: {summary}.</p>"
        + _figure(
            lambda: _plots.plot_feature_attributions(table),
            f"Top {_plots.TOP_FEATURES} features per modality by mean absolute attribution; "
            "red where the mean signed attribution is at least 0, blue where it is negative.",
        )
    )
    return _Section("attributions", title, body)


def _tuning_section(run: _Run) -> _Section:
    title = "Hyperparameter tuning"
    if run.tuning is None:
        return _Section("tuning", title, _absent("tuning.json", "no tuning results are shown"))

    rows = []
    for entry in run.tuning["per_fold"]:
        parameters = entry.get("best_params") or {}
        text = "; ".join(
            f"{name} = {_format_parameter(value)}" for name, value in parameters.items()
        )
        rows.append(
            [
                _escape(entry.get("fold", "n/a")),
                _format_number(entry.get("best_value")),
                _escape(entry.get("n_trials", "n/a")),
                _escape(text) or "none",
            ]
        )
    return _Section(
        "tuning",
        title,
        _table(["fold", "best value", "trials", "best parameters"], rows, numeric=(0, 1, 2)),
    )


def _timings_section(run: _Run) -> _Section:
    title = "Timings"
    if run.timings is None:
        return _Section("timings", title, _absent("timings.json", "no stage timings are shown"))

    rows = [[_escape(stage), _format_number(seconds)] for stage, seconds in run.timings.items()]
    total = float(np.nansum([float(seconds) for seconds in run.timings.values()]))
    rows.append(["<b>total</b>", f"<b>{_format_number(total)}</b>"])
    return _Section("timings", title, _table(["stage", "seconds"], rows, numeric=(1,)))


def _explanations_section(run: _Run) -> _Section | None:
    """Link the subject pages that ``fusion explain`` wrote into ``explain/``; None when there are none."""
    pages = sorted((run.directory / "explain").glob("*/index.html"))
    if not pages:
        return None
    items = "".join(
        f'<li><a href="explain/{_escape(page.parent.name)}/index.html">{_escape(page.parent.name)}</a></li>'
        for page in pages
    )
    body = (
        "<p>Pages written by <code>fusion explain</code>: modality contributions, top features "
        f"and voxel maps of each subject, from the model bundle.</p><ul>{items}</ul>"
    )
    return _Section("explanations", "Subject explanations", body)


# Writing


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        # mkstemp creates the file with mode 0600, but a report is meant to be shared.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
