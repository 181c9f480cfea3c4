"""The documented failure cases of multi-modal pipelines: each input built here, each outcome pinned.

The cases are the inputs that break imaging, omics and clinical pipelines in practice:
integer inputs and mis-batched tensors in attribution, unseen categories, missing values and
odd column names in clinical tables, volumes of mixed shapes and layouts, DICOM folders with
several series, caches larger than memory, duplicate and misaligned ids, gene selection
edge cases, leakage across folds, pruning with k-fold, tiny cohorts and degenerate survival
folds. Each test builds the input and checks the exact value or the error message.
"""

from __future__ import annotations

import logging
import warnings
from collections import namedtuple
from pathlib import Path

import anndata as ad
import nibabel as nib
import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from corpus import write_cohort, write_dicom_series

from fusion import ConfigError, DataError, DataWarning, MetricWarning, Task, load_config
from fusion._preflight import preflight
from fusion.config import ClinicalConfig
from fusion.data import (
    ClinicalSource,
    ImagingSettings,
    ImagingSource,
    OmicsSource,
    build_cohort,
    read_volume,
)
from fusion.data._volumes import cache_memory_estimate, check_cache_memory
from fusion.encoders import ClinicalEncoder
from fusion.evaluation import compute_metrics, inner_folds, make_splits
from fusion.explain import integrated_gradients
from fusion.preprocessing import ClinicalPreprocessor
from fusion.preprocessing._clinical import MISSING_CODE, UNKNOWN_CODE
from fusion.preprocessing._omics import OmicsPreprocessor
from fusion.strategies._late import FusionInputs
from fusion.strategies._unimodal import make_learner
from fusion.tuning import tune_head

GIB = 1024**3


def _data_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, DataWarning)]


def _write_h5ad(path: Path, matrix: np.ndarray, ids: list[str], genes: list[str] | None = None) -> Path:
    adata = ad.AnnData(np.asarray(matrix, dtype=np.float32))
    adata.obs_names = ids
    adata.var_names = genes or [f"G{j}" for j in range(matrix.shape[1])]
    adata.write_h5ad(path)
    return path


def _write_config(root: Path, config: dict) -> Path:
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# Attribution --------------------------------------------------------------------------------


class _MixedModel(torch.nn.Module):
    """A float volume (N,1,16,16,16), categorical codes (N,3) and floats (N,6) to one score."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.columns = torch.nn.ModuleList(torch.nn.Embedding(c, 4) for c in (3, 5, 2))
        self.volume = torch.nn.Conv3d(1, 2, 3)
        self.head = torch.nn.Linear(2 + 3 * 4 + 6, 1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        # (N, 3) integer codes -> (N, 3, 4), one embedding per column.
        return torch.stack([layer(codes[:, j]) for j, layer in enumerate(self.columns)], dim=1)

    def forward(self, volume: torch.Tensor, codes: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        pooled = self.volume(volume).mean(dim=(2, 3, 4))
        return self.head(torch.cat([pooled, codes.flatten(1), numeric], dim=1))


def _mixed_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "volume": torch.rand(4, 1, 16, 16, 16, generator=generator),
        "codes": torch.stack([torch.randint(1, c, (4,), generator=generator) for c in (3, 5, 2)], dim=1),
        "numeric": torch.randn(4, 6, generator=generator),
    }


def test_integer_codes_attributed_at_embeddings():
    model = _MixedModel().eval()
    inputs = _mixed_inputs()

    result = integrated_gradients(model, inputs, embeddings={"codes": model.embed}, target=0)

    assert inputs["codes"].dtype == torch.int64
    assert result["volume"].shape == (4, 1, 16, 16, 16)
    assert result["codes"].shape == (4, 3)
    assert result["numeric"].shape == (4, 6)
    assert (result["codes"].abs().sum(dim=0) > 0).all()


def test_integer_input_without_embedding_rejected():
    model = _MixedModel().eval()
    with pytest.raises(DataError, match=r"input 'codes' has dtype torch\.int64.*undefined for integer codes"):
        integrated_gradients(model, _mixed_inputs(), target=0)


def test_batch_not_leading_rejected():
    def forward(numeric: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
        return numeric.sum(dim=1, keepdim=True)

    inputs = {"numeric": torch.randn(4, 6), "sequence": torch.randn(1, 8, 36)}
    with pytest.raises(DataError, match=r"input 'sequence' has shape \(1, 8, 36\).*N=4 samples"):
        integrated_gradients(forward, inputs)


def test_reshaping_model_rejected():
    layer = torch.nn.Linear(41, 1)

    def forward(tokens: torch.Tensor) -> torch.Tensor:
        return layer(tokens.reshape(4, 41))  # (1, 4, 41) -> (4, 41): the batch moves

    with pytest.raises(DataError, match=r"returned shape \(4, 1\) for inputs with N=1 samples"):
        integrated_gradients(forward, {"tokens": torch.randn(1, 4, 41)})


# Clinical tables -----------------------------------------------------------------------------


def _c3_tables():
    rng = np.random.default_rng(0)
    train = pd.DataFrame({
        "flag": np.zeros(200, dtype=bool),
        "site": rng.choice(["A", "B", "C"], 200),
        "age": rng.normal(60, 10, 200),
    }, index=[f"T{i:03d}" for i in range(200)])
    valid = pd.DataFrame({"flag": [True] * 3 + [False] * 7, "site": ["A"] * 10,
                          "age": rng.normal(60, 10, 10)}, index=[f"V{i}" for i in range(10)])
    test = pd.DataFrame({"flag": np.zeros(20, dtype=bool), "site": ["A", "B", "C", "Z"] * 2 + ["B"] * 12,
                         "age": rng.normal(60, 10, 20)}, index=[f"X{i:02d}" for i in range(20)])
    test.loc[["X03", "X07"], "site"] = "Z"
    return train, valid, test


def test_unseen_category_maps_to_unknown():
    train, valid, test = _c3_tables()
    preprocessor = ClinicalPreprocessor(categorical=["flag", "site"], continuous=["age"]).fit(train)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _, valid_codes = preprocessor.transform(valid)
        _, test_codes = preprocessor.transform(test)
    messages = _data_warnings(record)

    assert (valid_codes[:3, 0] == UNKNOWN_CODE).all()
    assert (valid_codes[3:, 0] != UNKNOWN_CODE).all()
    assert np.flatnonzero(test_codes[:, 1] == UNKNOWN_CODE).tolist() == [3, 7]
    assert any("'flag': 3 of 10 values" in m for m in messages)
    assert any("'site': 2 of 20 values" in m for m in messages)


def test_unseen_category_rows_all_predicted_in_order():
    train, _, test = _c3_tables()
    preprocessor = ClinicalPreprocessor(categorical=["flag", "site"], continuous=["age"]).fit(train)
    encoder = ClinicalEncoder(n_continuous=1, categorical_cardinalities=preprocessor.categorical_cardinalities_, seed=0).eval()
    order = np.random.default_rng(3).permutation(20)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        x_cont, x_cat = preprocessor.transform(test)
        shuffled = preprocessor.transform(test.iloc[order])
    with torch.no_grad():
        output = encoder(torch.from_numpy(x_cont), torch.from_numpy(x_cat))
        output_shuffled = encoder(*(torch.from_numpy(x) for x in shuffled))

    assert output.shape[0] == 20
    assert torch.isfinite(output).all()
    assert torch.equal(output_shuffled, output[torch.from_numpy(order)])


def _c4_cohort(root: Path, impute: str, missing_target: str = "error") -> Path:
    rng = np.random.default_rng(0)
    ids = [f"P{i:03d}" for i in range(100)]
    table = pd.DataFrame({"subject_id": ids, "age": rng.normal(60, 10, 100),
                          "stage": rng.choice(["I", "II", "III"], 100), "y": np.arange(100) % 2})
    table["y"] = table["y"].astype(float)
    table.loc[[3, 11, 19, 27, 35, 43, 51], "age"] = np.nan
    table.loc[[5, 15, 25, 45], "stage"] = np.nan
    table.loc[[60, 70], "y"] = np.nan
    table.to_csv(root / "clinical.csv", index=False)
    return _write_config(root, {
        "target": {"kind": "binary", "column": "y", "missing": missing_target},
        "modalities": {"clinical": {"kind": "clinical", "table": "clinical.csv", "categorical": ["stage"],
                                    "continuous": ["age"], "impute": impute}},
        "evaluation": {"outer_folds": 3},
    })


def test_missing_values_error_before_training(tmp_path):
    report = preflight(load_config(_c4_cohort(tmp_path, "error")))

    errors = [str(p) for p in report.errors]
    assert len(errors) == 2
    assert errors[0] == ("target: 2 subject(s) have no target value in y: P060, P070. Fix: add their target "
                         "values, or set target.missing: exclude to leave these subjects out")
    assert "column 'age' has 7 missing value(s) (subjects P003, P011, P019, P027, P035 and 2 more)" in errors[1]


def test_missing_target_excluded_when_configured(tmp_path):
    report = preflight(load_config(_c4_cohort(tmp_path, "median", missing_target="exclude")))

    target = [str(p) for p in report.warnings if p.where == "target"]
    assert report.ok
    assert target == ["target: 2 subject(s) have no target value and are excluded: P060, P070. "
                      "Fix: add their target values; training never uses a subject without one"]
    assert "P060" not in report.cohort.subject_ids


def test_missing_values_imputed_when_configured(tmp_path):
    report = preflight(load_config(_c4_cohort(tmp_path, "median", missing_target="exclude")))
    assert report.ok
    assert any("'age' has 7 missing value(s); each fold fills them" in p.message for p in report.warnings)
    assert report.summaries["modalities"]["clinical"]["columns"]["stage"]["missing"] == 4


def test_categorical_missing_is_own_level():
    table = pd.DataFrame({"stage": ["I", None, "II", np.nan], "age": [1.0, 2.0, 3.0, 4.0]}, index=list("abcd"))
    _, codes = ClinicalPreprocessor(categorical=["stage"], continuous=["age"]).fit_transform(table)
    assert codes[:, 0].tolist() == [2, MISSING_CODE, 3, MISSING_CODE]


def test_impute_error_names_column_and_count():
    table = pd.DataFrame({"age": [1.0, np.nan, np.nan, 4.0]}, index=list("abcd"))
    with pytest.raises(DataError, match=r"'age'.*2"):
        ClinicalPreprocessor(categorical=[], continuous=["age"], impute="error").fit(table)


def _c5_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 40
    return pd.DataFrame({
        0: rng.choice([1, 2, 3], n),
        1: rng.normal(size=n),
        "home.dest": rng.choice(["NY", "London", "Paris"], n),
        "D[cm/g]": rng.normal(size=n),
        "length (cm)": rng.normal(size=n),
    }, index=pd.Index([f"S{i:02d}" for i in range(n)], name="subject_id"))


def test_odd_column_names_kept_through_learner(tmp_path):
    table = _c5_table()
    source = ClinicalSource("clinical", table, categorical=[0, "home.dest"], continuous=[1, "D[cm/g]", "length (cm)"])
    config = ClinicalConfig(kind="clinical", table=tmp_path / "unused.csv", training={"epochs": 2, "batch_size": 8})
    target = pd.DataFrame({"y": np.arange(40) % 2}, index=table.index)

    learner = make_learner("clinical", config, source, Task("binary"), seed=0).fit(table.index, target)
    outputs = learner.predict(table.index[::-1])
    names = learner.attribution_inputs(table.index[:5]).names

    assert list(outputs.subject_ids) == list(table.index[::-1])
    assert list(names[0]) == [1, "D[cm/g]", "length (cm)"]
    assert list(names[1]) == [0, "home.dest"]


def test_colliding_column_names_listed():
    table = pd.DataFrame({0: [1, 2], "0": [3.0, 4.0]}, index=["a", "b"])
    with pytest.raises(DataError, match=r"collide when written as text.*0 and '0'"):
        ClinicalPreprocessor(categorical=[0], continuous=["0"]).fit(table)


# Imaging ---------------------------------------------------------------------------------------


def _save(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def test_mixed_shapes_give_one_batch_shape(tmp_path, monkeypatch):
    from monai.transforms import ResampleToMatch

    rows = []
    for subject, shape in (("A", (226, 157, 113)), ("B", (305, 267, 124))):
        volume = np.zeros(shape, np.uint8)
        volume[40:80, 40:80, 30:60] = 100
        mask = (volume > 0).astype(np.uint8) * 2
        _save(tmp_path / f"{subject}.nii.gz", volume, np.diag([0.9, 0.9, 1.2, 1]))
        _save(tmp_path / f"{subject}_mask.nii.gz", mask, np.diag([1.8, 1.8, 2.4, 1]))
        rows.append({"subject_id": subject, "t1": f"{subject}.nii.gz", "mask": f"{subject}_mask.nii.gz"})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    modes = []
    original = ResampleToMatch.__call__

    def recording(self, img, img_dst, mode=None, **kwargs):
        modes.append(mode)
        return original(self, img, img_dst, mode=mode, **kwargs)

    monkeypatch.setattr(ResampleToMatch, "__call__", recording)
    settings = ImagingSettings(sequences=("t1",), mask="mask", crop_margin=4, spatial_size=(24, 24, 24))
    source = ImagingSource(tmp_path / "manifest.csv", name="mri", id_column="subject_id",
                           settings=settings, cache_dir=tmp_path / "cache")

    volumes, flags = source.load_many(["A", "B"])

    assert volumes.shape == (2, 1, 24, 24, 24)
    assert flags.tolist() == [[1.0], [1.0]]
    assert modes == ["nearest", "nearest"]


def test_four_dimensional_needs_channel_axis(tmp_path):
    path = _save(tmp_path / "series.nii.gz", np.zeros((256, 256, 23, 10), np.uint8))

    with pytest.raises(DataError, match=r"4D with shape \(256, 256, 23, 10\).*channels or time points"):
        read_volume(path)
    volume = read_volume(path, channel_axis=3)

    assert tuple(volume.shape) == (10, 256, 256, 23)


def test_vector_and_plain_volumes_channel_first(tmp_path):
    vector = nib.Nifti1Image(np.zeros((10, 10, 10, 1, 2), np.float32), np.eye(4))
    vector.header.set_intent("vector")
    nib.save(vector, tmp_path / "vector.nii.gz")
    plain = _save(tmp_path / "plain.nii.gz", np.zeros((64, 64, 40), np.float32))

    assert tuple(read_volume(tmp_path / "vector.nii.gz").shape) == (2, 10, 10, 10)
    assert tuple(read_volume(plain).shape) == (1, 64, 64, 40)


def test_channel_count_must_match_encoder(tmp_path):
    path = _save(tmp_path / "series.nii.gz", np.zeros((8, 8, 6, 10), np.uint8))
    with pytest.raises(DataError, match=r"expected 4 channel\(s\) \(the encoder's in_channels\), but the file has 10"):
        read_volume(path, channel_axis=3, expected_channels=4)


def test_dicom_folder_with_four_series(tmp_path):
    folder = tmp_path / "study"
    uids = [
        write_dicom_series(folder, n_slices=n, rows=320, columns=260, spacing=spacing, description=name)
        for n, spacing, name in ((96, (0.5, 0.5, 1.0), "t1a"), (96, (0.5, 0.5, 1.5), "t1b"),
                                 (88, (0.8, 0.8, 2.0), "flair"), (88, (0.9, 0.9, 2.5), "t2"))
    ]

    with pytest.raises(DataError, match=r"holds 4 DICOM series: .*'t1a', 96 slices.*'t1b', 96 slices.*'flair', 88 slices.*'t2', 88 slices"):
        read_volume(folder)
    flair = read_volume(folder, series=uids[2])

    assert tuple(flair.shape) == (1, 260, 320, 88)
    spacing = np.linalg.norm(np.asarray(flair.affine)[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, [0.8, 0.8, 2.0], rtol=1e-5)


def test_dicom_single_series_loads(tmp_path):
    write_dicom_series(tmp_path / "one", n_slices=5, rows=6, columns=4, spacing=(1.0, 1.0, 3.0), description="ax")
    volume = read_volume(tmp_path / "one")
    assert tuple(volume.shape) == (1, 4, 6, 5)
    assert volume[0, 0, 0].tolist() == [0, 1, 2, 3, 4]


def test_dicom_folder_in_manifest(tmp_path):
    write_dicom_series(tmp_path / "S1", n_slices=6, rows=8, columns=8, spacing=(1.0, 1.0, 2.0), description="ax")
    pd.DataFrame({"subject_id": ["S1"], "t1": ["S1"]}).to_csv(tmp_path / "manifest.csv", index=False)
    settings = ImagingSettings(sequences=("t1",), spatial_size=(4, 4, 4), normalize="none")
    source = ImagingSource(tmp_path / "manifest.csv", name="mri", id_column="subject_id",
                           settings=settings, cache_dir=tmp_path / "cache")

    volume, flags = source.load("S1")

    assert volume.shape == (1, 4, 4, 4)
    assert flags.tolist() == [1.0]
    assert volume.max() > 0


def test_cache_estimate_against_free_memory():
    estimate = cache_memory_estimate(40, (512, 512, 251), available_bytes=8 * GIB)

    assert estimate.float64_bytes == 40 * 512 * 512 * 251 * 8
    assert not estimate.fits
    with pytest.raises(DataError) as raised:
        check_cache_memory(40, (512, 512, 251), what="mri", available_bytes=8 * GIB)
    message = str(raised.value)
    assert "19.6 GiB as float64 and 9.8 GiB as float32, with 8.0 GiB of memory free" in message
    for fix in ("disk cache", "lower cache rate", "float32 instead of float64"):
        assert fix in message


def test_caching_stops_before_reading(tmp_path, monkeypatch):
    import fusion.data._volumes as volumes_module

    write_cohort(tmp_path)
    settings = ImagingSettings(sequences=("t1",), spatial_size=(4, 4, 4))
    source = ImagingSource(tmp_path / "manifest.csv", name="mri", id_column="subject_id",
                           settings=settings, cache_dir=tmp_path / "cache")
    memory = namedtuple("memory", "available")
    monkeypatch.setattr(volumes_module.psutil, "virtual_memory", lambda: memory(available=1000))

    with pytest.raises(DataError, match=r"mri: caching in memory does not fit: 24 volumes"):
        source.load_many(list(source.subject_ids))
    assert source.cache_misses == 0


# Omics ---------------------------------------------------------------------------------------------


def _two_batches(rng: np.random.Generator) -> tuple[ad.AnnData, ad.AnnData]:
    first = [f"CELL{i:05d}" for i in range(4000)]
    second = [f"CELL{i:05d}" for i in range(4000 - 42, 4000 - 42 + 3932)]
    batches = []
    for ids in (first, second):
        adata = ad.AnnData(rng.normal(size=(len(ids), 3)).astype(np.float32))
        adata.obs_names = ids
        adata.var_names = ["G0", "G1", "G2"]
        batches.append(adata)
    return batches[0], batches[1]


def test_duplicate_obs_names_rejected_then_suffixed(tmp_path):
    first, second = _two_batches(np.random.default_rng(0))
    ad.concat([first, second]).write_h5ad(tmp_path / "joined.h5ad")

    with pytest.raises(DataError) as raised:
        OmicsSource("rna", [tmp_path / "joined.h5ad"])
    message = str(raised.value)
    assert "42 subject id(s) appear more than once (CELL03958, CELL03959" in message
    assert "index_unique" in message
    assert "obs_names_make_unique" in message

    suffixed = ad.concat([first, second], index_unique="-")
    suffixed.write_h5ad(tmp_path / "suffixed.h5ad")
    pd.DataFrame({"subject_id": suffixed.obs_names, "y": np.arange(7932) % 2}).to_csv(tmp_path / "target.csv", index=False)
    config = _write_config(tmp_path, {
        "target": {"table": "target.csv", "kind": "binary", "column": "y"},
        "modalities": {"rna": {"kind": "omics", "files": ["suffixed.h5ad"]}},
    })
    cohort = build_cohort(load_config(config))
    assert cohort.alignment["modalities"]["rna"]["n_present"] == 7932


def test_x_used_unless_raw_chosen(tmp_path, caplog):
    rng = np.random.default_rng(0)
    raw = ad.AnnData(rng.poisson(3, size=(12, 3451)).astype(np.float32))
    raw.obs_names = [f"S{i}" for i in range(12)]
    raw.var_names = [f"G{j}" for j in range(3451)]
    adata = raw[:, :1080].copy()
    adata.X = np.log1p(adata.X)
    adata.raw = raw
    adata.write_h5ad(tmp_path / "rna.h5ad")

    with caplog.at_level(logging.INFO, logger="fusion"):
        default = OmicsSource("rna", [tmp_path / "rna.h5ad"])
        chosen = OmicsSource("rna", [tmp_path / "rna.h5ad"], layer="raw")

    assert default.data.shape == (12, 1080)
    assert chosen.data.shape == (12, 3451)
    assert "using .X of rna.h5ad (1080 features)" in caplog.text
    assert "using .raw.X of rna.h5ad (3451 features)" in caplog.text


def test_zero_genes_excluded_with_count(caplog):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(100, 200))
    values[:, 150:] = 0.0
    data = pd.DataFrame(values, columns=[f"G{j}" for j in range(200)])

    with caplog.at_level(logging.INFO, logger="fusion"):
        preprocessor = OmicsPreprocessor(n_top_features=100, modality="rna").fit(data)

    assert len(preprocessor.features_) == 100
    assert not set(preprocessor.features_) & {f"G{j}" for j in range(150, 200)}
    assert "50 of 200 feature(s) are constant (zero variance)" in caplog.text


def test_more_top_genes_than_genes_keeps_all():
    data = pd.DataFrame(np.random.default_rng(0).poisson(2, size=(100, 30)).astype(float))
    with pytest.warns(DataWarning, match="n_top_features=1000 but only 30 non-constant features exist; all are kept"):
        preprocessor = OmicsPreprocessor(n_top_features=1000).fit(data)
    assert len(preprocessor.features_) == 30


def test_one_subject_group_warned(tmp_path):
    config = write_cohort(tmp_path, n_subjects=10)
    table = pd.read_csv(tmp_path / "clinical.csv")
    table["batch"] = ["b1"] * 4 + ["b2"] * 5 + ["b3"]
    table.to_csv(tmp_path / "clinical.csv", index=False)
    data = yaml.safe_load(config.read_text())
    data["groups"] = {"column": "batch"}
    data["modalities"].pop("mri")
    config.write_text(yaml.safe_dump(data))

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a division by zero would raise here
        report = preflight(load_config(config))
        scaled = OmicsPreprocessor().fit(pd.DataFrame(np.ones((10, 3)) * [1, 2, 3] + np.eye(10, 3)))

    assert report.summaries["groups"] == {"b1": 4, "b2": 5, "b3": 1}
    single = [str(p) for p in report.warnings if "single subject" in p.message]
    assert len(single) == 1
    assert "b3" in single[0]
    assert np.isfinite(scaled.std_).all()


# Cohorts, splits and tuning --------------------------------------------------------------------


def test_disjoint_ids_name_both_tables(tmp_path):
    clinical = pd.DataFrame({"subject_id": [f"P{i:03d}" for i in range(1, 101)], "y": np.arange(100) % 2})
    clinical.to_csv(tmp_path / "clinical.csv", index=False)
    _write_h5ad(tmp_path / "rna.h5ad", np.ones((80, 2)), [f"S{i:03d}" for i in range(1, 81)])
    config = _write_config(tmp_path, {"target": {"table": "clinical.csv", "kind": "binary", "column": "y"},
                                      "modalities": {"rna": {"kind": "omics", "files": ["rna.h5ad"]}}})

    with pytest.raises(DataError) as raised:
        build_cohort(load_config(config))
    message = str(raised.value)
    assert "rna.h5ad" in message
    assert "clinical.csv" in message
    assert "overlap 0 of 80 modality ids and 100 target ids" in message
    assert "['S001', 'S002', 'S003'] versus target ['P001', 'P002', 'P003']" in message


def test_alignment_lists_who_is_missing_where(tmp_path):
    ids = [f"T{i:03d}" for i in range(177)]
    pd.DataFrame({"subject_id": ids, "time": np.arange(177) + 1.0, "event": np.arange(177) % 2}).to_csv(tmp_path / "survival.csv", index=False)
    omics = {}
    for k, left_out in enumerate((["T005"], ["T050", "T051"], [])):
        kept = [i for i in ids if i not in left_out] + [f"X{k}{j}" for j in range(len(left_out))]
        _write_h5ad(tmp_path / f"omics{k}.h5ad", np.random.default_rng(k).normal(size=(177, 3)), kept)
        omics[f"omics{k}"] = {"kind": "omics", "files": [f"omics{k}.h5ad"]}
    config = _write_config(tmp_path, {"target": {"table": "survival.csv", "kind": "survival", "time": "time", "event": "event"},
                                      "modalities": omics})

    alignment = build_cohort(load_config(config)).alignment

    assert alignment["modalities"]["omics0"]["missing_here"] == ["T005"]
    assert alignment["modalities"]["omics1"]["missing_here"] == ["T050", "T051"]
    assert alignment["modalities"]["omics1"]["only_here"] == ["X10", "X11"]
    assert alignment["complete_cases"] == 174


def test_table_without_ids_is_error(tmp_path):
    pd.DataFrame({"time": np.arange(177) + 1.0, "event": np.arange(177) % 2}).to_csv(tmp_path / "survival.csv", index=False)
    _write_h5ad(tmp_path / "rna.h5ad", np.ones((177, 2)), [f"T{i:03d}" for i in range(177)])
    config = _write_config(tmp_path, {"target": {"table": "survival.csv", "kind": "survival", "time": "time", "event": "event"},
                                      "modalities": {"rna": {"kind": "omics", "files": ["rna.h5ad"]}}})
    with pytest.raises(DataError, match=r"id column 'subject_id' not found in .*survival\.csv.*never matched by position"):
        build_cohort(load_config(config))


def test_barcode_lengths_named(tmp_path):
    short = [f"TCGA-AB-{i:04d}-01" for i in range(20)]
    pd.DataFrame({"subject_id": short, "y": np.arange(20) % 2}).to_csv(tmp_path / "clinical.csv", index=False)
    _write_h5ad(tmp_path / "rna.h5ad", np.ones((20, 2)), [f"{i}A" for i in short])
    config = _write_config(tmp_path, {"target": {"table": "clinical.csv", "kind": "binary", "column": "y"},
                                      "modalities": {"rna": {"kind": "omics", "files": ["rna.h5ad"]}}})
    with pytest.raises(DataError, match=r"id lengths \[16\] versus \[15\]"):
        build_cohort(load_config(config))

    repeated = short[:19] + [short[0]]
    pd.DataFrame({"subject_id": repeated, "y": np.arange(20) % 2}).to_csv(tmp_path / "clinical.csv", index=False)
    with pytest.raises(DataError, match=r"1 subject id\(s\) appear more than once \(TCGA-AB-0000-01\)"):
        build_cohort(load_config(config))


def _scans() -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(0)
    counts = np.array([1, 2, 3, 4] * 10)
    rng.shuffle(counts)
    counts[0] += 100 - counts.sum()  # 40 patients, 100 scans
    patients = np.repeat([f"P{i:02d}" for i in range(40)], counts)
    ids = [f"{p}-scan{k}" for p, k in zip(patients, pd.Series(patients).groupby(patients).cumcount())]
    target = pd.DataFrame({"y": (pd.Series(patients).str[1:].astype(int) % 2).to_numpy()}, index=pd.Index(ids))
    return target, pd.Series(patients, index=target.index)


def test_patient_rows_stay_on_one_side():
    target, groups = _scans()
    splits = make_splits(target, Task("binary"), n_folds=5, seed=0, groups=groups)
    again = make_splits(target, Task("binary"), n_folds=5, seed=0, groups=groups)

    assert len(target) == 100
    assert groups.nunique() == 40
    folds_per_patient = splits.assign(patient=groups.to_numpy()).groupby("patient")["fold"].nunique()
    assert (folds_per_patient == 1).all()
    pd.testing.assert_frame_equal(splits, again)
    first = inner_folds(target.iloc[:60], Task("binary"), n_folds=3, seed=1, groups=groups.iloc[:60])
    second = inner_folds(target.iloc[:60], Task("binary"), n_folds=3, seed=1, groups=groups.iloc[:60])
    assert all(a[0].equals(b[0]) for a, b in zip(first, second))


def test_repeated_ids_without_groups_rejected(tmp_path):
    target, groups = _scans()
    table = pd.DataFrame({"subject_id": groups.to_numpy(), "y": target["y"].to_numpy()})
    table.to_csv(tmp_path / "scans.csv", index=False)
    _write_h5ad(tmp_path / "rna.h5ad", np.ones((40, 2)), sorted(set(groups)))
    config = _write_config(tmp_path, {"target": {"table": "scans.csv", "kind": "binary", "column": "y"},
                                      "modalities": {"rna": {"kind": "omics", "files": ["rna.h5ad"]}}})
    with pytest.raises(DataError, match=r"appear more than once.*declare the patient column as 'groups'"):
        build_cohort(load_config(config))


def _tuning_inputs(n: int = 60) -> tuple[FusionInputs, pd.DataFrame, list]:
    rng = np.random.default_rng(0)
    ids = pd.Index([f"S{i:03d}" for i in range(n)])
    y = np.arange(n) % 2
    embeddings = [torch.from_numpy((rng.normal(size=(n, 3)) + y[:, None]).astype(np.float32)) for _ in range(2)]
    scores = [torch.from_numpy((rng.normal(size=(n, 1)) + y[:, None]).astype(np.float32)) for _ in range(2)]
    inputs = FusionInputs(ids, ["a", "b"], embeddings, scores, torch.ones(n, 2))
    target = pd.DataFrame({"y": y}, index=ids)
    folds = inner_folds(target, Task("binary"), n_folds=3, seed=0)
    return inputs, target, folds


def _tune(tmp_path, name, n_trials, **options):
    inputs, target, folds = _tuning_inputs()
    return tune_head(inputs, target, Task("binary"), heads=["weighted_average", "mlp"], folds=folds,
                     n_trials=n_trials, epochs=5, seed=3, storage=f"sqlite:///{tmp_path / name}.db",
                     study_name="study", **options)


def test_kfold_pruning_distinct_steps_same_params(tmp_path):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first = _tune(tmp_path, "first", 8)
    second = _tune(tmp_path, "second", 8)

    reported = [sorted(t.intermediate_values) for t in first.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert reported and all(steps == [0, 1, 2] for steps in reported)
    assert not [w for w in record if "step" in str(w.message).lower()]
    assert [t.params for t in first.trials] == [t.params for t in second.trials]


def test_resumed_study_matches_uninterrupted(tmp_path, monkeypatch):
    import fusion.tuning._search as search

    score = search._inner_score
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # Ctrl-C during the fifth trial
        return score(*args, **kwargs)

    monkeypatch.setattr(search, "_inner_score", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _tune(tmp_path, "resumed", 8)
    monkeypatch.setattr(search, "_inner_score", score)
    resumed = _tune(tmp_path, "resumed", 8)
    straight = _tune(tmp_path, "straight", 8)

    finished = [t for t in resumed.trials if t.state != optuna.trial.TrialState.FAIL]
    assert [t.state for t in resumed.trials].count(optuna.trial.TrialState.FAIL) == 1
    assert [t.params for t in finished] == [t.params for t in straight.trials]


def test_trial_left_running_is_ignored(tmp_path, monkeypatch):
    import fusion.tuning._search as search

    score = search._inner_score
    calls = []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            # Optuna marks a trial failed on Exception and KeyboardInterrupt but not on
            # SystemExit, so the trial stays RUNNING, as after a killed process.
            raise SystemExit(137)
        return score(*args, **kwargs)

    monkeypatch.setattr(search, "_inner_score", killed)
    with pytest.raises(SystemExit):
        _tune(tmp_path, "killed", 6)
    monkeypatch.setattr(search, "_inner_score", score)
    resumed = _tune(tmp_path, "killed", 6)
    straight = _tune(tmp_path, "clean", 6)

    states = [t.state for t in resumed.trials]
    assert states.count(optuna.trial.TrialState.RUNNING) == 1
    finished = [t.params for t in resumed.trials if t.state != optuna.trial.TrialState.RUNNING]
    assert finished == [t.params for t in straight.trials]


def test_parallel_workers_warn(tmp_path):
    with pytest.warns(UserWarning, match=r"n_jobs=2 runs trials in parallel.*not reproducible for seed 3"):
        _tune(tmp_path, "parallel", 2, n_jobs=2)


def test_rare_class_reduces_folds():
    target = pd.DataFrame({"y": [1] * 4 + [0] * 36}, index=[f"S{i:02d}" for i in range(40)])
    with pytest.warns(DataWarning, match=r"4"):
        splits = make_splits(target, Task("binary"), n_folds=5, seed=0)
    positives = splits.assign(y=target["y"].to_numpy()).groupby("fold")["y"].sum()
    assert positives.tolist() == [1, 1, 1, 1]

    lonely = pd.DataFrame({"y": [1] + [0] * 39}, index=target.index)
    with pytest.raises(DataError, match=r"class 1"):
        make_splits(lonely, Task("binary"), n_folds=5, seed=0)


def test_one_class_fold_auroc_is_nan():
    target = pd.DataFrame({"y": [0, 0, 0, 0]}, index=list("abcd"))
    with pytest.warns(MetricWarning, match=r"auroc.*undefined"):
        values = compute_metrics(Task("binary"), target, np.array([0.1, 0.4, -0.3, 0.2]))
    assert np.isnan(values["auroc"])


def _survival(time, event) -> pd.DataFrame:
    return pd.DataFrame({"time": np.asarray(time, float), "event": np.asarray(event, bool)},
                        index=[f"S{i:03d}" for i in range(len(time))])


@pytest.mark.parametrize(("time", "event"), [
    (np.arange(1, 31), [0] * 29 + [1]),     # the only event at the longest time
    (np.full(30, 5.0), [1] * 30),           # all times tied
    ([4.0], [1]),                           # one subject
], ids=["event_at_longest_time", "all_times_tied", "one_subject"])
def test_no_comparable_pairs_is_nan(time, event):
    target = _survival(time, event)
    with pytest.warns(MetricWarning, match=r"c_index.*undefined"):
        values = compute_metrics(Task("survival"), target, np.zeros(len(target)), metrics=["c_index"])
    assert np.isnan(values["c_index"])


def test_risk_minus_time_gives_c_one():
    time = np.random.default_rng(0).permutation(np.arange(1, 101)).astype(float)
    target = _survival(time, np.ones(100))
    assert compute_metrics(Task("survival"), target, -time, metrics=["c_index"])["c_index"] == 1.0


def test_survival_folds_stratified_on_event():
    target = _survival(np.arange(1, 51), [1] * 10 + [0] * 40)
    splits = make_splits(target, Task("survival"), n_folds=5, seed=0)
    events = splits.assign(event=target["event"].to_numpy()).groupby("fold")["event"].sum()
    assert events.tolist() == [2, 2, 2, 2, 2]


def test_config_typo_suggests_key(tmp_path):
    config = write_cohort(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["tuning"] = {"n_trails": 3}
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"unknown key 'tuning\.n_trails'; did you mean 'n_trials'"):
        load_config(config)
