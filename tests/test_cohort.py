"""Cohort alignment by id: shuffled rows, duplicates, no overlap, missing targets, config checks."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

from fusion import ConfigError, DataError, load_config
from fusion.data import build_cohort


def _write_cohort(root, rng, *, shuffle=False, n=40):
    ids = [f"P{i:03d}" for i in range(n)]
    clinical = pd.DataFrame({
        "pid": ids,
        "age": rng.normal(60, 10, n).round(1),
        "sex": rng.choice(["F", "M"], n),
        "response": rng.integers(0, 2, n),
        "site": rng.choice(["A", "B"], n),
    })
    clinical.loc[3, "response"] = np.nan
    omics_ids = ids[5:]
    matrix = rng.normal(size=(len(omics_ids), 12)).astype(np.float32)
    if shuffle:
        clinical = clinical.sample(frac=1.0, random_state=1)
        order = rng.permutation(len(omics_ids))
        omics_ids = [omics_ids[i] for i in order]
        matrix = matrix[order]
    clinical.to_csv(root / "clinical.csv", index=False)
    adata = ad.AnnData(matrix)
    adata.obs_names = omics_ids
    adata.var_names = [f"G{j}" for j in range(12)]
    adata.write_h5ad(root / "expression.h5ad")
    config = {
        "name": "cohort_test",
        "target": {"id_column": "pid", "kind": "binary", "column": "response"},
        "modalities": {
            "expression": {"kind": "omics", "files": ["expression.h5ad"]},
            "clinical": {"kind": "clinical", "table": "clinical.csv", "id_column": "pid",
                         "categorical": ["sex"], "continuous": ["age"]},
        },
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root / "config.yaml"


def test_alignment_counts(tmp_path, rng):
    cohort = build_cohort(load_config(_write_cohort(tmp_path, rng)))
    report = cohort.alignment
    assert report["n_with_target"] == 39
    assert report["excluded_without_target"] == 1
    assert report["modalities"]["expression"]["n_present"] == 35
    assert report["modalities"]["expression"]["missing_here"] == ["P000", "P001", "P002", "P004"]
    assert report["modalities"]["clinical"]["n_present"] == 39


def test_shuffled_rows_align_identically(tmp_path, rng):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ordered = build_cohort(load_config(_write_cohort(tmp_path / "a", np.random.default_rng(3))))
    shuffled = build_cohort(load_config(_write_cohort(tmp_path / "b", np.random.default_rng(3), shuffle=True)))
    omics_a = ordered.sources["expression"].data.sort_index()
    omics_b = shuffled.sources["expression"].data.sort_index()
    pd.testing.assert_frame_equal(omics_a, omics_b)
    pd.testing.assert_frame_equal(ordered.target.sort_index(), shuffled.target.sort_index())
    pd.testing.assert_frame_equal(ordered.availability.sort_index(), shuffled.availability.sort_index())


def test_duplicate_ids_are_an_error(tmp_path, rng):
    config = _write_cohort(tmp_path, rng)
    table = pd.read_csv(tmp_path / "clinical.csv")
    table.loc[7, "pid"] = table.loc[8, "pid"]
    table.to_csv(tmp_path / "clinical.csv", index=False)
    with pytest.raises(DataError, match="P008"):
        build_cohort(load_config(config))


def test_disjoint_ids_name_both_sources(tmp_path, rng):
    config = _write_cohort(tmp_path, rng)
    adata = ad.read_h5ad(tmp_path / "expression.h5ad")
    adata.obs_names = [f"S{i:03d}" for i in range(adata.n_obs)]
    adata.write_h5ad(tmp_path / "expression.h5ad")
    with pytest.raises(DataError, match="overlap 0") as error:
        build_cohort(load_config(config))
    assert "expression" in str(error.value)
    assert "S000" in str(error.value)
    assert "P" in str(error.value)


def test_nan_in_omics_is_an_error(tmp_path, rng):
    config = _write_cohort(tmp_path, rng)
    adata = ad.read_h5ad(tmp_path / "expression.h5ad")
    adata.X[2, 4] = np.nan
    adata.write_h5ad(tmp_path / "expression.h5ad")
    with pytest.raises(DataError, match="NaN or infinite") as error:
        build_cohort(load_config(config))
    assert f"{adata.obs_names[2]}/G4" in str(error.value)


def test_outcome_as_feature_is_rejected(tmp_path, rng):
    config_path = _write_cohort(tmp_path, rng)
    config = yaml.safe_load(config_path.read_text())
    config["modalities"]["clinical"]["continuous"].append("response")
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="outcome column"):
        load_config(config_path)


def test_declared_outcome_column_is_rejected(tmp_path, rng):
    config_path = _write_cohort(tmp_path, rng)
    config = yaml.safe_load(config_path.read_text())
    config["target"]["outcome_columns"] = ["age"]
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"outcome column\(s\) \['age'\]"):
        load_config(config_path)


def test_parquet_table_reads_like_csv(tmp_path, rng):
    config_path = _write_cohort(tmp_path, rng)
    pd.read_csv(tmp_path / "clinical.csv").to_parquet(tmp_path / "clinical.parquet")
    config = yaml.safe_load(config_path.read_text())
    config["modalities"]["clinical"]["table"] = "clinical.parquet"
    config["target"]["table"] = "clinical.parquet"
    config_path.write_text(yaml.safe_dump(config))
    from_parquet = build_cohort(load_config(config_path))
    from_csv = build_cohort(load_config(_write_cohort(tmp_path, np.random.default_rng(0))))
    assert from_parquet.alignment == from_csv.alignment


def test_unknown_key_suggests_closest(tmp_path, rng):
    config_path = _write_cohort(tmp_path, rng)
    config = yaml.safe_load(config_path.read_text())
    config["tuning"] = {"n_trail": 3}
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="did you mean 'n_trials'"):
        load_config(config_path)


def test_wrong_type_names_key_and_value(tmp_path, rng):
    config_path = _write_cohort(tmp_path, rng)
    config = yaml.safe_load(config_path.read_text())
    config["evaluation"] = {"outer_folds": "five"}
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="evaluation.outer_folds") as error:
        load_config(config_path)
    assert "'five'" in str(error.value)


def test_target_without_id_column_is_an_error(tmp_path, rng):
    config_path = _write_cohort(tmp_path, rng)
    config = yaml.safe_load(config_path.read_text())
    config["target"]["id_column"] = "patient"
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(DataError, match="id column 'patient' not found") as error:
        build_cohort(load_config(config_path))
    assert "never matched by position" in str(error.value)


def test_real_cohort_alignment(shared_data, tmp_path):
    root = shared_data / "tcga_lgg"
    config = {
        "name": "tcga",
        "cache_dir": str(tmp_path / "cache"),
        "target": {"table": str(root / "clinical.csv"), "id_column": "patient_id", "kind": "survival",
                   "time": "os_days", "event": "os_event"},
        "modalities": {
            "cnv": {"kind": "omics", "files": [str(root / "omics/cnv.h5ad")]},
            "mutation": {"kind": "omics", "files": [str(root / "omics/mutation.h5ad")]},
            "pathways": {"kind": "omics", "files": [str(root / "omics/expression_pathways.h5ad")]},
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cohort = build_cohort(load_config(path))
    report = cohort.alignment
    assert report["n_with_target"] == 108
    assert report["excluded_without_target"] == 2
    assert int(cohort.target["event"].sum()) == 32
    present = {name: entry["n_present"] + len(entry["only_here"]) for name, entry in report["modalities"].items()}
    assert present == {"cnv": 100, "mutation": 106, "pathways": 57}
