"""Tests of the HTML report and its figures on small, hand-made run directories."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml

from fusion._errors import DataError
from fusion.report import (
    NothingToPlot,
    figure_to_png,
    metric_higher_is_better,
    plot_feature_attributions,
    plot_kaplan_meier,
    plot_modality_importance,
    plot_model_comparison,
    plot_roc_curves,
    write_report,
)

MODALITIES = {"clinical": "tabular", "rna": "omics"}
MODELS = ["clinical", "rna", "fused"]
N_SUBJECTS = 40
N_FOLDS = 4
IMG_TAG = '<img src="data:image/png;base64,'
OPTIONAL_ARTIFACTS = (
    "config.yaml",
    "alignment.json",
    "modality_contributions.csv",
    "feature_attributions.csv",
    "tuning.json",
    "timings.json",
)

PRIMARY_METRIC = {
    "binary": "auroc",
    "multiclass": "auroc_macro",
    "regression": "rmse",
    "survival": "c_index",
}


def summary(mean: float, low: float, high: float, sd: float = 0.05) -> dict:
    return {"mean": mean, "sd": sd, "ci_low": low, "ci_high": high, "n": N_FOLDS}


def make_metrics(task: str) -> dict:
    """Metrics with hand-picked values: fused is best on the primary metric, clinical on brier."""
    primary = PRIMARY_METRIC[task]
    # For rmse (lower is better) the fused model has the smallest mean.
    primary_means = {"clinical": 0.7, "rna": 0.65, "fused": 0.8123}
    if task == "regression":
        primary_means = {"clinical": 1.2, "rna": 1.4, "fused": 0.9876}
    models = {}
    for name in MODELS:
        mean = primary_means[name]
        summaries = {primary: summary(mean, mean - 0.1123, mean + 0.0877)}
        if task == "binary":
            summaries["brier"] = summary(
                {"clinical": 0.15, "rna": 0.2, "fused": 0.17}[name], 0.1, 0.25
            )
            summaries["auprc"] = (
                summary(float("nan"), float("nan"), float("nan"))
                if name == "rna"
                else summary(0.6, 0.5, 0.7)
            )
        models[name] = {
            "kind": "fused" if name == "fused" else "unimodal",
            "per_fold": [{"fold": fold, primary: mean + 0.01 * fold} for fold in range(N_FOLDS)],
            "summary": summaries,
            "pooled": {primary: mean},
        }
    return {"task": task, "primary_metric": primary, "models": models}


def make_predictions(task: str) -> pd.DataFrame:
    """Deterministic out-of-fold predictions; rna is absent for the last 5 subjects."""
    index = np.arange(N_SUBJECTS)
    table = pd.DataFrame({"subject_id": [f"P{i:03d}" for i in index], "fold": index % N_FOLDS})
    wave = np.sin(index)  # a fixed, non-monotone perturbation
    if task == "survival":
        table["time"] = 10.0 + index
        table["event"] = index % 3 != 0
        signal = -table["time"].to_numpy() / 10.0
    elif task == "regression":
        table["y"] = index / 4.0
        signal = table["y"].to_numpy()
    else:
        n_classes = 3 if task == "multiclass" else 2
        table["y"] = index % n_classes
        signal = table["y"].to_numpy().astype(float)
    for number, name in enumerate(MODELS):
        score = signal + (number + 1) * 0.4 * wave
        if task == "multiclass":
            for k in range(3):
                values = -np.abs(score - k)
                if name == "rna":
                    values[-5:] = np.nan
                table[f"score_{name}_{k}"] = values
            continue
        if name == "rna":
            score[-5:] = np.nan
        table[f"score_{name}"] = score
    return table


def make_contributions() -> pd.DataFrame:
    index = np.arange(N_SUBJECTS)
    clinical = 0.5 * np.cos(index)
    rna = 0.25 * np.sin(index)
    return pd.DataFrame(
        {
            "subject_id": [f"P{i:03d}" for i in index],
            "fold": index % N_FOLDS,
            "baseline": 0.1,
            "prediction": 0.1 + clinical + rna,
            "clinical": clinical,
            "rna": rna,
        }
    )


def make_attributions() -> pd.DataFrame:
    rows = []
    for subject in range(6):
        for number in range(20):
            rows.append(
                (f"P{subject:03d}", subject % N_FOLDS, "rna", f"GENE{number}", (number - 5) * 0.01)
            )
        for column in ("age", "grade"):
            rows.append(
                (
                    f"P{subject:03d}",
                    subject % N_FOLDS,
                    "clinical",
                    column,
                    0.3 if column == "age" else -0.1,
                )
            )
    return pd.DataFrame(rows, columns=["subject_id", "fold", "modality", "feature", "attribution"])


def make_run(directory: Path, task: str, *, optional: bool = True) -> Path:
    """Write a run directory of ``task``; ``optional=False`` writes only the required files."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.json").write_text(json.dumps(make_metrics(task)), encoding="utf-8")
    make_predictions(task).to_csv(directory / "predictions.csv", index=False)
    if not optional:
        return directory

    config = {
        "name": f"glioma-{task} <demo> & co",
        "seed": 7,
        "target": {"kind": task},
        "modalities": {name: {"kind": kind} for name, kind in MODALITIES.items()},
        "evaluation": {"n_folds": N_FOLDS},
        "tuning": {"n_trials": 20},
    }
    (directory / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    alignment = {
        "n_subjects": 42,
        "n_with_target": 40,
        "excluded_without_target": 2,
        "modalities": {
            "clinical": {"n_present": 40, "only_here": ["P100"], "missing_here": []},
            "rna": {
                "n_present": 35,
                "only_here": [],
                "missing_here": [f"P{i:03d}" for i in range(35, 42)],
            },
        },
    }
    (directory / "alignment.json").write_text(json.dumps(alignment), encoding="utf-8")
    make_contributions().to_csv(directory / "modality_contributions.csv", index=False)
    make_attributions().to_csv(directory / "feature_attributions.csv", index=False)
    tuning = {
        "per_fold": [
            {
                "fold": 0,
                "best_params": {"lr": 0.0001, "hidden": 32},
                "best_value": 0.81234,
                "n_trials": 20,
            }
        ]
    }
    (directory / "tuning.json").write_text(json.dumps(tuning), encoding="utf-8")
    (directory / "timings.json").write_text(
        json.dumps({"encoders": 1.5, "fusion": 2.25}), encoding="utf-8"
    )
    return directory


@pytest.fixture(scope="module")
def binary_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    directory = make_run(tmp_path_factory.mktemp("binary") / "run", "binary")
    path = write_report(directory)
    return path, path.read_text(encoding="utf-8")


def test_report_written_in_run_directory(binary_report: tuple[Path, str]) -> None:
    path, _ = binary_report
    assert path == path.parent / "report.html"
    assert path.is_file()


def test_report_is_one_complete_document(binary_report: tuple[Path, str]) -> None:
    _, text = binary_report
    assert text.startswith("<!DOCTYPE html>")
    assert text.rstrip().endswith("</html>")


def test_report_shows_escaped_run_name(binary_report: tuple[Path, str]) -> None:
    _, text = binary_report
    assert "<h1>glioma-binary &lt;demo&gt; &amp; co</h1>" in text


@pytest.mark.parametrize("model", MODELS)
def test_report_names_every_model(binary_report: tuple[Path, str], model: str) -> None:
    _, text = binary_report
    assert f">{model}<" in text


def test_interval_formatted_to_three_decimals(binary_report: tuple[Path, str]) -> None:
    # fused auroc: mean 0.8123, CI [0.8123 - 0.1123, 0.8123 + 0.0877] = [0.700, 0.900]
    _, text = binary_report
    assert "0.812 [0.700, 0.900]" in text


def test_best_higher_metric_in_bold(binary_report: tuple[Path, str]) -> None:
    _, text = binary_report
    assert "<b>0.812 [0.700, 0.900]</b>" in text


def test_best_lower_metric_in_bold(binary_report: tuple[Path, str]) -> None:
    # brier is lower-is-better, so clinical's 0.150 wins over fused's 0.170.
    _, text = binary_report
    assert "<b>0.150 [0.100, 0.250]</b>" in text
    assert "<b>0.170" not in text


def test_nan_metric_shown_as_nan(binary_report: tuple[Path, str]) -> None:
    _, text = binary_report
    assert ">NaN</span>" in text


def test_no_web_addresses(binary_report: tuple[Path, str]) -> None:
    _, text = binary_report
    assert "http://" not in text
    assert "https://" not in text


def test_contents_links_every_section(binary_report: tuple[Path, str]) -> None:
    _, text = binary_report
    for anchor in (
        "run",
        "alignment",
        "performance",
        "predictions",
        "contributions",
        "attributions",
        "tuning",
        "timings",
    ):
        assert f'href="#{anchor}"' in text
        assert f'<section id="{anchor}">' in text


def test_config_in_collapsible_block(binary_report: tuple[Path, str]) -> None:
    _, text = binary_report
    assert "<details><summary>Resolved configuration (config.yaml)</summary><pre>" in text
    assert "name: glioma-binary &lt;demo&gt; &amp; co" in text


def test_modality_kinds_listed(binary_report: tuple[Path, str]) -> None:
    _, text = binary_report
    assert "<td>rna</td><td>omics</td>" in text


def test_alignment_lists_first_missing_ids(binary_report: tuple[Path, str]) -> None:
    # rna misses 7 subjects (P035-P041); the first 5 are shown, then an ellipsis.
    _, text = binary_report
    assert '<td class="num">7</td><td>P035, P036, P037, P038, P039, …</td>' in text


def test_contribution_shares_in_percent(binary_report: tuple[Path, str]) -> None:
    contributions = make_contributions()
    clinical = contributions["clinical"].abs().mean()
    rna = contributions["rna"].abs().mean()
    _, text = binary_report
    assert f"{100 * clinical / (clinical + rna):.1f}%" in text
    assert f"{100 * rna / (clinical + rna):.1f}%" in text


def test_additivity_check_reported(binary_report: tuple[Path, str]) -> None:
    _, text = binary_report
    assert "(prediction − baseline)| over subjects is 0.000" in text


def test_tuning_parameters_keep_small_values(binary_report: tuple[Path, str]) -> None:
    _, text = binary_report
    assert "lr = 0.0001; hidden = 32" in text
    assert '<td class="num">0.812</td>' in text


def test_timings_total(binary_report: tuple[Path, str]) -> None:
    _, text = binary_report
    assert "<b>3.750</b>" in text


def test_images_are_valid_png(binary_report: tuple[Path, str]) -> None:
    _, text = binary_report
    first = text.split(IMG_TAG, 1)[1].split('"', 1)[0]
    assert base64.b64decode(first).startswith(b"\x89PNG\r\n\x1a\n")


def test_no_pyplot_figures_left_open(binary_report: tuple[Path, str]) -> None:
    assert plt.get_fignums() == []


@pytest.mark.parametrize("task", ["binary", "survival", "regression", "multiclass"])
def test_one_figure_per_plot(tmp_path: Path, task: str) -> None:
    # model comparison, the task's prediction plot, modality importance and spread, features
    text = write_report(make_run(tmp_path / task, task)).read_text(encoding="utf-8")
    assert text.count(IMG_TAG) == 5
    assert "Figure not drawn" not in text


def test_regression_best_is_lowest_rmse(tmp_path: Path) -> None:
    text = write_report(make_run(tmp_path / "run", "regression")).read_text(encoding="utf-8")
    assert "<b>0.988 [0.875, 1.075]</b>" in text


def test_optional_artifacts_absent(tmp_path: Path) -> None:
    text = write_report(make_run(tmp_path / "run", "survival", optional=False)).read_text(
        encoding="utf-8"
    )
    for name in OPTIONAL_ARTIFACTS:
        assert f'<p class="absent">{name} is absent from the run directory' in text
    assert text.count(IMG_TAG) == 2


def test_name_falls_back_to_directory(tmp_path: Path) -> None:
    text = write_report(make_run(tmp_path / "lgg-run-3", "binary", optional=False)).read_text(
        encoding="utf-8"
    )
    assert "<h1>lgg-run-3</h1>" in text


@pytest.mark.parametrize("name", ["metrics.json", "predictions.csv"])
def test_missing_required_artifact_raises(tmp_path: Path, name: str) -> None:
    directory = make_run(tmp_path / "run", "binary")
    (directory / name).unlink()
    with pytest.raises(DataError, match=f"{name} not found in run directory .*run"):
        write_report(directory)


def test_missing_run_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run directory .*nowhere.* not found"):
        write_report(tmp_path / "nowhere")


def test_missing_score_column_raises(tmp_path: Path) -> None:
    directory = make_run(tmp_path / "run", "binary", optional=False)
    make_predictions("binary").drop(columns="score_rna").to_csv(
        directory / "predictions.csv", index=False
    )
    with pytest.raises(DataError, match=r"predictions.csv lacks the column\(s\) \['score_rna'\]"):
        write_report(directory)


def test_unknown_task_raises(tmp_path: Path) -> None:
    directory = make_run(tmp_path / "run", "binary", optional=False)
    metrics = make_metrics("binary") | {"task": "ranking"}
    (directory / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    with pytest.raises(DataError, match="task must be one of .* got 'ranking'"):
        write_report(directory)


def test_invalid_json_names_file(tmp_path: Path) -> None:
    directory = make_run(tmp_path / "run", "binary")
    (directory / "timings.json").write_text("{encoders: 1}", encoding="utf-8")
    with pytest.raises(DataError, match="timings.json is not valid JSON"):
        write_report(directory)


def test_non_numeric_score_raises(tmp_path: Path) -> None:
    directory = make_run(tmp_path / "run", "binary", optional=False)
    predictions = make_predictions("binary").astype({"score_fused": object})
    predictions.loc[3, "score_fused"] = "high"
    predictions.to_csv(directory / "predictions.csv", index=False)
    with pytest.raises(DataError, match="'score_fused' must be numeric, but 1 value"):
        write_report(directory)


def test_rewrite_leaves_no_temporary_file(tmp_path: Path) -> None:
    directory = make_run(tmp_path / "run", "binary", optional=False)
    write_report(directory)
    path = write_report(directory)
    assert sorted(item.name for item in directory.iterdir()) == [
        "metrics.json",
        "predictions.csv",
        "report.html",
    ]
    assert path.read_text(encoding="utf-8").rstrip().endswith("</html>")


def test_all_nan_scores_noted_not_drawn(tmp_path: Path) -> None:
    directory = make_run(tmp_path / "run", "regression", optional=False)
    predictions = make_predictions("regression")
    predictions["score_fused"] = np.nan
    predictions.to_csv(directory / "predictions.csv", index=False)
    text = write_report(directory).read_text(encoding="utf-8")
    assert "Figure not drawn: no subject has both an observed and a predicted value." in text


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("auroc", True),
        ("c_index", True),
        ("r2", True),
        ("harrell_c", True),
        ("brier", False),
        ("integrated_brier", False),
        ("rmse", False),
        ("mae", False),
        ("log_loss", False),
    ],
)
def test_metric_direction(metric: str, expected: bool) -> None:
    assert metric_higher_is_better(metric) is expected


def test_roc_skips_nan_rows_per_model() -> None:
    # y = [0, 0, 1, 1] with scores [0.1, 0.4, 0.35, 0.8]: 3 of 4 pairs ranked right, AUROC 0.75.
    y = np.array([0, 0, 1, 1])
    figure = plot_roc_curves(
        y, {"fused": np.array([0.1, 0.4, 0.35, 0.8]), "rna": np.array([0.1, np.nan, 0.35, 0.8])}
    )
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels == ["fused (AUROC 0.750, n=4)", "rna (AUROC 1.000, n=3)"]


def test_roc_one_class_only_raises() -> None:
    with pytest.raises(NothingToPlot, match="both classes"):
        plot_roc_curves(np.array([1, 1, 1]), {"fused": np.array([0.1, 0.2, 0.3])})


def test_kaplan_meier_groups_split_at_median() -> None:
    # median 0.3: scores above it (0.4, 0.5) are high risk, the other 3 low risk.
    figure = plot_kaplan_meier(
        time=np.array([5.0, 4.0, 3.0, 2.0, 1.0]),
        event=np.array([True, False, True, True, True]),
        risk_score=np.array([0.1, 0.2, 0.3, 0.4, 0.5]),
    )
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels == ["high risk (n=2)", "low risk (n=3)"]


def test_kaplan_meier_equal_scores_raise() -> None:
    with pytest.raises(NothingToPlot, match="median"):
        plot_kaplan_meier(np.array([1.0, 2.0]), np.array([True, True]), np.array([0.5, 0.5]))


def test_modality_importance_shares() -> None:
    # mean |value|: a = 1, b = 3, so shares 25% and 75%, b first.
    figure = plot_modality_importance(pd.DataFrame({"a": [1.0, -1.0], "b": [3.0, 3.0]}))
    labels = [text.get_text() for text in figure.axes[0].texts]
    assert labels == ["3.000 (75%)", "1.000 (25%)"]


def test_feature_panel_keeps_top_fifteen() -> None:
    figure = plot_feature_attributions(make_attributions())
    rna_ticks = [label.get_text() for label in figure.axes[0].get_yticklabels()]
    assert len(rna_ticks) == 15
    assert rna_ticks[-1] == "GENE19"  # largest |attribution| (0.14) on top


def test_dollar_in_label_renders() -> None:
    attributions = pd.DataFrame(
        {
            "subject_id": ["P1"],
            "fold": [0],
            "modality": ["clinical"],
            "feature": ["cost $ per $ day"],
            "attribution": [0.2],
        }
    )
    png = figure_to_png(plot_feature_attributions(attributions))
    assert png.startswith(b"\x89PNG")


def test_png_has_no_software_chunk() -> None:
    png = figure_to_png(plot_modality_importance(pd.DataFrame({"a": [1.0]})))
    assert b"matplotlib.org" not in png


def test_figure_size_and_resolution() -> None:
    png = figure_to_png(plot_modality_importance(pd.DataFrame({"a": [1.0]})))
    width = int.from_bytes(png[16:20], "big")
    height = int.from_bytes(png[20:24], "big")
    assert (width, height) == (600, 400)


def test_nan_mean_listed_without_point() -> None:
    nan = float("nan")
    figure = plot_model_comparison(
        {
            "rna": {"mean": nan, "ci_low": nan, "ci_high": nan},
            "fused": {"mean": 0.8, "ci_low": 0.7, "ci_high": 0.9},
        },
        "auroc",
    )
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_xticklabels()] == ["rna", "fused"]
    assert [text.get_text() for text in axes.texts] == ["0.800"]


def test_comparison_all_nan_raises() -> None:
    with pytest.raises(NothingToPlot, match="every model has a NaN mean"):
        plot_model_comparison({"fused": {"mean": float("nan")}}, "auroc")
