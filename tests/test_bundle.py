"""Model bundles: saved without pickles, loaded in a fresh process, predicting new subjects."""

import json
import shutil
import subprocess
import sys
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from _configs import shrink_demo_config, tcga_subset_config

from fusion import DataError, DataWarning, load_config
from fusion._logging import logger
from fusion._pipeline import run
from fusion.bundle import load_bundle
from fusion.bundle._store import library_versions
from fusion.cli import main
from fusion.datasets import make_demo_cohort
from fusion.preprocessing import OmicsPreprocessor

N_GENES = 2000


def _shrink(config: dict, cohort_root, name: str) -> None:
    """Shrink a demo config to a run of a few seconds and write it as ``<name>.yaml``."""
    config["name"] = name
    config["cache_dir"] = str(cohort_root / "cache")
    shrink_demo_config(config)
    (cohort_root / f"{name}.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo cohort with 2,000 genes, and a finished run on it."""
    root = tmp_path_factory.mktemp("bundle")
    cohort = make_demo_cohort(root / "cohort", task="binary", n_subjects=48, volume_shape=(12, 12, 8),
                              n_genes=N_GENES, n_signal_genes=5, seed=3)
    config = yaml.safe_load((cohort.root / "config.yaml").read_text())
    _shrink(config, cohort.root, "small")
    result = run(load_config(cohort.root / "small.yaml"), root / "run", report=False)
    return cohort, result.run_dir


@pytest.fixture(scope="module")
def bundle(demo):
    return load_bundle(demo[1] / "bundle")


def _expression(demo) -> ad.AnnData:
    return ad.read_h5ad(demo[0].root / "omics" / "expression.h5ad")


def _inputs(demo, expression_path) -> dict:
    root = demo[0].root
    return {"clinical": root / "clinical.csv", "expression": expression_path}


# Layout and loading


def test_bundle_holds_only_state_dicts_json_and_yaml(demo):
    bundle_dir = demo[1] / "bundle"
    files = [p for p in bundle_dir.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".json", ".yaml", ".pt"}
    for path in files:
        if path.suffix == ".pt":
            state = torch.load(path, weights_only=True)
            assert isinstance(state, dict)
            assert all(isinstance(value, torch.Tensor) for value in state.values())
        elif path.suffix == ".json":
            json.loads(path.read_text())
        else:
            yaml.safe_load(path.read_text())
    manifest = json.loads((bundle_dir / "bundle.json").read_text())
    assert manifest["versions"] == library_versions()
    assert [m["fold"] for m in manifest["members"]] == [0, 1]
    assert len(manifest["training_columns"]["expression"]["features"]) == N_GENES


def test_bundle_carries_cross_validated_metrics(demo, bundle):
    run_metrics = json.loads((demo[1] / "metrics.json").read_text())
    assert bundle.metrics == run_metrics


def test_pickled_object_in_weights_is_rejected(demo, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(demo[1] / "bundle", copy)
    torch.save({"index": pd.Index(["a", "b"])}, copy / "members" / "fold0" / "head.pt")
    with pytest.raises(DataError, match=r"head\.pt is not a state dict that loads with torch\.load\(weights_only=True\)"):
        load_bundle(copy)


def test_version_mismatch_names_library_and_versions(demo, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(demo[1] / "bundle", copy)
    manifest = json.loads((copy / "bundle.json").read_text())
    installed = manifest["versions"]["monai"]
    manifest["versions"]["monai"] = "0.9.1"
    (copy / "bundle.json").write_text(json.dumps(manifest))
    expected = f"bundle {copy} was made with monai 0.9.1, but monai {installed} is installed"
    with pytest.raises(DataError) as error:
        load_bundle(copy)
    assert str(error.value).startswith(expected)
    assert len(load_bundle(copy, ignore_versions=True).members) == 2


def test_patch_version_difference_loads(demo, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(demo[1] / "bundle", copy)
    manifest = json.loads((copy / "bundle.json").read_text())
    major, minor = manifest["versions"]["torch"].split(".")[:2]
    manifest["versions"]["torch"] = f"{major}.{minor}.99"
    (copy / "bundle.json").write_text(json.dumps(manifest))
    assert len(load_bundle(copy).members) == 2


def test_changed_imaging_grid_is_an_error(demo, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(demo[1] / "bundle", copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["modalities"]["mri"]["spatial_size"] = [16, 16, 8]
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    expected = ("imaging 'mri': the model was trained with spatial_size=[12, 12, 8], but the config "
                "sets spatial_size=(16, 16, 8); use the config saved with the model")
    with pytest.raises(DataError) as error:
        load_bundle(copy).predict()
    assert str(error.value) == expected


@pytest.mark.parametrize(("scale", "pca_components"), [(True, None), (False, 3)])
def test_omics_state_round_trips_exactly(scale, pca_components):
    rng = np.random.default_rng(1)
    train = pd.DataFrame(rng.normal(size=(20, 6)), columns=[f"g{i}" for i in range(6)])
    new = pd.DataFrame(rng.normal(size=(4, 6)), columns=train.columns)
    new.iloc[0, 2] = np.nan
    fitted = OmicsPreprocessor(scale=scale, pca_components=pca_components).fit(train)
    restored = OmicsPreprocessor.from_state(json.loads(json.dumps(fitted.get_state())))
    np.testing.assert_array_equal(restored.transform_features(new), fitted.transform_features(new))
    expected_fill = (train["g2"].mean() - fitted.mean_[2]) / fitted.std_[2]
    np.testing.assert_allclose(restored.transform_features(new)[0, 2], expected_fill, atol=1e-6)
    if pca_components is not None:
        np.testing.assert_array_equal(restored.components_, fitted.components_)


def test_missing_bundle_error(tmp_path):
    with pytest.raises(DataError, match="no model bundle at .*: bundle.json not found"):
        load_bundle(tmp_path)


# Prediction


def test_members_reproduce_out_of_fold_predictions(demo, bundle):
    predictions = bundle.predict(per_member=True)
    out_of_fold = pd.read_csv(demo[1] / "predictions.csv", dtype={"subject_id": str}).set_index("subject_id")
    for member in bundle.members:
        held_out = member.test_subjects
        np.testing.assert_allclose(predictions.loc[held_out, f"score_fused_fold{member.fold}"],
                                   out_of_fold.loc[held_out, "score_fused"], atol=1e-5, rtol=0)
    fused = predictions[[f"score_fused_fold{m.fold}" for m in bundle.members]].mean(axis=1)
    np.testing.assert_allclose(predictions["score_fused"], fused, rtol=1e-12)


def test_prediction_with_imaging_absent(demo, bundle):
    full = bundle.predict()
    root = demo[0].root
    without_imaging = bundle.predict(_inputs(demo, root / "omics" / "expression.h5ad"))
    assert without_imaging["score_mri"].isna().all()
    assert not without_imaging["modalities"].str.contains("mri").any()
    assert without_imaging["score_fused"].notna().all()

    never_imaged = full.index[~full["modalities"].str.contains("mri")]
    imaged = full.index[full["modalities"].str.contains("mri")]
    assert len(never_imaged) > 0
    assert len(imaged) > 0
    # Subjects without a scan take the same path whether or not imaging is passed.
    np.testing.assert_array_equal(without_imaging.loc[never_imaged, "score_fused"],
                                  full.loc[never_imaged, "score_fused"])
    assert (without_imaging.loc[imaged, "score_fused"] != full.loc[imaged, "score_fused"]).all()


def test_rows_keep_input_ids_and_order(demo, bundle, tmp_path):
    clinical = pd.read_csv(demo[0].root / "clinical.csv")
    shuffled = clinical.sample(frac=1.0, random_state=5)
    shuffled.to_csv(tmp_path / "clinical.csv", index=False)
    predictions = bundle.predict({"clinical": tmp_path / "clinical.csv"})
    assert list(predictions.index) == shuffled["subject_id"].astype(str).tolist()
    assert (predictions["modalities"] == "clinical").all()


def test_unseen_category_maps_to_unknown(demo, bundle, tmp_path):
    clinical = pd.read_csv(demo[0].root / "clinical.csv")
    column = bundle.manifest["training_columns"]["clinical"]["categorical"][0]
    clinical[column] = clinical[column].astype(object)
    clinical.loc[clinical.index[:2], column] = "never-seen"
    clinical.to_csv(tmp_path / "clinical.csv", index=False)
    with pytest.warns(DataWarning, match=rf"column '{column}': 2 of {len(clinical)} values were not seen in training"):
        predictions = bundle.predict({"clinical": tmp_path / "clinical.csv"})
    assert len(predictions) == len(clinical)
    assert predictions["score_fused"].notna().all()


def test_reversed_feature_order_gives_identical_predictions(demo, bundle, tmp_path):
    adata = _expression(demo)
    adata[:, adata.var_names[::-1]].copy().write_h5ad(tmp_path / "reversed.h5ad")
    ordered = bundle.predict(_inputs(demo, demo[0].root / "omics" / "expression.h5ad"))
    reversed_ = bundle.predict(_inputs(demo, tmp_path / "reversed.h5ad"))
    pd.testing.assert_frame_equal(ordered, reversed_, check_exact=True)


def test_missing_and_extra_features_are_aligned_by_name(demo, bundle, tmp_path):
    adata = _expression(demo)
    rng = np.random.default_rng(0)
    kept_genes = np.sort(rng.choice(N_GENES, size=1861, replace=False))
    subset = adata[:, kept_genes].copy()
    subset.write_h5ad(tmp_path / "kept.h5ad")

    extra = ad.AnnData(rng.normal(size=(adata.n_obs, 300)).astype(np.float32), obs=subset.obs.copy())
    extra.var_names = [f"OTHER{i}" for i in range(300)]
    combined = ad.concat([subset, extra], axis=1)
    combined.obs = subset.obs.copy()
    combined = combined[:, rng.permutation(combined.n_vars)].copy()
    combined.write_h5ad(tmp_path / "shuffled_with_extra.h5ad")

    with pytest.warns(DataWarning, match="omics 'expression': 139 of the 2000 training features are missing"):
        plain = bundle.predict(_inputs(demo, tmp_path / "kept.h5ad"))
    with pytest.warns(DataWarning, match="139 of the 2000"):
        shuffled = bundle.predict(_inputs(demo, tmp_path / "shuffled_with_extra.h5ad"))
    pd.testing.assert_frame_equal(plain, shuffled, check_exact=True)


def test_missing_features_take_training_mean(demo, bundle, tmp_path):
    adata = _expression(demo)
    dropped = list(adata.var_names[:10])
    adata[:, adata.var_names[10:]].copy().write_h5ad(tmp_path / "fewer.h5ad")
    with pytest.warns(DataWarning, match="10 of the 2000"):
        sources = bundle.build_sources({"expression": tmp_path / "fewer.h5ad"})
    source = sources["expression"]
    assert list(source.data.columns) == list(adata.var_names)
    for member in bundle.members:
        learner = member.learner("expression", bundle.config, source, bundle.task)
        preprocessor = learner.preprocessor_
        columns = [preprocessor.features_.index(name) for name in dropped if name in preprocessor.features_]
        assert columns
        scaled = preprocessor.transform_features(source.data)
        np.testing.assert_allclose(scaled[:, columns], 0.0, atol=1e-5)


def test_too_many_missing_features_is_an_error(demo, bundle, tmp_path):
    adata = _expression(demo)
    adata[:, adata.var_names[:1500]].copy().write_h5ad(tmp_path / "partial.h5ad")
    inputs = _inputs(demo, tmp_path / "partial.h5ad")
    expected = (f"omics 'expression': 500 of the 2000 training features (25.0%) are missing from "
                f"['{tmp_path / 'partial.h5ad'}'], more than max_missing_fraction=0.2")
    with pytest.raises(DataError) as error:
        bundle.predict(inputs)
    assert str(error.value).startswith(expected)
    with pytest.warns(DataWarning, match="500 of the 2000"):
        predictions = bundle.predict(inputs, max_missing_fraction=0.3)
    assert predictions["score_expression"].notna().sum() == adata.n_obs


def test_unknown_modality_and_subject_errors(bundle):
    with pytest.raises(DataError, match=r"the bundle has no modality \['proteomics'\]"):
        bundle.predict({"proteomics": "x.h5ad"})
    with pytest.raises(DataError, match=r"subjects \['NOBODY'\] are in none of the inputs"):
        bundle.predict(subjects=["NOBODY"])


def _main(monkeypatch, *arguments: str) -> int:
    """Run the ``fusion`` command in this process; return its exit status."""
    monkeypatch.setattr(sys, "argv", ["fusion", *arguments])
    handlers = list(logger.handlers)
    try:
        main()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        # The command adds a terminal log handler; drop it with the captured stream.
        for handler in set(logger.handlers) - set(handlers):
            logger.removeHandler(handler)
    return 0


def test_predict_command_writes_csv(demo, tmp_path, monkeypatch):
    out = tmp_path / "predictions.csv"
    status = _main(monkeypatch, "predict", str(demo[1]), "--input", f"clinical={demo[0].root / 'clinical.csv'}",
                   "--out", str(out))
    assert status == 0
    written = pd.read_csv(out, dtype={"subject_id": str})
    assert written["score_mri"].isna().all()
    assert written["score_clinical"].notna().all()


def test_new_imaging_manifest_gives_same_scores(demo, bundle, tmp_path, monkeypatch):
    imaging = demo[0].root / "imaging"
    manifest = pd.read_csv(imaging / "manifest.csv", dtype=str)
    chosen = manifest.iloc[[4, 1, 7]]
    chosen.to_csv(tmp_path / "manifest.csv", index=False)
    out = tmp_path / "predictions.csv"
    status = _main(monkeypatch, "predict", str(demo[1]), "--input", f"mri={tmp_path / 'manifest.csv'}",
                   "--paths-relative-to", f"mri={imaging}", "--out", str(out))
    assert status == 0
    written = pd.read_csv(out, dtype={"subject_id": str}, float_precision="round_trip").set_index("subject_id")
    assert list(written.index) == chosen["subject_id"].tolist()
    assert (written["modalities"] == "mri").all()
    full = bundle.predict(subjects=chosen["subject_id"].tolist())
    np.testing.assert_allclose(written["score_mri"], full["score_mri"], atol=1e-6, rtol=0)


def test_predict_command_rejects_bad_input_option(demo, monkeypatch, capsys):
    status = _main(monkeypatch, "predict", str(demo[1]), "--input", "clinical")
    assert status == 2
    assert capsys.readouterr().err.strip() == "error: --input expects MODALITY=PATH, got 'clinical'"


def test_resumed_fold_loads_saved_models(demo, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(demo[1], run_dir)
    (run_dir / "folds" / "repeat0-fold1" / "done.json").unlink()
    config = load_config(demo[0].root / "small.yaml")
    resumed = run(config, run_dir, resume=True, report=False)
    assert resumed.metrics == json.loads((demo[1] / "metrics.json").read_text())
    log = (run_dir / "run.log").read_text()
    assert "fold 1: loaded the saved model of 'clinical'" in log
    assert "fold 1: loaded the saved model of 'expression'" in log


# Real data: train on a TCGA-LGG subset, load in a fresh process, predict


@pytest.fixture(scope="module")
def real_run(shared_data, tmp_path_factory):
    root = shared_data / "tcga_lgg"
    folder = tmp_path_factory.mktemp("tcga")
    config = tcga_subset_config(root, folder, name="tcga_bundle", target="idh", n_subjects=30)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    result = run(load_config(folder / "config.yaml"), folder / "run", report=False)
    return folder, result.run_dir


@pytest.mark.slow
def test_real_cohort_round_trip_in_fresh_process(real_run, tmp_path):
    folder, run_dir = real_run
    # The cohort's subjects: the training sources also list subjects without a target.
    subjects = pd.read_csv(run_dir / "predictions.csv", dtype={"subject_id": str})["subject_id"].tolist()
    in_memory = load_bundle(run_dir / "bundle").predict(subjects=subjects, per_member=True)

    out = tmp_path / "predictions.csv"
    selection = [argument for subject in subjects for argument in ("--subject", subject)]
    completed = subprocess.run(
        [sys.executable, "-m", "fusion.cli", "predict", str(run_dir / "bundle"), "--per-member", *selection,
         "--out", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    fresh = pd.read_csv(out, dtype={"subject_id": str}, keep_default_na=False, na_values=[""],
                        float_precision="round_trip")
    fresh = fresh.set_index("subject_id")
    assert list(fresh.index) == list(in_memory.index)
    numeric = [c for c in in_memory.columns if c != "modalities"]
    np.testing.assert_array_equal(fresh[numeric].to_numpy(), in_memory[numeric].to_numpy().astype(float))

    out_of_fold = pd.read_csv(run_dir / "predictions.csv", dtype={"subject_id": str}).set_index("subject_id")
    for member in load_bundle(run_dir / "bundle").members:
        held_out = member.test_subjects
        np.testing.assert_allclose(in_memory.loc[held_out, f"score_fused_fold{member.fold}"],
                                   out_of_fold.loc[held_out, "score_fused"], atol=1e-5, rtol=0)
        for modality in ("mri", "cnv", "clinical"):
            np.testing.assert_array_equal(in_memory.loc[held_out, f"score_{modality}"].notna(),
                                          out_of_fold.loc[held_out, f"score_{modality}"].notna())


@pytest.mark.slow
def test_real_cohort_bundle_loads_weights_only(real_run):
    _, run_dir = real_run
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in (run_dir / "bundle").rglob("*.pt"):
            state = torch.load(path, weights_only=True)
            assert all(isinstance(value, torch.Tensor) for value in state.values())
    assert (run_dir / "folds" / "repeat0-fold0" / "model" / "learner-mri.pt").is_file()
