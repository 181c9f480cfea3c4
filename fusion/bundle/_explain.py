"""Per-subject explanations with a bundle: modality Shapley values, top features, voxel maps.

For each subject, every ensemble member computes

- the exact Shapley value of each modality over all coalitions (``modality_shapley``);
- integrated-gradients attributions of the omics features and clinical columns
  (``feature_attributions``);
- integrated-gradients attributions of the imaging voxels (``voxel_attributions``).

Shapley values and integrated gradients are linear in the attributed function, so the
ensemble's attributions are the members' means: the contributions still sum to the
ensemble's prediction minus its all-absent baseline. A feature a member did not select
counts as 0 for that member. The voxel map is written as NIfTI on the grid of the subject's
reference sequence file, with PNG slices of the overlay and one HTML page per subject.
"""

from __future__ import annotations

import dataclasses
import gzip
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .._io import write_atomic, write_csv
from .._logging import logger
from ..config import ImagingConfig
from ..explain import (
    SourceGeometry,
    feature_attributions,
    modality_shapley,
    to_source_geometry,
    voxel_attributions,
)
from ..training import single_thread
from ._predict import Bundle, InputPaths

__all__ = ["SubjectExplanation", "explain_subjects"]

PAGE_NAME = "index.html"


@dataclasses.dataclass
class SubjectExplanation:
    """Files and tables that :func:`explain_subjects` wrote for one subject."""

    subject_id: str
    directory: Path
    page: Path
    contributions: pd.Series
    features: pd.DataFrame
    voxel_maps: dict[str, Path]


def subject_folder(subject_id: str) -> str:
    """Return a folder name for a subject id: characters other than letters, digits, ``.-_`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", subject_id)


def explain_subjects(bundle: Bundle, subject_ids: Sequence[str], out_dir: str | Path, *,
                     inputs: InputPaths | None = None, n_steps: int | None = None,
                     internal_batch_size: int = 4, top_k: int = 10,
                     **source_options: Any) -> list[SubjectExplanation]:
    """Explain the ensemble's prediction for each subject and write one folder per subject.

    Parameters
    ----------
    bundle
        A loaded bundle.
    subject_ids
        Subjects to explain; each must be in at least one input.
    out_dir
        Folder that receives ``<subject>/index.html`` and its files.
    inputs
        As in :meth:`Bundle.build_sources`; None reads the training sources.
    n_steps
        Integration steps; default: the run's ``attribution.n_steps``.
    internal_batch_size
        Interpolation steps per forward pass of the imaging network (bounds memory).
    top_k
        Features listed per modality on the page.
    **source_options
        ``paths_relative_to``, ``cache_dir`` and ``max_missing_fraction``.

    Each subject folder contains ``contributions.csv``, ``features.csv`` (every feature's mean
    attribution), per imaging modality ``<modality>_attribution.nii.gz`` and
    ``<modality>_<view>.png``, and ``index.html``.
    """
    sources = bundle.build_sources(inputs, **source_options)
    ids = bundle._subject_order(sources, subject_ids)
    volumes = bundle.load_volumes(sources, ids)
    n_steps = n_steps or bundle.config.attribution.n_steps
    n_members = len(bundle.members)

    contributions = []
    features = []
    voxel_sums: dict[str, dict[str, np.ndarray]] = {}
    for member in bundle.members:
        fusion_inputs, _, learners = bundle.member_inputs(member, sources, volumes, ids)
        with single_thread():
            contributions.append(modality_shapley(member.head, fusion_inputs))
        for name, learner in learners.items():
            present = ids[fusion_inputs.mask[:, fusion_inputs.modalities.index(name)].numpy() > 0]
            if isinstance(bundle.config.modalities[name], ImagingConfig):
                maps = voxel_attributions(member.head, fusion_inputs, learner, present, n_steps=n_steps,
                                          internal_batch_size=internal_batch_size)
                for subject, volume_map in zip(present, maps):
                    total = voxel_sums.setdefault(name, {})
                    total[subject] = total.get(subject, 0.0) + volume_map / n_members
                continue
            with single_thread():
                features.append(feature_attributions(member.head, fusion_inputs, learner, n_steps=n_steps))

    mean_contributions = _mean_contributions(contributions, bundle.modalities)
    feature_table = _mean_features(features, n_members)

    out_dir = Path(out_dir)
    written = []
    for subject in ids:
        directory = out_dir / subject_folder(subject)
        maps = {}
        for name, per_subject in voxel_sums.items():
            if subject in per_subject:
                maps[name] = _write_voxel_map(directory, name, subject, per_subject[subject], sources[name])
        subject_features = feature_table[feature_table["subject_id"] == subject]
        write_csv(directory / "contributions.csv", mean_contributions.loc[[subject]], index=True)
        write_csv(directory / "features.csv", subject_features)
        explanation = SubjectExplanation(subject, directory, directory / PAGE_NAME,
                                         mean_contributions.loc[subject], subject_features, maps)
        _write_page(explanation, bundle, top_k)
        written.append(explanation)
        logger.info("explained subject %s: %s", subject, explanation.page)
    return written


def _mean_contributions(frames: list[pd.DataFrame], modalities: list[str]) -> pd.DataFrame:
    """Average the members' Shapley tables (same subjects, same columns)."""
    columns = ["baseline", "prediction", *modalities]
    stacked = np.stack([frame[columns].to_numpy() for frame in frames])  # (members, n, 2 + M)
    return pd.DataFrame(stacked.mean(axis=0), index=frames[0].index, columns=columns)


def _mean_features(frames: list[pd.DataFrame], n_members: int) -> pd.DataFrame:
    """Average feature attributions over all members; a member without the feature adds 0."""
    columns = ["subject_id", "modality", "feature", "attribution"]
    frames = [frame for frame in frames if len(frame)]
    if not frames:
        return pd.DataFrame(columns=columns)
    long_format = pd.concat(frames, ignore_index=True)
    summed = long_format.groupby(["subject_id", "modality", "feature"], sort=False)["attribution"].sum() / n_members
    return summed.reset_index()[columns]


def _write_voxel_map(directory: Path, name: str, subject: str, volume_map: np.ndarray, source: Any) -> Path:
    """Write the channel-summed map in the reference file's geometry, and PNG slices."""
    geometry = SourceGeometry(source, subject)
    mapped = to_source_geometry(volume_map.sum(axis=0), geometry)  # (X0, Y0, Z0)

    image = nib.Nifti1Image(mapped, geometry.affine)
    image.set_data_dtype(np.float32)
    if geometry.path.name.endswith((".nii", ".nii.gz")):
        # Keep the scan's units and its qform and sform codes, so viewers place both alike.
        reference = nib.load(geometry.path).header
        qform_code, sform_code = int(reference["qform_code"]), int(reference["sform_code"])
        image.header.set_xyzt_units(*reference.get_xyzt_units())
        image.set_qform(geometry.affine, code=qform_code)
        image.set_sform(geometry.affine, code=sform_code or (0 if qform_code else 1))
    path = directory / f"{name}_attribution.nii.gz"
    compressed = gzip.compress(image.to_bytes(), compresslevel=6)
    write_atomic(path, lambda p: p.write_bytes(compressed))

    sequences = list(source.settings.sequences)
    shares = volume_map.reshape(len(sequences), -1).sum(axis=1)
    write_csv(directory / f"{name}_sequences.csv",
              pd.DataFrame({"sequence": sequences, "attribution": shares}))
    for view, figure in _overlay_figures(geometry.scan, mapped, f"{subject}: {name}").items():
        write_atomic(directory / f"{name}_{view}.png",
                     lambda p, figure=figure: figure.savefig(p, format="png", dpi=100, bbox_inches="tight",
                                                            metadata={"Software": None}))
    return path


_VIEWS = {"sagittal": 0, "coronal": 1, "axial": 2}


def _overlay_figures(scan: np.ndarray, attribution: np.ndarray, title: str) -> dict[str, Figure]:
    """Draw one slice per axis through the voxel of largest absolute attribution."""
    peak = np.unravel_index(int(np.argmax(np.abs(attribution))), attribution.shape)
    limit = float(np.abs(attribution).max()) or 1.0
    figures = {}
    for view, axis in _VIEWS.items():
        position = int(peak[axis])
        scan_slice = np.take(scan, position, axis=axis).T
        attribution_slice = np.take(attribution, position, axis=axis).T
        # Voxels under 5% of the peak are left transparent so the scan shows through.
        visible = np.ma.masked_where(np.abs(attribution_slice) < 0.05 * limit, attribution_slice)

        figure = Figure(figsize=(4.8, 4.0))
        axes = figure.add_subplot()
        axes.imshow(scan_slice, cmap="gray", origin="lower")
        overlay = axes.imshow(visible, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.7, origin="lower")
        figure.colorbar(overlay, ax=axes, fraction=0.046, pad=0.04, format="%.1e", label="attribution per voxel")
        axes.set_title(f"{title}, {view} slice {position}", fontsize=9)
        axes.set_axis_off()
        figures[view] = figure
    return figures


def _write_page(explanation: SubjectExplanation, bundle: Bundle, top_k: int) -> None:
    """Write the subject's HTML page; its images and tables are files beside it."""
    parts = [
        *_summary_html(explanation, bundle),
        *_feature_tables_html(explanation.features, bundle.modalities, top_k),
        *_voxel_html(explanation.voxel_maps),
        "<p>Tables: <a href='contributions.csv'>contributions.csv</a>, "
        "<a href='features.csv'>features.csv</a>.</p>",
    ]

    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(explanation.subject_id)}: fusion explanation</title><style>"
        "body{font-family:sans-serif;max-width:60em;margin:1em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:2px 8px}"
        ".n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:32%}"
        "</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    write_atomic(explanation.page, lambda p: p.write_text(page))


_SCORE_UNITS = {"binary": "logit", "multiclass": "logit of the predicted class",
                "survival": "log relative risk", "regression": "target unit"}


def _summary_html(explanation: SubjectExplanation, bundle: Bundle) -> list[str]:
    escape = html.escape
    row = explanation.contributions
    contribution_rows = "".join(
        f"<tr><td>{escape(name)}</td><td class='n'>{row[name]:+.4f}</td></tr>" for name in bundle.modalities
    )
    return [
        f"<h1>Subject {escape(explanation.subject_id)}</h1>",
        f"<p>Ensemble of {len(bundle.members)} fold models. Prediction {row['prediction']:+.4f} "
        f"({escape(_SCORE_UNITS[bundle.task.kind])}); all-absent baseline {row['baseline']:+.4f}. "
        "The modality contributions are exact Shapley values and sum to the prediction minus "
        "the baseline.</p>",
        "<h2>Modality contributions</h2>",
        f"<table><tr><th>modality</th><th>contribution</th></tr>{contribution_rows}</table>",
    ]


def _feature_tables_html(features: pd.DataFrame, modalities: list[str], top_k: int) -> list[str]:
    parts = []
    for name in modalities:
        part = features[features["modality"] == name]
        if not len(part):
            continue
        top = part.reindex(part["attribution"].abs().sort_values(ascending=False).index).head(top_k)
        rows = "".join(
            f"<tr><td>{html.escape(str(r.feature))}</td><td class='n'>{r.attribution:+.4f}</td></tr>"
            for r in top.itertuples()
        )
        parts.append(f"<h2>Top {len(top)} features: {html.escape(name)}</h2>")
        parts.append(f"<table><tr><th>feature</th><th>attribution</th></tr>{rows}</table>")
    return parts


def _voxel_html(voxel_maps: dict[str, Path]) -> list[str]:
    parts = []
    for name, path in voxel_maps.items():
        name, file_name = html.escape(name), html.escape(path.name)
        images = "".join(f"<img src='{name}_{view}.png' alt='{name} {view} overlay'>" for view in _VIEWS)
        parts.append(f"<h2>Voxel attributions: {name}</h2>")
        parts.append(
            "<p>Integrated gradients against a zero volume, summed over the sequences and resampled "
            f"onto the reference scan: <a href='{file_name}'>{file_name}</a> (NIfTI with the scan's "
            f"affine). Totals per sequence: <a href='{name}_sequences.csv'>{name}_sequences.csv</a>.</p>"
        )
        parts.append(f"<div>{images}</div>")
    return parts
