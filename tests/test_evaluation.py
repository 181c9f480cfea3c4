"""Tests of fusion.evaluation: splits, metrics, confidence intervals and the corrected t-test."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fusion._errors import ConfigError, DataError, DataWarning, MetricWarning
from fusion._task import Task
from fusion.evaluation import (
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    PRIMARY_METRIC,
    bootstrap_ci,
    compute_metrics,
    corrected_resampled_ttest,
    inner_folds,
    iter_folds,
    make_splits,
    summarize_folds,
)

BINARY = Task("binary")
MULTICLASS = Task("multiclass", n_classes=3)
REGRESSION = Task("regression")
SURVIVAL = Task("survival")


def _ids(n: int, prefix: str = "S") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


def _binary_target(n_negative: int, n_positive: int) -> pd.DataFrame:
    y = [0] * n_negative + [1] * n_positive
    return pd.DataFrame({"y": y}, index=_ids(len(y)))


def _survival_target(time: list[float], event: list[bool]) -> pd.DataFrame:
    return pd.DataFrame({"time": time, "event": event}, index=_ids(len(time)))


def _scans_of_patients(seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Return 100 scans of 40 patients (1 to 4 scans each) with a per-patient binary label."""
    rng = np.random.default_rng(seed)
    scans_per_patient = np.full(40, 1)
    extra = rng.choice(40 * 3, size=60, replace=False) // 3  # 60 extra scans, at most 3 per patient
    np.add.at(scans_per_patient, extra, 1)
    patients = np.repeat([f"P{p:02d}" for p in range(40)], scans_per_patient)
    label_of_patient = {f"P{p:02d}": int(p % 3 == 0) for p in range(40)}

    scan_ids = [f"scan{i:03d}" for i in range(len(patients))]
    target = pd.DataFrame({"y": [label_of_patient[p] for p in patients]}, index=scan_ids)
    groups = pd.Series(patients, index=scan_ids)
    return target, groups


def _fold_table(splits: pd.DataFrame, repeat: int = 0) -> pd.Series:
    rows = splits[splits["repeat"] == repeat]
    return pd.Series(rows["fold"].to_numpy(), index=rows["subject_id"].to_numpy())


# Splits ---------------------------------------------------------------------------------


def test_splits_every_subject_once_per_repeat() -> None:
    target = _binary_target(30, 20)
    splits = make_splits(target, BINARY, n_folds=5, seed=0, repeats=3)

    assert list(splits.columns) == ["subject_id", "repeat", "fold"]
    assert len(splits) == 150
    for repeat in range(3):
        rows = splits[splits["repeat"] == repeat]
        assert sorted(rows["subject_id"]) == sorted(target.index)
        assert sorted(rows["fold"].unique()) == [0, 1, 2, 3, 4]


def test_splits_stratified_binary() -> None:
    target = _binary_target(30, 20)
    folds = _fold_table(make_splits(target, BINARY, n_folds=5, seed=0))

    positives_per_fold = target["y"].groupby(folds).sum()
    assert positives_per_fold.tolist() == [4, 4, 4, 4, 4]


def test_splits_same_seed_same_folds() -> None:
    target = _binary_target(30, 20)
    first = make_splits(target, BINARY, n_folds=5, seed=7, repeats=2)
    second = make_splits(target, BINARY, n_folds=5, seed=7, repeats=2)

    pd.testing.assert_frame_equal(first, second)


def test_splits_other_seed_other_folds() -> None:
    target = _binary_target(30, 20)
    first = _fold_table(make_splits(target, BINARY, n_folds=5, seed=0))
    second = _fold_table(make_splits(target, BINARY, n_folds=5, seed=1))

    assert not first.equals(second)


def test_splits_repeat_uses_seed_plus_repeat() -> None:
    target = _binary_target(30, 20)
    repeated = make_splits(target, BINARY, n_folds=5, seed=3, repeats=2)
    single = make_splits(target, BINARY, n_folds=5, seed=4)

    assert _fold_table(repeated, repeat=1).equals(_fold_table(single))


def test_splits_rare_class_reduces_folds() -> None:
    target = _binary_target(36, 4)

    with pytest.warns(
        DataWarning, match=r"n_folds reduced from 5 to 4 because class 1 of 'y'.* only 4 subjects"
    ):
        splits = make_splits(target, BINARY, n_folds=5, seed=0)

    folds = _fold_table(splits)
    assert sorted(folds.unique()) == [0, 1, 2, 3]
    assert target["y"].groupby(folds).sum().tolist() == [1, 1, 1, 1]


def test_splits_enough_members_no_warning() -> None:
    target = _binary_target(35, 5)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splits = make_splits(target, BINARY, n_folds=5, seed=0)

    assert splits["fold"].nunique() == 5


def test_splits_single_member_class_raises() -> None:
    target = pd.DataFrame({"y": [0] * 20 + [1] * 20 + [2]}, index=_ids(41))

    with pytest.raises(
        DataError, match=r"cannot make even 2 folds because class 2 of 'y'.* only 1 subjects"
    ):
        make_splits(target, MULTICLASS, n_folds=5, seed=0)


def test_splits_absent_class_raises() -> None:
    target = _binary_target(40, 0)

    with pytest.raises(DataError, match=r"class 1 of 'y' is present in only 0 subjects"):
        make_splits(target, BINARY, n_folds=5, seed=0)


def test_splits_survival_stratified_on_event() -> None:
    rng = np.random.default_rng(0)
    event = [True] * 12 + [False] * 48
    target = _survival_target(rng.uniform(1, 100, 60).tolist(), event)
    folds = _fold_table(make_splits(target, SURVIVAL, n_folds=4, seed=0))

    events_per_fold = target["event"].groupby(folds).sum()
    assert events_per_fold.tolist() == [3, 3, 3, 3]


def test_splits_survival_few_censored_no_warning() -> None:
    target = _survival_target(list(range(1, 31)), [True] * 28 + [False] * 2)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splits = make_splits(target, SURVIVAL, n_folds=5, seed=0)

    assert splits["fold"].nunique() == 5


def test_splits_survival_few_events_reduce_folds() -> None:
    target = _survival_target(list(range(1, 31)), [True] * 3 + [False] * 27)

    with pytest.warns(
        DataWarning, match=r"reduced from 5 to 3 because only 3 subjects have an observed event"
    ):
        splits = make_splits(target, SURVIVAL, n_folds=5, seed=0)

    assert splits["fold"].nunique() == 3


def test_splits_survival_no_event_raises() -> None:
    target = _survival_target(list(range(1, 11)), [False] * 10)

    with pytest.raises(DataError, match="only 0 subjects have an observed event"):
        make_splits(target, SURVIVAL, n_folds=5, seed=0)


def test_splits_regression_fold_sizes() -> None:
    target = pd.DataFrame({"y": np.linspace(0, 1, 23)}, index=_ids(23))
    folds = _fold_table(make_splits(target, REGRESSION, n_folds=5, seed=0))

    assert folds.value_counts().sort_values().tolist() == [4, 4, 5, 5, 5]


@pytest.mark.parametrize("task", [BINARY, REGRESSION], ids=["binary", "regression"])
def test_splits_patient_never_on_both_sides(task: Task) -> None:
    target, groups = _scans_of_patients()
    assert len(target) == 100
    assert groups.nunique() == 40

    splits = make_splits(target, task, n_folds=5, seed=0, groups=groups, repeats=2)

    for repeat in range(2):
        for fold, train_ids, test_ids in iter_folds(splits, repeat=repeat):
            shared = set(groups[train_ids]) & set(groups[test_ids])
            assert shared == set(), f"repeat {repeat}, fold {fold}: patients {shared} on both sides"
        assert sorted(_fold_table(splits, repeat).index) == sorted(target.index)


def test_splits_grouped_stratified_by_class() -> None:
    target, groups = _scans_of_patients()
    folds = _fold_table(make_splits(target, BINARY, n_folds=5, seed=0, groups=groups))

    positive_patients = groups[target["y"] == 1].groupby(folds).nunique()
    assert positive_patients.min() >= 2


def test_splits_few_groups_reduce_folds() -> None:
    target = _binary_target(6, 6)
    groups = pd.Series(["a", "b", "c"] * 4, index=target.index)

    with pytest.warns(DataWarning, match="reduced from 5 to 3 because the data have only 3 groups"):
        splits = make_splits(target, BINARY, n_folds=5, seed=0, groups=groups)

    assert splits["fold"].nunique() == 3


def test_splits_leave_one_group_out() -> None:
    target = _binary_target(10, 10)
    sites = pd.Series(["north", "south", "east", "west"] * 5, index=target.index)
    folds = _fold_table(
        make_splits(target, BINARY, n_folds=None, seed=0, groups=sites, leave_one_group_out=True)
    )

    site_of_fold = sites.groupby(folds).unique()
    assert [list(site) for site in site_of_fold] == [["east"], ["north"], ["south"], ["west"]]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_folds": None, "groups": None}, "needs groups"),
        ({"n_folds": 5}, r"one fold per group \(4 groups\), but n_folds=5"),
        ({"n_folds": None, "repeats": 2}, "leaving one group out is not random"),
    ],
    ids=["no groups", "n_folds mismatch", "repeats"],
)
def test_splits_leave_one_group_out_invalid(options: dict, message: str) -> None:
    target = _binary_target(10, 10)
    sites = pd.Series(["north", "south", "east", "west"] * 5, index=target.index)
    arguments = {"seed": 0, "groups": sites, "leave_one_group_out": True} | options

    with pytest.raises(ConfigError, match=message):
        make_splits(target, BINARY, **arguments)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_folds": 1}, "n_folds must be at least 2, got 1"),
        ({"n_folds": 2.5}, "n_folds must be an integer, got 2.5"),
        ({"n_folds": None}, "n_folds is required"),
        ({"n_folds": 5, "repeats": 0}, "repeats must be at least 1, got 0"),
    ],
    ids=["one fold", "float folds", "no folds", "zero repeats"],
)
def test_splits_invalid_options(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_splits(_binary_target(10, 10), BINARY, seed=0, **options)


def test_splits_repeated_ids_raise() -> None:
    target = pd.DataFrame({"y": [0, 1, 0, 1]}, index=["P1", "P1", "P2", "P3"])

    with pytest.raises(
        DataError, match=r"1 repeated subject ids \('P1'\).*pass the shared id .* as groups"
    ):
        make_splits(target, BINARY, n_folds=2, seed=0)


def test_splits_missing_target_names_subject() -> None:
    target = _binary_target(10, 10).astype(float)
    target.loc["S004", "y"] = np.nan

    with pytest.raises(DataError, match=r"column 'y' has 1 missing values \(subjects 'S004'\)"):
        make_splits(target, BINARY, n_folds=2, seed=0)


def test_splits_invalid_label_names_subject() -> None:
    target = _binary_target(10, 10)
    target.loc["S002", "y"] = 2

    with pytest.raises(DataError, match=r"class labels 0..1, got 2 for subjects 'S002'"):
        make_splits(target, BINARY, n_folds=2, seed=0)


def test_splits_groups_missing_subject_raises() -> None:
    target = _binary_target(10, 10)
    groups = pd.Series(np.arange(19), index=target.index[:19])

    with pytest.raises(
        DataError, match=r"groups has no entry for 1 subjects of the target: 'S019'"
    ):
        make_splits(target, BINARY, n_folds=2, seed=0, groups=groups)


def test_splits_groups_without_ids_raise() -> None:
    target = _binary_target(10, 10)

    with pytest.raises(DataError, match="matched by id, never by position"):
        make_splits(target, BINARY, n_folds=2, seed=0, groups=np.arange(20))


def test_iter_folds_unknown_repeat_raises() -> None:
    splits = make_splits(_binary_target(10, 10), BINARY, n_folds=2, seed=0)

    with pytest.raises(DataError, match=r"no repeat 3; available repeats: \[0\]"):
        next(iter_folds(splits, repeat=3))


def test_inner_folds_partition_training_part() -> None:
    target, groups = _scans_of_patients()
    train_ids = next(iter_folds(make_splits(target, BINARY, n_folds=5, seed=0, groups=groups)))[1]

    pairs = inner_folds(target.loc[train_ids], BINARY, n_folds=3, seed=1, groups=groups)

    assert len(pairs) == 3
    validation = pd.Index([]).append([validation_ids for _, validation_ids in pairs])
    assert sorted(validation) == sorted(train_ids)
    for inner_train, inner_validation in pairs:
        assert set(groups[inner_train]) & set(groups[inner_validation]) == set()


def test_inner_folds_reduction_warns() -> None:
    target = _binary_target(12, 3)

    with pytest.warns(DataWarning, match="inner split: n_folds reduced from 5 to 3"):
        pairs = inner_folds(target, BINARY, n_folds=5, seed=0)

    assert len(pairs) == 3


def test_splits_tcga_lgg_survival(shared_data: Path) -> None:
    clinical = pd.read_csv(shared_data / "tcga_lgg" / "clinical.csv", index_col="patient_id")
    survival = clinical[["os_days", "os_event"]].dropna()
    target = survival.rename(columns={"os_days": "time", "os_event": "event"})
    assert len(target) == 108

    splits = make_splits(target, SURVIVAL, n_folds=5, seed=0)

    assert sorted(splits["subject_id"]) == sorted(target.index)
    events_per_fold = target["event"].groupby(_fold_table(splits)).sum()
    assert events_per_fold.sum() == 32
    assert events_per_fold.between(5, 8).all(), events_per_fold.tolist()


# Metrics --------------------------------------------------------------------------------


def test_metric_tables_consistent() -> None:
    for kind, names in METRIC_NAMES.items():
        assert PRIMARY_METRIC[kind] in names
        for name in names:
            assert name in HIGHER_IS_BETTER


def test_binary_metrics_by_hand() -> None:
    target = pd.DataFrame({"y": [0, 0, 1, 1]}, index=_ids(4))
    scores = np.array([-1.0, 0.5, 0.2, 2.0])

    metrics = compute_metrics(BINARY, target, scores)

    # Positive/negative pairs ranked correctly: (0.2 > -1), (2 > -1), (2 > 0.5); not (0.2 > 0.5).
    assert metrics["auroc"] == pytest.approx(3 / 4)
    # Ranked by score: 2.0 (pos), 0.5 (neg), 0.2 (pos): precision 1 at recall 1/2, 2/3 at recall 1.
    assert metrics["auprc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # Logits >= 0 predict class 1: recall of class 0 is 1/2, of class 1 is 2/2.
    assert metrics["balanced_accuracy"] == pytest.approx(0.75)


def test_binary_probability_metrics_at_logit_zero() -> None:
    target = pd.DataFrame({"y": [0, 1, 1]}, index=_ids(3))

    metrics = compute_metrics(BINARY, target, np.zeros(3))

    assert metrics["brier"] == pytest.approx(0.25)
    assert metrics["log_loss"] == pytest.approx(math.log(2))


def test_binary_one_class_gives_nan() -> None:
    target = pd.DataFrame({"y": [0, 0, 0]}, index=_ids(3))

    with pytest.warns(
        MetricWarning, match=r"auroc, auprc, balanced_accuracy are undefined .* class 1 of 'y'"
    ):
        metrics = compute_metrics(BINARY, target, np.array([0.1, 0.2, 0.3]))

    assert math.isnan(metrics["auroc"])
    assert math.isnan(metrics["auprc"])
    assert metrics["brier"] == pytest.approx(
        np.mean(1 / (1 + np.exp(-np.array([0.1, 0.2, 0.3]))) ** 2)
    )


def test_nan_scores_give_nan() -> None:
    target = pd.DataFrame({"y": [0, 1, 0, 1]}, index=_ids(4))

    with pytest.warns(
        MetricWarning, match=r"1 of 4 scores are NaN or infinite \(subjects 'S002'\)"
    ):
        metrics = compute_metrics(BINARY, target, np.array([0.1, 0.9, np.nan, 0.4]))

    assert all(math.isnan(value) for value in metrics.values())


def test_scores_series_aligned_by_id() -> None:
    target = pd.DataFrame({"y": [0, 0, 1, 1]}, index=_ids(4))
    scores = pd.Series([2.0, 0.2, 0.5, -1.0], index=["S003", "S002", "S001", "S000"])

    metrics = compute_metrics(BINARY, target, scores, metrics=["auroc"])

    assert metrics == {"auroc": pytest.approx(0.75)}


def test_scores_wrong_shape_raises() -> None:
    target = pd.DataFrame({"y": [0, 1, 0, 1]}, index=_ids(4))

    with pytest.raises(DataError, match=r"must have shape \(4,\) .* got \(4, 2\)"):
        compute_metrics(BINARY, target, np.zeros((4, 2)))


def test_unknown_metric_suggests_name() -> None:
    target = pd.DataFrame({"y": [0, 1]}, index=_ids(2))

    with pytest.raises(ConfigError, match="did you mean 'auroc'"):
        compute_metrics(BINARY, target, np.zeros(2), metrics=["auroc_"])


def test_multiclass_metrics_by_hand() -> None:
    target = pd.DataFrame({"y": [0, 1, 2, 2]}, index=_ids(4))
    logits = np.array([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0], [2.0, 0, 0]])

    metrics = compute_metrics(MULTICLASS, target, logits)

    assert metrics["accuracy"] == pytest.approx(3 / 4)
    # Recall per class: 1, 1 and 1/2.
    assert metrics["balanced_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)
    # One-vs-rest AUROC: class 0 ranks its subject above 2 of 3 others with one tie (2.5/3),
    # class 1 is perfect, class 2 wins 2 of its 4 pairs and ties the other 2 (3/4).
    assert metrics["auroc_macro"] == pytest.approx((2.5 / 3 + 1 + 3 / 4) / 3)
    probability_of_true = np.exp(2) / (np.exp(2) + 2)
    expected_log_loss = -(3 * np.log(probability_of_true) + np.log(1 / (np.exp(2) + 2))) / 4
    assert metrics["log_loss"] == pytest.approx(expected_log_loss)


def test_multiclass_absent_class_gives_nan() -> None:
    target = pd.DataFrame({"y": [0, 1, 1, 0]}, index=_ids(4))

    with pytest.warns(MetricWarning, match="class 2 of 'y'"):
        metrics = compute_metrics(MULTICLASS, target, np.zeros((4, 3)))

    assert math.isnan(metrics["auroc_macro"])
    assert metrics["accuracy"] == pytest.approx(0.5)


def test_regression_metrics_by_hand() -> None:
    target = pd.DataFrame({"y": [1.0, 2.0, 3.0, 4.0]}, index=_ids(4))

    metrics = compute_metrics(REGRESSION, target, np.array([1.0, 2.0, 3.0, 6.0]))

    assert metrics["rmse"] == pytest.approx(1.0)  # sqrt(4 / 4)
    assert metrics["mae"] == pytest.approx(0.5)  # 2 / 4
    assert metrics["r2"] == pytest.approx(
        1 - 4 / 5
    )  # total sum of squares 2.25 + 0.25 + 0.25 + 2.25


def test_regression_constant_target_r2_nan() -> None:
    target = pd.DataFrame({"y": [2.0, 2.0, 2.0]}, index=_ids(3))

    with pytest.warns(MetricWarning, match="r2 is undefined .* target is constant"):
        metrics = compute_metrics(REGRESSION, target, np.array([1.0, 2.0, 3.0]))

    assert math.isnan(metrics["r2"])


def test_c_index_by_hand_with_censoring() -> None:
    target = _survival_target([1.0, 2.0, 3.0, 4.0], [True, False, True, True])

    metrics = compute_metrics(SURVIVAL, target, np.array([3.0, 1.0, 4.0, 2.0]))

    # Comparable pairs (earlier time is an event): (1,2) (1,3) (1,4) (3,4); the censored
    # subject 2 only appears as the later member. Concordant: (1,2) (1,4) (3,4).
    assert metrics == {"c_index": pytest.approx(3 / 4)}


def test_c_index_risk_minus_time_is_one() -> None:
    time = np.arange(1.0, 101.0)
    target = _survival_target(time.tolist(), [True] * 100)

    metrics = compute_metrics(SURVIVAL, target, -time)

    assert metrics["c_index"] == 1.0


@pytest.mark.parametrize(
    ("time", "event", "reason"),
    [
        (list(range(1, 31)), [False] * 29 + [True], "no comparable pairs"),
        ([5.0] * 10, [True] * 10, "no comparable pairs"),
        ([5.0], [True], "only 1 subject"),
        ([1.0, 2.0, 3.0], [False] * 3, "all 3 subjects are censored"),
    ],
    ids=["only event last", "all times tied", "one subject", "all censored"],
)
def test_c_index_undefined_gives_nan(time: list[float], event: list[bool], reason: str) -> None:
    target = _survival_target(time, event)

    with pytest.warns(MetricWarning, match=f"c_index is undefined .*{reason}"):
        metrics = compute_metrics(SURVIVAL, target, np.linspace(0, 1, len(time)))

    assert math.isnan(metrics["c_index"])


def test_uno_equals_harrell_without_censoring() -> None:
    rng = np.random.default_rng(0)
    train = _survival_target(rng.uniform(0, 100, 50).tolist(), [True] * 50)
    train.index = _ids(50, prefix="T")
    test_time = np.sort(rng.uniform(1, 90, 20))
    test = _survival_target(test_time.tolist(), [True] * 20)
    scores = -test_time + rng.normal(0, 20, 20)

    metrics = compute_metrics(SURVIVAL, test, scores, train_target=train)

    assert metrics["c_index_uno"] == pytest.approx(metrics["c_index"])


def test_uno_beyond_training_follow_up_nan() -> None:
    train = _survival_target([1.0, 2.0, 3.0, 4.0], [True, False, True, False])
    test = _survival_target([1.5, 6.0, 7.0], [True, True, False])

    with pytest.warns(MetricWarning, match=r"c_index_uno is undefined .*training follow-up"):
        metrics = compute_metrics(
            SURVIVAL, test, np.array([3.0, 2.0, 1.0]), train_target=train, tau=8.0
        )

    assert math.isnan(metrics["c_index_uno"])
    assert metrics["c_index"] == pytest.approx(1.0)


def test_uno_without_train_target_raises() -> None:
    target = _survival_target([1.0, 2.0], [True, True])

    with pytest.raises(ConfigError, match="c_index_uno needs train_target"):
        compute_metrics(SURVIVAL, target, np.zeros(2), metrics=["c_index_uno"])


# Confidence intervals and tests ---------------------------------------------------------


def test_summarize_folds_by_hand() -> None:
    summary = summarize_folds([0.6, 0.7, 0.8])

    # sd = 0.1 and t(0.975, 2 df) = 4.3027 from a t table, so half width = 4.3027 * 0.1 / sqrt(3).
    half_width = 4.3027 * 0.1 / math.sqrt(3)
    assert summary["mean"] == pytest.approx(0.7)
    assert summary["sd"] == pytest.approx(0.1)
    assert summary["ci_low"] == pytest.approx(0.7 - half_width, abs=1e-4)
    assert summary["ci_high"] == pytest.approx(0.7 + half_width, abs=1e-4)
    assert summary["n"] == 3


def test_summarize_folds_drops_nan() -> None:
    summary = summarize_folds([0.6, float("nan"), 0.8, 0.7])

    assert summary["n"] == 3
    assert summary["n_nan"] == 1
    assert summary["mean"] == pytest.approx(0.7)


def test_summarize_folds_one_fold_nan_ci() -> None:
    summary = summarize_folds([0.6, float("nan")])

    assert summary["mean"] == pytest.approx(0.6)
    assert math.isnan(summary["ci_low"])
    assert math.isnan(summary["ci_high"])


def test_summarize_folds_invalid_confidence() -> None:
    with pytest.raises(ConfigError, match="confidence must lie strictly between 0 and 1, got 95"):
        summarize_folds([0.6, 0.7], confidence=95)


def test_bootstrap_ci_deterministic_and_covers_estimate() -> None:
    rng = np.random.default_rng(0)
    target = _binary_target(40, 40)
    scores = target["y"].to_numpy() + rng.normal(0, 1, 80)

    first = bootstrap_ci(BINARY, target, scores, "auroc", n_resamples=200, seed=1)
    second = bootstrap_ci(BINARY, target, scores, "auroc", n_resamples=200, seed=1)
    estimate = compute_metrics(BINARY, target, scores, metrics=["auroc"])["auroc"]

    assert first == second
    assert first[0] < estimate < first[1]


def test_bootstrap_ci_perfect_ranking() -> None:
    time = np.arange(1.0, 31.0)
    target = _survival_target(time.tolist(), [True] * 30)

    low, high = bootstrap_ci(SURVIVAL, target, -time, "c_index", n_resamples=100)

    assert (low, high) == (1.0, 1.0)


def test_bootstrap_ci_groups_resample_patients() -> None:
    target, groups = _scans_of_patients()
    scores = target["y"].to_numpy() * 0.5 + np.random.default_rng(0).normal(0, 1, len(target))

    low, high = bootstrap_ci(BINARY, target, scores, "auroc", n_resamples=200, groups=groups)

    assert 0 < low < high < 1


def test_bootstrap_ci_undefined_everywhere() -> None:
    target = _binary_target(20, 0)

    with pytest.warns(MetricWarning, match="auroc was undefined in 50 of 50 bootstrap resamples"):
        interval = bootstrap_ci(BINARY, target, np.zeros(20), "auroc", n_resamples=50)

    assert all(math.isnan(bound) for bound in interval)


def test_corrected_ttest_by_hand() -> None:
    result = corrected_resampled_ttest([0.01, 0.02, 0.03, 0.04], n_train=80, n_test=20)

    # Mean 0.025 and s² = 0.0005 / 3, so the corrected variance is (1/4 + 20/80) * s².
    t_value = 0.025 / math.sqrt(0.5 * 0.0005 / 3)
    assert result["t"] == pytest.approx(t_value)
    assert result["t"] == pytest.approx(2.7386, abs=1e-4)
    assert result["p_value"] == pytest.approx(2 * stats.t.sf(t_value, df=3))
    assert result["mean_diff"] == pytest.approx(0.025)
    assert result["name"] == "Nadeau-Bengio corrected resampled t-test"


def test_corrected_ttest_more_conservative() -> None:
    diffs = [0.02, 0.05, 0.01, 0.04, 0.03, 0.06, 0.00, 0.03, 0.05, 0.02]

    corrected = corrected_resampled_ttest(diffs, n_train=90, n_test=10)
    plain = stats.ttest_1samp(diffs, 0.0)

    assert abs(corrected["t"]) < abs(plain.statistic)
    assert corrected["p_value"] > plain.pvalue


def test_corrected_ttest_zero_variance_nan() -> None:
    with pytest.warns(MetricWarning, match="variance is 0"):
        result = corrected_resampled_ttest([0.1, 0.1, 0.1], n_train=20, n_test=10)

    assert math.isnan(result["p_value"])


def test_corrected_ttest_drops_nan_diffs() -> None:
    with pytest.warns(MetricWarning, match="1 of 4 fold differences are NaN"):
        result = corrected_resampled_ttest([0.01, float("nan"), 0.03, 0.02], n_train=30, n_test=10)

    assert result["n"] == 3
    assert result["mean_diff"] == pytest.approx(0.02)


def test_corrected_ttest_invalid_sizes() -> None:
    with pytest.raises(ConfigError, match="n_train must be a positive number of subjects, got 0"):
        corrected_resampled_ttest([0.1, 0.2], n_train=0, n_test=10)
