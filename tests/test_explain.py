"""Per-subject explanations: modality Shapley values, feature tables and voxel maps on the scan."""

import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from _configs import tcga_subset_config

from fusion import DataError, load_config
from fusion._logging import logger
from fusion._pipeline import run
from fusion.bundle import load_bundle
from fusion.bundle._explain import explain_subjects
from fusion.cli import main
from fusion.data._imaging import ImagingSettings, ImagingSource
from fusion.explain import SourceGeometry, to_source_geometry, voxel_attributions

# Every test here reads the real TCGA-LGG cohort; the module's run takes about a minute.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_run(shared_data, tmp_path_factory):
    """A small TCGA-LGG run (MRI and clinical) with its report and bundle."""
    root = shared_data / "tcga_lgg"
    folder = tmp_path_factory.mktemp("explain")
    config = tcga_subset_config(root, folder, name="tcga_explain", target="idh", n_subjects=24,
                                modalities=("mri", "clinical"))
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    result = run(load_config(folder / "config.yaml"), folder / "run")
    manifest = pd.read_csv(root / "imaging" / "manifest.csv", dtype=str).set_index("patient_id")
    return result.run_dir, manifest, root


@pytest.fixture(scope="module")
def explained(real_run, monkeypatch_module):
    """``fusion explain`` of the first subject, into the run directory."""
    run_dir, _, _ = real_run
    subject = pd.read_csv(run_dir / "predictions.csv", dtype={"subject_id": str})["subject_id"].iloc[0]
    monkeypatch_module.setattr(sys, "argv", ["fusion", "explain", str(run_dir / "bundle"), subject])
    handlers = list(logger.handlers)
    try:
        main()
    except SystemExit as exit_:
        assert not exit_.code
    finally:
        for handler in set(logger.handlers) - set(handlers):
            logger.removeHandler(handler)
    return subject, run_dir / "explain" / subject


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_voxel_map_affine_equals_input(real_run, explained):
    _, manifest, root = real_run
    subject, folder = explained
    scan = nib.load(root / manifest.loc[subject, "flair"])
    voxel_map = nib.load(folder / "mri_attribution.nii.gz")
    assert voxel_map.shape == scan.shape
    np.testing.assert_array_equal(voxel_map.affine, scan.affine)
    assert int(voxel_map.header["sform_code"]) == int(scan.header["sform_code"])
    assert int(voxel_map.header["qform_code"]) == int(scan.header["qform_code"])

    values = np.asarray(voxel_map.dataobj)
    per_sequence = pd.read_csv(folder / "mri_sequences.csv")
    assert list(per_sequence["sequence"]) == ["flair", "t1pre"]
    assert np.count_nonzero(values) > 0
    np.testing.assert_allclose(values.sum(), per_sequence["attribution"].sum(), rtol=0.05)


def test_subject_page_and_report_link(real_run, explained):
    run_dir, _, _ = real_run
    subject, folder = explained
    page = (folder / "index.html").read_text()
    for name in ("mri_attribution.nii.gz", "mri_axial.png", "mri_coronal.png", "mri_sagittal.png"):
        assert name in page
        assert (folder / name).stat().st_size > 0
    assert "Top 3 features: clinical" in page
    report = (run_dir / "report.html").read_text()
    assert f'href="explain/{subject}/index.html"' in report


def test_contributions_sum_to_ensemble_prediction(real_run, explained):
    run_dir, _, _ = real_run
    subject, folder = explained
    contributions = pd.read_csv(folder / "contributions.csv", dtype={"subject_id": str}).set_index("subject_id")
    row = contributions.loc[subject]
    np.testing.assert_allclose(row[["mri", "clinical"]].sum(), row["prediction"] - row["baseline"], atol=1e-5)
    predicted = load_bundle(run_dir / "bundle").predict(subjects=[subject])
    np.testing.assert_allclose(row["prediction"], predicted.loc[subject, "score_fused"], atol=1e-5)
    features = pd.read_csv(folder / "features.csv")
    assert set(features["feature"]) == {"gender", "histological_type", "age_at_initial_pathologic"}


def _member_setup(run_dir, subject):
    bundle = load_bundle(run_dir / "bundle")
    sources = bundle.build_sources()
    ids = pd.Index([subject])
    volumes = bundle.load_volumes(sources, ids)
    member = bundle.members[0]
    inputs, _, learners = bundle.member_inputs(member, sources, volumes, ids)
    return member.head, inputs, learners["mri"], ids


def test_attribution_runs_in_eval_mode_and_restores_it(real_run, explained):
    run_dir, _, _ = real_run
    head, inputs, learner, ids = _member_setup(run_dir, explained[0])
    learner.model_.train()
    head.train()
    seen = []
    hook = learner.model_.encoder.register_forward_hook(
        lambda module, args, output: seen.append((module.training, torch.unique(args[1]).tolist())))
    try:
        voxel_attributions(head, inputs, learner, ids, n_steps=4, internal_batch_size=2)
    finally:
        hook.remove()
    assert seen
    assert not any(training for training, _ in seen)
    # The acquisition flags are fixed arguments: only 0 and 1 reach the network.
    assert all(set(values) <= {0.0, 1.0} for _, values in seen)
    assert learner.model_.training
    assert head.training


def test_internal_batch_size_leaves_maps_unchanged(real_run, explained):
    run_dir, _, _ = real_run
    head, inputs, learner, ids = _member_setup(run_dir, explained[0])
    batch_of_one = voxel_attributions(head, inputs, learner, ids, n_steps=6, internal_batch_size=1)
    batch_of_six = voxel_attributions(head, inputs, learner, ids, n_steps=6, internal_batch_size=6)
    assert batch_of_one.shape == (1, 2, 16, 16, 16)
    np.testing.assert_allclose(batch_of_one, batch_of_six, atol=1e-6)


def test_voxel_maps_are_complete(real_run, explained):
    run_dir, _, _ = real_run
    head, inputs, learner, ids = _member_setup(run_dir, explained[0])
    maps = voxel_attributions(head, inputs, learner, ids, n_steps=64)
    volumes, flags = learner.volume_inputs(ids)
    index = inputs.modalities.index("mri")
    with torch.no_grad():
        scores = []
        for volume in (volumes, torch.zeros_like(volumes)):
            embedding, score = learner.model_(volume, flags)
            embeddings, all_scores = list(inputs.embeddings), list(inputs.scores)
            embeddings[index], all_scores[index] = embedding, score
            scores.append(float(head(embeddings, all_scores, inputs.mask)[0, 0]))
    difference = scores[0] - scores[1]
    assert abs(maps.sum() - difference) <= 0.05 * abs(difference) + 1e-4


def test_geometry_maps_model_grid_back_onto_scan(shared_data, tmp_path):
    root = shared_data / "tcga_lgg"
    subject = "TCGA-CS-4941"
    for mode, size in (("stretch", (128, 128, 24)), ("fit", (128, 128, 128))):
        settings = ImagingSettings(sequences=("flair",), mask="mask", crop_margin=4, spatial_size=size,
                                   resize_mode=mode, normalize="none")
        source = ImagingSource(root / "imaging" / "manifest.csv", name="mri", id_column="patient_id",
                               settings=settings, cache_dir=tmp_path, paths_relative_to=root)
        volume, _ = source.load(subject)
        geometry = SourceGeometry(source, subject)
        back = to_source_geometry(volume[0], geometry)
        back /= abs(np.linalg.det(geometry.affine[:3, :3]) / np.linalg.det(geometry.model_affine[:3, :3]))
        inside = back != 0
        aligned = np.corrcoef(back[inside], geometry.scan[inside])[0, 1]
        assert aligned > 0.97, mode
        for shift in (1, -1):
            shifted = np.corrcoef(back[inside], np.roll(geometry.scan, shift, axis=0)[inside])[0, 1]
            assert shifted < aligned - 0.02, (mode, shift)


def test_unknown_subject_is_an_error(real_run, tmp_path):
    run_dir, _, _ = real_run
    bundle = load_bundle(run_dir / "bundle")
    with pytest.raises(DataError, match=r"subjects \['TCGA-XX-0000'\] are in none of the inputs \(clinical, mri\)"):
        explain_subjects(bundle, ["TCGA-XX-0000"], tmp_path)
