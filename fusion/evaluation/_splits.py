"""Outer and inner cross-validation splits, made once per experiment and shared by every strategy.

The splitters come from scikit-learn:

==================  ====================  ===================  ========================
task                stratified on         without groups       with groups
==================  ====================  ===================  ========================
binary, multiclass  ``y``                 ``StratifiedKFold``  ``StratifiedGroupKFold``
survival            ``event`` (not time)  ``StratifiedKFold``  ``StratifiedGroupKFold``
regression          nothing               ``KFold``            ``GroupKFold``
==================  ====================  ===================  ========================

``leave_one_group_out=True`` uses ``LeaveOneGroupOut`` instead: one test fold per group.
Regression folds come from plain shuffled ``KFold``, not stratified on binned targets, so
no bin count has to be chosen.

Number of folds
---------------
A unit is a subject or, when ``groups`` is given, a group. The number of folds used is the
minimum of the requested ``n_folds``, the number of units and, for stratified splits, the
smallest number of units containing a class. For classification every declared class
``0..n_classes-1`` of ``y`` counts, so an absent class raises. For survival only the events
count: censored subjects do not, because a fold without them still has comparable pairs.
When this minimum is below ``n_folds`` the folds are reduced with a
:class:`~fusion.DataWarning`. When it is below 2 a :class:`~fusion.DataError` is raised.
Example: 4 positives among 40 subjects under 5-fold cross-validation give 4 folds.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import (
    GroupKFold,
    KFold,
    LeaveOneGroupOut,
    StratifiedGroupKFold,
    StratifiedKFold,
)

from fusion._errors import ConfigError, DataError, DataWarning
from fusion._logging import logger
from fusion._task import TARGET_COLUMNS, Task

__all__ = ["SPLIT_COLUMNS", "inner_folds", "iter_folds", "make_splits"]

SPLIT_COLUMNS: tuple[str, ...] = ("subject_id", "repeat", "fold")
"""Columns of the split table returned by :func:`make_splits`."""

_MAX_IDS_SHOWN = 5


def make_splits(
    target: pd.DataFrame,
    task: Task,
    *,
    n_folds: int | None,
    seed: int,
    groups: pd.Series | None = None,
    leave_one_group_out: bool = False,
    repeats: int = 1,
) -> pd.DataFrame:
    """Assign every subject to one outer test fold per repeat.

    Parameters
    ----------
    target : pandas.DataFrame
        Target indexed by unique subject id, with the columns of
        :data:`fusion._task.TARGET_COLUMNS` for ``task.kind``.
    task : Task
        The prediction task. Its kind selects the splitter (see the module docstring).
    n_folds : int or None
        Requested number of folds, at least 2. It may be reduced (see the module docstring).
        Must be None, or equal to the number of groups, when ``leave_one_group_out`` is True.
    seed : int
        Seed of the shuffle. Repeat ``r`` uses ``seed + r``, so the same seed gives the same
        splits.
    groups : pandas.Series, optional
        Group id (for example the patient of each scan) indexed by subject id. It must cover
        every subject of ``target``. A group never sits on both sides of a split.
    leave_one_group_out : bool, default False
        Make one test fold per group with ``LeaveOneGroupOut``. Requires ``groups`` and
        ``repeats=1``, because the split is not random.
    repeats : int, default 1
        Number of repeated cross-validations, each with its own shuffle.

    Returns
    -------
    pandas.DataFrame
        One row per (subject, repeat), ``n_subjects * repeats`` rows, with the columns
        ``subject_id``, ``repeat`` (0-based) and ``fold`` (0-based index of the test fold
        that contains the subject in that repeat). Rows follow the order of ``target`` within
        each repeat.

    Raises
    ------
    ConfigError
        If ``n_folds``, ``repeats`` or ``leave_one_group_out`` are invalid.
    DataError
        If the target or the groups are invalid, or fewer than 2 folds are possible.

    Warns
    -----
    DataWarning
        When the number of folds is reduced below ``n_folds``.
    """
    _check_int_option("repeats", repeats, minimum=1)
    if leave_one_group_out and repeats != 1:
        msg = (
            f"repeats={repeats} was requested with leave_one_group_out=True, but leaving one "
            "group out is not random, so every repeat would be identical; use repeats=1"
        )
        raise ConfigError(msg)

    target = _validate_target(target, task)
    group_ids = _align_groups(groups, target.index)

    tables = []
    for repeat in range(repeats):
        folds = _assign_folds(
            target,
            task,
            n_folds=n_folds,
            seed=seed + repeat,
            groups=group_ids,
            leave_one_group_out=leave_one_group_out,
            split_name="outer split",
        )
        tables.append(
            pd.DataFrame({"subject_id": target.index.to_numpy(), "repeat": repeat, "fold": folds})
        )

    splits = pd.concat(tables, ignore_index=True)
    logger.info(
        "made %d outer folds x %d repeat(s) for %d subjects",
        splits["fold"].nunique(),
        repeats,
        len(target),
    )
    return splits


def iter_folds(splits: pd.DataFrame, repeat: int = 0) -> Iterator[tuple[int, pd.Index, pd.Index]]:
    """Yield the training and test subjects of each fold of one repeat.

    Parameters
    ----------
    splits : pandas.DataFrame
        Split table from :func:`make_splits`.
    repeat : int, default 0
        Repeat to iterate over.

    Yields
    ------
    fold : int
        Fold index, in increasing order.
    train_ids : pandas.Index
        Subject ids outside the fold, in the order of ``splits``.
    test_ids : pandas.Index
        Subject ids of the fold, in the order of ``splits``.
    """
    missing = [column for column in SPLIT_COLUMNS if column not in splits.columns]
    if missing:
        msg = (
            f"split table lacks the columns {missing}; expected {list(SPLIT_COLUMNS)} "
            f"as made by make_splits, got {list(splits.columns)}"
        )
        raise DataError(msg)

    rows = splits[splits["repeat"] == repeat]
    if rows.empty:
        available = sorted(splits["repeat"].unique().tolist())
        msg = f"split table has no repeat {repeat}; available repeats: {available}"
        raise DataError(msg)

    subject_ids = pd.Index(rows["subject_id"].to_numpy(), name="subject_id")
    folds = rows["fold"].to_numpy()
    for fold in np.unique(folds):
        in_fold = folds == fold
        yield int(fold), subject_ids[~in_fold], subject_ids[in_fold]


def inner_folds(
    target: pd.DataFrame,
    task: Task,
    *,
    n_folds: int,
    seed: int,
    groups: pd.Series | None = None,
) -> list[tuple[pd.Index, pd.Index]]:
    """Split the training part of an outer fold for cross-fitting or tuning.

    The stratification, grouping and fold-count rules are those of :func:`make_splits`.

    Parameters
    ----------
    target : pandas.DataFrame
        Target of the training subjects only, indexed by subject id.
    task : Task
        The prediction task.
    n_folds : int
        Requested number of inner folds, at least 2; reduced with a warning when too few
        units or events are available.
    seed : int
        Seed of the shuffle.
    groups : pandas.Series, optional
        Group id indexed by subject id. It may cover more subjects than ``target``.

    Returns
    -------
    list of (pandas.Index, pandas.Index)
        One ``(train_ids, validation_ids)`` pair per inner fold.
    """
    target = _validate_target(target, task)
    group_ids = _align_groups(groups, target.index)
    folds = _assign_folds(
        target,
        task,
        n_folds=n_folds,
        seed=seed,
        groups=group_ids,
        leave_one_group_out=False,
        split_name="inner split",
    )

    subject_ids = pd.Index(target.index, name="subject_id")
    return [(subject_ids[folds != fold], subject_ids[folds == fold]) for fold in np.unique(folds)]


def _assign_folds(
    target: pd.DataFrame,
    task: Task,
    *,
    n_folds: int | None,
    seed: int,
    groups: np.ndarray | None,
    leave_one_group_out: bool,
    split_name: str,
) -> np.ndarray:
    """Return the test-fold index of every row of ``target``, shape ``(n_subjects,)``."""
    if leave_one_group_out:
        return _leave_one_group_out_folds(target, n_folds=n_folds, groups=groups)

    if n_folds is None:
        msg = "n_folds is required unless leave_one_group_out=True; pass an integer of at least 2"
        raise ConfigError(msg)
    _check_int_option("n_folds", n_folds, minimum=2)
    _check_int_option("seed", seed, minimum=None)

    labels = _stratification_labels(target, task)
    n_used = _usable_n_folds(target, task, labels, groups, n_folds=n_folds, split_name=split_name)
    splitter = _make_splitter(labels is not None, groups is not None, n_used, seed)

    # Placeholder features: the splitters only read the number of rows.
    features = np.zeros((len(target), 1))
    folds = np.full(len(target), -1, dtype=np.int64)
    with warnings.catch_warnings():
        # Survival folds may contain fewer censored subjects than folds, which is harmless
        # because only the events limit the number of folds (see the module docstring).
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fold, (_, test_rows) in enumerate(splitter.split(features, labels, groups)):
            folds[test_rows] = fold

    _check_folds_filled(folds, n_used, split_name)
    return folds


def _leave_one_group_out_folds(
    target: pd.DataFrame, *, n_folds: int | None, groups: np.ndarray | None
) -> np.ndarray:
    """Return one fold per group, numbered in the sorted order of the group ids."""
    if groups is None:
        msg = (
            "leave_one_group_out=True needs groups: pass a Series of group ids indexed by "
            "subject id"
        )
        raise ConfigError(msg)

    n_groups = len(np.unique(groups))
    if n_groups < 2:
        msg = f"leave_one_group_out needs at least 2 groups, got {n_groups}"
        raise DataError(msg)
    if n_folds is not None and n_folds != n_groups:
        msg = (
            f"leave_one_group_out makes one fold per group ({n_groups} groups), but "
            f"n_folds={n_folds} was requested; pass n_folds=None"
        )
        raise ConfigError(msg)

    folds = np.full(len(target), -1, dtype=np.int64)
    splitter = LeaveOneGroupOut()
    for fold, (_, test_rows) in enumerate(
        splitter.split(np.zeros((len(target), 1)), groups=groups)
    ):
        folds[test_rows] = fold
    return folds


def _make_splitter(stratified: bool, grouped: bool, n_folds: int, seed: int) -> Any:
    """Return the scikit-learn splitter for this combination, shuffled with ``seed``."""
    if stratified and grouped:
        return StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    if stratified:
        return StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    if grouped:
        # NOTE: GroupKFold accepts shuffle and random_state from scikit-learn 1.6 on.
        return GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return KFold(n_splits=n_folds, shuffle=True, random_state=seed)


def _stratification_labels(target: pd.DataFrame, task: Task) -> np.ndarray | None:
    """Return the labels to stratify on, shape ``(n_subjects,)``, or None for regression."""
    if task.is_classification:
        return target["y"].to_numpy()
    if task.kind == "survival":
        return target["event"].to_numpy()
    return None


def _usable_n_folds(
    target: pd.DataFrame,
    task: Task,
    labels: np.ndarray | None,
    groups: np.ndarray | None,
    *,
    n_folds: int,
    split_name: str,
) -> int:
    """Apply the fold-count rule of the module docstring; warn on a reduction, raise below 2."""
    unit = "groups" if groups is not None else "subjects"
    units = groups if groups is not None else np.arange(len(target))
    limits = [(len(np.unique(units)), f"the data have only {{count}} {unit}")]

    if labels is not None:
        if task.kind == "survival":
            counted = [True]
        else:
            # Every declared class counts, so a class absent from the data stops the split.
            counted = list(range(task.n_classes if task.kind == "multiclass" else 2))
        for label in counted:
            count = len(np.unique(units[labels == label]))
            if task.kind == "survival":
                reason = f"only {{count}} {unit} have an observed event"
            else:
                reason = f"class {label!r} of 'y' is present in only {{count}} {unit}"
            limits.append((count, reason))

    count, reason = min(limits, key=lambda limit: limit[0])
    if count >= n_folds:
        return n_folds

    explanation = reason.format(count=count)
    if count < 2:
        msg = (
            f"{split_name}: cannot make even 2 folds because {explanation}; every fold needs at "
            "least one of them. Collect more subjects, merge rare classes, or evaluate without "
            "cross-validation."
        )
        raise DataError(msg)

    msg = (
        f"{split_name}: n_folds reduced from {n_folds} to {count} because {explanation}, so "
        f"{n_folds} folds cannot each contain one. Pass n_folds={count} to silence this warning."
    )
    warnings.warn(msg, DataWarning, stacklevel=4)
    return count


def _check_folds_filled(folds: np.ndarray, n_folds: int, split_name: str) -> None:
    """Raise when a subject got no fold or a fold got no subject."""
    if (folds < 0).any():
        msg = f"{split_name}: the splitter left {(folds < 0).sum()} subjects without a test fold"
        raise DataError(msg)

    sizes = np.bincount(folds, minlength=n_folds)
    if (sizes == 0).any():
        empty = np.flatnonzero(sizes == 0).tolist()
        msg = (
            f"{split_name}: folds {empty} of {n_folds} are empty after grouping, because a few "
            "large groups fill the others; pass a smaller n_folds"
        )
        raise DataError(msg)


def _validate_target(target: pd.DataFrame, task: Task, *, name: str = "target") -> pd.DataFrame:
    """Check a target table and return a copy with normalised dtypes.

    ``y`` becomes int64 for classification and float64 for regression; ``time`` becomes
    float64 and ``event`` bool for survival.

    Raises
    ------
    DataError
        On a non-DataFrame, repeated subject ids, missing columns, missing values or values
        outside the task's range.
    """
    if not isinstance(target, pd.DataFrame):
        msg = (
            f"{name} must be a pandas DataFrame indexed by subject id, got {type(target).__name__}"
        )
        raise DataError(msg)
    if len(target) == 0:
        msg = f"{name} has no subjects"
        raise DataError(msg)

    repeated = target.index[target.index.duplicated()].unique()
    if len(repeated) > 0:
        msg = (
            f"{name} has {len(repeated)} repeated subject ids ({_format_ids(repeated)}). Give "
            "every row a unique id and pass the shared id (for example the patient) as groups, "
            "so its rows stay on one side of every split."
        )
        raise DataError(msg)

    columns = TARGET_COLUMNS[task.kind]
    absent = [column for column in columns if column not in target.columns]
    if absent:
        msg = (
            f"{name} for a {task.kind} task needs the columns {list(columns)}, but {absent} are "
            f"missing (found {list(target.columns)})"
        )
        raise DataError(msg)

    clean = target.loc[:, list(columns)].copy()
    for column in columns:
        missing = clean.index[clean[column].isna()]
        if len(missing) > 0:
            msg = (
                f"{name} column {column!r} has {len(missing)} missing values (subjects "
                f"{_format_ids(missing)}); drop these subjects or impute the target first"
            )
            raise DataError(msg)

    if task.is_classification:
        clean["y"] = _class_labels(clean["y"], task, name)
    elif task.kind == "regression":
        clean["y"] = _finite_floats(clean["y"], name)
    else:
        clean["time"] = _finite_floats(clean["time"], name)
        negative = clean.index[clean["time"] < 0]
        if len(negative) > 0:
            msg = f"{name} column 'time' is negative for subjects {_format_ids(negative)}"
            raise DataError(msg)
        clean["event"] = _event_flags(clean["event"], name)
    return clean


def _class_labels(y: pd.Series, task: Task, name: str) -> pd.Series:
    """Return ``y`` as int64 labels after checking they lie in ``0..n_classes-1``."""
    n_classes = 2 if task.kind == "binary" else task.n_classes
    values = pd.to_numeric(y, errors="coerce")
    valid = values.notna() & (values == values.round()) & values.between(0, n_classes - 1)
    if not valid.all():
        bad = y.index[~valid]
        examples = sorted({repr(value) for value in y[~valid].tolist()})[:_MAX_IDS_SHOWN]
        msg = (
            f"{name} column 'y' of a {task.kind} task must contain class labels "
            f"0..{n_classes - 1}, got {', '.join(examples)} for subjects {_format_ids(bad)}"
        )
        raise DataError(msg)
    return values.astype(np.int64)


def _finite_floats(values: pd.Series, name: str) -> pd.Series:
    """Return a float64 copy of a column after checking every value is a finite number."""
    numbers = pd.to_numeric(values, errors="coerce").astype(np.float64)
    bad = values.index[~np.isfinite(numbers.to_numpy())]
    if len(bad) > 0:
        msg = (
            f"{name} column {values.name!r} must contain finite numbers, but it is missing or "
            f"invalid for subjects {_format_ids(bad)}"
        )
        raise DataError(msg)
    return numbers


def _event_flags(event: pd.Series, name: str) -> pd.Series:
    """Return ``event`` as bool after checking it contains only True/False or 1/0."""
    if event.dtype == bool:
        return event
    numbers = pd.to_numeric(event, errors="coerce")
    valid = numbers.isin([0, 1])
    if not valid.all():
        bad = event.index[~valid]
        msg = (
            f"{name} column 'event' must be True/False or 1/0 (1 = event observed), got other "
            f"values for subjects {_format_ids(bad)}"
        )
        raise DataError(msg)
    return numbers == 1


def _align_groups(groups: pd.Series | None, subject_ids: pd.Index) -> np.ndarray | None:
    """Return the group of each subject in ``subject_ids`` order, shape ``(n_subjects,)``."""
    if groups is None:
        return None
    if not isinstance(groups, pd.Series):
        msg = (
            f"groups must be a pandas Series of group ids indexed by subject id, got "
            f"{type(groups).__name__}; subjects are matched by id, never by position"
        )
        raise DataError(msg)
    if groups.index.has_duplicates:
        repeated = groups.index[groups.index.duplicated()].unique()
        msg = f"groups has repeated subject ids in its index: {_format_ids(repeated)}"
        raise DataError(msg)

    absent = subject_ids.difference(groups.index)
    if len(absent) > 0:
        msg = f"groups has no entry for {len(absent)} subjects of the target: {_format_ids(absent)}"
        raise DataError(msg)

    aligned = groups.reindex(subject_ids)
    missing = subject_ids[aligned.isna().to_numpy()]
    if len(missing) > 0:
        msg = f"groups is missing for {len(missing)} subjects: {_format_ids(missing)}"
        raise DataError(msg)
    return aligned.to_numpy()


def _check_int_option(name: str, value: object, *, minimum: int | None) -> None:
    """Raise a ConfigError unless ``value`` is an integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        msg = f"{name} must be an integer, got {value!r}"
        raise ConfigError(msg)
    if minimum is not None and value < minimum:
        msg = f"{name} must be at least {minimum}, got {value}"
        raise ConfigError(msg)


def _format_ids(ids: pd.Index | np.ndarray) -> str:
    """Return up to five ids for a message, followed by the count of the others."""
    ids = list(ids)
    text = ", ".join(repr(subject_id) for subject_id in ids[:_MAX_IDS_SHOWN])
    if len(ids) > _MAX_IDS_SHOWN:
        text += f" and {len(ids) - _MAX_IDS_SHOWN} more"
    return text
