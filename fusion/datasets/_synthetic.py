"""A synthetic demo cohort with known ground truth, written as real files.

The cohort has three modalities (3D MRI volumes, gene expression, a clinical table) and an
outcome that depends on one known feature of each modality:

* imaging: the lesion volume, the voxel count of the lesion mask on the 1 mm grid (mm³);
* omics: the mean of a signature of ``n_signal_genes`` genes;
* clinical: ``age`` and ``stage``.

The linear predictor is::

    eta = s_imaging * z(lesion volume) + s_omics * z(signature score)
          + s_clinical * z(z(age) + stage effect)

where ``z`` standardises over all subjects (mean 0, population standard deviation 1), so the
variance share of a modality is ``s_m**2 / sum(s**2)``. The shares recorded in
``ground_truth.json`` are computed from the generated terms. Every subject gets an outcome
from the full ``eta``, including subjects whose modality is then withheld, and missingness is
completely at random.

Every draw comes from one ``numpy.random.default_rng(seed)`` in a fixed order, so the same
arguments give byte-identical CSV, JSON, YAML and NIfTI files and identical arrays. Features
are drawn before the outcome, so changing ``strengths`` changes only the outcome.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import string
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import anndata
import nibabel as nib
import numpy as np
import pandas as pd
import yaml
from scipy import ndimage

from .._errors import ConfigError, FusionError
from .._logging import logger

__all__ = ["DemoCohort", "make_demo_cohort"]

DemoTask = Literal["binary", "survival", "regression"]

MODALITIES = ("imaging", "omics", "clinical")
DEFAULT_STRENGTHS = {"imaging": 1.0, "omics": 1.0, "clinical": 1.0}
DEFAULT_MISSING = {"imaging": 0.1, "omics": 0.15, "clinical": 0.0}

# Names of the modalities in the written config.yaml.
CONFIG_MODALITY_NAMES = {"imaging": "mri", "omics": "expression", "clinical": "clinical"}

OUTCOME_COLUMNS: dict[str, tuple[str, ...]] = {
    "binary": ("response",),
    "survival": ("os_days", "os_event"),
    "regression": ("score",),
}

MANIFEST_PATH = "imaging/manifest.csv"
EXPRESSION_PATH = "omics/expression.h5ad"
CLINICAL_PATH = "clinical.csv"
GROUND_TRUTH_PATH = "ground_truth.json"
CONFIG_PATH = "config.yaml"

# Generation constants, all recorded in ground_truth.json under "generation".
# Stage carries about 40% of the variance of z(age) + stage effect, and age the rest.
STAGE_EFFECT = {1: 0.0, 2: 1.0, 3: 2.0}
STAGE_PROBABILITIES = (0.4, 0.35, 0.25)
SMOKER_LEVELS = ("never", "former", "current")
SMOKER_PROBABILITIES = (0.5, 0.3, 0.2)
BMI_MISSING_FRACTION = 0.05
HEAD_SEMI_AXIS_FRACTION = 0.45  # brain ellipsoid semi-axes as a fraction of the volume shape
LESION_RADIUS_FRACTION = 0.18  # largest lesion radius as a fraction of the volume shape
LESION_SCALE_RANGE = (0.45, 1.0)
MIN_LESION_RADIUS = 1.5  # voxels, so that every lesion covers at least a few voxels
SIGNAL_GENE_LOADING = 0.8  # correlation of each signature gene with the shared factor
N_NUISANCE_MODULES = 3  # co-expressed gene modules unrelated to the outcome
BATCH_SHIFT_SD = 0.4  # site shift per gene, in units of that gene's standard deviation
# Logit = BINARY_SCALE * eta. With three unit-variance terms, 2.0 gives an oracle AUROC of
# about 0.93 for eta and 0.74 for each term alone (simulated with 400,000 subjects). A term
# alone cannot exceed about 0.77 at any scale, because the other two terms act as noise.
BINARY_SCALE = 2.0
BASELINE_MEDIAN_DAYS = 730.0  # median survival time at eta = 0
CENSORED_FRACTION = 0.3
REGRESSION_NOISE_SD = 1.0


@dataclasses.dataclass(frozen=True)
class DemoCohort:
    """Files of a generated demo cohort.

    Attributes
    ----------
    root
        Folder holding every file of the cohort.
    config_path
        ``config.yaml``, a fusion config for this cohort (paths relative to ``root``).
    ground_truth_path
        ``ground_truth.json``.
    ground_truth
        The content of ``ground_truth.json``: signal features, variance shares, per-subject
        terms of the linear predictor and every generation parameter.
    """

    root: Path
    config_path: Path
    ground_truth_path: Path
    ground_truth: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class _Lesions:
    """Lesion geometry per subject on the 1 mm grid."""

    centers: np.ndarray  # (n, 3) voxel coordinates
    radii: np.ndarray  # (n, 3) semi-axes in voxels
    volumes: np.ndarray  # (n,) voxel count of the mask, equal to mm³ on the 1 mm grid


@dataclasses.dataclass(frozen=True)
class _Expression:
    """Simulated expression for all subjects, before any subject is withheld."""

    values: np.ndarray  # (n, n_genes) float32, observed log-expression with batch shifts
    gene_names: list[str]
    signal_genes: list[str]
    signature_score: np.ndarray  # (n,) mean standardised biological value of the signature


@dataclasses.dataclass(frozen=True)
class _Missingness:
    """Boolean availability per subject."""

    imaging: np.ndarray  # (n,)
    omics: np.ndarray  # (n,)
    clinical: np.ndarray  # (n,)
    t1: np.ndarray  # (n,), False also where imaging is missing


def make_demo_cohort(
    root: str | Path,
    *,
    task: DemoTask = "binary",
    n_subjects: int = 120,
    strengths: Mapping[str, float] | None = None,
    missing: Mapping[str, float] | None = None,
    missing_t1: float = 0.1,
    n_sites: int = 3,
    volume_shape: tuple[int, int, int] = (24, 24, 16),
    n_genes: int = 200,
    n_signal_genes: int = 20,
    seed: int = 0,
    overwrite: bool = False,
) -> DemoCohort:
    """Generate a synthetic three-modality cohort with a known outcome model and write it.

    Files written under ``root`` (paths relative to it):

    * ``imaging/manifest.csv``: columns ``subject_id, flair, t1, mask`` with paths relative
      to the manifest's folder. ``flair`` and ``mask`` lie on a 1 mm grid of
      ``volume_shape``. ``t1`` lies on a 2 x 2 x 1 mm grid of shape
      ``(X // 2, Y // 2, Z)`` over the same field of view, and its cell is empty for a
      ``missing_t1`` fraction of the subjects with imaging. Subjects without imaging have
      no row. Rows are shuffled.
    * ``imaging/<id>_{flair,t1,mask}.nii.gz``: float32 intensities and a uint8 lesion mask.
      The lesion is bright on flair and dark on t1; every site scales and shifts the
      intensities inside the head.
    * ``omics/expression.h5ad``: ``obs_names`` are the ids of the subjects with omics in
      shuffled order, ``obs["site"]`` their site, ``var_names`` ``GENE0001`` and so on,
      ``X`` float32 log-expression with a per-site, per-gene batch shift.
    * ``clinical.csv``: ``subject_id``, ``site``, ``age`` (years), ``sex`` (``F``/``M``),
      ``stage`` (1-3), ``bmi`` (kg/m², about 5% empty), ``smoker`` and the outcome:
      ``response`` (0/1) for binary, ``os_days`` and ``os_event`` (1 = death observed) for
      survival, ``score`` for regression.
    * ``ground_truth.json``: see :class:`DemoCohort`; ``files`` lists every file written.
    * ``config.yaml``: a fusion config for this cohort whose settings let each encoder learn
      its modality from 120 subjects (measured results: ``docs/attribution-validation.md``).

    Parameters
    ----------
    root
        Output folder. It must be absent or empty unless ``overwrite`` is True.
    task
        Outcome type: ``binary`` (``P(response = 1) = sigmoid(2 * eta)``), ``survival``
        (exponential times with hazard proportional to ``exp(eta)``, about 30% censored) or
        ``regression`` (``eta`` plus standard normal noise).
    n_subjects
        Number of subjects, at least 10.
    strengths
        Non-negative weight per modality (keys ``imaging``, ``omics``, ``clinical``; missing
        keys keep 1.0). A modality with strength 0 carries no signal.
    missing
        Fraction of subjects without each modality, in [0, 1) (defaults: imaging 0.1, omics
        0.15, clinical 0.0). A subject without clinical data keeps its row in
        ``clinical.csv`` with the outcome and site, and its feature cells are empty.
        NOTE: the clinical modality reads that same table, so such a subject counts as
        present with imputed features unless the loader treats an all-empty row as absent.
    missing_t1
        Fraction of the subjects with imaging that lack the ``t1`` sequence, in [0, 1).
    n_sites
        Number of acquisition sites, 1 to 26, assigned in balanced random order.
    volume_shape
        ``(X, Y, Z)`` of the 1 mm grid in voxels. X and Y must be even, each axis at least 8.
    n_genes, n_signal_genes
        Number of genes and the size of the outcome signature (``1 <= n_signal_genes <
        n_genes``).
    seed
        Seed of the single random generator behind every draw.
    overwrite
        Allow a ``root`` that contains an earlier demo cohort. The files listed in its
        ``ground_truth.json`` are deleted first, then this call's files are written; other
        files stay.

    Returns
    -------
    DemoCohort
        Paths of the written cohort and its ground truth.

    Raises
    ------
    ConfigError
        An argument is out of range or ``strengths``/``missing`` has an unknown key.
    FusionError
        ``root`` is a file, or a non-empty folder while ``overwrite`` is False, or a
        non-empty folder without an earlier demo cohort's ``ground_truth.json``.
    """
    started = time.perf_counter()
    strengths = _merge_modality_values(strengths, DEFAULT_STRENGTHS, "strengths")
    missing = _merge_modality_values(missing, DEFAULT_MISSING, "missing")
    _validate_arguments(
        task, n_subjects, missing, missing_t1, n_sites, volume_shape, n_genes, n_signal_genes
    )
    volume_shape = (int(volume_shape[0]), int(volume_shape[1]), int(volume_shape[2]))
    root = Path(root)
    _prepare_root(root, overwrite=overwrite)

    rng = np.random.default_rng(seed)
    subject_ids = _subject_ids(n_subjects)
    clinical = _simulate_clinical(rng, subject_ids, n_sites)
    lesions = _simulate_lesions(rng, n_subjects, volume_shape)
    expression = _simulate_expression(rng, clinical["site"].to_numpy(), n_genes, n_signal_genes)

    terms = _linear_predictor(lesions.volumes, expression.signature_score, clinical, strengths)
    outcome, outcome_parameters = _simulate_outcome(rng, task, terms["eta"])
    availability = _draw_missingness(rng, n_subjects, missing, missing_t1)

    sites = clinical["site"].to_numpy()
    site_effects = _draw_site_effects(rng, sites)
    files = _write_imaging(
        rng, root, subject_ids, sites, lesions, availability, volume_shape, site_effects
    )
    files.append(_write_expression(rng, root, subject_ids, sites, expression, availability))
    files.append(_write_clinical(root, clinical, outcome, availability))
    files.append(_write_config(root, task, seed, volume_shape))
    files.append(GROUND_TRUTH_PATH)

    ground_truth = _ground_truth(
        task=task,
        seed=seed,
        strengths=strengths,
        missing=missing,
        missing_t1=missing_t1,
        n_sites=n_sites,
        volume_shape=volume_shape,
        n_genes=n_genes,
        subject_ids=subject_ids,
        lesions=lesions,
        expression=expression,
        terms=terms,
        availability=availability,
        site_effects=site_effects,
        outcome_parameters=outcome_parameters,
        files=files,
    )
    ground_truth_path = root / GROUND_TRUTH_PATH
    ground_truth_path.write_text(json.dumps(ground_truth, indent=2) + "\n", encoding="utf-8")

    logger.info(
        "demo cohort (%s, %d subjects, seed %d) written to %s in %.1f s",
        task,
        n_subjects,
        seed,
        root,
        time.perf_counter() - started,
    )
    return DemoCohort(
        root=root,
        config_path=root / CONFIG_PATH,
        ground_truth_path=ground_truth_path,
        ground_truth=ground_truth,
    )


# --------------------------------------------------------------------------- validation


def _merge_modality_values(
    values: Mapping[str, float] | None, defaults: Mapping[str, float], argument: str
) -> dict[str, float]:
    """Return ``defaults`` updated with ``values``.

    Raises ConfigError for a key that is not a modality and for a value that is not a finite
    number >= 0.
    """
    merged = dict(defaults)
    for key, value in (values or {}).items():
        if key not in defaults:
            close = difflib.get_close_matches(str(key), list(defaults), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"{argument}: unknown modality '{key}'{hint} Valid keys: {', '.join(defaults)}"
            )
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number < 0:
            raise ConfigError(f"{argument}['{key}'] must be a finite number >= 0, got {value!r}")
        merged[key] = number
    return merged


def _validate_arguments(
    task: str,
    n_subjects: int,
    missing: Mapping[str, float],
    missing_t1: float,
    n_sites: int,
    volume_shape: tuple[int, int, int],
    n_genes: int,
    n_signal_genes: int,
) -> None:
    if task not in OUTCOME_COLUMNS:
        raise ConfigError(f"task must be one of {', '.join(OUTCOME_COLUMNS)}, got {task!r}")
    if n_subjects < 10:
        raise ConfigError(f"n_subjects must be at least 10, got {n_subjects}")
    for modality, fraction in missing.items():
        n_present = n_subjects - round(fraction * n_subjects)
        if fraction >= 1 or n_present < 2:
            raise ConfigError(
                f"missing['{modality}'] = {fraction} leaves {n_present} of {n_subjects} subjects "
                "with that modality; at least 2 are needed, so use a smaller fraction"
            )
    n_missing = {modality: round(fraction * n_subjects) for modality, fraction in missing.items()}
    n_with_imaging_or_omics = n_subjects - min(n_missing["imaging"], n_missing["omics"])
    if n_missing["clinical"] > n_with_imaging_or_omics:
        raise ConfigError(
            f"missing: {n_missing['clinical']} subjects should lack clinical data, but only "
            f"{n_with_imaging_or_omics} are sure to have imaging or omics, and no subject may "
            "lack all three modalities; lower the missing fractions"
        )
    if not 0 <= missing_t1 < 1:
        raise ConfigError(f"missing_t1 must be in [0, 1), got {missing_t1}")
    if not 1 <= n_sites <= len(string.ascii_uppercase):
        raise ConfigError(f"n_sites must be between 1 and 26, got {n_sites}")
    if len(volume_shape) != 3 or not all(
        isinstance(size, numbers.Integral) and size >= 8 for size in volume_shape
    ):
        raise ConfigError(
            f"volume_shape must be 3 integer sizes of at least 8 voxels, got {volume_shape}"
        )
    if volume_shape[0] % 2 or volume_shape[1] % 2:
        raise ConfigError(
            f"volume_shape {tuple(volume_shape)}: X and Y must be even so that the 2 mm t1 grid "
            "covers the same field of view; round them to even sizes"
        )
    if not 1 <= n_signal_genes < n_genes:
        raise ConfigError(
            f"n_signal_genes must be at least 1 and below n_genes ({n_genes}), got {n_signal_genes}"
        )


def _prepare_root(root: Path, *, overwrite: bool) -> None:
    """Create ``root``, or delete the files of an earlier demo cohort there when ``overwrite``."""
    if root.exists() and not root.is_dir():
        raise FusionError(f"demo cohort root {root} is a file; choose a folder path")
    entries = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    if entries and not overwrite:
        first_entries = ", ".join(entries[:3]) + (" ..." if len(entries) > 3 else "")
        raise FusionError(
            f"demo cohort root {root} is not empty (contains {first_entries}); choose an empty or new "
            "folder, or pass overwrite=True (fusion demo --overwrite) to replace the files of an earlier demo cohort there"
        )
    if entries:
        _delete_listed_files(root, _earlier_demo_files(root))
    (root / "imaging").mkdir(parents=True, exist_ok=True)
    (root / "omics").mkdir(parents=True, exist_ok=True)


def _earlier_demo_files(root: Path) -> list[str]:
    """Return the ``files`` list of ``root/ground_truth.json``.

    Raises FusionError when that file is missing or has no such list, because then ``root``
    is not an earlier demo cohort.
    """
    listing = root / GROUND_TRUTH_PATH
    try:
        listed = json.loads(listing.read_text(encoding="utf-8"))["files"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        listed = None
    if not isinstance(listed, list):
        raise FusionError(
            f"overwrite=True: {root} is not empty and contains no {GROUND_TRUTH_PATH} with a "
            "'files' list from an earlier demo cohort, so the files that are safe to replace are "
            "unknown. Choose an empty or new folder, or empty this one yourself"
        )
    return [str(relative) for relative in listed]


def _delete_listed_files(root: Path, listed: list[str]) -> None:
    """Delete the listed files, given relative to ``root``, that exist and lie inside it."""
    resolved_root = root.resolve()
    deleted = 0
    for relative in listed:
        path = root / relative
        if not path.resolve().is_relative_to(resolved_root) or not path.is_file():
            continue
        path.unlink()
        deleted += 1
    logger.info("overwrite: deleted %d file(s) of an earlier demo cohort in %s", deleted, root)


# --------------------------------------------------------------------------- simulation


def _subject_ids(n_subjects: int) -> list[str]:
    width = max(3, len(str(n_subjects)))
    return [f"S{i:0{width}d}" for i in range(1, n_subjects + 1)]


def _standardize(values: np.ndarray) -> np.ndarray:
    """Return ``(values - mean) / std`` with the population std, or zeros when that std is 0."""
    values = np.asarray(values, dtype=float)
    spread = values.std()
    if spread == 0:
        return np.zeros_like(values)
    return (values - values.mean()) / spread


def _simulate_clinical(
    rng: np.random.Generator, subject_ids: list[str], n_sites: int
) -> pd.DataFrame:
    """Draw the site and clinical feature columns of every subject (the outcome comes later)."""
    n = len(subject_ids)
    site_labels = [f"site_{letter}" for letter in string.ascii_uppercase[:n_sites]]
    site_codes = rng.permutation(np.arange(n) % n_sites)

    age = np.round(np.clip(rng.normal(62.0, 10.0, n), 30.0, 88.0), 1)
    sex = rng.choice(np.array(["F", "M"]), size=n)
    stage = rng.choice(np.array([1, 2, 3]), size=n, p=STAGE_PROBABILITIES)
    bmi = np.round(np.clip(rng.normal(26.5, 4.0, n), 16.0, 45.0), 1)
    bmi[rng.choice(n, size=max(1, round(BMI_MISSING_FRACTION * n)), replace=False)] = np.nan
    smoker = rng.choice(np.array(SMOKER_LEVELS), size=n, p=SMOKER_PROBABILITIES)

    return pd.DataFrame(
        {
            "subject_id": subject_ids,
            "site": [site_labels[code] for code in site_codes],
            "age": age,
            "sex": sex,
            "stage": pd.array(stage, dtype="Int64"),
            "bmi": bmi,
            "smoker": smoker,
        }
    )


def _ellipsoid_mask(
    shape: tuple[int, int, int], center: np.ndarray, radii: np.ndarray
) -> np.ndarray:
    grid = np.indices(shape, dtype=float)  # (3, X, Y, Z) voxel coordinates
    distance = sum(((grid[axis] - center[axis]) / radii[axis]) ** 2 for axis in range(3))
    return distance <= 1.0


def _simulate_lesions(rng: np.random.Generator, n: int, shape: tuple[int, int, int]) -> _Lesions:
    """Draw one ellipsoid lesion per subject inside the head ellipsoid."""
    shape_array = np.asarray(shape, dtype=float)
    head_center = (shape_array - 1) / 2
    head_semi_axes = HEAD_SEMI_AXIS_FRACTION * shape_array

    scale = rng.uniform(*LESION_SCALE_RANGE, size=(n, 1))
    aspect = rng.uniform(0.85, 1.15, size=(n, 3))
    radii = np.maximum(LESION_RADIUS_FRACTION * shape_array * scale * aspect, MIN_LESION_RADIUS)

    # A point drawn uniformly in the unit ball, scaled so that the lesion's extent along each
    # axis stays within the head's semi-axis and therefore inside the volume.
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius = rng.uniform(size=(n, 1)) ** (1 / 3)
    room = np.maximum(head_semi_axes - radii - 1.0, 0.0)
    centers = head_center + direction * radius * room

    volumes = np.array([_ellipsoid_mask(shape, centers[i], radii[i]).sum() for i in range(n)])
    return _Lesions(centers=centers, radii=radii, volumes=volumes.astype(np.int64))


def _simulate_expression(
    rng: np.random.Generator, sites: np.ndarray, n_genes: int, n_signal_genes: int
) -> _Expression:
    """Draw log-expression with one outcome signature, nuisance modules and site batch shifts."""
    n = len(sites)
    width = max(4, len(str(n_genes)))
    gene_names = [f"GENE{g:0{width}d}" for g in range(1, n_genes + 1)]
    signal_index = np.sort(rng.choice(n_genes, size=n_signal_genes, replace=False))
    gene_mean = rng.uniform(4.0, 10.0, n_genes)
    gene_sd = rng.uniform(0.4, 1.2, n_genes)

    # Standardised biological values: (n, n_genes), each column about N(0, 1).
    standardized = rng.standard_normal((n, n_genes))
    signal_factor = rng.standard_normal(n)
    loading = SIGNAL_GENE_LOADING
    standardized[:, signal_index] = (
        loading * signal_factor[:, None] + math.sqrt(1 - loading**2) * standardized[:, signal_index]
    )
    noise_index = np.setdiff1d(np.arange(n_genes), signal_index)
    modules = rng.choice(N_NUISANCE_MODULES + 1, size=len(noise_index))  # label 0: no module
    nuisance_factors = rng.standard_normal((n, N_NUISANCE_MODULES))
    for module in range(1, N_NUISANCE_MODULES + 1):
        members = noise_index[modules == module]
        standardized[:, members] = (
            loading * nuisance_factors[:, [module - 1]]
            + math.sqrt(1 - loading**2) * standardized[:, members]
        )
    signature_score = standardized[:, signal_index].mean(axis=1)

    site_labels, site_codes = np.unique(sites, return_inverse=True)
    batch_shift = rng.normal(0.0, BATCH_SHIFT_SD, size=(len(site_labels), n_genes)) * gene_sd
    values = gene_mean + gene_sd * standardized + batch_shift[site_codes]
    values = np.clip(values, 0.0, None).astype(np.float32)

    return _Expression(
        values=values,
        gene_names=gene_names,
        signal_genes=[gene_names[g] for g in signal_index],
        signature_score=signature_score,
    )


def _linear_predictor(
    lesion_volumes: np.ndarray,
    signature_score: np.ndarray,
    clinical: pd.DataFrame,
    strengths: Mapping[str, float],
) -> dict[str, np.ndarray]:
    """Compute each modality's term of ``eta`` and ``eta`` itself, each of shape (n,)."""
    stage_effect = clinical["stage"].map(STAGE_EFFECT).to_numpy(dtype=float)
    clinical_score = _standardize(clinical["age"].to_numpy()) + stage_effect
    terms = {
        "imaging": strengths["imaging"] * _standardize(lesion_volumes),
        "omics": strengths["omics"] * _standardize(signature_score),
        "clinical": strengths["clinical"] * _standardize(clinical_score),
    }
    terms["eta"] = terms["imaging"] + terms["omics"] + terms["clinical"]
    return terms


def _simulate_outcome(
    rng: np.random.Generator, task: str, eta: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Draw the outcome columns from ``eta`` and return them with the parameters used."""
    n = len(eta)
    if task == "binary":
        probability = 1.0 / (1.0 + np.exp(-BINARY_SCALE * eta))
        response = (rng.uniform(size=n) < probability).astype(np.int64)
        return {"response": response}, {"binary_scale": BINARY_SCALE}

    if task == "survival":
        hazard = math.log(2) / BASELINE_MEDIAN_DAYS * np.exp(eta)  # per day
        censoring_rate = _censoring_rate(hazard, CENSORED_FRACTION)
        event_time = rng.exponential(1.0 / hazard)
        censoring_time = rng.exponential(1.0 / censoring_rate, size=n)
        observed = np.maximum(np.ceil(np.minimum(event_time, censoring_time)), 1).astype(np.int64)
        event = (event_time <= censoring_time).astype(np.int64)
        parameters = {
            "baseline_hazard_per_day": math.log(2) / BASELINE_MEDIAN_DAYS,
            "censoring_rate_per_day": censoring_rate,
            "target_censored_fraction": CENSORED_FRACTION,
        }
        return {"os_days": observed, "os_event": event}, parameters

    score = eta + rng.normal(0.0, REGRESSION_NOISE_SD, size=n)
    return {"score": np.round(score, 4)}, {"regression_noise_sd": REGRESSION_NOISE_SD}


def _censoring_rate(hazard: np.ndarray, censored_fraction: float) -> float:
    """Solve for the exponential censoring rate whose expected censored fraction is the target.

    With event hazard ``h_i`` and censoring rate ``c``, subject ``i`` is censored with
    probability ``c / (c + h_i)``. The mean of that probability over subjects increases with
    ``c``, so bisection on ``log c`` finds the root.
    """
    low, high = math.log(hazard.min()) - 10, math.log(hazard.max()) + 10
    for _ in range(100):
        middle = (low + high) / 2
        rate = math.exp(middle)
        if np.mean(rate / (rate + hazard)) < censored_fraction:
            low = middle
        else:
            high = middle
    return math.exp((low + high) / 2)


def _draw_missingness(
    rng: np.random.Generator, n: int, missing: Mapping[str, float], missing_t1: float
) -> _Missingness:
    """Withhold modalities completely at random, so that no subject loses all three."""
    has_imaging = np.ones(n, dtype=bool)
    has_imaging[rng.choice(n, size=round(missing["imaging"] * n), replace=False)] = False
    has_omics = np.ones(n, dtype=bool)
    has_omics[rng.choice(n, size=round(missing["omics"] * n), replace=False)] = False

    # _validate_arguments ensures enough candidates: at most min(k_imaging, k_omics) subjects
    # lack both imaging and omics.
    has_clinical = np.ones(n, dtype=bool)
    candidates = np.flatnonzero(has_imaging | has_omics)
    has_clinical[rng.choice(candidates, size=round(missing["clinical"] * n), replace=False)] = False

    has_t1 = has_imaging.copy()
    with_imaging = np.flatnonzero(has_imaging)
    has_t1[rng.choice(with_imaging, size=round(missing_t1 * len(with_imaging)), replace=False)] = (
        False
    )
    return _Missingness(imaging=has_imaging, omics=has_omics, clinical=has_clinical, t1=has_t1)


# --------------------------------------------------------------------------- writing


def _flair_affine(shape: tuple[int, int, int]) -> np.ndarray:
    """1 mm RAS affine with the volume's center at world (0, 0, 0)."""
    affine = np.eye(4)
    affine[:3, 3] = -(np.asarray(shape, dtype=float) - 1) / 2
    return affine


def _t1_affine(flair_affine: np.ndarray) -> np.ndarray:
    """2 x 2 x 1 mm affine whose voxels tile the flair field of view exactly.

    T1 voxel ``(i, j, k)`` covers flair voxels ``2i, 2i+1`` by ``2j, 2j+1`` in slice ``k``,
    so its center is flair voxel ``(2i + 0.5, 2j + 0.5, k)``.
    """
    coarse_to_fine = np.array([[2.0, 0, 0, 0.5], [0, 2.0, 0, 0.5], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    return flair_affine @ coarse_to_fine


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def _render_subject(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    lesion_mask: np.ndarray,
    flair_site: list[float],
    t1_site: list[float],
) -> tuple[np.ndarray, np.ndarray]:
    """Draw flair and t1 intensities of one subject on the 1 mm grid, each of ``shape``, float32."""
    shape_array = np.asarray(shape, dtype=float)
    center = (shape_array - 1) / 2
    grid = np.indices(shape, dtype=float)  # (3, X, Y, Z)
    centered = [grid[axis] - center[axis] for axis in range(3)]
    head = _ellipsoid_mask(shape, center, HEAD_SEMI_AXIS_FRACTION * shape_array)

    # Shared anatomy: smooth texture and a linear bias field, both unitless.
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.0)
    texture /= texture.std()
    gradient = rng.normal(size=3)
    bias = 1.0 + 0.1 * sum(gradient[axis] * centered[axis] / shape_array[axis] for axis in range(3))
    lesion = ndimage.gaussian_filter(lesion_mask.astype(float), sigma=0.6)

    flair = (100.0 + 8.0 * texture) * bias + 70.0 * lesion + rng.normal(0.0, 4.0, shape)
    t1 = (140.0 - 6.0 * texture) * bias - 50.0 * lesion + rng.normal(0.0, 4.0, shape)
    flair = np.where(head | lesion_mask, flair * flair_site[0] + flair_site[1], 0.0)
    t1 = np.where(head | lesion_mask, t1 * t1_site[0] + t1_site[1], 0.0)
    return flair.astype(np.float32), t1.astype(np.float32)


def _downsample_in_plane(volume: np.ndarray) -> np.ndarray:
    """Average 2 x 2 in-plane blocks: (X, Y, Z) -> (X // 2, Y // 2, Z)."""
    x, y, z = volume.shape
    return volume.reshape(x // 2, 2, y // 2, 2, z).mean(axis=(1, 3)).astype(np.float32)


def _draw_site_effects(
    rng: np.random.Generator, sites: np.ndarray
) -> dict[str, dict[str, list[float]]]:
    """Draw ``{sequence: {site: [multiplier, shift]}}`` for the intensities inside the head."""
    return {
        sequence: {
            site: [float(rng.uniform(0.8, 1.25)), float(rng.uniform(-10.0, 10.0))]
            for site in sorted(set(sites))
        }
        for sequence in ("flair", "t1")
    }


def _write_imaging(
    rng: np.random.Generator,
    root: Path,
    subject_ids: list[str],
    sites: np.ndarray,
    lesions: _Lesions,
    availability: _Missingness,
    shape: tuple[int, int, int],
    site_effects: Mapping[str, Mapping[str, list[float]]],
) -> list[str]:
    """Write the volumes and the manifest of the subjects with imaging, and return their paths."""
    flair_affine = _flair_affine(shape)
    t1_affine = _t1_affine(flair_affine)

    written: list[str] = []
    rows: list[dict[str, str]] = []
    for index in np.flatnonzero(availability.imaging):
        subject = subject_ids[index]
        mask = _ellipsoid_mask(shape, lesions.centers[index], lesions.radii[index])
        flair, t1 = _render_subject(
            rng, shape, mask, site_effects["flair"][sites[index]], site_effects["t1"][sites[index]]
        )

        row = {
            "subject_id": subject,
            "flair": f"{subject}_flair.nii.gz",
            "t1": "",
            "mask": f"{subject}_mask.nii.gz",
        }
        _save_nifti(flair, flair_affine, root / "imaging" / row["flair"])
        _save_nifti(mask.astype(np.uint8), flair_affine, root / "imaging" / row["mask"])
        if availability.t1[index]:
            row["t1"] = f"{subject}_t1.nii.gz"
            _save_nifti(_downsample_in_plane(t1), t1_affine, root / "imaging" / row["t1"])
        rows.append(row)
        written.extend(f"imaging/{row[key]}" for key in ("flair", "t1", "mask") if row[key])

    manifest = pd.DataFrame(rows, columns=["subject_id", "flair", "t1", "mask"])
    manifest = manifest.iloc[rng.permutation(len(manifest))]
    manifest.to_csv(root / MANIFEST_PATH, index=False, lineterminator="\n")
    written.append(MANIFEST_PATH)
    return written


def _write_expression(
    rng: np.random.Generator,
    root: Path,
    subject_ids: list[str],
    sites: np.ndarray,
    expression: _Expression,
    availability: _Missingness,
) -> str:
    """Write the subjects with omics, in shuffled order, to an h5ad file and return its path."""
    present = np.flatnonzero(availability.omics)
    order = present[rng.permutation(len(present))]
    obs = pd.DataFrame(
        {"site": pd.Categorical(sites[order])}, index=pd.Index([subject_ids[i] for i in order])
    )
    var = pd.DataFrame(index=pd.Index(expression.gene_names))
    adata = anndata.AnnData(X=expression.values[order], obs=obs, var=var)
    adata.write_h5ad(root / EXPRESSION_PATH)
    return EXPRESSION_PATH


def _write_clinical(
    root: Path,
    clinical: pd.DataFrame,
    outcome: Mapping[str, np.ndarray],
    availability: _Missingness,
) -> str:
    """Write the clinical table with the outcome, leaving empty feature cells where data is withheld."""
    table = clinical.copy()
    features = ["age", "sex", "stage", "bmi", "smoker"]
    table.loc[~availability.clinical, features] = None
    for column, values in outcome.items():
        table[column] = values
    table.to_csv(root / CLINICAL_PATH, index=False, lineterminator="\n")
    return CLINICAL_PATH


def _config_dict(task: str, seed: int, volume_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Build a small, fast fusion config for the demo cohort, with paths relative to ``root``."""
    if task == "survival":
        target = {"time": "os_days", "event": "os_event"}
    else:
        target = {"column": OUTCOME_COLUMNS[task][0]}
    return {
        "name": f"demo_{task}",
        "seed": seed,
        "cache_dir": ".fusion_cache",
        "target": {"table": CLINICAL_PATH, "id_column": "subject_id", "kind": task, **target},
        "modalities": {
            CONFIG_MODALITY_NAMES["imaging"]: {
                "kind": "imaging",
                "manifest": MANIFEST_PATH,
                "id_column": "subject_id",
                "paths_relative_to": None,
                "sequences": ["flair", "t1"],
                "mask": "mask",
                "reference": "flair",
                # No crop: cropping to the lesion's bounding box and resizing the crop to a fixed
                # size would erase the lesion volume, which is the imaging signal.
                "crop_margin": None,
                "spatial_size": [int(size) for size in volume_shape],
                "normalize": "zscore_nonzero",
                "encoder": {
                    # A two-block DenseNet with growth rate 8 learned the lesion volume better
                    # than a four-stage ResNet from 80 training subjects: held-out predictions
                    # correlated 0.82 against 0.58 with the volume term (regression outcome).
                    "network": "densenet",
                    "layers": [2, 2],
                    "widths": [8],
                    "embedding_dim": 32,
                },
                "training": {
                    "epochs": 20,
                    "batch_size": 8,
                    "learning_rate": 0.001,
                    "weight_decay": 0.0001,
                },
            },
            CONFIG_MODALITY_NAMES["omics"]: {
                "kind": "omics",
                "files": [EXPRESSION_PATH],
                "layer": None,
                # The expression has four co-expression modules (three nuisance modules and
                # the outcome signature). Five principal components keep all four and drop
                # most per-gene noise, which an MLP on all genes fits instead of the signature.
                "preprocessing": {"scale": True, "n_top_features": None, "pca_components": 5},
                "encoder": {"hidden_dims": [64], "embedding_dim": 16, "dropout": 0.2},
                "training": {
                    "epochs": 50,
                    "batch_size": 32,
                    "learning_rate": 0.001,
                    "weight_decay": 0.0001,
                },
            },
            CONFIG_MODALITY_NAMES["clinical"]: {
                "kind": "clinical",
                "table": CLINICAL_PATH,
                "id_column": "subject_id",
                "categorical": ["sex", "stage", "smoker"],
                "continuous": ["age", "bmi"],
                "impute": "median",  # bmi has empty cells
                "encoder": {"backbone": "CategoryEmbedding", "embedding_dim": 16},
                # More epochs overfit the 80 training subjects: held-out AUROC fell from
                # about 0.69 at 20 epochs to 0.65 at 100.
                "training": {
                    "epochs": 20,
                    "batch_size": 32,
                    "learning_rate": 0.001,
                    "weight_decay": 0.0001,
                },
            },
        },
        "evaluation": {"outer_folds": 3, "inner_folds": 2},
        "tuning": {
            "n_trials": 15,
            "heads": ["weighted_average", "stacking", "mlp", "attention"],
            "inner_folds": 2,
            "storage": None,
        },
        "attribution": {"n_steps": 32},
    }


def _write_config(root: Path, task: str, seed: int, volume_shape: tuple[int, int, int]) -> str:
    text = yaml.safe_dump(
        _config_dict(task, seed, volume_shape), sort_keys=False, default_flow_style=None
    )
    (root / CONFIG_PATH).write_text(text, encoding="utf-8")
    return CONFIG_PATH


def _ground_truth(
    *,
    task: str,
    seed: int,
    strengths: Mapping[str, float],
    missing: Mapping[str, float],
    missing_t1: float,
    n_sites: int,
    volume_shape: tuple[int, int, int],
    n_genes: int,
    subject_ids: list[str],
    lesions: _Lesions,
    expression: _Expression,
    terms: Mapping[str, np.ndarray],
    availability: _Missingness,
    site_effects: Mapping[str, Any],
    outcome_parameters: Mapping[str, float],
    files: list[str],
) -> dict[str, Any]:
    """Collect the outcome model, the realised terms per subject and every generation parameter."""
    variances = {m: float(np.var(terms[m])) for m in MODALITIES}
    total = sum(variances.values())
    # With every strength 0 there is no signal, and each share is reported as 0.
    shares = {m: (variances[m] / total if total > 0 else 0.0) for m in MODALITIES}

    return {
        "task": task,
        "seed": seed,
        "n_subjects": len(subject_ids),
        "strengths": dict(strengths),
        "missing": {**missing, "t1": missing_t1},
        "outcome_columns": list(OUTCOME_COLUMNS[task]),
        "config_modality_names": dict(CONFIG_MODALITY_NAMES),
        "signal_features": {
            "imaging": ["lesion volume"],
            "omics": list(expression.signal_genes),
            "clinical": ["age", "stage"],
        },
        "variance_shares": shares,
        "term_variances": variances,
        "n_present": {
            "imaging": int(availability.imaging.sum()),
            "t1": int(availability.t1.sum()),
            "omics": int(availability.omics.sum()),
            "clinical": int(availability.clinical.sum()),
        },
        "generation": {
            "linear_predictor": (
                "eta = s_imaging * z(lesion_volume_mm3) + s_omics * z(signature_score) "
                "+ s_clinical * z(z(age) + stage_effect[stage]); z standardises over all subjects "
                "with the population standard deviation"
            ),
            "missingness": "completely at random; no subject lacks all three modalities",
            "n_sites": n_sites,
            "volume_shape": [int(size) for size in volume_shape],
            "flair_spacing_mm": [1.0, 1.0, 1.0],
            "t1_spacing_mm": [2.0, 2.0, 1.0],
            "head_semi_axis_fraction": HEAD_SEMI_AXIS_FRACTION,
            "lesion_radius_fraction": LESION_RADIUS_FRACTION,
            "lesion_scale_range": list(LESION_SCALE_RANGE),
            "min_lesion_radius_voxels": MIN_LESION_RADIUS,
            "imaging_site_effects": {
                "description": "[multiplier, shift] inside the head",
                **site_effects,
            },
            "n_genes": n_genes,
            "signal_gene_loading": SIGNAL_GENE_LOADING,
            "signature_score": "mean of the signature genes' standardised values before the batch shift",
            "n_nuisance_modules": N_NUISANCE_MODULES,
            "batch_shift_sd": BATCH_SHIFT_SD,
            "stage_effect": {str(stage): effect for stage, effect in STAGE_EFFECT.items()},
            "stage_probabilities": list(STAGE_PROBABILITIES),
            "smoker_probabilities": dict(zip(SMOKER_LEVELS, SMOKER_PROBABILITIES)),
            "bmi_missing_fraction": BMI_MISSING_FRACTION,
            **outcome_parameters,
        },
        "subjects": {
            "subject_id": list(subject_ids),
            "lesion_volume_mm3": [int(v) for v in lesions.volumes],
            "signature_score": [float(v) for v in expression.signature_score],
            "imaging_term": [float(v) for v in terms["imaging"]],
            "omics_term": [float(v) for v in terms["omics"]],
            "clinical_term": [float(v) for v in terms["clinical"]],
            "eta": [float(v) for v in terms["eta"]],
            "has_imaging": [bool(v) for v in availability.imaging],
            "has_t1": [bool(v) for v in availability.t1],
            "has_omics": [bool(v) for v in availability.omics],
            "has_clinical": [bool(v) for v in availability.clinical],
        },
        "files": files,
    }
