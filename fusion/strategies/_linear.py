"""Penalized linear baselines: logistic regression, ridge and Cox models from scikit-learn
and scikit-survival, with the penalty chosen by an inner cross-validation.

Small cohorts often favour these models over neural networks, so a benchmark lists them
beside the deep strategies. Inputs are the fold-fitted feature matrices of
:mod:`fusion.benchmark` (already standardised); outputs are raw scores as laid out in
``fusion._task``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.model_selection import StratifiedKFold
from sksurv.exceptions import NoComparablePairException
from sksurv.linear_model import CoxnetSurvivalAnalysis
from sksurv.metrics import concordance_index_censored
from sksurv.util import Surv
from threadpoolctl import threadpool_limits

from .._task import Task

__all__ = ["PenalizedLinearModel"]

# Penalty grids searched by the inner cross-validation: inverse strength C for logistic
# regression and strength alpha for ridge. The Cox model searches its own path of
# COX_N_ALPHAS strengths.
LOGISTIC_CS = np.logspace(-3, 2, 11)
RIDGE_ALPHAS = np.logspace(-2, 4, 13)
COX_N_ALPHAS = 30
COX_L1_RATIO = 0.5  # elastic net: CoxnetSurvivalAnalysis needs an L1 share above 0


class PenalizedLinearModel:
    """A penalized linear model for ``task`` whose penalty strength is tuned by inner CV.

    ===========  ==========================================================
    task         model
    ===========  ==========================================================
    binary       ``LogisticRegressionCV`` (L2, scored by AUROC)
    multiclass   ``LogisticRegressionCV`` (L2, multinomial, log loss)
    regression   ``RidgeCV``
    survival     ``CoxnetSurvivalAnalysis`` (elastic net, L1 share 0.5), the
                 strength chosen by Harrell's C over folds stratified on the event
    ===========  ==========================================================

    Parameters
    ----------
    task
        The prediction task.
    inner_folds
        Folds of the penalty search; reduced when a class or the events are too few.
    seed
        Seed of the inner folds.
    """

    def __init__(self, task: Task, *, inner_folds: int = 3, seed: int = 0) -> None:
        self.task = task
        self.inner_folds = inner_folds
        self.seed = seed

    def fit(self, features: np.ndarray, target: pd.DataFrame) -> PenalizedLinearModel:
        """Fit on ``features`` ``(n, p)`` and ``target`` (rows in the same order)."""
        features = np.asarray(features, dtype=np.float64)
        # Small problems spend their time in BLAS thread start-up: one thread was 7 times
        # faster for LogisticRegressionCV on 32 x 20 features on a busy 2-core machine.
        with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
            warnings.simplefilter("ignore", ConvergenceWarning)
            if self.task.kind == "survival":
                self.model_ = self._fit_cox(features, target)
            elif self.task.kind == "regression":
                self.model_ = RidgeCV(alphas=RIDGE_ALPHAS).fit(features, target["y"].to_numpy(float))
            else:
                self.model_ = self._fit_logistic(features, target["y"].to_numpy())
        return self

    def _fit_logistic(self, features: np.ndarray, y: np.ndarray) -> LogisticRegressionCV:
        n_splits = self._n_splits(np.bincount(y).min())
        scoring = "roc_auc" if self.task.kind == "binary" else "neg_log_loss"
        model = LogisticRegressionCV(
            Cs=LOGISTIC_CS, cv=StratifiedKFold(n_splits, shuffle=True, random_state=self.seed),
            scoring=scoring, max_iter=5000, l1_ratios=(0.0,), use_legacy_attributes=False,
        )
        return model.fit(features, y)

    def _fit_cox(self, features: np.ndarray, target: pd.DataFrame) -> CoxnetSurvivalAnalysis:
        event = target["event"].to_numpy(bool)
        time = target["time"].to_numpy(float)
        outcome = Surv.from_arrays(event=event, time=time)
        # One coordinate-descent path per fit; the penalty with the best mean inner C wins.
        path = CoxnetSurvivalAnalysis(l1_ratio=COX_L1_RATIO, n_alphas=COX_N_ALPHAS, alpha_min_ratio=0.01)
        alphas = _coxnet_path(path, features, outcome).alphas_
        n_splits = self._n_splits(int(event.sum()))
        folds = StratifiedKFold(n_splits, shuffle=True, random_state=self.seed).split(features, event)
        scores = np.full((n_splits, len(alphas)), np.nan)
        for j, (train, valid) in enumerate(folds):
            model = _coxnet_path(CoxnetSurvivalAnalysis(l1_ratio=COX_L1_RATIO, alphas=alphas),
                                 features[train], outcome[train])
            for a, alpha in enumerate(alphas):
                if alpha >= model.alphas_.min():
                    risk = model.predict(features[valid], alpha=alpha)
                    scores[j, a] = _harrell_c(event[valid], time[valid], risk)
        best = float(alphas[int(np.nanargmax(np.nanmean(scores, axis=0)))])
        # The path down to the chosen penalty, because a path is fitted with warm starts and
        # a fit at one small penalty alone can diverge.
        final = CoxnetSurvivalAnalysis(l1_ratio=COX_L1_RATIO, alphas=alphas[alphas >= best])
        final = _coxnet_path(final, features, outcome)
        self.alpha_ = max(best, float(final.alphas_.min()))
        return final

    def _n_splits(self, smallest_group: int) -> int:
        # Every inner fold needs a member of the rarest class (or an event) on both sides.
        return int(max(2, min(self.inner_folds, smallest_group)))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Return raw scores: logits, predicted values or log relative risk."""
        features = np.asarray(features, dtype=np.float64)
        if self.task.kind == "survival":
            return self.model_.predict(features, alpha=self.alpha_)
        if self.task.kind == "regression":
            return self.model_.predict(features)
        return self.model_.decision_function(features)

    @property
    def n_parameters(self) -> int:
        """Number of fitted coefficients, intercepts included."""
        if self.task.kind == "survival":
            return int(self.model_.coef_.shape[0])  # (features, penalties of the path)
        intercept = getattr(self.model_, "intercept_", None)
        return int(np.size(self.model_.coef_) + (0 if intercept is None else np.size(intercept)))


def _harrell_c(event: np.ndarray, time: np.ndarray, risk: np.ndarray) -> float:
    """Return Harrell's C of one inner fold, NaN when it has no comparable pair."""
    try:
        return float(concordance_index_censored(event, time, risk)[0])
    except NoComparablePairException:
        return float("nan")


def _coxnet_path(model: CoxnetSurvivalAnalysis, features: np.ndarray, outcome: np.ndarray) -> CoxnetSurvivalAnalysis:
    """Fit a Coxnet path, dropping its weakest penalties while the fit diverges.

    With few events, the smallest penalties of a path can let the weights grow until
    scikit-survival raises ``ArithmeticError``; the stronger penalties are still valid.
    """
    alphas = model.alphas
    while True:
        try:
            return model.fit(features, outcome)
        except ArithmeticError:
            if alphas is None:
                alphas = CoxnetSurvivalAnalysis(l1_ratio=model.l1_ratio, n_alphas=model.n_alphas,
                                                alpha_min_ratio=0.1).fit(features, outcome).alphas_
            elif len(alphas) <= 1:
                raise
            else:
                alphas = np.asarray(alphas)[: max(1, 2 * len(alphas) // 3)]
            model.set_params(alphas=alphas)
