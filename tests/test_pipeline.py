"""End-to-end runs of the main job on small cohorts: coverage, additivity, seeds, resume."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from _configs import tcga_subset_config

from fusion import ConfigError, load_config
from fusion._pipeline import run
from fusion.datasets import make_demo_cohort
from fusion.preprocessing import OmicsPreprocessor


def _small_config(cohort_root, *, imaging: bool, name: str = "small"):
    """Shrink the demo cohort's config to a run of a few seconds."""
    config = yaml.safe_load((cohort_root / "config.yaml").read_text())
    config["name"] = name
    config["cache_dir"] = str(cohort_root / "cache")
    config["evaluation"] = {"outer_folds": 2, "inner_folds": 2}
    config["tuning"] = {"n_trials": 3, "inner_folds": 2, "epochs": 30}
    config["attribution"] = {"n_steps": 8}
    for modality in config["modalities"].values():
        modality["training"] = {"epochs": 5, "batch_size": 16, "learning_rate": 0.01, "weight_decay": 0.0001}
    if imaging:
        mri = config["modalities"]["mri"]
        mri["spatial_size"] = [12, 12, 8]
        mri["encoder"] = {"widths": [4, 4, 8, 8], "embedding_dim": 4, "stem_stride": 1}
        mri["training"]["epochs"] = 2
    else:
        del config["modalities"]["mri"]
    path = cohort_root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_config(path)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return make_demo_cohort(root / "cohort", task="binary", n_subjects=48, volume_shape=(12, 12, 8),
                            n_genes=30, n_signal_genes=5, seed=3)


@pytest.fixture(scope="module")
def finished_run(demo):
    config = _small_config(demo.root, imaging=True, name="with_imaging")
    return run(config, demo.root / "runs" / "with_imaging")


def test_run_writes_every_artifact(finished_run):
    names = {p.name for p in finished_run.run_dir.iterdir()}
    expected = {"config.yaml", "splits.csv", "alignment.json", "metrics.json", "predictions.csv",
                "modality_contributions.csv", "feature_attributions.csv", "tuning.json",
                "timings.json", "optuna.db", "run.log", "report.html"}
    assert expected <= names
    report = (finished_run.run_dir / "report.html").read_text()
    assert ">repeat<" not in report  # the repeat column is not a modality


def test_predictions_cover_each_subject_once(finished_run, demo):
    predictions = pd.read_csv(finished_run.run_dir / "predictions.csv", dtype={"subject_id": str})
    clinical = pd.read_csv(demo.root / "clinical.csv", dtype={"subject_id": str})
    with_target = set(clinical.loc[clinical["response"].notna(), "subject_id"])
    assert predictions["subject_id"].is_unique
    assert set(predictions["subject_id"]) == with_target
    assert predictions["score_fused"].notna().all()


def test_unimodal_scores_only_where_present(finished_run, demo):
    predictions = pd.read_csv(finished_run.run_dir / "predictions.csv", dtype={"subject_id": str})
    manifest = pd.read_csv(demo.root / "imaging" / "manifest.csv", dtype={"subject_id": str})
    has_mri = predictions["subject_id"].isin(manifest["subject_id"])
    assert predictions.loc[has_mri, "score_mri"].notna().all()
    assert predictions.loc[~has_mri, "score_mri"].isna().all()


def test_contributions_sum_to_fused_prediction(finished_run):
    contributions = pd.read_csv(finished_run.run_dir / "modality_contributions.csv", dtype={"subject_id": str})
    predictions = pd.read_csv(finished_run.run_dir / "predictions.csv", dtype={"subject_id": str})
    merged = contributions.merge(predictions[["subject_id", "score_fused"]], on="subject_id")
    total = merged[["mri", "expression", "clinical"]].sum(axis=1)
    np.testing.assert_allclose(total, merged["prediction"] - merged["baseline"], atol=1e-4)
    np.testing.assert_allclose(merged["prediction"], merged["score_fused"], atol=1e-4)


def test_feature_attributions_use_original_names(finished_run, demo):
    attributions = pd.read_csv(finished_run.run_dir / "feature_attributions.csv")
    clinical = set(attributions.loc[attributions["modality"] == "clinical", "feature"])
    assert clinical == {"sex", "stage", "smoker", "age", "bmi"}
    genes = set(attributions.loc[attributions["modality"] == "expression", "feature"])
    assert set(demo.ground_truth["signal_features"]["omics"]) <= genes
    assert attributions["attribution"].abs().sum() > 0


def test_metrics_list_every_model(finished_run):
    metrics = json.loads((finished_run.run_dir / "metrics.json").read_text())
    assert set(metrics["models"]) == {"fused", "mri", "expression", "clinical"}
    summary = metrics["models"]["fused"]["summary"]["auroc"]
    assert summary["n"] == 2
    assert 0.0 <= summary["mean"] <= 1.0


def test_existing_run_dir_is_not_overwritten(finished_run):
    config = load_config(finished_run.run_dir / ".." / ".." / "with_imaging.yaml")
    before = (finished_run.run_dir / "metrics.json").read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        run(config, finished_run.run_dir)
    assert (finished_run.run_dir / "metrics.json").read_bytes() == before


def test_same_seed_same_metrics_and_resume(demo, tmp_path):
    config = _small_config(demo.root, imaging=False, name="no_imaging")
    first = run(config, tmp_path / "first", report=False)
    second = run(config, tmp_path / "second", report=False)
    assert first.metrics == second.metrics

    # Resume after losing one fold's results: the finished fold is reused, the other is
    # recomputed from its cached encoder outputs, and the numbers do not change.
    (tmp_path / "second" / "folds" / "repeat0-fold1" / "done.json").unlink()
    resumed = run(config, tmp_path / "second", resume=True, report=False)
    assert resumed.metrics == first.metrics
    assert "reusing cached outputs" in (tmp_path / "second" / "run.log").read_text()


def test_shuffled_inputs_give_identical_predictions(demo, tmp_path):
    config = _small_config(demo.root, imaging=False, name="ordered")
    ordered = run(config, tmp_path / "ordered", report=False)

    shuffled_root = tmp_path / "shuffled"
    shuffled_root.mkdir()
    clinical = pd.read_csv(demo.root / "clinical.csv")
    clinical.sample(frac=1.0, random_state=7).to_csv(shuffled_root / "clinical.csv", index=False)
    import anndata as ad

    adata = ad.read_h5ad(demo.root / "omics" / "expression.h5ad")
    order = np.random.default_rng(7).permutation(adata.n_obs)
    (shuffled_root / "omics").mkdir()
    adata[order].copy().write_h5ad(shuffled_root / "omics" / "expression.h5ad")
    data = yaml.safe_load((demo.root / "ordered.yaml").read_text())
    (shuffled_root / "config.yaml").write_text(yaml.safe_dump(data))
    shuffled = run(load_config(shuffled_root / "config.yaml"), tmp_path / "shuffled_run", report=False)

    first = pd.read_csv(ordered.run_dir / "predictions.csv").set_index("subject_id").sort_index()
    second = pd.read_csv(shuffled.run_dir / "predictions.csv").set_index("subject_id").sort_index()
    pd.testing.assert_frame_equal(first, second, atol=1e-5, rtol=0)


def test_omics_statistics_from_training_subjects_only(rng):
    train = pd.DataFrame(rng.normal(size=(20, 4)), columns=list("abcd"))
    test = pd.DataFrame(rng.normal(size=(5, 4)) + 1000.0, columns=list("abcd"))
    preprocessor = OmicsPreprocessor(scale=True, pca_components=2).fit(train)
    np.testing.assert_allclose(preprocessor.mean_, train.mean().to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(preprocessor.std_, train.std(ddof=1).to_numpy(), rtol=1e-4)
    transformed = preprocessor.transform_features(pd.concat([train, test]))
    np.testing.assert_allclose(transformed[:20].mean(axis=0), 0.0, atol=1e-5)
    assert (transformed[20:] > 100).all()


def test_real_cohort_subset_end_to_end(shared_data, tmp_path):
    root = shared_data / "tcga_lgg"
    config = tcga_subset_config(root, tmp_path, name="tcga_subset", target="survival", n_subjects=40)
    subset = pd.read_csv(tmp_path / "clinical.csv")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = run(load_config(tmp_path / "config.yaml"), tmp_path / "run")

    predictions = pd.read_csv(result.run_dir / "predictions.csv")
    assert len(predictions) == 40
    assert predictions["subject_id"].is_unique
    alignment = json.loads((result.run_dir / "alignment.json").read_text())
    assert alignment["modalities"]["mri"]["n_present"] == 40
    assert alignment["modalities"]["cnv"]["n_present"] == len(set(subset["patient_id"]) & set(
        __import__("anndata").read_h5ad(root / "omics" / "cnv.h5ad").obs_names))
    cindex = result.metrics["models"]["fused"]["summary"]["c_index"]
    assert cindex["n"] + cindex["n_nan"] == 2
    attributions = pd.read_csv(result.run_dir / "feature_attributions.csv")
    assert {"gender", "histological_type", "age_at_initial_pathologic"} <= set(attributions["feature"])
    assert "EGFR" in set(attributions["feature"])


@pytest.mark.parametrize(("task", "backbone"), [("regression", "GANDALF"), ("multiclass", "FTTransformer")])
def test_other_tasks_end_to_end(task, backbone, tmp_path):
    cohort = make_demo_cohort(tmp_path / "cohort", task="regression", n_subjects=45, volume_shape=(12, 12, 8),
                              n_genes=20, n_signal_genes=5, seed=5)
    config = yaml.safe_load((cohort.root / "config.yaml").read_text())
    if task == "multiclass":
        clinical = pd.read_csv(cohort.root / "clinical.csv")
        clinical["tertile"] = pd.qcut(clinical["score"], 3, labels=["low", "mid", "high"]).astype(str)
        clinical.to_csv(cohort.root / "clinical.csv", index=False)
        config["target"] = {"table": "clinical.csv", "id_column": "subject_id", "kind": "multiclass",
                            "column": "tertile"}
    config["modalities"]["clinical"]["encoder"] = {"backbone": backbone, "embedding_dim": 8}
    (cohort.root / "config.yaml").write_text(yaml.safe_dump(config))
    small = _small_config(cohort.root, imaging=False, name=task)
    result = run(small, tmp_path / "run")

    metrics = result.metrics
    expected = {"regression": {"rmse", "mae", "r2"}, "multiclass": {"auroc_macro", "balanced_accuracy"}}[task]
    assert expected <= set(metrics["models"]["fused"]["summary"])
    predictions = pd.read_csv(result.run_dir / "predictions.csv")
    assert len(predictions) == 45
    if task == "multiclass":
        assert {"score_fused_0", "score_fused_1", "score_fused_2"} <= set(predictions.columns)
    contributions = pd.read_csv(result.run_dir / "modality_contributions.csv")
    total = contributions[["expression", "clinical"]].sum(axis=1)
    np.testing.assert_allclose(total, contributions["prediction"] - contributions["baseline"], atol=1e-4)
    assert (result.run_dir / "report.html").is_file()


def test_leave_one_site_out(demo, tmp_path):
    config = yaml.safe_load((demo.root / "config.yaml").read_text())
    config["groups"] = {"column": "site", "leave_one_group_out": True}
    (demo.root / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        small = _small_config(demo.root, imaging=False, name="by_site")
    finally:
        del config["groups"]
        (demo.root / "config.yaml").write_text(yaml.safe_dump(config))
    result = run(small, tmp_path / "run", report=False)

    splits = pd.read_csv(result.run_dir / "splits.csv", dtype={"subject_id": str})
    sites = pd.read_csv(demo.root / "clinical.csv", dtype={"subject_id": str}).set_index("subject_id")["site"]
    splits["site"] = sites.loc[splits["subject_id"]].to_numpy()
    assert splits["fold"].nunique() == sites.nunique()
    assert (splits.groupby("fold")["site"].nunique() == 1).all()
    assert (splits.groupby("site")["fold"].nunique() == 1).all()
