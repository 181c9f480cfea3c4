"""Optuna search over late-fusion heads, on cached encoder outputs only.

A trial fits a head on cached, cross-fitted outputs and scores it by an inner
cross-validation of the outer fold's training subjects. No trial retrains an encoder.
Each outer fold has its own study in the same storage (SQLite in the run directory by
default), named after the run and fold, so running again resumes every study.

Pruning with k-fold: after inner fold ``j`` the trial reports the running mean of the
folds so far at step ``j``. Steps are distinct, and a trial is pruned only against
other trials' running means after the same number of folds.

Reproducibility: trial ``k`` (after ``k`` complete or pruned trials) samples from a TPE
sampler seeded with ``seed + k``, and TPE reads the finished trials from the storage. A
study resumed after an interruption therefore proposes the same parameters as one that ran
without stopping, and two runs with the same seed give the same trials. A trial left
``RUNNING`` by a killed process, or ``FAIL`` after Ctrl-C or an error, is ignored and run
again. A trial without a finite score in any inner fold is pruned. With ``n_jobs > 1`` the order in which trials
finish varies, so the result is not reproducible, and a warning is issued.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
import pandas as pd

from .._errors import DataError, FusionWarning, MetricWarning
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
                 folds: list[tuple[pd.Index, pd.Index]], *, epochs: int, patience: int, seed: int,
                 trial: optuna.Trial | None = None) -> float:
    metric = PRIMARY_METRIC[task.kind]
    values: list[float] = []
    for j, (train_ids, valid_ids) in enumerate(folds):
        head = fit_head(inputs.subset(train_ids), target, task, params, epochs=epochs, patience=patience,
                        seed=seed + j)
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
              storage: str, study_name: str, n_jobs: int = 1, patience: int = 0) -> optuna.Study:
    """Run (or resume) the study until it contains ``n_trials`` finished trials.

    Trials already complete or pruned in the storage count toward ``n_trials``, so an
    interrupted run picks up where it stopped; see the module docstring for how each
    trial is seeded. ``epochs`` and ``patience`` are passed to :func:`fit_head`. ``n_jobs`` runs trials in parallel threads, which makes the result
    depend on their timing.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if HIGHER_IS_BETTER[PRIMARY_METRIC[task.kind]] else "minimize"
    study = optuna.create_study(
        storage=storage, study_name=study_name, direction=direction, load_if_exists=True,
        sampler=_sampler(seed, 0, n_trials),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0),
    )
    finished = len(_finished_trials(study))
    stale = [t.number for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    if stale:
        logger.warning("study '%s': trial(s) %s were left running by an interrupted run and are "
                       "ignored", study_name, stale)
    if finished >= n_trials:
        logger.info("study '%s' already contains %d finished trials; reusing it", study_name, finished)
        return study
    if finished:
        logger.info("study '%s': resuming after %d finished trials", study_name, finished)

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, heads)
        value = _inner_score(inputs, target, task, params, folds, epochs=epochs, patience=patience, seed=seed,
                             trial=trial)
        if not math.isfinite(value):
            # Pruned, not failed: a failed trial is one an interruption or an error stopped.
            logger.info("study '%s': trial %d has no finite score in any inner fold; pruned",
                        study_name, trial.number)
            raise optuna.TrialPruned()
        return value

    with single_thread():
        if n_jobs != 1:
            msg = (
                f"study '{study_name}': n_jobs={n_jobs} runs trials in parallel, so the order in "
                f"which they finish, and the best parameters, are not reproducible for seed {seed}"
            )
            warnings.warn(msg, FusionWarning, stacklevel=2)
            study.sampler = _sampler(seed, finished, n_trials, parallel=True)
            study.optimize(objective, n_trials=n_trials - finished, n_jobs=n_jobs, catch=())
            return study
        while finished < n_trials:
            study.sampler = _sampler(seed, finished, n_trials)
            study.optimize(objective, n_trials=1, catch=())
            finished = len(_finished_trials(study))
    return study


def _sampler(seed: int, n_finished: int, n_trials: int, *, parallel: bool = False) -> optuna.samplers.TPESampler:
    """Return the TPE sampler of the trial that follows ``n_finished`` finished trials.

    Optuna 5.1 (checked) defaults to ``constant_liar=True``, which makes TPE read RUNNING trials
    as if they had a bad score. That spreads parallel trials apart, but a trial left RUNNING
    by a killed process would then change every later proposal, so it is used only with
    parallel trials.
    """
    return optuna.samplers.TPESampler(seed=seed + n_finished, constant_liar=parallel,
                                      n_startup_trials=min(10, max(1, n_trials // 3)))


def _finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Return the complete and pruned trials, leaving out failed and interrupted ones."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def best_params(study: optuna.Study) -> dict[str, Any]:
    """Return the best trial's parameters in the form :func:`fit_head` takes."""
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                 and t.value is not None and math.isfinite(t.value)]
    if not completed:
        raise DataError(
            f"study '{study.study_name}': no trial finished with a finite score; the inner folds "
            "may lack both classes or comparable pairs. Use fewer folds or more subjects"
        )
    return dict(study.best_trial.params)
