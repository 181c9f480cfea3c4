"""Preflight checks of a run: everything ``fusion run`` needs, checked without training.

:func:`preflight` reads every source of a config and returns a :class:`PreflightReport`:

* **alignment**: subjects per modality, ids present in one source only, subjects without a
  target, and a hint when two sources use ids of different lengths (for example 15- and
  16-character TCGA barcodes);
* **imaging**: shapes, spacings and channel counts of every listed file, read from the
  headers, a check that each NIfTI file contains the voxel bytes its header declares (truncated
  or corrupt files), and the memory the decoded float32 volumes take against the free memory
  and the free disk space of the cache folder;
* **omics**: subjects x features, sparsity, constant features, and whether the values look
  like raw counts (non-negative integers) or already log-transformed;
* **clinical**: the type of every input column, its missing values, non-numeric values in
  continuous columns, and labels that collide once written as text;
* **target**: class balance or, for survival, events; **folds**: the outer folds it would
  make, with the class or event counts of each.

Every problem is an error (the run cannot start) or a warning, each with its fix.
``fusion validate`` prints the report, and ``fusion run`` runs the same checks first.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import psutil

from ._errors import DataError, FusionError, FusionWarning
from ._logging import logger
from .config import ClinicalConfig, FusionConfig, ImagingConfig, OmicsConfig

__all__ = ["PreflightReport", "Problem", "preflight"]

_GIB = 1024**3
_MAX_LISTED = 5
# A matrix of non-negative integers whose largest value exceeds this looks like raw counts.
_COUNT_MAXIMUM = 50
# Holding the volumes in memory above this fraction of the free memory gets a warning.
_MEMORY_WARNING_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class Problem:
    """One finding: ``where`` it is (modality, file, column), what is wrong, and the fix."""

    level: Literal["error", "warning"]
    where: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}"
        return f"{text.rstrip('.')}. Fix: {self.fix}" if self.fix else text


@dataclasses.dataclass
class PreflightReport:
    """Findings and summaries of :func:`preflight`.

    ``summaries`` contains plain values (JSON-serialisable): ``alignment``, ``modalities``
    (one entry per modality), ``target``, ``folds`` and ``memory``. ``cohort`` is the built
    cohort, or None when building it failed.
    """

    problems: list[Problem] = dataclasses.field(default_factory=list)
    summaries: dict[str, Any] = dataclasses.field(default_factory=dict)
    cohort: Any = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    @property
    def ok(self) -> bool:
        """True when no error was found (warnings allowed)."""
        return not self.errors

    def add(self, level: Literal["error", "warning"], where: str, message: str, fix: str = "") -> None:
        self.problems.append(Problem(level, where, message, fix))

    def raise_for_errors(self) -> None:
        """Raise a DataError with the first error and the count of the others; return if none."""
        if self.ok:
            return
        more = len(self.errors) - 1
        extra = f" ({more} more error(s); `fusion validate` lists them all)" if more else ""
        raise DataError(f"{self.errors[0]}{extra}")

    def log_warnings(self) -> None:
        """Log every warning, one line each, with a ``preflight:`` prefix."""
        for problem in self.warnings:
            logger.warning("preflight: %s", problem)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-serialisable values (the cohort left out)."""
        return {
            "ok": self.ok,
            "errors": [dataclasses.asdict(p) for p in self.errors],
            "warnings": [dataclasses.asdict(p) for p in self.warnings],
            "summaries": self.summaries,
        }

    def format(self) -> str:
        """Return the report as text, one finding per line."""
        return "\n".join(_format_lines(self))


def preflight(config: FusionConfig, *, available_bytes: int | None = None,
              check_data: bool = True) -> PreflightReport:
    """Check ``config`` and its inputs without training; see the module docstring.

    Parameters
    ----------
    config
        A validated, path-resolved config (:func:`fusion.load_config`).
    available_bytes
        Free memory to compare the volume cache with; default ``psutil``'s available memory.
    check_data
        Also check that every NIfTI file contains the voxel bytes its header declares, by
        inflating ``.nii.gz`` streams without building arrays. False reads headers only.

    Returns
    -------
    PreflightReport
        Never raises for problems in the inputs: they are listed as errors.
    """
    report = PreflightReport()
    from .data._cohort import build_cohort

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cohort = build_cohort(config)
        except FusionError as error:
            logger.debug("building the cohort failed", exc_info=True)
            report.add("error", "cohort", str(error))
            return report
    _add_caught(report, caught, "cohort")
    report.cohort = cohort

    _check_alignment(report, cohort, config)
    for name, modality in config.modalities.items():
        source = cohort.sources[name]
        if isinstance(modality, ImagingConfig):
            _check_imaging(report, name, source, cohort, available_bytes, check_data)
        elif isinstance(modality, OmicsConfig):
            _check_omics(report, name, source)
        elif isinstance(modality, ClinicalConfig):
            _check_clinical(report, name, modality, source)
    _summarise_target(report, cohort)
    _check_folds(report, config, cohort)
    return report


def _add_caught(report: PreflightReport, caught: list[warnings.WarningMessage], where: str) -> None:
    """Turn fusion's own warnings into report warnings; log library warnings at debug level."""
    for item in caught:
        if issubclass(item.category, FusionWarning):
            report.add("warning", where, str(item.message))
        else:
            logger.debug("%s: %s: %s", where, item.category.__name__, item.message)


def _listed(items: list[Any]) -> str:
    shown = ", ".join(str(item) for item in items[:_MAX_LISTED])
    return shown + (f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


# Alignment ------------------------------------------------------------------------------


def _check_alignment(report: PreflightReport, cohort: Any, config: FusionConfig) -> None:
    alignment = dict(cohort.alignment)
    report.summaries["alignment"] = alignment
    target_ids = list(map(str, cohort.subject_ids))
    excluded = alignment.get("excluded_ids", [])
    if excluded and config.target.missing == "exclude":
        report.add(
            "warning", "target",
            f"{len(excluded)} subject(s) have no target value and are excluded: {_listed(excluded)}",
            "add their target values; training never uses a subject without one",
        )
    elif excluded:
        report.add(
            "error", "target",
            f"{len(excluded)} subject(s) have no target value in {', '.join(config.target.columns)}: "
            f"{_listed(excluded)}",
            "add their target values, or set target.missing: exclude to leave these subjects out",
        )
    for name, entry in alignment["modalities"].items():
        only_here, missing_here = entry["only_here"], entry["missing_here"]
        unknown = [i for i in only_here if i not in set(excluded)]
        if unknown:
            report.add(
                "warning", f"modality '{name}'",
                f"{len(unknown)} id(s) are not in the target table and are not used: {_listed(unknown)}",
                "check the id rule of this source, or ignore this if they are not part of the study",
            )
        if missing_here:
            report.add(
                "warning", f"modality '{name}'",
                f"{len(missing_here)} of {len(target_ids)} subjects with a target lack this "
                f"modality: {_listed(missing_here)}",
                "none needed if they were not acquired: missing modalities are allowed",
            )
        hint = _id_length_hint(unknown, missing_here)
        if hint:
            report.add("warning", f"modality '{name}'", hint,
                       "use one id rule in every source, for example trim the longer ids")


def _id_length_hint(only_here: list[str], missing_here: list[str]) -> str:
    """Describe ids of one source that extend ids of the other, such as barcode suffixes.

    A prefix counts when it is at least 4 characters and half the longer id long, so that
    ``S1`` and ``S10`` are not taken for one subject.
    """
    if not only_here or not missing_here:
        return ""
    pairs = _prefix_pairs(only_here, set(missing_here)) or _prefix_pairs(missing_here, set(only_here))
    if not pairs:
        return ""
    longer, shorter = pairs[0]
    lengths_here = sorted({len(i) for i in only_here})
    lengths_target = sorted({len(i) for i in missing_here})
    return (
        f"{len(pairs)} id(s) match an id of the other source only up to its length (e.g. "
        f"{longer!r} and {shorter!r}); id lengths here {lengths_here}, in the target table "
        f"{lengths_target}. Ids are matched exactly, so these subjects are not joined"
    )


def _prefix_pairs(ids: list[str], others: set[str]) -> list[tuple[str, str]]:
    """Return (id, shorter id of ``others`` that starts it) pairs."""
    pairs = []
    for identifier in ids:
        shortest = max(4, len(identifier) // 2)
        for n in range(len(identifier) - 1, shortest - 1, -1):
            if identifier[:n] in others:
                pairs.append((identifier, identifier[:n]))
                break
    return pairs


# Imaging --------------------------------------------------------------------------------


def _check_imaging(report: PreflightReport, name: str, source: Any, cohort: Any,
                   available_bytes: int | None, check_data: bool) -> None:
    from .data._volumes import (
        cache_memory_estimate,
        check_volume_data,
        count_by_value,
        volume_header,
    )

    shapes, spacings, channels = [], [], []
    unreadable = 0
    for subject_id, columns in source.files.items():
        for column, path in columns.items():
            if path is None:
                continue
            where = f"imaging '{name}': subject {subject_id!r}, column {column!r}"
            try:
                header = volume_header(path)
                if check_data:
                    check_volume_data(path)
            except DataError as error:
                unreadable += 1
                report.add("error", where, str(error))
                continue
            shapes.append(header.spatial_shape)
            spacings.append(tuple(round(s, 3) for s in header.spacing))
            channels.append(header.channels)
            if header.channels != 1 or header.channel_axis_needed:
                report.add(
                    "error", where,
                    f"file {path} has {header.channels} channels or time points (header shape "
                    f"{header.spatial_shape} x {header.channels}); each manifest column takes one 3D volume",
                    "save each channel as its own 3D file in its own manifest column",
                )

    present = cohort.present(name, cohort.subject_ids)
    estimate = cache_memory_estimate(len(present), source.output_shape, available_bytes=available_bytes)
    disk_free = psutil.disk_usage(str(_existing_parent(source.cache_dir))).free
    report.summaries.setdefault("modalities", {})[name] = {
        "kind": "imaging",
        "n_subjects": len(present),
        "n_files": len(shapes) + unreadable,
        "shapes": count_by_value(shapes),
        "shape_range": _range(shapes),
        "spacings_mm": count_by_value(spacings),
        "channels": count_by_value(channels),
        "output_shape": list(source.output_shape),
    }
    report.summaries.setdefault("memory", {})[name] = {
        "volumes": estimate.n_volumes,
        "float32_gib": estimate.float32_bytes / _GIB,
        "float64_gib": estimate.float64_bytes / _GIB,
        "available_gib": estimate.available_bytes / _GIB,
        "cache_disk_free_gib": disk_free / _GIB,
    }
    from .data._volumes import CACHE_MEMORY_FIXES

    if not estimate.fits:
        report.add("error", f"imaging '{name}'", f"holding the volumes in memory does not fit: "
                   f"{estimate.describe()}", CACHE_MEMORY_FIXES)
    elif estimate.float32_bytes > _MEMORY_WARNING_FRACTION * estimate.available_bytes:
        report.add("warning", f"imaging '{name}'", f"the volumes take over half the free memory: "
                   f"{estimate.describe()}", CACHE_MEMORY_FIXES)
    if estimate.float32_bytes > disk_free:
        report.add("error", f"imaging '{name}'",
                   f"the volume cache needs {estimate.float32_bytes / _GIB:.1f} GiB but "
                   f"{source.cache_dir} has {disk_free / _GIB:.1f} GiB free",
                   "set cache_dir to a folder on a larger disk, or reduce spatial_size")


def _range(shapes: list[tuple[int, ...]]) -> str:
    """Return the smallest and largest size along each axis, "(128-256, 128-256, 20-88)"."""
    if not shapes:
        return "none"
    array = np.asarray(shapes)
    parts = [f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in zip(array.min(axis=0), array.max(axis=0))]
    return "(" + ", ".join(parts) + ")"


def _existing_parent(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# Omics ----------------------------------------------------------------------------------


def _check_omics(report: PreflightReport, name: str, source: Any) -> None:
    values = source.data.to_numpy(dtype=np.float64)
    n_subjects, n_features = values.shape
    zeros = float((values == 0).mean()) if values.size else 0.0
    constant = int((np.nanvar(values, axis=0) <= 1e-12).sum()) if n_subjects > 1 else n_features
    scale = _value_scale(values)
    report.summaries.setdefault("modalities", {})[name] = {
        "kind": "omics",
        "matrix": source.layer or ".X",
        "n_subjects": n_subjects,
        "n_features": n_features,
        "fraction_zero": round(zeros, 4),
        "constant_features": constant,
        "values": scale,
    }
    where = f"omics '{name}'"
    if scale == "raw counts":
        report.add(
            "warning", where,
            f"the values look like raw counts (non-negative integers up to {values.max():g})",
            "normalise and log-transform them first (scanpy pp.normalize_total and pp.log1p), "
            "or pick a log-normalised layer with 'layer'",
        )
    if constant:
        report.add("warning", where, f"{constant} of {n_features} features are constant across "
                   "all subjects and are dropped in every fold")


def _value_scale(values: np.ndarray) -> str:
    """Classify a matrix as raw counts, log-transformed or centred values."""
    if values.size == 0:
        return "empty"
    if (values < 0).any():
        return "centred or log-ratio (negative values present)"
    integers = bool(np.all(values == np.round(values)))
    if integers and values.max() > _COUNT_MAXIMUM:
        return "raw counts"
    if integers:
        return "small non-negative integers (binary calls or low counts)"
    return "non-negative, non-integer (log-transformed or normalised)"


# Clinical -------------------------------------------------------------------------------


def _check_clinical(report: PreflightReport, name: str, config: ClinicalConfig, source: Any) -> None:
    table = source.table
    where = f"clinical '{name}' ({config.table.name})"
    columns: dict[str, Any] = {}
    for column in [*source.categorical, *source.continuous]:
        series = table[column]
        kind = "categorical" if column in source.categorical else "continuous"
        missing = int(series.isna().sum())
        columns[str(column)] = {"type": kind, "dtype": str(series.dtype), "missing": missing}
        if kind == "continuous":
            _check_numeric(report, where, column, series)
            if missing and config.impute == "error":
                ids = list(series.index[series.isna()])
                report.add("error", where, f"column {column!r} has {missing} missing value(s) "
                           f"(subjects {_listed(ids)}) and impute is 'error'",
                           "fill them, or set impute: median to use the training median")
            elif missing:
                report.add("warning", where, f"column {column!r} has {missing} missing value(s); "
                           "each fold fills them with its training median")

    labels = [str(c) for c in [*source.categorical, *source.continuous]]
    collided = sorted({label for label in labels if labels.count(label) > 1})
    if collided:
        originals = [repr(c) for c in [*source.categorical, *source.continuous] if str(c) in collided]
        report.add("error", where, f"columns {', '.join(originals)} have the same name once "
                   "written as text", "rename the columns so that every name is distinct")
    report.summaries.setdefault("modalities", {})[name] = {
        "kind": "clinical", "n_subjects": len(table), "columns": columns,
    }


def _check_numeric(report: PreflightReport, where: str, column: Any, series: pd.Series) -> None:
    numeric = pd.to_numeric(series, errors="coerce")
    bad = numeric.isna() & series.notna()
    if bad.any():
        examples = ", ".join(f"{i}={series[i]!r}" for i in series.index[bad][:_MAX_LISTED])
        report.add("error", where, f"continuous column {column!r} holds {int(bad.sum())} "
                   f"value(s) that are not numbers ({examples})",
                   "fix those values, or declare the column as categorical")
    infinite = np.isinf(numeric.to_numpy(dtype=float, na_value=np.nan))
    if infinite.any():
        ids = list(series.index[infinite])
        report.add("error", where, f"continuous column {column!r} holds {int(infinite.sum())} "
                   f"infinite value(s) (subjects {_listed(ids)})", "replace them by finite numbers")


# Target and folds -----------------------------------------------------------------------


def _summarise_target(report: PreflightReport, cohort: Any) -> None:
    target = cohort.target
    task = cohort.task
    summary: dict[str, Any] = {"kind": task.kind, "n_subjects": len(target),
                               "excluded_without_target": cohort.alignment["excluded_without_target"]}
    if task.kind == "survival":
        summary["events"] = int(target["event"].sum())
        summary["censored"] = int((~target["event"].astype(bool)).sum())
        if summary["events"] < 10:
            report.add("warning", "target", f"only {summary['events']} events in {len(target)} "
                       "subjects; C-indices will be very uncertain")
    elif task.is_classification:
        counts = target["y"].value_counts().sort_index()
        summary["class_counts"] = {str(k): int(v) for k, v in counts.items()}
    else:
        summary["mean"] = float(target["y"].mean())
        summary["sd"] = float(target["y"].std())
    report.summaries["target"] = summary


def _check_folds(report: PreflightReport, config: FusionConfig, cohort: Any) -> None:
    from ._pipeline import make_outer_splits

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            splits = make_outer_splits(config, cohort, repeats=1)
        except FusionError as error:
            report.add("error", "folds", str(error))
            return
    _add_caught(report, caught, "folds")
    if cohort.groups is not None:
        sizes = cohort.groups.value_counts()
        single = sorted(map(str, sizes.index[sizes == 1]))
        report.summaries["groups"] = {str(k): int(v) for k, v in sizes.sort_index().items()}
        if single:
            report.add(
                "warning", f"groups ({config.groups.column})",
                f"{len(single)} group(s) have a single subject: {_listed(single)}; a test fold "
                "made of one of them has one class or no comparable pair, so its metrics are NaN",
                "merge small groups (sites) or use grouped k-fold instead of leave_one_group_out",
            )

    target = cohort.target.loc[splits["subject_id"]].assign(fold=splits["fold"].to_numpy())
    folds = []
    for fold, part in target.groupby("fold"):
        entry: dict[str, Any] = {"fold": int(fold), "n_subjects": len(part)}
        if cohort.task.kind == "survival":
            entry["events"] = int(part["event"].sum())
        elif cohort.task.is_classification:
            counts = part["y"].value_counts()
            entry["class_counts"] = {str(k): int(counts.get(k, 0)) for k in range(cohort.task.output_dim if cohort.task.kind == "multiclass" else 2)}
        folds.append(entry)
    report.summaries["folds"] = folds


# Text -----------------------------------------------------------------------------------


def _format_lines(report: PreflightReport) -> list[str]:
    lines: list[str] = []
    summaries = report.summaries
    alignment = summaries.get("alignment")
    if alignment:
        lines.append(f"subjects with a target: {alignment['n_with_target']} "
                     f"({alignment['excluded_without_target']} excluded without target); "
                     f"complete cases: {alignment['complete_cases']}")
        for name, entry in alignment["modalities"].items():
            lines.append(f"  {name}: {entry['n_present']} present, {len(entry['missing_here'])} "
                         f"missing, {len(entry['only_here'])} id(s) only in this source")

    for name, entry in summaries.get("modalities", {}).items():
        lines.append(f"modality {name} ({entry['kind']}):")
        if entry["kind"] == "imaging":
            lines.append(f"  {entry['n_files']} files; shapes {entry['shape_range']}, most common "
                         f"{entry['shapes']}")
            lines.append(f"  spacings (mm) {entry['spacings_mm']}; channels {entry['channels']}")
            memory = summaries["memory"][name]
            lines.append(f"  volume cache: {memory['volumes']} x {tuple(entry['output_shape'])} = "
                         f"{memory['float32_gib']:.2f} GiB float32 ({memory['float64_gib']:.2f} GiB "
                         f"float64); {memory['available_gib']:.1f} GiB memory free, "
                         f"{memory['cache_disk_free_gib']:.1f} GiB disk free")
        elif entry["kind"] == "omics":
            lines.append(f"  {entry['n_subjects']} subjects x {entry['n_features']} features from "
                         f"{entry['matrix']}; {entry['fraction_zero']:.1%} zeros; values: {entry['values']}")
        else:
            for column, info in entry["columns"].items():
                lines.append(f"  {column}: {info['type']} ({info['dtype']}), {info['missing']} missing")

    target = summaries.get("target")
    if target:
        if target["kind"] == "survival":
            detail = f"{target['events']} events, {target['censored']} censored"
        elif "class_counts" in target:
            detail = "class counts " + ", ".join(f"{k}: {v}" for k, v in target["class_counts"].items())
        else:
            detail = f"mean {target['mean']:.3g}, sd {target['sd']:.3g}"
        lines.append(f"target: {target['kind']}, {target['n_subjects']} subjects, {detail}")

    if summaries.get("folds"):
        lines.append("outer folds:")
        for fold in summaries["folds"]:
            if "events" in fold:
                detail = f"{fold['events']} events"
            elif "class_counts" in fold:
                detail = ", ".join(f"class {k}: {v}" for k, v in fold["class_counts"].items())
            else:
                detail = ""
            lines.append(f"  {fold['fold']}: {fold['n_subjects']} subjects" + (f", {detail}" if detail else ""))

    for problem in report.warnings:
        lines.append(f"warning: {problem}")
    for problem in report.errors:
        lines.append(f"error: {problem}")
    lines.append("no errors found" if report.ok else f"{len(report.errors)} error(s) found")
    return lines
