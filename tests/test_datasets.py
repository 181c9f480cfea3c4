"""Tests of the synthetic demo cohort: files, geometry, missingness, ground truth, config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anndata
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from fusion._errors import ConfigError, FusionError
from fusion.config import load_config
from fusion.datasets import DemoCohort, make_demo_cohort
from fusion.datasets._synthetic import _simulate_outcome

# 40 subjects make every default missing count a whole number: 4 without imaging,
# 6 without omics, and round(0.1 * 36) = 4 without t1.
SMALL: dict[str, Any] = {
    "n_subjects": 40,
    "volume_shape": (12, 12, 8),
    "n_genes": 40,
    "n_signal_genes": 4,
}


def _files_under(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _subjects(cohort: DemoCohort) -> pd.DataFrame:
    return pd.DataFrame(cohort.ground_truth["subjects"]).set_index("subject_id")


def _manifest(cohort: DemoCohort) -> pd.DataFrame:
    return pd.read_csv(cohort.root / "imaging" / "manifest.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> DemoCohort:
    return make_demo_cohort(
        tmp_path_factory.mktemp("demo") / "cohort", task="binary", seed=3, **SMALL
    )


# --------------------------------------------------------------------------- files


def test_listed_files_exist(cohort: DemoCohort) -> None:
    listed = set(cohort.ground_truth["files"])
    on_disk = set(_files_under(cohort.root))
    assert listed == on_disk


def test_returned_paths(cohort: DemoCohort) -> None:
    assert cohort.config_path == cohort.root / "config.yaml"
    assert cohort.ground_truth_path == cohort.root / "ground_truth.json"
    assert json.loads(cohort.ground_truth_path.read_text()) == cohort.ground_truth


def test_manifest_columns_and_relative_paths(cohort: DemoCohort) -> None:
    manifest = _manifest(cohort)
    assert list(manifest.columns) == ["subject_id", "flair", "t1", "mask"]
    for column in ("flair", "t1", "mask"):
        paths = [p for p in manifest[column] if p]
        assert not any(Path(p).is_absolute() for p in paths), column
        assert all((cohort.root / "imaging" / p).is_file() for p in paths), column


def test_flair_and_mask_on_1mm_grid(cohort: DemoCohort) -> None:
    row = _manifest(cohort).iloc[0]
    flair = nib.load(cohort.root / "imaging" / row["flair"])
    mask = nib.load(cohort.root / "imaging" / row["mask"])
    expected_affine = np.array(
        [[1.0, 0, 0, -5.5], [0, 1.0, 0, -5.5], [0, 0, 1.0, -3.5], [0, 0, 0, 1.0]]
    )
    assert flair.shape == (12, 12, 8)
    assert np.allclose(flair.affine, expected_affine)
    assert flair.get_data_dtype() == np.float32
    assert mask.shape == (12, 12, 8)
    assert np.allclose(mask.affine, expected_affine)
    assert mask.get_data_dtype() == np.uint8
    assert set(np.unique(mask.get_fdata())) == {0.0, 1.0}


def test_t1_on_coarser_grid_same_field_of_view(cohort: DemoCohort) -> None:
    manifest = _manifest(cohort)
    row = manifest[manifest["t1"] != ""].iloc[0]
    flair = nib.load(cohort.root / "imaging" / row["flair"])
    t1 = nib.load(cohort.root / "imaging" / row["t1"])
    # Voxel (0, 0, 0) of t1 covers flair voxels 0-1 x 0-1, so its center is at flair (0.5, 0.5, 0).
    expected_affine = np.array(
        [[2.0, 0, 0, -5.0], [0, 2.0, 0, -5.0], [0, 0, 1.0, -3.5], [0, 0, 0, 1.0]]
    )
    assert t1.shape == (6, 6, 8)
    assert t1.header.get_zooms() == (2.0, 2.0, 1.0)
    assert np.allclose(t1.affine, expected_affine)

    # The outer corners of the two grids meet at the same world points.
    flair_corners = nib.affines.apply_affine(flair.affine, [[-0.5, -0.5, -0.5], [11.5, 11.5, 7.5]])
    t1_corners = nib.affines.apply_affine(t1.affine, [[-0.5, -0.5, -0.5], [5.5, 5.5, 7.5]])
    assert np.allclose(flair_corners, t1_corners)


def test_lesion_bright_on_flair_dark_on_t1(cohort: DemoCohort) -> None:
    manifest = _manifest(cohort)
    row = manifest[manifest["t1"] != ""].iloc[0]
    mask = nib.load(cohort.root / "imaging" / row["mask"]).get_fdata() > 0
    flair = nib.load(cohort.root / "imaging" / row["flair"]).get_fdata()
    t1 = nib.load(cohort.root / "imaging" / row["t1"]).get_fdata()
    head = flair > 0
    # A t1 voxel covers 2 x 2 flair voxels. Voxels wholly inside the lesion are compared with
    # voxels wholly inside the head and apart from the lesion, so partial volumes count in neither.
    coarse_lesion = mask.reshape(6, 2, 6, 2, 8).all(axis=(1, 3))
    coarse_tissue = head.reshape(6, 2, 6, 2, 8).all(axis=(1, 3)) & ~mask.reshape(6, 2, 6, 2, 8).any(
        axis=(1, 3)
    )
    assert flair[mask].mean() > flair[head & ~mask].mean() + 30
    assert coarse_lesion.any()
    assert t1[coarse_lesion].mean() < t1[coarse_tissue].mean() - 20


def test_expression_file(cohort: DemoCohort) -> None:
    adata = anndata.read_h5ad(cohort.root / "omics" / "expression.h5ad")
    clinical = pd.read_csv(cohort.root / "clinical.csv")
    subjects = _subjects(cohort)
    expected_ids = set(subjects.index[subjects["has_omics"]])
    assert set(adata.obs_names) == expected_ids
    assert set(adata.obs_names) <= set(clinical["subject_id"])
    assert adata.obs_names.is_unique
    assert list(adata.var_names[:2]) == ["GENE0001", "GENE0002"]
    assert adata.n_vars == 40
    assert adata.X.dtype == np.float32
    assert set(cohort.ground_truth["signal_features"]["omics"]) <= set(adata.var_names)


def test_rows_not_in_id_order(cohort: DemoCohort) -> None:
    adata = anndata.read_h5ad(cohort.root / "omics" / "expression.h5ad")
    manifest = _manifest(cohort)
    assert list(adata.obs_names) != sorted(adata.obs_names)
    assert list(manifest["subject_id"]) != sorted(manifest["subject_id"])


def test_clinical_columns(cohort: DemoCohort) -> None:
    clinical = pd.read_csv(cohort.root / "clinical.csv")
    assert list(clinical.columns) == [
        "subject_id",
        "site",
        "age",
        "sex",
        "stage",
        "bmi",
        "smoker",
        "response",
    ]
    assert set(clinical["site"]) == {"site_A", "site_B", "site_C"}
    assert set(clinical["sex"]) == {"F", "M"}
    assert set(clinical["stage"]) <= {1, 2, 3}
    assert clinical["stage"].dtype == np.int64
    assert clinical["bmi"].isna().sum() == 2  # round(0.05 * 40)
    assert clinical["age"].notna().all()


# --------------------------------------------------------------------------- missingness


def test_missing_counts(cohort: DemoCohort) -> None:
    manifest = _manifest(cohort)
    adata = anndata.read_h5ad(cohort.root / "omics" / "expression.h5ad")
    clinical = pd.read_csv(cohort.root / "clinical.csv")
    assert len(manifest) == 36
    assert (manifest["t1"] == "").sum() == 4
    assert adata.n_obs == 34
    assert len(clinical) == 40
    assert cohort.ground_truth["n_present"] == {
        "imaging": 36,
        "t1": 32,
        "omics": 34,
        "clinical": 40,
    }


def test_missing_clinical_leaves_empty_features(tmp_path: Path) -> None:
    cohort = make_demo_cohort(tmp_path / "c", missing={"clinical": 0.25}, **SMALL)
    clinical = pd.read_csv(cohort.root / "clinical.csv").set_index("subject_id")
    subjects = _subjects(cohort)
    without = subjects.index[~subjects["has_clinical"]]
    assert len(without) == 10
    assert clinical.loc[without, ["age", "sex", "stage", "bmi", "smoker"]].isna().all().all()
    assert clinical.loc[without, "response"].notna().all()
    assert (subjects["has_imaging"] | subjects["has_omics"] | subjects["has_clinical"]).all()


# --------------------------------------------------------------------------- ground truth


def test_mask_volume_is_imaging_signal(cohort: DemoCohort) -> None:
    manifest = _manifest(cohort).set_index("subject_id")
    subjects = _subjects(cohort).loc[manifest.index]
    voxel_counts = np.array(
        [nib.load(cohort.root / "imaging" / path).get_fdata().sum() for path in manifest["mask"]]
    )
    assert np.array_equal(voxel_counts, subjects["lesion_volume_mm3"].to_numpy())
    assert np.corrcoef(voxel_counts, subjects["imaging_term"])[0, 1] > 0.999


def test_equal_strengths_equal_shares(cohort: DemoCohort) -> None:
    shares = cohort.ground_truth["variance_shares"]
    assert shares == pytest.approx({"imaging": 1 / 3, "omics": 1 / 3, "clinical": 1 / 3})


def test_zero_omics_strength_zero_share(tmp_path: Path) -> None:
    cohort = make_demo_cohort(tmp_path / "c", strengths={"omics": 0.0}, **SMALL)
    shares = cohort.ground_truth["variance_shares"]
    assert shares["omics"] == 0.0
    assert shares["imaging"] == pytest.approx(0.5)
    assert not np.any(_subjects(cohort)["omics_term"])


def test_strengths_rank_shares(tmp_path: Path) -> None:
    strengths = {"imaging": 3.0, "omics": 1.5, "clinical": 0.5}
    cohort = make_demo_cohort(tmp_path / "c", strengths=strengths, **SMALL)
    shares = cohort.ground_truth["variance_shares"]
    assert shares["imaging"] > shares["omics"] > shares["clinical"]
    # Each term has unit variance before weighting, so share = s**2 / (9 + 2.25 + 0.25).
    assert shares["imaging"] == pytest.approx(9 / 11.5)
    assert shares["clinical"] == pytest.approx(0.25 / 11.5)


def test_all_strengths_zero(tmp_path: Path) -> None:
    zero = {"imaging": 0.0, "omics": 0.0, "clinical": 0.0}
    cohort = make_demo_cohort(tmp_path / "c", strengths=zero, **SMALL)
    assert cohort.ground_truth["variance_shares"] == zero


def test_regression_score_follows_lesion_volume(tmp_path: Path) -> None:
    only_imaging = {"imaging": 3.0, "omics": 0.0, "clinical": 0.0}
    cohort = make_demo_cohort(tmp_path / "c", task="regression", strengths=only_imaging, **SMALL)
    clinical = pd.read_csv(cohort.root / "clinical.csv").set_index("subject_id")
    volume = _subjects(cohort)["lesion_volume_mm3"]
    # score = 3 z(volume) + N(0, 1): the expected correlation is 3 / sqrt(10), about 0.95.
    assert np.corrcoef(volume, clinical.loc[volume.index, "score"])[0, 1] > 0.85


def test_regression_score_follows_signature(tmp_path: Path) -> None:
    only_omics = {"imaging": 0.0, "omics": 3.0, "clinical": 0.0}
    cohort = make_demo_cohort(tmp_path / "c", task="regression", strengths=only_omics, **SMALL)
    adata = anndata.read_h5ad(cohort.root / "omics" / "expression.h5ad")
    clinical = pd.read_csv(cohort.root / "clinical.csv").set_index("subject_id")
    signal_genes = cohort.ground_truth["signal_features"]["omics"]
    observed = adata[:, signal_genes].X
    signature = ((observed - observed.mean(axis=0)) / observed.std(axis=0)).mean(axis=1)
    score = clinical.loc[adata.obs_names, "score"]
    noise_gene = next(g for g in adata.var_names if g not in signal_genes)
    assert np.corrcoef(signature, score)[0, 1] > 0.7
    assert abs(np.corrcoef(adata[:, noise_gene].X[:, 0], score)[0, 1]) < 0.5


def test_survival_outcome(tmp_path: Path) -> None:
    cohort = make_demo_cohort(tmp_path / "c", task="survival", **SMALL)
    clinical = pd.read_csv(cohort.root / "clinical.csv")
    assert clinical["os_days"].dtype == np.int64
    assert (clinical["os_days"] >= 1).all()
    assert set(clinical["os_event"]) == {0, 1}
    assert 0.1 <= 1 - clinical["os_event"].mean() <= 0.5  # about 30% censored


def test_binary_outcome_signal_strength() -> None:
    # Three independent unit-variance terms, like the generator's linear predictor. Simulated
    # with 400,000 subjects, the AUROC of their sum is 0.935 and of each term alone 0.737.
    rng = np.random.default_rng(0)
    terms = rng.standard_normal((20_000, 3))
    eta = terms.sum(axis=1)
    outcome, parameters = _simulate_outcome(rng, "binary", eta)
    response = outcome["response"]
    assert parameters == {"binary_scale": 2.0}
    assert 0.92 <= roc_auc_score(response, eta) <= 0.95
    for k in range(3):
        assert 0.72 <= roc_auc_score(response, terms[:, k]) <= 0.755


def test_default_signature_has_20_genes(tmp_path: Path) -> None:
    cohort = make_demo_cohort(tmp_path / "c", n_subjects=20, volume_shape=(8, 8, 8))
    signal_genes = cohort.ground_truth["signal_features"]["omics"]
    assert len(signal_genes) == 20
    assert len(set(signal_genes)) == 20
    assert cohort.ground_truth["generation"]["n_genes"] == 200


# --------------------------------------------------------------------------- reproducibility


def test_same_seed_identical_files(tmp_path: Path) -> None:
    first = make_demo_cohort(tmp_path / "a", seed=7, **SMALL)
    second = make_demo_cohort(tmp_path / "b", seed=7, **SMALL)
    assert _files_under(first.root) == _files_under(second.root)


def test_different_seed_different_data(tmp_path: Path) -> None:
    first = make_demo_cohort(tmp_path / "a", seed=7, **SMALL)
    second = make_demo_cohort(tmp_path / "b", seed=8, **SMALL)
    first_x = anndata.read_h5ad(first.root / "omics" / "expression.h5ad").X
    second_x = anndata.read_h5ad(second.root / "omics" / "expression.h5ad").X
    assert (first.root / "clinical.csv").read_bytes() != (second.root / "clinical.csv").read_bytes()
    assert not np.array_equal(first_x, second_x)


def test_strengths_change_only_outcome(tmp_path: Path) -> None:
    first = make_demo_cohort(tmp_path / "a", **SMALL)
    second = make_demo_cohort(tmp_path / "b", strengths={"imaging": 0.0}, **SMALL)
    first_files = _files_under(first.root)
    second_files = _files_under(second.root)
    assert first_files["omics/expression.h5ad"] == second_files["omics/expression.h5ad"]
    assert first_files["imaging/manifest.csv"] == second_files["imaging/manifest.csv"]
    assert first_files["clinical.csv"] != second_files["clinical.csv"]


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("task", "outcome"),
    [("binary", ["response"]), ("survival", ["os_days", "os_event"]), ("regression", ["score"])],
)
def test_config_loads_without_outcome_inputs(tmp_path: Path, task: str, outcome: list[str]) -> None:
    cohort = make_demo_cohort(tmp_path / "c", task=task, **SMALL)
    config = load_config(cohort.config_path)
    clinical = config.modalities["clinical"]
    inputs = set(clinical.categorical) | set(clinical.continuous)
    assert config.name == f"demo_{task}"
    assert config.target.columns == outcome
    assert not inputs & set(outcome)
    assert "site" not in inputs
    assert "subject_id" not in inputs
    assert cohort.ground_truth["outcome_columns"] == outcome


def test_config_schema_keys(cohort: DemoCohort) -> None:
    raw = yaml.safe_load(cohort.config_path.read_text())
    assert list(raw) == [
        "name",
        "seed",
        "cache_dir",
        "target",
        "modalities",
        "evaluation",
        "tuning",
        "attribution",
    ]
    assert list(raw["target"]) == ["table", "id_column", "kind", "column"]
    assert list(raw["modalities"]) == ["mri", "expression", "clinical"]
    assert list(raw["modalities"]["mri"]) == [
        "kind",
        "manifest",
        "id_column",
        "paths_relative_to",
        "sequences",
        "mask",
        "reference",
        "crop_margin",
        "spatial_size",
        "normalize",
        "encoder",
        "training",
    ]
    assert list(raw["modalities"]["expression"]) == [
        "kind",
        "files",
        "layer",
        "preprocessing",
        "encoder",
        "training",
    ]
    assert list(raw["modalities"]["clinical"]) == [
        "kind",
        "table",
        "id_column",
        "categorical",
        "continuous",
        "impute",
        "encoder",
        "training",
    ]
    assert raw["modalities"]["mri"]["spatial_size"] == [12, 12, 8]
    assert raw["evaluation"] == {"outer_folds": 3, "inner_folds": 2}
    assert raw["tuning"]["n_trials"] == 15


def test_config_paths_resolve(cohort: DemoCohort) -> None:
    config = load_config(cohort.config_path)
    assert config.target.table.is_file()
    assert config.modalities["mri"].manifest.is_file()
    assert config.modalities["clinical"].table.is_file()
    assert all(path.is_file() for path in config.modalities["expression"].files)


# --------------------------------------------------------------------------- root handling


def test_non_empty_root_rejected(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FusionError, match=r"is not empty \(contains notes.txt\).*overwrite=True"):
        make_demo_cohort(tmp_path, **SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_root_that_is_a_file_rejected(tmp_path: Path) -> None:
    target = tmp_path / "cohort"
    target.write_text("")
    with pytest.raises(FusionError, match="is a file"):
        make_demo_cohort(target, **SMALL)


def test_overwrite_needs_earlier_demo(tmp_path: Path) -> None:
    (tmp_path / "clinical.csv").write_text("mine")
    with pytest.raises(FusionError, match="contains no ground_truth.json"):
        make_demo_cohort(tmp_path, overwrite=True, **SMALL)
    assert (tmp_path / "clinical.csv").read_text() == "mine"


def test_empty_root_accepted(tmp_path: Path) -> None:
    cohort = make_demo_cohort(tmp_path, **SMALL)
    assert cohort.config_path.is_file()


def test_overwrite_deletes_only_own_files(tmp_path: Path) -> None:
    make_demo_cohort(tmp_path, **SMALL)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "imaging" / "extra.nii.gz").write_bytes(b"not ours")
    smaller = make_demo_cohort(tmp_path, overwrite=True, **{**SMALL, "n_subjects": 20})
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "imaging" / "extra.nii.gz").read_bytes() == b"not ours"
    assert not (tmp_path / "imaging" / "S040_flair.nii.gz").exists()
    assert set(_files_under(tmp_path)) == set(smaller.ground_truth["files"]) | {
        "notes.txt",
        "imaging/extra.nii.gz",
    }


# --------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"strengths": {"imagin": 1.0}}, "unknown modality 'imagin'; did you mean 'imaging'"),
        ({"strengths": {"omics": -1.0}}, r"strengths\['omics'\] must be a finite number >= 0"),
        ({"missing": {"omics": 1.0}}, "leaves 0 of 40 subjects"),
        ({"missing_t1": 1.0}, r"missing_t1 must be in \[0, 1\)"),
        ({"task": "multiclass"}, "task must be one of binary, survival, regression"),
        ({"n_subjects": 5}, "n_subjects must be at least 10"),
        ({"n_sites": 0}, "n_sites must be between 1 and 26"),
        ({"volume_shape": (13, 12, 8)}, "X and Y must be even"),
        ({"volume_shape": (12, 12, 4)}, "at least 8 voxels"),
        ({"strengths": {"omics": "strong"}}, r"must be a finite number >= 0, got 'strong'"),
        ({"n_signal_genes": 40}, r"below n_genes \(40\)"),
    ],
)
def test_invalid_arguments(tmp_path: Path, arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_demo_cohort(tmp_path / "c", **{**SMALL, **arguments})
    assert not (tmp_path / "c").exists()
