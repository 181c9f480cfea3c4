"""Fold-fitted preprocessing of clinical tables for the tabular encoder.

A clinical table is a ``pandas.DataFrame`` indexed by subject id, one row per subject.
:class:`ClinicalPreprocessor` learns category vocabularies, medians, means and standard
deviations from the training subjects of one fold. It then turns any table with the same
columns into standardised continuous values and integer category codes, the inputs of
:class:`fusion.encoders.ClinicalEncoder`.

Category levels
---------------
Every value of a categorical column is turned into a string label by :func:`category_label`:

* missing values (``None``, ``NaN``, ``pd.NA``, ``NaT``) have no label and get
  :data:`MISSING_CODE`;
* booleans become ``"True"`` and ``"False"``;
* integers and integer-valued floats become the decimal integer, so ``1``, ``1.0`` and the
  string ``"1"`` are one level;
* other floats become their shortest round-trip form (``0.5`` -> ``"0.5"``);
* strings are kept verbatim (``"1.0"`` and ``" A"`` are levels of their own);
* anything else becomes ``str(value)``.

Code 0 (:data:`UNKNOWN_CODE`) is a value not seen in training and code 1 (:data:`MISSING_CODE`)
is a missing value. The training levels follow from code 2 in the order of
``vocabularies_[column]``: numeric labels in numeric order, then the others alphabetically.
"""

from __future__ import annotations

import difflib
import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from fusion._errors import ConfigError, DataError, DataWarning
from fusion._logging import logger

__all__ = [
    "MISSING_CODE",
    "N_RESERVED_CODES",
    "UNKNOWN_CODE",
    "ClinicalPreprocessor",
    "ColumnName",
    "category_label",
    "infer_column_types",
]

ColumnName = str | int
"""A column label as the user wrote it: a string, or an integer for integer-labelled tables."""

UNKNOWN_CODE = 0
"""Category code of a value that was not seen in the training table."""

MISSING_CODE = 1
"""Category code of a missing value (``NaN``, ``None``, ``pd.NA``)."""

N_RESERVED_CODES = 2
"""Number of reserved codes; level ``i`` of a vocabulary has code ``i + 2``."""

_STATE_FORMAT = "fusion.ClinicalPreprocessor"
_STATE_VERSION = 1
_STATE_KEYS = (
    "format",
    "version",
    "modality",
    "impute",
    "categorical",
    "continuous",
    "vocabularies",
    "medians",
    "means",
    "sds",
)
_MAX_EXAMPLES = 5
_IMPUTE_CHOICES = ("median", "error")


def category_label(value: Any) -> str | None:
    """Convert one categorical value to its level label, or ``None`` when it is missing.

    The rule is given in the module docstring; for example ``True -> "True"``,
    ``1 -> "1"``, ``1.0 -> "1"``, ``2.5 -> "2.5"``, ``"b" -> "b"`` and ``NaN -> None``.
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isnan(number):
            return None
        if math.isfinite(number) and number.is_integer():
            return str(int(number))
        return repr(number)
    if isinstance(value, str):
        return value
    return str(value)


def infer_column_types(
    table: pd.DataFrame, *, max_categories: int = 10, modality: str = "clinical"
) -> tuple[list[ColumnName], list[ColumnName]]:
    """Split the columns of a table into categorical and continuous columns.

    Strings, booleans and ``category`` columns are categorical. A numeric column is
    categorical when its observed values are all integers with at most ``max_categories``
    distinct values (codes such as sex or tumour location). Any other numeric column is
    continuous. Columns without a single observed value, and date or duration columns, are
    left out with a :class:`DataWarning`. Every decision is logged at INFO level.

    Parameters
    ----------
    table
        Table whose columns are all candidate inputs: drop the id, target and outcome
        columns first.
    max_categories
        Maximum number of distinct integer values of a numeric column treated as categorical.
    modality
        Modality name used in log messages and warnings.

    Returns
    -------
    categorical, continuous
        Column labels in table order, unchanged (integer labels stay integers).
    """
    if not isinstance(max_categories, numbers.Integral) or max_categories < 1:
        msg = f"{modality}: max_categories must be a positive integer, got {max_categories!r}."
        raise ConfigError(msg)

    categorical: list[ColumnName] = []
    continuous: list[ColumnName] = []
    for column in table.columns:
        kind, reason = _infer_column_type(table[column], max_categories)
        if kind == "skip":
            msg = f"{modality}: column {column!r} is left out of the inputs because it {reason}."
            warnings.warn(msg, DataWarning, stacklevel=2)
            continue
        logger.info("%s: column %r is %s (%s)", modality, column, kind, reason)
        (categorical if kind == "categorical" else continuous).append(column)
    return categorical, continuous


def _infer_column_type(series: pd.Series, max_categories: int) -> tuple[str, str]:
    """Return ``("categorical" | "continuous" | "skip", reason)`` for one column."""
    observed = series.dropna()
    if observed.empty:
        return "skip", "has no observed value"
    if pd.api.types.is_datetime64_any_dtype(series) or pd.api.types.is_timedelta64_dtype(series):
        return "skip", f"has dtype {series.dtype}; convert it to a number (for example days)"
    if isinstance(series.dtype, pd.CategoricalDtype):
        return "categorical", "category dtype"
    if pd.api.types.is_bool_dtype(series):
        return "categorical", "boolean dtype"

    if pd.api.types.is_numeric_dtype(series):
        numbers_ = observed.astype("float64")
    else:
        if any(isinstance(value, (bool, np.bool_)) for value in observed):
            return "categorical", "contains booleans"
        numbers_ = pd.to_numeric(observed, errors="coerce")
        if numbers_.isna().any():
            return "categorical", "contains strings"
        numbers_ = numbers_.astype("float64")

    n_distinct = numbers_.nunique()
    finite = np.isfinite(numbers_.to_numpy())
    integer_valued = bool(finite.all() and (numbers_ == np.round(numbers_)).all())
    if integer_valued and n_distinct <= max_categories:
        return (
            "categorical",
            f"{n_distinct} distinct integer values, at most max_categories={max_categories}",
        )
    if integer_valued:
        return (
            "continuous",
            f"{n_distinct} distinct integer values, more than max_categories={max_categories}",
        )
    return "continuous", "numbers that are not all integers"


class ClinicalPreprocessor(BaseEstimator):
    """Fold-fitted encoding of a clinical table into continuous values and category codes.

    ``fit`` learns, from the training subjects only, the levels of each categorical column
    and the median, mean and standard deviation of each continuous column. ``transform``
    then returns standardised continuous values and integer codes, rows in input order.

    Parameters
    ----------
    categorical
        Categorical columns, by their labels in the table. Levels are built as described in
        the module docstring; a missing value is a level of its own (code 1).
    continuous
        Continuous columns. Their values must be numbers or missing.
    impute
        ``"median"`` fills missing continuous values with the training median and logs the
        column and count. ``"error"`` raises a :class:`DataError` that names every column
        with missing values and their count.
    modality
        Modality name used in messages.

    Attributes
    ----------
    categorical_columns_, continuous_columns_ : list of str or int
        The declared columns with NumPy integer labels turned into ``int``.
    vocabularies_ : dict
        Training levels of each categorical column in code order; level ``i`` has code
        ``i + N_RESERVED_CODES``.
    categorical_cardinalities_ : list of int
        Number of codes of each categorical column, the two reserved codes included.
    medians_, means_, sds_ : numpy.ndarray of shape (n_continuous,)
        Training median, mean and population standard deviation (``ddof=0``) of each
        continuous column, computed over its observed values. A column without variance
        has ``sds_ = 1``.
    """

    def __init__(
        self,
        *,
        categorical: Sequence[ColumnName],
        continuous: Sequence[ColumnName],
        impute: Literal["median", "error"] = "median",
        modality: str = "clinical",
    ) -> None:
        self.categorical = categorical
        self.continuous = continuous
        self.impute = impute
        self.modality = modality

    # ------------------------------------------------------------------ fit / transform

    def fit(self, table: pd.DataFrame) -> ClinicalPreprocessor:
        """Learn vocabularies and continuous statistics from the training table.

        Parameters
        ----------
        table
            Training subjects only, indexed by subject id (unique), with every declared
            column. Other columns are ignored.

        Returns
        -------
        ClinicalPreprocessor
            ``self``, fitted.

        Raises
        ------
        DataError
            A declared column is missing or ambiguous, a continuous column contains a value that
            is not a number or is infinite, a continuous column has no observed value, or it
            has missing values while ``impute="error"``.
        """
        categorical, continuous = self._validate_params()
        self._check_table(table, categorical + continuous, table_role="training")
        if len(table) == 0:
            msg = (
                f"{self.modality}: the training table has no rows; fit needs at least one subject."
            )
            raise DataError(msg)

        vocabularies = {
            column: self._fit_vocabulary(table[column], column) for column in categorical
        }

        values = self._continuous_values(table, continuous)  # (n, n_continuous), NaN = missing
        missing = np.isnan(values)
        if self.impute == "error":
            self._raise_missing(table.index, continuous, missing, table_role="training")
        medians, means, sds = self._fit_statistics(values, continuous)

        self.categorical_columns_ = categorical
        self.continuous_columns_ = continuous
        self.vocabularies_ = vocabularies
        self.categorical_cardinalities_ = [
            N_RESERVED_CODES + len(vocabularies[c]) for c in categorical
        ]
        self.medians_ = medians
        self.means_ = means
        self.sds_ = sds
        self.n_features_in_ = len(categorical) + len(continuous)

        logger.debug(
            "%s: fitted on %d subjects: %d categorical columns (cardinalities %s), "
            "%d continuous columns",
            self.modality,
            len(table),
            len(categorical),
            self.categorical_cardinalities_,
            len(continuous),
        )
        return self

    def transform(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Encode a table with the fitted vocabularies and statistics.

        Parameters
        ----------
        table
            Subjects to encode, indexed by subject id (unique), with every declared column.

        Returns
        -------
        x_cont : numpy.ndarray of float32, shape (n, n_continuous)
            ``(value - training mean) / training sd``; missing values are first filled with
            the training median when ``impute="median"``.
        x_cat : numpy.ndarray of int64, shape (n, n_categorical)
            Category codes: 0 unknown, 1 missing, training levels from 2.

        Rows follow the input order. A value not seen in training gets code 0 and a
        :class:`DataWarning` names the column and the count.

        Raises
        ------
        DataError
            As in :meth:`fit`, for the table passed here.
        """
        self._check_fitted()
        categorical, continuous = self.categorical_columns_, self.continuous_columns_
        self._check_table(table, categorical + continuous, table_role="input")

        x_cat = np.empty((len(table), len(categorical)), dtype=np.int64)
        for j, column in enumerate(categorical):
            x_cat[:, j] = self._encode_categories(table[column], column)

        values = self._continuous_values(table, continuous)  # (n, n_continuous), NaN = missing
        missing = np.isnan(values)
        if self.impute == "error":
            self._raise_missing(table.index, continuous, missing, table_role="input")
        for j, column in enumerate(continuous):
            n_missing = int(missing[:, j].sum())
            if n_missing:
                values[missing[:, j], j] = self.medians_[j]
                logger.debug(
                    "%s: filled %d missing values of column %r with the training median %g",
                    self.modality,
                    n_missing,
                    column,
                    self.medians_[j],
                )
        x_cont = ((values - self.means_) / self.sds_).astype(np.float32)

        return x_cont, x_cat

    def fit_transform(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Fit on ``table`` and return its encoding, as ``fit(table).transform(table)``."""
        return self.fit(table).transform(table)

    # ------------------------------------------------------------------ state

    def get_state(self) -> dict[str, Any]:
        """Return the fitted state as JSON-serialisable built-in types.

        Column labels keep their type (``0`` stays an integer), so per-column entries are
        lists aligned with ``categorical`` and ``continuous`` instead of dicts, whose JSON
        keys would all become strings. Floats round-trip exactly through :mod:`json`.
        """
        self._check_fitted()
        return {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "modality": self.modality,
            "impute": self.impute,
            "categorical": list(self.categorical_columns_),
            "continuous": list(self.continuous_columns_),
            "vocabularies": [list(self.vocabularies_[c]) for c in self.categorical_columns_],
            "medians": [float(v) for v in self.medians_],
            "means": [float(v) for v in self.means_],
            "sds": [float(v) for v in self.sds_],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ClinicalPreprocessor:
        """Rebuild a fitted preprocessor from :meth:`get_state` output.

        Raises
        ------
        DataError
            The state is not a preprocessor state of a supported version, lacks keys, or has
            per-column lists whose lengths do not match the columns.
        """
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            msg = (
                f"not a clinical preprocessor state: expected format {_STATE_FORMAT!r}, "
                f"got {found!r}."
            )
            raise DataError(msg)
        missing_keys = [key for key in _STATE_KEYS if key not in state]
        if missing_keys:
            msg = (
                f"clinical preprocessor state lacks the keys {missing_keys}; save it again "
                "with get_state()."
            )
            raise DataError(msg)
        if state["version"] != _STATE_VERSION:
            msg = (
                f"clinical preprocessor state has version {state['version']!r}, but this "
                f"fusion version reads version {_STATE_VERSION}; refit the preprocessor."
            )
            raise DataError(msg)

        preprocessor = cls(
            categorical=list(state["categorical"]),
            continuous=list(state["continuous"]),
            impute=state["impute"],
            modality=state["modality"],
        )
        categorical, continuous = preprocessor._validate_params()
        _check_state_length(state, "vocabularies", len(categorical))
        for key in ("medians", "means", "sds"):
            _check_state_length(state, key, len(continuous))

        preprocessor.categorical_columns_ = categorical
        preprocessor.continuous_columns_ = continuous
        vocabularies = {
            c: [str(level) for level in vocab]
            for c, vocab in zip(categorical, state["vocabularies"], strict=True)
        }
        preprocessor.vocabularies_ = vocabularies
        preprocessor.categorical_cardinalities_ = [
            N_RESERVED_CODES + len(vocabularies[c]) for c in categorical
        ]
        preprocessor.medians_ = np.asarray(state["medians"], dtype=np.float64)
        preprocessor.means_ = np.asarray(state["means"], dtype=np.float64)
        preprocessor.sds_ = np.asarray(state["sds"], dtype=np.float64)
        preprocessor.n_features_in_ = len(categorical) + len(continuous)
        return preprocessor

    # ------------------------------------------------------------------ validation

    def _validate_params(self) -> tuple[list[ColumnName], list[ColumnName]]:
        """Validate the constructor arguments and return the column lists with ``int`` labels."""
        if self.impute not in _IMPUTE_CHOICES:
            msg = (
                f"{self.modality}: impute must be one of {list(_IMPUTE_CHOICES)}, "
                f"got {self.impute!r}."
            )
            raise ConfigError(msg)

        columns: dict[str, list[ColumnName]] = {}
        for kind, declared in (("categorical", self.categorical), ("continuous", self.continuous)):
            if isinstance(declared, (str, bytes)) or not isinstance(declared, Sequence):
                msg = f"{self.modality}: {kind} must be a list of column names, got {declared!r}."
                raise ConfigError(msg)
            columns[kind] = [self._normalise_label(label, kind) for label in declared]

        all_columns = columns["categorical"] + columns["continuous"]
        repeated = sorted({repr(c) for c in all_columns if all_columns.count(c) > 1})
        if repeated:
            msg = (
                f"{self.modality}: columns {', '.join(repeated)} are declared more than once "
                "(a column is either categorical or continuous, once)."
            )
            raise ConfigError(msg)
        _raise_name_collisions(all_columns, self.modality, where="among the declared columns")
        return columns["categorical"], columns["continuous"]

    def _normalise_label(self, label: Any, kind: str) -> ColumnName:
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (str, numbers.Integral)):
            msg = (
                f"{self.modality}: {kind} column label {label!r} has type {type(label).__name__}; "
                "column labels must be strings or integers. Rename the column."
            )
            raise DataError(msg)
        return label if isinstance(label, str) else int(label)

    def _check_table(
        self, table: pd.DataFrame, columns: list[ColumnName], *, table_role: str
    ) -> None:
        """Check type, index and declared columns of a table before reading it."""
        if not isinstance(table, pd.DataFrame):
            msg = (
                f"{self.modality}: expected a pandas DataFrame indexed by subject id, "
                f"got {type(table).__name__}."
            )
            raise DataError(msg)

        duplicated_ids = table.index[table.index.duplicated()].unique()
        if len(duplicated_ids):
            examples = ", ".join(repr(i) for i in duplicated_ids[:_MAX_EXAMPLES])
            msg = (
                f"{self.modality}: the {table_role} table repeats {len(duplicated_ids)} "
                f"subject ids (for example {examples}); each subject must have one row. Remove "
                "or merge the repeats."
            )
            raise DataError(msg)

        table_labels = list(table.columns)
        for column in columns:
            if column not in table.columns:
                msg = f"{self.modality}: column {column!r} not found in the {table_role} table."
                suggestion = _closest_label(column, table_labels)
                msg += f" Did you mean {suggestion!r}?" if suggestion is not None else ""
                raise DataError(msg)
            if int((table.columns == column).sum()) > 1:
                msg = (
                    f"{self.modality}: the {table_role} table has more than one column named "
                    f"{column!r}; rename them."
                )
                raise DataError(msg)
        clashing = [label for label in table_labels if any(str(label) == str(c) for c in columns)]
        _raise_name_collisions(clashing, self.modality, where=f"in the {table_role} table")

    def _check_fitted(self) -> None:
        if not hasattr(self, "vocabularies_"):
            msg = (
                f"{self.modality}: this ClinicalPreprocessor is not fitted; call "
                "fit(training_table) first."
            )
            raise NotFittedError(msg)

    # ------------------------------------------------------------------ categorical columns

    def _fit_vocabulary(self, series: pd.Series, column: ColumnName) -> list[str]:
        labels = [category_label(value) for value in series.tolist()]
        observed = {label for label in labels if label is not None}
        vocabulary = sorted(observed, key=_level_sort_key)
        n_missing = sum(label is None for label in labels)
        logger.debug(
            "%s: categorical column %r: %d training levels, %d missing values",
            self.modality,
            column,
            len(vocabulary),
            n_missing,
        )
        return vocabulary

    def _encode_categories(self, series: pd.Series, column: ColumnName) -> np.ndarray:
        """Encode one column as codes, shape (n,), and warn about values not seen in training."""
        code_of = {
            label: N_RESERVED_CODES + i for i, label in enumerate(self.vocabularies_[column])
        }
        codes = np.empty(len(series), dtype=np.int64)
        unseen: dict[str, int] = {}
        for i, value in enumerate(series.tolist()):
            label = category_label(value)
            if label is None:
                codes[i] = MISSING_CODE
            elif label in code_of:
                codes[i] = code_of[label]
            else:
                codes[i] = UNKNOWN_CODE
                unseen[label] = unseen.get(label, 0) + 1

        if unseen:
            n_unseen = sum(unseen.values())
            examples = ", ".join(repr(label) for label in list(unseen)[:_MAX_EXAMPLES])
            msg = (
                f"{self.modality}: column {column!r}: {n_unseen} of {len(series)} values were "
                f"not seen in training ({examples}); they are encoded as the unknown category "
                f"(code {UNKNOWN_CODE})."
            )
            warnings.warn(msg, DataWarning, stacklevel=3)
        return codes

    # ------------------------------------------------------------------ continuous columns

    def _continuous_values(self, table: pd.DataFrame, continuous: list[ColumnName]) -> np.ndarray:
        """Return the continuous columns as float64, shape (n, n_continuous), NaN for missing."""
        values = np.empty((len(table), len(continuous)), dtype=np.float64)
        for j, column in enumerate(continuous):
            values[:, j] = self._continuous_column(table[column], column)
        return values

    def _continuous_column(self, series: pd.Series, column: ColumnName) -> np.ndarray:
        if pd.api.types.is_datetime64_any_dtype(series) or pd.api.types.is_timedelta64_dtype(
            series
        ):
            msg = (
                f"{self.modality}: continuous column {column!r} has dtype {series.dtype}; "
                "convert it to a number (for example days since a reference date)."
            )
            raise DataError(msg)

        if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
            numbers_ = series.astype("float64")
        else:
            numbers_ = pd.to_numeric(series.astype(object), errors="coerce").astype("float64")
        invalid = numbers_.isna() & series.notna()
        if invalid.any():
            examples = ", ".join(
                f"{value!r} (subject {subject!r})"
                for subject, value in series[invalid].head(_MAX_EXAMPLES).items()
            )
            msg = (
                f"{self.modality}: continuous column {column!r} has {int(invalid.sum())} values "
                f"that are not numbers: {examples}. Declare {column!r} as categorical, or clean "
                "the column so it holds only numbers and empty cells."
            )
            raise DataError(msg)

        infinite = np.isinf(numbers_)
        if infinite.any():
            subjects = ", ".join(repr(s) for s in series.index[infinite][:_MAX_EXAMPLES])
            msg = (
                f"{self.modality}: continuous column {column!r} has {int(infinite.sum())} "
                f"infinite values (subjects {subjects}); replace them with finite numbers or "
                "empty cells."
            )
            raise DataError(msg)
        return numbers_.to_numpy()

    def _raise_missing(
        self, index: pd.Index, continuous: list[ColumnName], missing: np.ndarray, *, table_role: str
    ) -> None:
        """Raise one DataError listing every continuous column with missing values."""
        parts = []
        for j, column in enumerate(continuous):
            n_missing = int(missing[:, j].sum())
            if n_missing:
                subjects = ", ".join(repr(s) for s in index[missing[:, j]][:_MAX_EXAMPLES])
                parts.append(
                    f"{column!r} ({n_missing} missing of {len(index)}; subjects {subjects})"
                )
        if parts:
            msg = (
                f"{self.modality}: continuous columns of the {table_role} table have missing "
                f"values and impute='error': {'; '.join(parts)}. Set impute to 'median' to fill "
                "them with the training median, or remove these subjects."
            )
            raise DataError(msg)

    def _fit_statistics(
        self, values: np.ndarray, continuous: list[ColumnName]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return median, mean and sd of each column over its observed training values."""
        n_columns = values.shape[1]
        medians = np.empty(n_columns)
        means = np.empty(n_columns)
        sds = np.empty(n_columns)
        for j, column in enumerate(continuous):
            observed = values[~np.isnan(values[:, j]), j]
            if observed.size == 0:
                msg = (
                    f"{self.modality}: continuous column {column!r} has no observed value in the "
                    "training table, so it has no median, mean or sd. Drop the column or fill it."
                )
                raise DataError(msg)
            medians[j] = np.median(observed)
            means[j] = observed.mean()
            sds[j] = observed.std()
            if not sds[j] > 0:
                msg = (
                    f"{self.modality}: continuous column {column!r} has one value "
                    f"({means[j]:g}) in all {observed.size} observed training rows; its sd is "
                    "set to 1, so it carries no information."
                )
                warnings.warn(msg, DataWarning, stacklevel=3)
                sds[j] = 1.0
        return medians, means, sds


def _level_sort_key(label: str) -> tuple[int, float, str]:
    """Order numeric labels by value first, then the other labels alphabetically."""
    try:
        number = float(label)
    except ValueError:
        return (1, 0.0, label)
    if math.isnan(number):
        return (1, 0.0, label)
    return (0, number, label)


def _closest_label(column: ColumnName, labels: list[Any]) -> Any | None:
    """Return the table label whose string form is closest to ``column``, if any is close."""
    by_text = {str(label): label for label in labels}
    matches = difflib.get_close_matches(str(column), list(by_text), n=1, cutoff=0.6)
    return by_text[matches[0]] if matches else None


def _raise_name_collisions(labels: list[Any], modality: str, *, where: str) -> None:
    """Raise a DataError when distinct labels have the same string form (``0`` and ``"0"``)."""
    by_text: dict[str, list[Any]] = {}
    for label in labels:
        group = by_text.setdefault(str(label), [])
        if not any(label == other and type(label) is type(other) for other in group):
            group.append(label)
    collisions = [group for group in by_text.values() if len(group) > 1]
    if collisions:
        listed = "; ".join(" and ".join(repr(label) for label in group) for group in collisions)
        msg = (
            f"{modality}: column names collide when written as text {where}: {listed}. "
            "Feature names in outputs and attributions are text, so rename these columns to "
            "distinct names."
        )
        raise DataError(msg)


def _check_state_length(state: dict[str, Any], key: str, expected: int) -> None:
    if not isinstance(state[key], list) or len(state[key]) != expected:
        found = len(state[key]) if isinstance(state[key], list) else type(state[key]).__name__
        msg = (
            f"clinical preprocessor state: {key!r} must be a list of {expected} entries, "
            f"got {found}."
        )
        raise DataError(msg)
