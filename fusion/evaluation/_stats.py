"""Confidence intervals over folds and by bootstrap, and a paired test for correlated folds."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from fusion._errors import ConfigError, DataError, MetricWarning
from fusion._task import Task
from fusion.evaluation._metrics import _evaluate, _prepare, _resolve_metric_names
from fusion.evaluation._splits import _align_groups, _check_int_option

__all__ = ["bootstrap_ci", "corrected_resampled_ttest", "summarize_folds"]

CORRECTED_TTEST_NAME = "Nadeau-Bengio corrected resampled t-test"


def summarize_folds(values: Sequence[float], *, confidence: float = 0.95) -> dict[str, float]:
    """Summarize a metric over folds with a t confidence interval.

    The interval is ``mean ± t_{(1 + confidence) / 2, k - 1} * sd / sqrt(k)`` over the ``k``
    folds where the metric is defined, with ``sd`` the sample standard deviation
    (``ddof=1``). It treats folds as independent, which they are not (their training sets
    overlap), so it is narrower than the true uncertainty; compare strategies with
    :func:`corrected_resampled_ttest`.

    Parameters
    ----------
    values : sequence of float
        One metric value per fold, shape ``(n_folds,)``. NaN values (undefined folds) are
        dropped and counted in ``n_nan``.
    confidence : float, default 0.95
        Coverage of the interval, in (0, 1).

    Returns
    -------
    dict of str to float
        ``mean``, ``sd``, ``ci_low``, ``ci_high``, ``n`` (folds used) and ``n_nan`` (folds
        dropped). ``sd`` and the interval are NaN with fewer than 2 folds used; everything
        but the counts is NaN with none.
    """
    _check_confidence(confidence)
    array = _as_1d_floats(values, "values")
    finite = array[~np.isnan(array)]
    k = len(finite)
    n_nan = len(array) - k

    mean = float(finite.mean()) if k > 0 else float("nan")
    if k < 2:
        nan = float("nan")
        return {"mean": mean, "sd": nan, "ci_low": nan, "ci_high": nan, "n": k, "n_nan": n_nan}

    sd = float(finite.std(ddof=1))
    half_width = stats.t.ppf((1 + confidence) / 2, df=k - 1) * sd / np.sqrt(k)
    return {
        "mean": mean,
        "sd": sd,
        "ci_low": float(mean - half_width),
        "ci_high": float(mean + half_width),
        "n": k,
        "n_nan": n_nan,
    }


def bootstrap_ci(
    task: Task,
    target: pd.DataFrame,
    scores: np.ndarray | pd.Series | pd.DataFrame,
    metric: str,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    train_target: pd.DataFrame | None = None,
    tau: float | None = None,
    groups: pd.Series | None = None,
) -> tuple[float, float]:
    """Compute a percentile bootstrap interval of a metric on pooled out-of-fold predictions.

    Subjects are drawn with replacement ``n_resamples`` times; with ``groups`` whole groups
    are drawn, so that the scans of one patient stay together. The metric is recomputed on
    every resample, and resamples where it is undefined (for example without a positive)
    are dropped with a warning that gives their count.

    Parameters
    ----------
    task, target, scores, train_target, tau
        As in :func:`~fusion.evaluation.compute_metrics`.
    metric : str
        One name of ``METRIC_NAMES[task.kind]``.
    n_resamples : int, default 1000
        Number of bootstrap resamples.
    seed : int, default 0
        Seed of the resampling; the same seed gives the same interval.
    confidence : float, default 0.95
        Coverage of the interval, in (0, 1).
    groups : pandas.Series, optional
        Group id indexed by subject id, for a cluster bootstrap.

    Returns
    -------
    (float, float)
        Lower and upper bound, ``NaN`` for both when fewer than 2 resamples give a value.
    """
    _check_confidence(confidence)
    _check_int_option("n_resamples", n_resamples, minimum=2)
    _check_int_option("seed", seed, minimum=None)

    data = _prepare(task, target, scores, train_target=train_target, tau=tau)
    _resolve_metric_names(task, [metric], has_train_target=data.train_time is not None)
    rows_by_group = _rows_by_group(groups, data.subject_ids)

    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples)
    reasons: dict[str, int] = {}
    for resample in range(n_resamples):
        rows = _draw_rows(rng, rows_by_group)
        values[resample], reason = _evaluate(data.take(rows), metric)
        if reason is not None:
            reasons[reason] = reasons.get(reason, 0) + 1

    defined = values[~np.isnan(values)]
    n_undefined = n_resamples - len(defined)
    if n_undefined > 0:
        common = max(reasons, key=reasons.get)
        msg = (
            f"{metric} was undefined in {n_undefined} of {n_resamples} bootstrap resamples, which "
            f"were dropped (most common reason: {common})"
        )
        warnings.warn(msg, MetricWarning, stacklevel=2)
    if len(defined) < 2:
        return float("nan"), float("nan")

    tail = (1 - confidence) / 2
    low, high = np.quantile(defined, [tail, 1 - tail])
    return float(low), float(high)


def corrected_resampled_ttest(
    diffs: Sequence[float], *, n_train: int, n_test: int
) -> dict[str, float | str]:
    """Test whether two strategies differ, with the Nadeau-Bengio variance correction.

    Folds share training subjects, so their differences are correlated and the plain
    paired t-test is too liberal. Nadeau and Bengio (2003) replace the variance of the
    mean ``s² / k`` with ``(1 / k + n_test / n_train) * s²``. The statistic
    ``t = mean / sqrt((1 / k + n_test / n_train) * s²)`` is compared with a t distribution
    with ``k - 1`` degrees of freedom, two-sided.

    Parameters
    ----------
    diffs : sequence of float
        Per-fold differences of one metric, strategy A minus strategy B, computed on the
        same folds, shape ``(k,)``. With repeated k-fold, pass every fold of every repeat.
        NaN values are dropped with a warning.
    n_train : int
        Training subjects per fold (the mean when folds differ in size).
    n_test : int
        Test subjects per fold. For K-fold cross-validation ``n_test / n_train`` is about
        ``1 / (K - 1)``.

    Returns
    -------
    dict
        ``t``, ``p_value``, ``mean_diff``, ``sd_diff`` (``ddof=1``), ``df`` (``k - 1``),
        ``n`` (differences used, ``k``) and ``name``. ``t`` and ``p_value`` are NaN, with a
        warning, when fewer than 2 differences remain or they have zero variance.
    """
    for option, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or value <= 0:
            msg = f"{option} must be a positive number of subjects, got {value!r}"
            raise ConfigError(msg)

    array = _as_1d_floats(diffs, "diffs")
    finite = array[~np.isnan(array)]
    if len(finite) < len(array):
        msg = (
            f"{len(array) - len(finite)} of {len(array)} fold differences are NaN and were dropped"
        )
        warnings.warn(msg, MetricWarning, stacklevel=2)

    k = len(finite)
    result: dict[str, float | str] = {
        "t": float("nan"),
        "p_value": float("nan"),
        "mean_diff": float(finite.mean()) if k > 0 else float("nan"),
        "sd_diff": float(finite.std(ddof=1)) if k > 1 else float("nan"),
        "df": k - 1 if k > 1 else float("nan"),
        "n": k,
        "name": CORRECTED_TTEST_NAME,
    }
    if k < 2:
        msg = f"the corrected t-test needs at least 2 fold differences, got {k}; t and p are NaN"
        warnings.warn(msg, MetricWarning, stacklevel=2)
        return result
    if np.ptp(finite) == 0:
        msg = (
            "all fold differences are equal, so their variance is 0 and t is undefined; "
            "t and p are NaN"
        )
        warnings.warn(msg, MetricWarning, stacklevel=2)
        return result

    corrected_variance = (1 / k + n_test / n_train) * result["sd_diff"] ** 2
    t_value = result["mean_diff"] / np.sqrt(corrected_variance)
    result["t"] = float(t_value)
    result["p_value"] = float(2 * stats.t.sf(abs(t_value), df=k - 1))
    return result


def _rows_by_group(groups: pd.Series | None, subject_ids: pd.Index) -> list[np.ndarray]:
    """Return the row positions of each resampling unit: one subject, or one group."""
    group_ids = _align_groups(groups, subject_ids)
    if group_ids is None:
        return [np.array([row]) for row in range(len(subject_ids))]

    codes, _ = pd.factorize(group_ids)
    return [np.flatnonzero(codes == code) for code in range(codes.max() + 1)]


def _draw_rows(rng: np.random.Generator, rows_by_group: list[np.ndarray]) -> np.ndarray:
    """Draw as many units as there are, with replacement, and return their rows."""
    chosen = rng.integers(0, len(rows_by_group), size=len(rows_by_group))
    return np.concatenate([rows_by_group[unit] for unit in chosen])


def _as_1d_floats(values: Sequence[float], name: str) -> np.ndarray:
    """Return ``values`` as a 1-D float64 array or raise a DataError."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        msg = f"{name} must be one value per fold, shape (k,), got shape {array.shape}"
        raise DataError(msg)
    return array


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        msg = f"confidence must lie strictly between 0 and 1, got {confidence!r}"
        raise ConfigError(msg)
