"""Optuna search over late-fusion heads, on cached encoder outputs only.

A trial fits a head on cached, cross-fitted outputs and scores it by an inner
cross-validation of the outer fold's training subjects. No trial retrains an encoder.
Each outer fold has its own study in the same storage (SQLite in the run directory by
default), named after the run and fold, so running again resumes every study.

Pruning with k-fold: after inner fold ``j`` the trial reports the running mean of the
folds so far at step ``j``. Steps are distinct, and a trial is pruned only against
other trials' running means after the same number of folds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
import pandas as pd

from .._errors import MetricWarning
from .._logging import logger
from .._task import Task
from ..evaluation import HIGHER_IS_BETTER, PRIMARY_METRIC, compute_metrics
from ..strategies._late import FusionInputs, fit_head, predict_head
from ..training import single_thread

__all__ = ["suggest_params", "tune_head"]


def suggest_params(trial: optuna.Trial, heads: Sequence[str]) -> dict[str, Any]:
    """Sample one head configuration; neural heads add hidden width and dropout."""
    params: dict[str, Any] = {
        "head": trial.suggest_categorical("head", list(heads)),
        "learning_rate": trial.suggest_float("learning_rate", 1e-3, 5e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-1, log=True),
        "modality_dropout": trial.suggest_float("modality_dropout", 0.0, 0.5),
    }
    if params["head"] in ("mlp", "attention"):
        params["hidden"] = trial.suggest_categorical("hidden", [8, 16, 32])
        params["dropout"] = trial.suggest_float("dropout", 0.0, 0.5)
    return params


def _inner_score(inputs: FusionInputs, target: pd.DataFrame, task: Task, params: dict[str, Any],
                 folds: list[tuple[pd.Index, pd.Index]], *, epochs: int, seed: int,
                 trial: optuna.Trial | None = None) -> float:
    metric = PRIMARY_METRIC[task.kind]
    values: list[float] = []
    for j, (train_ids, valid_ids) in enumerate(folds):
        head = fit_head(inputs.subset(train_ids), target, task, params, epochs=epochs, seed=seed + j)
        scores = predict_head(head, inputs.subset(valid_ids))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)
            value = compute_metrics(task, target.loc[valid_ids], scores,
                                    train_target=target.loc[train_ids])[metric]
        if math.isfinite(value):
            values.append(value)
        if trial is not None and values:
            trial.report(float(np.mean(values)), step=j)
            if trial.should_prune():
                raise optuna.TrialPruned()
    return float(np.mean(values)) if values else float("nan")


def tune_head(inputs: FusionInputs, target: pd.DataFrame, task: Task, *, heads: Sequence[str],
              folds: list[tuple[pd.Index, pd.Index]], n_trials: int, epochs: int, seed: int,
              storage: str, study_name: str) -> optuna.Study:
    """Run (or resume) the study until it contains ``n_trials`` finished trials.

    Trials already complete or pruned in the storage count toward ``n_trials``, so an
    interrupted run picks up where it stopped. The sampler is seeded with ``seed``; with
    parallel workers on one study the order of trials, and so the result, is not
    reproducible.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if HIGHER_IS_BETTER[PRIMARY_METRIC[task.kind]] else "minimize"
    study = optuna.create_study(
        storage=storage, study_name=study_name, direction=direction, load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, n_trials // 3))),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0),
    )
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                        optuna.trial.TrialState.PRUNED)]
    remaining = n_trials - len(finished)
    if remaining <= 0:
        logger.info("study '%s' already contains %d finished trials; reusing it", study_name, len(finished))
        return study

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, heads)
        return _inner_score(inputs, target, task, params, folds, epochs=epochs, seed=seed, trial=trial)

    with single_thread():
        study.optimize(objective, n_trials=remaining, catch=())
    return study


def best_params(study: optuna.Study) -> dict[str, Any]:
    """Return the best trial's parameters in the form :func:`fit_head` takes."""
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                 and t.value is not None and math.isfinite(t.value)]
    if not completed:
        raise RuntimeError(
            f"study '{study.study_name}': no trial finished with a finite score; the inner folds "
            "may lack both classes or comparable pairs. Use fewer folds or more subjects"
        )
    return dict(study.best_trial.params)
