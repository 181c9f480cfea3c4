"""Corpus of malformed inputs: a small valid cohort plus one named fault per case.

:func:`write_cohort` writes a valid cohort of 24 subjects (clinical CSV, ``.h5ad``
expression, 6x6x6 NIfTI volumes with a manifest, config YAML). Each entry of :data:`CASES`
names one fault, the function that writes it into such a cohort, and the regular expression
its one-line error must match. The committed files under ``files/`` are the inputs that are
easiest to keep as bytes; the other faults are built at test time by the listed function.
``README.md`` lists every case.
"""

from __future__ import annotations

import dataclasses
import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import nibabel as nib
import numpy as np
import pandas as pd
import yaml

FILES = Path(__file__).resolve().parent / "files"
N_SUBJECTS = 24


def write_cohort(root: Path, *, n_subjects: int = N_SUBJECTS, seed: int = 0) -> Path:
    """Write a valid binary cohort with imaging, omics and clinical data; return the config path."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"S{i:03d}" for i in range(n_subjects)]

    clinical = pd.DataFrame({
        "subject_id": ids,
        "age": rng.normal(60, 10, n_subjects).round(1),
        "sex": rng.choice(["F", "M"], n_subjects),
        "stage": rng.choice(["I", "II", "III"], n_subjects),
        "site": rng.choice(["A", "B", "C"], n_subjects),
        "response": np.arange(n_subjects) % 2,
    })
    clinical.to_csv(root / "clinical.csv", index=False)

    expression = ad.AnnData(rng.normal(size=(n_subjects, 10)).astype(np.float32))
    expression.obs_names = ids
    expression.var_names = [f"G{j}" for j in range(10)]
    expression.write_h5ad(root / "expression.h5ad")

    (root / "imaging").mkdir(exist_ok=True)
    rows = []
    for subject in ids:
        volume = rng.random((6, 6, 6)).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 3.0, 1.0])), root / "imaging" / f"{subject}_t1.nii.gz")
        rows.append({"subject_id": subject, "t1": f"imaging/{subject}_t1.nii.gz"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)

    config = {
        "name": "corpus",
        "seed": 0,
        "cache_dir": ".cache",
        "target": {"table": "clinical.csv", "kind": "binary", "column": "response"},
        "modalities": {
            "mri": {"kind": "imaging", "manifest": "manifest.csv", "sequences": ["t1"],
                    "spatial_size": [4, 4, 4]},
            "rna": {"kind": "omics", "files": ["expression.h5ad"]},
            "clinical": {"kind": "clinical", "table": "clinical.csv",
                         "categorical": ["sex", "stage"], "continuous": ["age"]},
        },
        "evaluation": {"outer_folds": 3, "inner_folds": 2},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# Helpers that edit a written cohort ----------------------------------------------------------


def _edit_config(root: Path, edit: Callable[[dict], None]) -> None:
    path = root / "config.yaml"
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _edit_clinical(root: Path, edit: Callable[[pd.DataFrame], pd.DataFrame | None]) -> None:
    path = root / "clinical.csv"
    table = pd.read_csv(path, dtype={"subject_id": str})
    result = edit(table)
    (table if result is None else result).to_csv(path, index=False)


def _write_expression(root: Path, adata: ad.AnnData) -> None:
    adata.write_h5ad(root / "expression.h5ad")


def _expression(root: Path) -> ad.AnnData:
    return ad.read_h5ad(root / "expression.h5ad")


def _volume_path(root: Path, subject: str = "S003") -> Path:
    return root / "imaging" / f"{subject}_t1.nii.gz"


def _set_manifest_cell(root: Path, subject: str, value: str) -> None:
    manifest = pd.read_csv(root / "manifest.csv", dtype=str)
    manifest.loc[manifest["subject_id"] == subject, "t1"] = value
    manifest.to_csv(root / "manifest.csv", index=False)


def _replace_config_text(root: Path, text: str) -> None:
    (root / "config.yaml").write_text(text)


# Fault writers ------------------------------------------------------------------------------


def _yaml_unknown_key(root: Path) -> None:
    _edit_config(root, lambda c: c.update(tuning={"n_trails": 3}))


def _yaml_unknown_top_key(root: Path) -> None:
    _edit_config(root, lambda c: c.update(evalution={"outer_folds": 3}))


def _yaml_unknown_modality_key(root: Path) -> None:
    _edit_config(root, lambda c: c["modalities"]["mri"].update(spatial_sise=[4, 4, 4]))


def _yaml_wrong_type(root: Path) -> None:
    _edit_config(root, lambda c: c["evaluation"].update(outer_folds="five"))


def _yaml_value_out_of_range(root: Path) -> None:
    _edit_config(root, lambda c: c["evaluation"].update(outer_folds=1))


def _yaml_unknown_modality_kind(root: Path) -> None:
    _edit_config(root, lambda c: c["modalities"]["rna"].update(kind="genomics"))


def _yaml_list_not_mapping(root: Path) -> None:
    shutil.copy(FILES / "list_not_mapping.yaml", root / "config.yaml")


def _yaml_syntax_error(root: Path) -> None:
    shutil.copy(FILES / "unclosed_bracket.yaml", root / "config.yaml")


def _yaml_empty(root: Path) -> None:
    _replace_config_text(root, "")


def _yaml_outcome_as_input(root: Path) -> None:
    _edit_config(root, lambda c: c["modalities"]["clinical"].update(continuous=["age", "response"]))


def _clinical_file_missing(root: Path) -> None:
    (root / "clinical.csv").unlink()


def _clinical_id_column_missing(root: Path) -> None:
    _edit_clinical(root, lambda t: t.rename(columns={"subject_id": "patient"}))


def _clinical_string_in_numeric(root: Path) -> None:
    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table["age"] = table["age"].astype(object)
        table.loc[4, "age"] = "unknown"
        return table

    _edit_clinical(root, edit)


def _clinical_infinite_in_numeric(root: Path) -> None:
    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[5, "age"] = np.inf
        return table

    _edit_clinical(root, edit)


def _clinical_declared_column_missing(root: Path) -> None:
    _edit_config(root, lambda c: c["modalities"]["clinical"].update(continuous=["agee"]))


def _clinical_duplicate_id(root: Path) -> None:
    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[3, "subject_id"] = "S002"
        return table

    _edit_clinical(root, edit)


def _clinical_empty_file(root: Path) -> None:
    (root / "clinical.csv").write_text("")


def _clinical_binary_garbage(root: Path) -> None:
    shutil.copy(FILES / "not_a_table.csv", root / "clinical.csv")


def _clinical_missing_with_impute_error(root: Path) -> None:
    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[[1, 6], "age"] = np.nan
        return table

    _edit_clinical(root, edit)
    _edit_config(root, lambda c: c["modalities"]["clinical"].update(impute="error"))


def _target_three_values(root: Path) -> None:
    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[0, "response"] = 2
        return table

    _edit_clinical(root, edit)


def _target_column_missing(root: Path) -> None:
    _edit_config(root, lambda c: c["target"].update(column="respons"))


def _target_one_positive(root: Path) -> None:
    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table["response"] = 0
        table.loc[0, "response"] = 1
        return table

    _edit_clinical(root, edit)


def _groups_column_missing(root: Path) -> None:
    _edit_config(root, lambda c: c.update(groups={"column": "patient"}))


def _h5ad_empty_file(root: Path) -> None:
    (root / "expression.h5ad").write_bytes(b"")


def _h5ad_garbage(root: Path) -> None:
    shutil.copy(FILES / "not_hdf5.h5ad", root / "expression.h5ad")


def _h5ad_truncated(root: Path) -> None:
    data = (root / "expression.h5ad").read_bytes()
    (root / "expression.h5ad").write_bytes(data[: len(data) // 3])


def _h5ad_no_subjects(root: Path) -> None:
    adata = _expression(root)
    _write_expression(root, adata[:0].copy())


def _h5ad_nan(root: Path) -> None:
    adata = _expression(root)
    adata.X[2, 3] = np.nan
    _write_expression(root, adata)


def _h5ad_inf(root: Path) -> None:
    adata = _expression(root)
    adata.X[7, 1] = -np.inf
    _write_expression(root, adata)


def _h5ad_duplicate_obs_names(root: Path) -> None:
    adata = _expression(root)
    names = list(adata.obs_names)
    names[5] = names[4]
    adata.obs_names = names
    _write_expression(root, adata)


def _h5ad_missing_layer(root: Path) -> None:
    _edit_config(root, lambda c: c["modalities"]["rna"].update(layer="counts"))


def _h5ad_raw_missing(root: Path) -> None:
    _edit_config(root, lambda c: c["modalities"]["rna"].update(layer="raw"))


def _h5ad_ids_disjoint(root: Path) -> None:
    adata = _expression(root)
    adata.obs_names = [f"X{i:03d}" for i in range(adata.n_obs)]
    _write_expression(root, adata)


def _h5ad_missing_file(root: Path) -> None:
    (root / "expression.h5ad").unlink()


def _nifti_truncated(root: Path) -> None:
    path = _volume_path(root)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nifti_header_data_disagree(root: Path) -> None:
    # An uncompressed file whose header declares 6x6x6 float32 voxels but contains only half of them.
    path = root / "imaging" / "S004_t1.nii"
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.eye(4)), path)
    data = path.read_bytes()
    path.write_bytes(data[: 352 + 6 * 6 * 3 * 4])
    _set_manifest_cell(root, "S004", "imaging/S004_t1.nii")


def _nifti_not_gzip(root: Path) -> None:
    shutil.copy(FILES / "not_a_volume.nii.gz", _volume_path(root, "S005"))


def _nifti_empty_file(root: Path) -> None:
    _volume_path(root, "S006").write_bytes(b"")


def _nifti_gzip_of_garbage(root: Path) -> None:
    with gzip.open(_volume_path(root, "S007"), "wb") as handle:
        handle.write(b"this is not a NIfTI header" * 20)


def _nifti_four_dimensional(root: Path) -> None:
    volume = np.zeros((6, 6, 6, 3), np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), _volume_path(root, "S008"))


def _manifest_missing_file(root: Path) -> None:
    _volume_path(root, "S009").unlink()


def _manifest_path_outside(root: Path) -> None:
    _set_manifest_cell(root, "S010", "../../outside/S010_t1.nii.gz")


def _manifest_not_found(root: Path) -> None:
    (root / "manifest.csv").unlink()


def _manifest_sequence_column_missing(root: Path) -> None:
    _edit_config(root, lambda c: c["modalities"]["mri"].update(sequences=["t2"]))


def _manifest_duplicate_subject(root: Path) -> None:
    manifest = pd.read_csv(root / "manifest.csv", dtype=str)
    manifest.loc[1, "subject_id"] = "S000"
    manifest.to_csv(root / "manifest.csv", index=False)


def _dicom_folder_two_series(root: Path) -> None:
    folder = root / "imaging" / "S011_dicom"
    write_dicom_series(folder, n_slices=4, rows=6, columns=5, spacing=(1.0, 1.0, 2.0), description="axial")
    write_dicom_series(folder, n_slices=3, rows=6, columns=5, spacing=(0.5, 0.5, 3.0), description="coronal")
    _set_manifest_cell(root, "S011", "imaging/S011_dicom")


def write_dicom_series(folder: Path, *, n_slices: int, rows: int, columns: int,
                       spacing: tuple[float, float, float], description: str,
                       study_uid: str = "1.2.826.0.1.3680043.8.498.1") -> str:
    """Write one MR series of ``n_slices`` int16 slices (files without extension); return its UID."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for k in range(n_slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = description
        ds.SeriesNumber = len(list(folder.iterdir())) // max(n_slices, 1) + 1
        ds.Modality = "MR"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, k * spacing[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[0], spacing[1]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = np.full((rows, columns), k, np.int16).tobytes()
        ds.save_as(folder / f"{description}{k:04d}", enforce_file_format=True)
    return series_uid


@dataclasses.dataclass(frozen=True)
class Case:
    """One malformed input: its name, the writer that makes it, and the error it must give."""

    name: str
    write: Callable[[Path], None]
    message: str  # regular expression the single error line must match


CASES: tuple[Case, ...] = (
    # Configuration
    Case("yaml_unknown_key", _yaml_unknown_key, r"unknown key 'tuning\.n_trails'; did you mean 'n_trials'"),
    Case("yaml_unknown_top_level_key", _yaml_unknown_top_key, r"unknown key 'evalution'; did you mean 'evaluation'"),
    Case("yaml_unknown_modality_key", _yaml_unknown_modality_key, r"unknown key 'modalities\.mri\.spatial_sise'; did you mean 'spatial_size'"),
    Case("yaml_wrong_type", _yaml_wrong_type, r"invalid value at 'evaluation\.outer_folds'.*integer.*'five'"),
    Case("yaml_value_out_of_range", _yaml_value_out_of_range, r"invalid value at 'evaluation\.outer_folds'.*greater than or equal to 2.*got 1"),
    Case("yaml_unknown_modality_kind", _yaml_unknown_modality_kind, r"modalities\.rna.*'imaging', 'omics', 'clinical'"),
    Case("yaml_list_not_mapping", _yaml_list_not_mapping, r"expected a mapping at the top level, got list"),
    Case("yaml_syntax_error", _yaml_syntax_error, r"not valid YAML"),
    Case("yaml_empty", _yaml_empty, r"expected a mapping at the top level, got NoneType"),
    Case("yaml_outcome_as_input", _yaml_outcome_as_input, r"modality 'clinical' lists the outcome column\(s\) \['response'\]"),
    # Clinical and target tables
    Case("clinical_file_missing", _clinical_file_missing, r"target table: file not found: .*clinical\.csv"),
    Case("clinical_id_column_missing", _clinical_id_column_missing, r"id column 'subject_id' not found in .*clinical\.csv.*rows are never matched by position"),
    Case("clinical_string_in_numeric", _clinical_string_in_numeric, r"continuous column 'age' holds 1 value\(s\) that are not numbers \(S004='unknown'\)"),
    Case("clinical_infinite_in_numeric", _clinical_infinite_in_numeric, r"continuous column 'age' holds 1 infinite value\(s\) \(subjects S005\)"),
    Case("clinical_declared_column_missing", _clinical_declared_column_missing, r"column 'agee' not found in .*clinical\.csv; did you mean 'age'"),
    Case("clinical_duplicate_id", _clinical_duplicate_id, r"1 subject id\(s\) appear more than once \(S002\)"),
    Case("clinical_empty_file", _clinical_empty_file, r"could not read .*clinical\.csv.*No columns"),
    Case("clinical_not_a_table", _clinical_binary_garbage, r"target table: could not read .*clinical\.csv"),
    Case("clinical_missing_with_impute_error", _clinical_missing_with_impute_error, r"column 'age' has 2 missing value\(s\) \(subjects S001, S006\) and impute is 'error'"),
    Case("target_three_values_for_binary", _target_three_values, r"binary column 'response' has 3 distinct value\(s\)"),
    Case("target_column_missing", _target_column_missing, r"target: column 'respons' not found .*did you mean 'response'"),
    Case("target_one_positive", _target_one_positive, r"outer split.*class 1.*1 subject"),
    Case("groups_column_missing", _groups_column_missing, r"groups: column 'patient' not found"),
    # Omics
    Case("h5ad_empty_file", _h5ad_empty_file, r"omics modality 'rna': .*expression\.h5ad is not a readable \.h5ad file"),
    Case("h5ad_not_hdf5", _h5ad_garbage, r"omics modality 'rna': .*expression\.h5ad is not a readable \.h5ad file"),
    Case("h5ad_truncated", _h5ad_truncated, r"omics modality 'rna': .*expression\.h5ad is not a readable \.h5ad file"),
    Case("h5ad_no_subjects", _h5ad_no_subjects, r"expression\.h5ad is empty \(0 subjects x 10 features\)"),
    Case("h5ad_nan", _h5ad_nan, r"expression\.h5ad has 1 NaN or infinite value\(s\) in 1 subject\(s\) \(e\.g\. subject/feature S002/G3\)"),
    Case("h5ad_infinite", _h5ad_inf, r"has 1 NaN or infinite value\(s\).*S007/G1"),
    Case("h5ad_duplicate_obs_names", _h5ad_duplicate_obs_names, r"omics modality 'rna'.*1 subject id\(s\) appear more than once \(S004\).*obs_names_make_unique"),
    Case("h5ad_missing_layer", _h5ad_missing_layer, r"layer 'counts' not in .*expression\.h5ad \(layers: none\)"),
    Case("h5ad_raw_missing", _h5ad_raw_missing, r"layer 'raw' requested but .*expression\.h5ad has no \.raw"),
    Case("h5ad_ids_disjoint", _h5ad_ids_disjoint, r"modality 'rna' \(.*expression\.h5ad\) shares no subject id with the target table.*overlap 0"),
    Case("h5ad_missing_file", _h5ad_missing_file, r"omics modality 'rna': file not found: .*expression\.h5ad"),
    # Imaging
    Case("nifti_truncated", _nifti_truncated, r"subject 'S003'.*S003_t1\.nii\.gz.*truncated or corrupt"),
    Case("nifti_header_data_disagree", _nifti_header_data_disagree, r"subject 'S004'.*header declares shape \(6, 6, 6\).*truncated or its header and data disagree"),
    Case("nifti_not_gzip", _nifti_not_gzip, r"subject 'S005'.*S005_t1\.nii\.gz: the gzip stream is damaged.*Not a gzipped file.*truncated or corrupt"),
    Case("nifti_empty_file", _nifti_empty_file, r"subject 'S006'.*S006_t1\.nii\.gz: the header could not be read"),
    Case("nifti_gzip_of_garbage", _nifti_gzip_of_garbage, r"subject 'S007'.*S007_t1\.nii\.gz: the header could not be read"),
    Case("nifti_four_dimensional", _nifti_four_dimensional, r"subject 'S008'.*has 3 channels or time points.*one 3D volume"),
    Case("manifest_file_missing", _manifest_missing_file, r"mri: 1 file listed in manifest .*manifest\.csv not found: S009"),
    Case("manifest_path_outside_folder", _manifest_path_outside, r"mri: 1 manifest path outside paths_relative_to .*S010 t1='\.\./\.\./outside"),
    Case("manifest_not_found", _manifest_not_found, r"mri: manifest not found: .*manifest\.csv"),
    Case("manifest_sequence_column_missing", _manifest_sequence_column_missing, r"mri: sequence column 't2' not found in manifest"),
    Case("manifest_duplicate_subject", _manifest_duplicate_subject, r"mri: manifest .* lists 1 subject id more than once in 'subject_id': S000 \(2 rows\)"),
    Case("dicom_folder_two_series", _dicom_folder_two_series, r"subject 'S011'.*S011_dicom: the folder holds 2 DICOM series: .*'axial', 4 slices.*'coronal', 3 slices"),
)
