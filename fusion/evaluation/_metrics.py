"""Metrics per task, computed by scikit-learn and scikit-survival on raw model scores.

Scores follow :mod:`fusion._task`: logits for classification, predicted values for
regression and log relative risk for survival, where a higher score means a higher risk
and so an earlier expected event. A survival model that outputs predicted times or
survival probabilities must negate them before scoring.

A metric that is undefined on a set of subjects is reported as NaN with a
:class:`~fusion.MetricWarning` that names the metric and the reason, never as 0.5 and never
as an exception. The undefined cases are:

* AUROC, AUPRC and balanced accuracy when a class is absent from the set (macro AUROC and
  balanced accuracy average over every class, so one absent class leaves them undefined);
* R² with fewer than 2 subjects or a constant target;
* Harrell's and Uno's C with fewer than 2 subjects, no events or no comparable pairs, and
  Uno's C when the censoring distribution of the training target cannot weight the test
  events (for example test events beyond the training follow-up);
* every metric when a score is NaN or infinite.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.special import expit, softmax
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    log_loss,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
    root_mean_squared_error,
)
from sksurv.exceptions import NoComparablePairException
from sksurv.metrics import concordance_index_censored, concordance_index_ipcw
from sksurv.util import Surv

from fusion._errors import ConfigError, DataError, MetricWarning
from fusion._task import Task
from fusion.evaluation._splits import _format_ids, _validate_target

__all__ = ["HIGHER_IS_BETTER", "METRIC_NAMES", "PRIMARY_METRIC", "compute_metrics"]

METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "binary": ("auroc", "auprc", "balanced_accuracy", "brier", "log_loss"),
    "multiclass": ("auroc_macro", "balanced_accuracy", "accuracy", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
    "survival": ("c_index", "c_index_uno"),
}
"""Metrics computed for each task kind; ``c_index_uno`` only when a training target is given."""

PRIMARY_METRIC: dict[str, str] = {
    "binary": "auroc",
    "multiclass": "auroc_macro",
    "regression": "rmse",
    "survival": "c_index",
}
"""Headline metric of each task kind, used for tuning and for comparing strategies."""

HIGHER_IS_BETTER: dict[str, bool] = {
    "auroc": True,
    "auprc": True,
    "balanced_accuracy": True,
    "brier": False,
    "log_loss": False,
    "auroc_macro": True,
    "accuracy": True,
    "rmse": False,
    "mae": False,
    "r2": True,
    "c_index": True,
    "c_index_uno": True,
}
"""Direction of every metric name: True when a larger value is better."""


class _UndefinedMetric(Exception):
    """A metric has no value on these subjects; the message gives the reason."""


@dataclasses.dataclass(frozen=True)
class _MetricInput:
    """Validated arrays of one evaluation set, aligned row by row.

    ``y``, ``time``, ``event`` and ``scores`` have ``n`` rows (``scores`` is ``(n, K)`` for
    multiclass). ``train_time`` and ``train_event`` describe the training subjects of a
    survival task and are None when no training target was given.
    """

    task: Task
    subject_ids: pd.Index
    y: np.ndarray | None
    time: np.ndarray | None
    event: np.ndarray | None
    scores: np.ndarray
    train_time: np.ndarray | None = None
    train_event: np.ndarray | None = None
    tau: float | None = None

    @property
    def n(self) -> int:
        return len(self.subject_ids)

    def take(self, rows: np.ndarray) -> _MetricInput:
        """Return the evaluation set restricted to ``rows`` (positions, repeats allowed)."""

        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[rows]

        return dataclasses.replace(
            self,
            subject_ids=self.subject_ids[rows],
            y=pick(self.y),
            time=pick(self.time),
            event=pick(self.event),
            scores=self.scores[rows],
        )


def compute_metrics(
    task: Task,
    target: pd.DataFrame,
    scores: np.ndarray | pd.Series | pd.DataFrame,
    *,
    train_target: pd.DataFrame | None = None,
    tau: float | None = None,
    metrics: Sequence[str] | None = None,
) -> dict[str, float]:
    """Compute the metrics of a task on one set of subjects.

    Parameters
    ----------
    task : Task
        The prediction task.
    target : pandas.DataFrame
        Target indexed by subject id (layout in :mod:`fusion._task`).
    scores : numpy.ndarray, pandas.Series or pandas.DataFrame
        Raw scores, shape ``(n,)`` (or ``(n, 1)``), or ``(n, K)`` for multiclass. An array
        is matched to ``target`` by row order; a pandas object is matched by subject id.
        For survival, higher score = higher risk: a subject with an earlier event should
        get a higher score, and risk = -time gives a C-index of 1.
    train_target : pandas.DataFrame, optional
        Survival target of the training subjects. Uno's C needs it to estimate the censoring
        distribution; without it ``c_index_uno`` is left out. Ignored for other tasks.
    tau : float, optional
        Truncation time of Uno's C, in the unit of ``time``. Defaults to the smaller of the
        largest training time and the largest test time, so that every weighted test event
        lies inside the training follow-up.
    metrics : sequence of str, optional
        Names to compute, a subset of ``METRIC_NAMES[task.kind]``. Defaults to all of them.

    Returns
    -------
    dict of str to float
        Metric name to value. Undefined metrics are NaN (see the module docstring).
        Brier score and log loss use sigmoid (binary) or softmax (multiclass)
        probabilities of the scores. Balanced accuracy and accuracy predict the class with
        the largest probability, which for binary means probability >= 0.5 (logit >= 0).

    Raises
    ------
    DataError
        If the target, the training target or the scores are malformed or misaligned.
    ConfigError
        If an unknown metric is requested, or ``c_index_uno`` without ``train_target``.

    Warns
    -----
    MetricWarning
        Once per reason, naming the metrics it leaves undefined.
    """
    data = _prepare(task, target, scores, train_target=train_target, tau=tau)
    names = _resolve_metric_names(task, metrics, has_train_target=data.train_time is not None)

    values: dict[str, float] = {}
    reasons: dict[str, list[str]] = {}
    for name in names:
        value, reason = _evaluate(data, name)
        values[name] = value
        if reason is not None:
            reasons.setdefault(reason, []).append(name)

    for reason, undefined in reasons.items():
        verb = "is" if len(undefined) == 1 else "are"
        msg = f"{', '.join(undefined)} {verb} undefined here and reported as NaN: {reason}"
        warnings.warn(msg, MetricWarning, stacklevel=2)
    return values


def _evaluate(data: _MetricInput, name: str) -> tuple[float, str | None]:
    """Return ``(value, None)``, or ``(nan, reason)`` when the metric is undefined."""
    non_finite = ~np.isfinite(data.scores)
    if non_finite.ndim == 2:
        non_finite = non_finite.any(axis=1)
    if non_finite.any():
        reason = (
            f"{non_finite.sum()} of {data.n} scores are NaN or infinite (subjects "
            f"{_format_ids(data.subject_ids[non_finite])})"
        )
        return float("nan"), reason

    try:
        return float(_METRIC_FUNCTIONS[data.task.kind, name](data)), None
    except _UndefinedMetric as undefined:
        return float("nan"), str(undefined)


def _resolve_metric_names(
    task: Task, requested: Sequence[str] | None, *, has_train_target: bool
) -> list[str]:
    """Return the metric names to compute, checked against the task kind."""
    available = list(METRIC_NAMES[task.kind])
    if requested is None:
        if not has_train_target:
            available = [name for name in available if name != "c_index_uno"]
        return available

    names = [requested] if isinstance(requested, str) else list(requested)
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            msg = f"unknown metric {name!r} for a {task.kind} task; valid names: {available}{hint}"
            raise ConfigError(msg)
    if "c_index_uno" in names and not has_train_target:
        msg = (
            "c_index_uno needs train_target, the survival target of the training subjects, "
            "to estimate the censoring distribution"
        )
        raise ConfigError(msg)
    return names


def _prepare(
    task: Task,
    target: pd.DataFrame,
    scores: np.ndarray | pd.Series | pd.DataFrame,
    *,
    train_target: pd.DataFrame | None,
    tau: float | None,
) -> _MetricInput:
    """Validate the inputs and return them as aligned arrays."""
    clean = _validate_target(target, task)
    score_array = _align_scores(scores, clean.index, task)

    train_time = train_event = None
    if task.kind == "survival" and train_target is not None:
        train = _validate_target(train_target, task, name="train_target")
        train_time = train["time"].to_numpy()
        train_event = train["event"].to_numpy()
    if tau is not None and not (np.isfinite(tau) and tau > 0):
        msg = f"tau must be a positive, finite time, got {tau!r}"
        raise ConfigError(msg)

    survival = task.kind == "survival"
    return _MetricInput(
        task=task,
        subject_ids=clean.index,
        y=None if survival else clean["y"].to_numpy(),
        time=clean["time"].to_numpy() if survival else None,
        event=clean["event"].to_numpy() if survival else None,
        scores=score_array,
        train_time=train_time,
        train_event=train_event,
        tau=tau,
    )


def _align_scores(
    scores: np.ndarray | pd.Series | pd.DataFrame, subject_ids: pd.Index, task: Task
) -> np.ndarray:
    """Return scores as float64 in target order, shape ``(n,)`` or ``(n, K)``."""
    if isinstance(scores, (pd.Series, pd.DataFrame)):
        absent = subject_ids.difference(scores.index)
        if len(absent) > 0:
            msg = (
                f"scores have no entry for {len(absent)} subjects of the target: "
                f"{_format_ids(absent)}"
            )
            raise DataError(msg)
        if scores.index.has_duplicates:
            repeated = scores.index[scores.index.duplicated()].unique()
            msg = f"scores have repeated subject ids: {_format_ids(repeated)}"
            raise DataError(msg)
        scores = scores.reindex(subject_ids)

    array = np.asarray(scores, dtype=np.float64)
    n = len(subject_ids)
    if task.kind == "multiclass":
        expected = (n, task.n_classes)
    else:
        expected = (n,)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]

    if array.shape != expected:
        msg = (
            f"scores for a {task.kind} task must have shape {expected} (one row per subject of "
            f"the target), got {array.shape}"
        )
        raise DataError(msg)
    return array


# Classification -------------------------------------------------------------------------


def _require_every_class(data: _MetricInput) -> None:
    """Raise _UndefinedMetric when a class is absent from ``data.y``."""
    n_classes = data.task.n_classes if data.task.kind == "multiclass" else 2
    absent = sorted(set(range(n_classes)) - set(np.unique(data.y).tolist()))
    if absent:
        labels = ", ".join(str(label) for label in absent)
        msg = f"none of these {data.n} subjects has class {labels} of 'y'"
        raise _UndefinedMetric(msg)


def _binary_auroc(data: _MetricInput) -> float:
    _require_every_class(data)
    return roc_auc_score(data.y, data.scores)


def _binary_auprc(data: _MetricInput) -> float:
    _require_every_class(data)
    return average_precision_score(data.y, data.scores)


def _binary_balanced_accuracy(data: _MetricInput) -> float:
    _require_every_class(data)
    predicted = (expit(data.scores) >= 0.5).astype(np.int64)
    return balanced_accuracy_score(data.y, predicted)


def _binary_brier(data: _MetricInput) -> float:
    return brier_score_loss(data.y, expit(data.scores), pos_label=1)


def _binary_log_loss(data: _MetricInput) -> float:
    return log_loss(data.y, expit(data.scores), labels=[0, 1])


def _multiclass_auroc_macro(data: _MetricInput) -> float:
    _require_every_class(data)
    labels = np.arange(data.task.n_classes)
    probabilities = softmax(data.scores, axis=1)
    return roc_auc_score(data.y, probabilities, multi_class="ovr", average="macro", labels=labels)


def _multiclass_balanced_accuracy(data: _MetricInput) -> float:
    _require_every_class(data)
    return balanced_accuracy_score(data.y, data.scores.argmax(axis=1))


def _multiclass_accuracy(data: _MetricInput) -> float:
    return accuracy_score(data.y, data.scores.argmax(axis=1))


def _multiclass_log_loss(data: _MetricInput) -> float:
    labels = np.arange(data.task.n_classes)
    return log_loss(data.y, softmax(data.scores, axis=1), labels=labels)


# Regression -----------------------------------------------------------------------------


def _rmse(data: _MetricInput) -> float:
    return root_mean_squared_error(data.y, data.scores)


def _mae(data: _MetricInput) -> float:
    return mean_absolute_error(data.y, data.scores)


def _r2(data: _MetricInput) -> float:
    if data.n < 2:
        msg = f"R² needs at least 2 subjects, got {data.n}"
        raise _UndefinedMetric(msg)
    if np.ptp(data.y) == 0:
        msg = f"the target is constant ({data.y[0]:g}), so R² divides by a zero variance"
        raise _UndefinedMetric(msg)
    return r2_score(data.y, data.scores)


# Survival -------------------------------------------------------------------------------

_NO_PAIRS = (
    "no comparable pairs: no subject has an event before another subject's time "
    "(for example the only event is at the longest time, or all times are tied)"
)


def _require_pairs_possible(data: _MetricInput) -> None:
    """Raise _UndefinedMetric when the set is too small or has no event."""
    if data.n < 2:
        msg = f"the C-index compares pairs of subjects, but only {data.n} subject is present"
        raise _UndefinedMetric(msg)
    if not data.event.any():
        msg = f"all {data.n} subjects are censored, so there are no comparable pairs"
        raise _UndefinedMetric(msg)


def _harrell_c_index(data: _MetricInput) -> float:
    _require_pairs_possible(data)

    # Events tied at one time with nothing later pass scikit-survival's pair check but
    # leave it dividing 0 by 0; the NaN is turned into the same reason below.
    with np.errstate(invalid="ignore", divide="ignore"):
        try:
            value = concordance_index_censored(data.event, data.time, data.scores)[0]
        except NoComparablePairException:
            raise _UndefinedMetric(_NO_PAIRS) from None

    if not np.isfinite(value):
        raise _UndefinedMetric(_NO_PAIRS)
    return value


def _uno_c_index(data: _MetricInput) -> float:
    _require_pairs_possible(data)
    tau = data.tau if data.tau is not None else float(min(data.train_time.max(), data.time.max()))
    train = Surv.from_arrays(event=data.train_event, time=data.train_time)
    test = Surv.from_arrays(event=data.event, time=data.time)

    # All weights are zero when no test event lies before tau, and scikit-survival then
    # divides 0 by 0; the NaN is turned into a reason below.
    with np.errstate(invalid="ignore", divide="ignore"):
        try:
            value = concordance_index_ipcw(train, test, data.scores, tau=tau)[0]
        except NoComparablePairException:
            raise _UndefinedMetric(_NO_PAIRS) from None
        except ValueError as error:
            msg = (
                f"the censoring distribution of train_target (largest time "
                f"{data.train_time.max():g}) cannot weight the test events before tau={tau:g}: "
                f"{error}. Pass a tau inside the training follow-up."
            )
            raise _UndefinedMetric(msg) from None

    if not np.isfinite(value):
        msg = f"no test event happens before tau={tau:g}, so every comparable pair has weight 0"
        raise _UndefinedMetric(msg)
    return value


# Keyed by (task kind, metric name), because binary and multiclass share some names.
_METRIC_FUNCTIONS: dict[tuple[str, str], Callable[[_MetricInput], float]] = {
    ("binary", "auroc"): _binary_auroc,
    ("binary", "auprc"): _binary_auprc,
    ("binary", "balanced_accuracy"): _binary_balanced_accuracy,
    ("binary", "brier"): _binary_brier,
    ("binary", "log_loss"): _binary_log_loss,
    ("multiclass", "auroc_macro"): _multiclass_auroc_macro,
    ("multiclass", "balanced_accuracy"): _multiclass_balanced_accuracy,
    ("multiclass", "accuracy"): _multiclass_accuracy,
    ("multiclass", "log_loss"): _multiclass_log_loss,
    ("regression", "rmse"): _rmse,
    ("regression", "mae"): _mae,
    ("regression", "r2"): _r2,
    ("survival", "c_index"): _harrell_c_index,
    ("survival", "c_index_uno"): _uno_c_index,
}
