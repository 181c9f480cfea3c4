"""The cohort: one subject index, the target, groups and every modality's source.

Subjects are aligned by id, never by row position. A subject enters the cohort when it
has a target. Each modality records which of those subjects it has (the availability
mask), and a subject missing some modalities is kept.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._errors import DataError
from .._logging import logger
from .._task import Task
from ..config import ClinicalConfig, FusionConfig, ImagingConfig, OmicsConfig
from ._imaging import ImagingSettings, ImagingSource
from ._omics import OmicsSource
from ._tables import closest, read_table

__all__ = ["ClinicalSource", "Cohort", "build_cohort"]


@dataclasses.dataclass
class ClinicalSource:
    """A clinical table restricted to its feature columns, indexed by subject id."""

    name: str
    table: pd.DataFrame
    categorical: list[str]
    continuous: list[str]

    @property
    def subject_ids(self) -> pd.Index:
        return self.table.index


Source = ImagingSource | OmicsSource | ClinicalSource


@dataclasses.dataclass
class Cohort:
    """Subjects with a target, and the sources of every modality.

    Attributes
    ----------
    task
        The prediction task.
    target
        Indexed by subject id; ``y``, or ``time`` and ``event`` (see ``fusion._task``).
    groups
        Group label per subject (patient or site), or None.
    sources
        Modality name to source object.
    availability
        Bool frame, subjects x modalities: True where the subject has that modality.
    alignment
        The alignment report (also saved as ``alignment.json``).
    """

    task: Task
    target: pd.DataFrame
    groups: pd.Series | None
    sources: dict[str, Source]
    availability: pd.DataFrame
    alignment: dict[str, Any]

    @property
    def subject_ids(self) -> pd.Index:
        return self.target.index

    @property
    def modalities(self) -> list[str]:
        return list(self.sources)

    def present(self, modality: str, subject_ids: pd.Index) -> pd.Index:
        """Return the ids among ``subject_ids`` that have ``modality``."""
        mask = self.availability.loc[subject_ids, modality].to_numpy()
        return subject_ids[mask]


def _target_frame(config: FusionConfig, table: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, Task, list[str]]:
    """Build the target frame; return it, the task and the ids of subjects without a target."""
    target_config = config.target
    for column in target_config.columns:
        if column not in table.columns:
            raise DataError(
                f"target: column '{column}' not found in {path}{closest(column, list(map(str, table.columns)))}"
            )
    raw = table[target_config.columns]
    has_target = raw.notna().all(axis=1)
    excluded = list(map(str, raw.index[~has_target]))
    raw = raw[has_target]

    if target_config.kind == "survival":
        time = pd.to_numeric(raw[target_config.time], errors="coerce")
        event = pd.to_numeric(raw[target_config.event], errors="coerce")
        _reject_non_numeric(raw[target_config.time], time, target_config.time, path)
        _reject_non_numeric(raw[target_config.event], event, target_config.event, path)
        if not set(np.unique(event)) <= {0, 1}:
            raise DataError(
                f"target: event column '{target_config.event}' must be 0/1 (1 = event observed), "
                f"got values {sorted(np.unique(event))[:6]}"
            )
        if (time < 0).any():
            bad = time[time < 0].index[:5].tolist()
            raise DataError(f"target: negative survival times in '{target_config.time}' for {bad}")
        frame = pd.DataFrame({"time": time.astype(float), "event": event.astype(bool)})
        return frame, Task("survival"), excluded

    values = raw[target_config.column]
    if target_config.kind == "regression":
        numeric = pd.to_numeric(values, errors="coerce")
        _reject_non_numeric(values, numeric, target_config.column, path)
        return pd.DataFrame({"y": numeric.astype(float)}), Task("regression"), excluded

    labels = sorted(values.unique(), key=str)
    if target_config.kind == "binary" and len(labels) != 2:
        raise DataError(
            f"target: binary column '{target_config.column}' has {len(labels)} distinct value(s) "
            f"{labels[:6]}; a binary target needs exactly 2 (use kind: multiclass for more)"
        )
    if target_config.kind == "multiclass" and len(labels) < 3:
        raise DataError(
            f"target: multiclass column '{target_config.column}' has only {len(labels)} value(s) "
            f"{labels}; use kind: binary for two classes"
        )
    codes = values.map({label: code for code, label in enumerate(labels)}).astype(np.int64)
    logger.info("target '%s': classes %s coded as 0..%d", target_config.column, labels, len(labels) - 1)
    task = Task(target_config.kind, n_classes=len(labels))
    return pd.DataFrame({"y": codes}), task, excluded


def _reject_non_numeric(original: pd.Series, numeric: pd.Series, column: str, path: Path) -> None:
    bad = numeric.isna() & original.notna()
    if bad.any():
        examples = ", ".join(f"{i}={original[i]!r}" for i in bad[bad].index[:5])
        raise DataError(
            f"target: column '{column}' in {path} must be numeric; {int(bad.sum())} value(s) are "
            f"not ({examples}). Fix or remove those values"
        )


def _clinical_source(name: str, config: ClinicalConfig, table: pd.DataFrame, exclude: set[str]) -> ClinicalSource:
    from ..preprocessing._clinical import infer_column_types

    columns = [str(c) for c in table.columns]
    declared = (config.categorical or []) + (config.continuous or [])
    for column in declared:
        if column not in columns:
            raise DataError(
                f"clinical modality '{name}': column '{column}' not found in {config.table}"
                f"{closest(column, columns)}"
            )
    if config.categorical is None and config.continuous is None:
        candidates = table.drop(columns=[c for c in table.columns if str(c) in exclude])
        categorical, continuous = infer_column_types(candidates)
        logger.info(
            "clinical '%s': no column types declared; inferred categorical %s and continuous %s "
            "(outcome and group columns left out)", name, categorical, continuous,
        )
    else:
        categorical = list(config.categorical or [])
        continuous = list(config.continuous or [])
    features = table[categorical + continuous]
    return ClinicalSource(name=name, table=features, categorical=categorical, continuous=continuous)


def _make_source(name: str, config: Any, fusion_config: FusionConfig, tables: dict[Path, pd.DataFrame], exclude: set[str]) -> Source:
    if isinstance(config, ImagingConfig):
        settings = ImagingSettings(
            sequences=tuple(config.sequences),
            mask=config.mask,
            reference=config.reference,
            crop_margin=config.crop_margin,
            spatial_size=tuple(config.spatial_size),
            resize_mode=config.resize_mode,
            normalize=config.normalize,
        )
        return ImagingSource(
            config.manifest,
            name=name,
            id_column=config.id_column,
            settings=settings,
            cache_dir=fusion_config.cache_dir,
            paths_relative_to=config.paths_relative_to,
        )
    if isinstance(config, OmicsConfig):
        return OmicsSource(name, config.files, layer=config.layer)
    table = tables.get(config.table)
    if table is None:
        table = read_table(config.table, id_column=config.id_column, what=f"clinical modality '{name}'")
    return _clinical_source(name, config, table, exclude)


def _alignment_report(target: pd.DataFrame, excluded: list[str], sources: dict[str, Source],
                      target_path: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    subjects = target.index
    availability = pd.DataFrame(index=subjects)
    report: dict[str, Any] = {
        "n_subjects": int(len(subjects) + len(excluded)),
        "n_with_target": len(subjects),
        "excluded_without_target": len(excluded),
        "excluded_ids": sorted(excluded),
        "modalities": {},
    }
    for name, source in sources.items():
        ids = pd.Index(source.subject_ids)
        overlap = subjects.intersection(ids)
        if len(overlap) == 0:
            raise DataError(
                f"modality '{name}' ({_source_file(source)}) shares no subject id with the target "
                f"table {target_path}: overlap 0 of {len(ids)} modality ids and {len(subjects)} "
                f"target ids (e.g. modality {list(ids[:3])} versus target {list(subjects[:3])}; "
                f"id lengths {_lengths(ids)} versus {_lengths(subjects)}). Ids are matched exactly "
                "after stripping spaces: use the same id rule in both (same barcode length, no "
                "prefixes or suffixes)"
            )
        availability[name] = subjects.isin(ids)
        report["modalities"][name] = {
            "n_present": len(overlap),
            "only_here": sorted(map(str, ids.difference(subjects))),
            "missing_here": sorted(map(str, subjects.difference(ids))),
        }
    report["complete_cases"] = int(availability.all(axis=1).sum())
    return report, availability


def _source_file(source: Source) -> str:
    """Return the file a source was read from, for messages."""
    if isinstance(source, ImagingSource):
        return f"manifest {source.manifest}"
    if isinstance(source, OmicsSource):
        return ", ".join(str(path) for path in source.files)
    return "clinical table"


def _lengths(ids: pd.Index) -> list[int]:
    return sorted({len(str(i)) for i in ids})


def build_cohort(config: FusionConfig) -> Cohort:
    """Read every source of ``config`` and align them by subject id."""
    tables: dict[Path, pd.DataFrame] = {}
    target_path = config.target.table
    if target_path is None:
        target_path = next(m.table for m in config.modalities.values() if isinstance(m, ClinicalConfig))
    target_table = read_table(target_path, id_column=config.target.id_column, what="target table")
    tables[target_path] = target_table
    target, task, excluded = _target_frame(config, target_table, target_path)
    # A canonical order makes splits, batches and outputs independent of the files' row order.
    target = target.sort_index()
    if excluded:
        shown = ", ".join(excluded[:5]) + (f" and {len(excluded) - 5} more" if len(excluded) > 5 else "")
        logger.warning("%d subject(s) have no target value in %s and are excluded: %s",
                       len(excluded), target_path, shown)

    groups = None
    if config.groups is not None:
        column = config.groups.column
        if column not in target_table.columns:
            raise DataError(
                f"groups: column '{column}' not found in {target_path}"
                f"{closest(column, list(map(str, target_table.columns)))}"
            )
        groups = target_table.loc[target.index, column]
        if groups.isna().any():
            missing = groups[groups.isna()].index[:5].tolist()
            raise DataError(f"groups: column '{column}' is empty for {int(groups.isna().sum())} subject(s), e.g. {missing}")
        groups = groups.astype(str)

    exclude = set(config.target.forbidden_inputs) | ({config.groups.column} if config.groups else set())
    sources = {
        name: _make_source(name, modality, config, tables, exclude)
        for name, modality in config.modalities.items()
    }
    alignment, availability = _alignment_report(target, excluded, sources, target_path)
    no_modality = availability.index[~availability.any(axis=1)]
    if len(no_modality):
        logger.warning(
            "%d subject(s) with a target have no modality at all; their fused prediction is the "
            "all-absent baseline (e.g. %s)", len(no_modality), list(no_modality[:5]),
        )
    for name, entry in alignment["modalities"].items():
        logger.info(
            "modality '%s': %d of %d subjects present; %d id(s) only in this source",
            name, entry["n_present"], len(target), len(entry["only_here"]),
        )
    return Cohort(task=task, target=target, groups=groups, sources=sources, availability=availability, alignment=alignment)

