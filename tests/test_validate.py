"""`fusion validate` and the preflight report: summaries, warnings with fixes, errors."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from corpus import write_cohort

from fusion import DataError, load_config
from fusion._preflight import preflight
from fusion.cli import main

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_fusion_logger():
    fusion_logger = logging.getLogger("fusion")
    handlers = list(fusion_logger.handlers)
    yield
    fusion_logger.handlers[:] = handlers


def _write_expression(root: Path, matrix: np.ndarray, ids: list[str]) -> None:
    adata = ad.AnnData(matrix.astype(np.float32))
    adata.obs_names = ids
    adata.var_names = [f"G{j}" for j in range(matrix.shape[1])]
    adata.write_h5ad(root / "expression.h5ad")


def test_summaries_of_small_cohort(tmp_path):
    report = preflight(load_config(write_cohort(tmp_path)))
    summaries = report.summaries

    assert report.ok, report.format()
    assert summaries["alignment"]["n_with_target"] == 24
    mri = summaries["modalities"]["mri"]
    assert mri["n_files"] == 24
    assert mri["shapes"] == "(6, 6, 6) x 24"
    assert mri["spacings_mm"] == "(2.0, 2.0, 3.0) x 24"
    assert mri["channels"] == "1 x 24"
    rna = summaries["modalities"]["rna"]
    assert (rna["n_subjects"], rna["n_features"]) == (24, 10)
    assert rna["values"].startswith("centred")
    clinical = summaries["modalities"]["clinical"]["columns"]
    assert clinical["age"] == {"type": "continuous", "dtype": "float64", "missing": 0}
    assert clinical["sex"]["type"] == "categorical"
    assert summaries["target"]["class_counts"] == {"0": 12, "1": 12}
    folds = summaries["folds"]
    assert len(folds) == 3
    assert sum(f["class_counts"]["1"] for f in folds) == 12
    assert all(f["class_counts"] == {"0": 4, "1": 4} for f in folds)
    memory = summaries["memory"]["mri"]
    assert memory["float32_gib"] * 1024**3 == pytest.approx(24 * 1 * 4 * 4 * 4 * 4)


def test_cli_prints_report_and_writes_json(tmp_path, monkeypatch, capsys):
    config = write_cohort(tmp_path)
    monkeypatch.setattr(sys, "argv", ["fusion", "validate", str(config), "--json", str(tmp_path / "report.json")])
    main()
    output = capsys.readouterr().out
    assert "outer folds:" in output
    assert "  0: 8 subjects, class 0: 4, class 1: 4" in output
    assert "volume cache: 24 x (1, 4, 4, 4)" in output
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["ok"] is True
    assert saved["summaries"]["alignment"]["n_with_target"] == 24


def test_raw_counts_get_warning(tmp_path):
    config = write_cohort(tmp_path)
    counts = np.random.default_rng(1).poisson(40, size=(24, 10)).astype(float)
    counts[0, 0] = 500
    _write_expression(tmp_path, counts, [f"S{i:03d}" for i in range(24)])

    report = preflight(load_config(config))

    assert report.summaries["modalities"]["rna"]["values"] == "raw counts"
    messages = [str(p) for p in report.warnings if "raw counts" in p.message]
    assert len(messages) == 1
    assert "up to 500" in messages[0]
    assert "pp.log1p" in messages[0]


def test_log_values_recognised(tmp_path):
    config = write_cohort(tmp_path)
    counts = np.random.default_rng(1).poisson(40, size=(24, 10))
    _write_expression(tmp_path, np.log1p(counts), [f"S{i:03d}" for i in range(24)])
    report = preflight(load_config(config))
    assert report.summaries["modalities"]["rna"]["values"].startswith("non-negative, non-integer")
    assert not [p for p in report.warnings if "raw counts" in p.message]


def test_cache_larger_than_memory_is_error(tmp_path):
    report = preflight(load_config(write_cohort(tmp_path)), available_bytes=1000)
    errors = [str(p) for p in report.errors]
    assert len(errors) == 1
    assert "imaging 'mri'" in errors[0]
    assert "24 volumes of shape (1, 4, 4, 4)" in errors[0]
    assert "disk cache" in errors[0]
    assert "float32" in errors[0]


def test_longer_ids_get_hint(tmp_path):
    config = write_cohort(tmp_path)
    ids = [f"S{i:03d}" + ("A" if i % 2 else "") for i in range(24)]
    _write_expression(tmp_path, np.random.default_rng(0).normal(size=(24, 10)), ids)

    report = preflight(load_config(config))

    hints = [str(p) for p in report.warnings if "only up to its length" in p.message]
    assert len(hints) == 1
    assert "12 id(s)" in hints[0]
    assert "'S001A' and 'S001'" in hints[0]
    assert "lengths here [5], in the target table [4]" in hints[0]


def test_short_ids_not_taken_for_prefixes(tmp_path):
    config = write_cohort(tmp_path)
    ids = [f"S{i:03d}" for i in range(20)] + ["S00", "S01", "S02", "S10"]
    _write_expression(tmp_path, np.random.default_rng(0).normal(size=(24, 10)), ids)

    report = preflight(load_config(config))

    assert not [p for p in report.warnings if "only up to its length" in p.message]


def test_subjects_without_target_listed(tmp_path):
    config = write_cohort(tmp_path)
    table = pd.read_csv(tmp_path / "clinical.csv")
    table.loc[[2, 9], "response"] = np.nan
    table.to_csv(tmp_path / "clinical.csv", index=False)

    settings = load_config(config)
    report = preflight(settings)

    assert [str(p) for p in report.errors] == [
        "target: 2 subject(s) have no target value in response: S002, S009. Fix: add their target "
        "values, or set target.missing: exclude to leave these subjects out"
    ]
    assert report.summaries["alignment"]["excluded_ids"] == ["S002", "S009"]

    settings.target.missing = "exclude"
    report = preflight(settings)

    assert report.ok
    assert [str(p) for p in report.warnings if p.where == "target"] == [
        "target: 2 subject(s) have no target value and are excluded: S002, S009. Fix: add their "
        "target values; training never uses a subject without one"
    ]


def test_run_stops_before_creating_directory(tmp_path):
    from fusion._pipeline import run

    config = write_cohort(tmp_path)
    table = pd.read_csv(tmp_path / "clinical.csv")
    table["age"] = table["age"].astype(object)
    table.loc[4, "age"] = "unknown"
    table.to_csv(tmp_path / "clinical.csv", index=False)

    with pytest.raises(DataError, match="continuous column 'age' holds 1 value\\(s\\) that are not numbers"):
        run(load_config(config), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_error_gives_exit_status_two(tmp_path, monkeypatch, capsys):
    config = write_cohort(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["modalities"]["clinical"]["impute"] = "error"
    config.write_text(yaml.safe_dump(data))
    table = pd.read_csv(tmp_path / "clinical.csv")
    table.loc[3, "age"] = np.nan
    table.to_csv(tmp_path / "clinical.csv", index=False)

    monkeypatch.setattr(sys, "argv", ["fusion", "validate", str(config)])
    with pytest.raises(SystemExit) as exited:
        main()
    output = capsys.readouterr().out
    assert exited.value.code == 2
    assert output.splitlines()[-1] == "1 error(s) found"


def test_real_cohort_report(shared_data):
    config = load_config(REPOSITORY / "examples" / "tcga_lgg_idh.yaml")

    report = preflight(config, check_data=False)

    assert report.ok, report.format()
    summaries = report.summaries
    assert summaries["alignment"]["n_with_target"] == 101
    assert summaries["target"]["class_counts"] == {"0": 22, "1": 79}
    assert [f["n_subjects"] for f in summaries["folds"]] == [21, 20, 20, 20, 20]
    mri = summaries["modalities"]["mri"]
    assert mri["channels"] == f"1 x {mri['n_files']}"
    assert mri["shape_range"] == "(128-256, 128-256, 20-88)"
    assert summaries["modalities"]["cnv"]["n_features"] == 78
