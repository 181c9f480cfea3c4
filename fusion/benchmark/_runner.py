"""``fusion benchmark``: every strategy on the same saved folds, encoders and metrics.

For each outer fold the modality encoders are cross-fitted once, exactly as in the main
job (``folds/repeat<r>-fold<f>/outputs_<modality>.npz``), and every strategy is then fitted
and evaluated under these scenarios:

- ``full``: the data as they are;
- ``without:<modality>``: the fitted strategy predicts with that modality removed from
  every test subject (no refitting);
- ``missing:<fraction>``: each modality is removed from that fraction of the training and
  test subjects, independently per modality and with the fold's seed, and the strategy
  is fitted again. Encoders behind the cached outputs are not retrained: late and
  unimodal strategies see the removal only through their inputs.

Per-fold predictions are written as soon as a strategy finishes, so ``resume`` skips
every finished strategy and fold.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from .._errors import ConfigError, DataError, MetricWarning
from .._io import write_csv, write_json
from .._logging import logger
from .._pipeline import (
    _crossfit,
    _fold_seed,
    _load_outputs,
    _load_volumes,
    _log_to,
    _save_outputs,
    _Timer,
    load_or_make_splits,
    prepare_run_dir,
    write_config,
)
from .._preflight import preflight
from ..config import FusionConfig, ImagingConfig
from ..data._cohort import Cohort
from ..evaluation import compute_metrics, iter_folds
from ._builtin import resolve_strategies
from ._compare import compare_strategies
from ._features import imaging_statistics
from ._interface import FoldContext, Strategy

__all__ = ["BenchmarkResult", "run_benchmark"]

FULL = "full"

# Sections of the config that decide the folds and the cached encoder outputs. A run
# directory whose config differs in any of them cannot lend its caches.
_ENCODER_SECTIONS = ("seed", "target", "groups", "modalities", "evaluation")


@dataclasses.dataclass
class BenchmarkResult:
    """Benchmark directory, leaderboard, paired comparisons, robustness table and timings."""

    run_dir: Path
    primary_metric: str
    leaderboard: pd.DataFrame
    comparisons: pd.DataFrame
    robustness: pd.DataFrame
    timings: dict[str, float]
    report: Path | None


def run_benchmark(config: FusionConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
                  from_run: str | Path | None = None, strategies: list[Strategy] | None = None,
                  report: bool = True) -> BenchmarkResult:
    """Benchmark the strategies of ``config.benchmark`` (plus ``strategies``) into ``run_dir``.

    Parameters
    ----------
    from_run
        A finished or partial ``fusion run`` (or benchmark) directory of a config with the
        same seed, target, groups, modalities and evaluation. Its splits and cached encoder
        outputs are copied instead of recomputed. Its Optuna studies are copied too when
        the tuning settings also match.
    strategies
        Extra :class:`Strategy` instances, added after the configured ones.
    """
    timer = _Timer()
    selected = resolve_strategies(config, strategies)
    with timer.stage("preflight"):
        checked = preflight(config)
    checked.raise_for_errors()
    run_dir = prepare_run_dir(Path(run_dir), config, resume=resume, overwrite=overwrite)
    source_run = _check_source_run(Path(from_run), config) if from_run is not None else None

    with _log_to(run_dir / "benchmark.log"):
        logger.info("benchmark '%s' started in %s with %d strategies", config.name, run_dir, len(selected))
        write_config(run_dir, config)
        checked.log_warnings()
        cohort = checked.cohort
        splits = _splits(run_dir, config, cohort, source_run)
        if source_run is not None:
            _borrow_study(source_run, run_dir, config)
        volumes = _load_volumes(cohort, config, timer)
        with timer.stage("imaging statistics"):
            tables = {name: imaging_statistics(volumes[name], config.modalities[name].sequences)
                      for name in volumes}

        rows, fold_records = [], []
        folds = [(r, f, tr, te) for r in range(config.evaluation.repeats) for f, tr, te in iter_folds(splits, r)]
        timer.progress = tqdm(folds, desc="outer folds", unit="fold")
        for repeat, fold, train_ids, test_ids in timer.progress:
            fold_dir = run_dir / "folds" / f"repeat{repeat}-fold{fold}"
            context = _fold_context(cohort, config, repeat, fold, train_ids, test_ids, fold_dir, run_dir,
                                    volumes, tables, source_run, timer)
            fold_records.append({"repeat": repeat, "fold": fold, "n_train": len(train_ids),
                                 "n_test": len(test_ids), "encoders": context.encoder_info})
            for strategy in selected:
                # NumPy's BLAS threads only add start-up cost on the small matrices of a fold.
                with timer.stage(f"strategy:{strategy.name}"), threadpool_limits(1, user_api="blas"):
                    rows.append(_run_strategy(strategy, context, fold_dir))
        timer.progress = None

        with timer.stage("evaluation"):
            predictions = pd.concat([r["predictions"] for r in rows], ignore_index=True)
            records = [r["record"] for r in rows]
            metrics = _fold_metrics(cohort, predictions)
            tables_out = compare_strategies(cohort.task, metrics, records, fold_records, selected)
        _write_results(run_dir, predictions, metrics, tables_out, records, fold_records, config, cohort, timer)

        report_path = None
        if report:
            with timer.stage("report"):
                from ..report._benchmark import write_benchmark_report
                report_path = write_benchmark_report(run_dir)
        write_json(run_dir / "timings.json", timer.timings)
        logger.info("benchmark '%s' finished; report: %s", config.name, report_path)
    return BenchmarkResult(run_dir, tables_out["primary_metric"], tables_out["leaderboard"], tables_out["comparisons"], tables_out["robustness"],
                           timer.timings, report_path)


def _check_source_run(source: Path, config: FusionConfig) -> Path:
    """Check that ``source`` is a run directory of a config with the same folds and encoders."""
    saved = source / "config.yaml"
    if not saved.is_file() or not (source / "splits.csv").is_file():
        raise ConfigError(
            f"--from-run {source}: not a run directory (config.yaml and splits.csv are expected there); "
            "pass the directory that 'fusion run' wrote"
        )
    previous = yaml.safe_load(saved.read_text())
    current = config.to_yaml_dict()
    differing = [key for key in _ENCODER_SECTIONS if previous.get(key) != current.get(key)]
    if differing:
        raise ConfigError(
            f"--from-run {source}: its config differs in {differing}, so its folds or encoder outputs "
            "do not match this benchmark; use the same config for both or leave out --from-run"
        )
    return source


def _borrow_study(source: Path, run_dir: Path, config: FusionConfig) -> None:
    """Copy the source run's Optuna studies when it was tuned with the same settings.

    The tuned late head then reuses the finished trials (studies are named after the
    config and the fold) instead of running them again.
    """
    study = source / "optuna.db"
    previous = yaml.safe_load((source / "config.yaml").read_text())
    if (config.tuning.storage is None and study.is_file() and not (run_dir / "optuna.db").exists()
            and previous.get("tuning") == config.to_yaml_dict()["tuning"]):
        shutil.copyfile(study, run_dir / "optuna.db")
        logger.info("copied the Optuna studies of %s", source)


def _splits(run_dir: Path, config: FusionConfig, cohort: Cohort, source_run: Path | None) -> pd.DataFrame:
    path = run_dir / "splits.csv"
    if not path.is_file() and source_run is not None:
        shutil.copyfile(source_run / "splits.csv", path)
    return load_or_make_splits(run_dir, config, cohort)


def _fold_context(cohort: Cohort, config: FusionConfig, repeat: int, fold: int, train_ids: pd.Index,
                  test_ids: pd.Index, fold_dir: Path, run_dir: Path, volumes: dict, tables: dict,
                  source_run: Path | None, timer: _Timer) -> FoldContext:
    """Load or compute every modality's cross-fitted outputs for one fold."""
    seed = _fold_seed(config, repeat, fold)
    info_path = fold_dir / "encoders.json"
    info: dict[str, dict[str, Any]] = _read_json(info_path) or {}
    outputs = {}
    for name in cohort.modalities:
        cached = fold_dir / f"outputs_{name}.npz"
        borrowed = source_run / "folds" / fold_dir.name / cached.name if source_run is not None else None
        with timer.stage(f"encoder:{name}"):
            if not cached.is_file() and borrowed is not None and borrowed.is_file():
                cached.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(borrowed, cached)
                # A benchmark directory records the encoders' time and size; a run directory only their size.
                lent = (_read_json(borrowed.parent / "encoders.json") or {}).get(name, {})
                done = _read_json(borrowed.parent / "done.json") or {}
                info[name] = {"seconds": lent.get("seconds"),
                              "n_parameters": lent.get("n_parameters", done.get("n_parameters", {}).get(name)),
                              "source": str(borrowed)}
            if cached.is_file():
                outputs[name] = _load_outputs(cached)
                continue
            start = time.perf_counter()
            outputs[name], learner = _crossfit(cohort, config, name, volumes.get(name, {}), train_ids, test_ids, seed)
            seconds = time.perf_counter() - start
            if learner is not None:
                _save_outputs(cached, outputs[name])
                info[name] = {"seconds": seconds, "n_parameters": learner.n_parameters}
    write_json(info_path, info)
    return FoldContext(cohort=cohort, config=config, repeat=repeat, fold=fold, seed=seed, train_ids=train_ids,
                       test_ids=test_ids, run_dir=run_dir, outputs=outputs, encoder_info=info, volumes=volumes,
                       imaging_tables=tables)


def _scenarios(context: FoldContext) -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """Return ``(scenario, train availability, test availability)`` triples that need a fit."""
    availability = context.cohort.availability
    train = availability.loc[context.train_ids]
    test = availability.loc[context.test_ids]
    scenarios = [(FULL, train, test)]
    for fraction in context.config.benchmark.missing_fractions:
        rng = np.random.default_rng([context.seed, int(round(fraction * 1000))])
        keep_train = rng.random(train.shape) >= fraction
        keep_test = rng.random(test.shape) >= fraction
        scenarios.append((f"missing:{fraction:g}", train & keep_train, test & keep_test))
    return scenarios


def _run_strategy(prototype: Strategy, context: FoldContext, fold_dir: Path) -> dict[str, Any]:
    """Fit and evaluate one strategy in every scenario of one fold, or read the saved result."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", prototype.name)
    predictions_path = fold_dir / "strategies" / f"{stem}.csv"
    record_path = fold_dir / "strategies" / f"{stem}.json"
    if predictions_path.is_file() and record_path.is_file():
        logger.info("repeat %d fold %d: reusing the results of '%s'", context.repeat, context.fold, prototype.name)
        return {"predictions": pd.read_csv(predictions_path, dtype={"subject_id": str}),
                "record": _read_json(record_path)}

    frames = []
    record: dict[str, Any] = {"strategy": prototype.name, "family": prototype.family, "repeat": context.repeat,
                              "fold": context.fold, "uses_cached_encoders": prototype.uses_cached_encoders,
                              "robustness_seconds": 0.0}
    for scenario, train_availability, test_availability in _scenarios(context):
        strategy = copy.deepcopy(prototype)
        start = time.perf_counter()
        strategy.fit(context, train_availability)
        fitted = time.perf_counter()
        frames.append(_predict(strategy, context, scenario, test_availability))
        predicted = time.perf_counter()
        if scenario != FULL:
            record["robustness_seconds"] += predicted - start
            continue
        record.update(fit_seconds=fitted - start, predict_seconds=predicted - fitted,
                      n_parameters=strategy.n_parameters())
        if context.config.benchmark.test_without_each_modality:
            start = time.perf_counter()
            for name in context.modalities:
                removed = test_availability.copy()
                removed[name] = False
                frames.append(_predict(strategy, context, f"without:{name}", removed))
            record["robustness_seconds"] += time.perf_counter() - start

    predictions = pd.concat(frames, ignore_index=True)
    write_csv(predictions_path, predictions)
    write_json(record_path, record)
    return {"predictions": predictions, "record": record}


def _predict(strategy: Strategy, context: FoldContext, scenario: str, availability: pd.DataFrame) -> pd.DataFrame:
    scores = np.asarray(strategy.predict(context, availability), dtype=float)
    k = context.task.output_dim
    expected = (len(context.test_ids), k) if k > 1 else (len(context.test_ids),)
    if scores.shape != expected:
        raise DataError(
            f"strategy '{strategy.name}' returned scores of shape {scores.shape} for {len(context.test_ids)} "
            f"test subjects; expected {expected} (one row per fold.test_ids, in that order)"
        )
    frame = pd.DataFrame({"subject_id": context.test_ids.astype(str), "repeat": context.repeat,
                          "fold": context.fold, "strategy": strategy.name, "scenario": scenario})
    if k > 1:
        for j in range(k):
            frame[f"score_{j}"] = scores[:, j]
    else:
        frame["score"] = scores
    return frame


def _fold_metrics(cohort: Cohort, predictions: pd.DataFrame) -> pd.DataFrame:
    """Return one row per strategy, scenario, repeat and fold with every metric and the coverage."""
    task = cohort.task
    target = cohort.target
    score_columns = [c for c in predictions.columns if c.startswith("score")]
    rows = []
    with warnings.catch_warnings():
        # Undefined metrics become NaN and are counted per strategy in the leaderboard.
        warnings.simplefilter("ignore", MetricWarning)
        for (strategy, scenario, repeat, fold), part in predictions.groupby(
                ["strategy", "scenario", "repeat", "fold"], sort=False):
            scores = part[score_columns].to_numpy(float)
            covered = ~np.isnan(scores).any(axis=1)
            ids = pd.Index(part["subject_id"].to_numpy()[covered])
            row = {"strategy": strategy, "scenario": scenario, "repeat": int(repeat), "fold": int(fold),
                   "n_test": len(part), "n_predicted": int(covered.sum())}
            if covered.any():
                values = scores[covered] if task.kind == "multiclass" else scores[covered, 0]
                train_target = target.drop(index=part["subject_id"])
                row.update(compute_metrics(task, target.loc[ids], values, train_target=train_target))
            rows.append(row)
    return pd.DataFrame(rows)


def _write_results(run_dir: Path, predictions: pd.DataFrame, metrics: pd.DataFrame, tables: dict[str, pd.DataFrame],
                   records: list[dict], fold_records: list[dict], config: FusionConfig, cohort: Cohort,
                   timer: _Timer) -> None:
    write_csv(run_dir / "predictions.csv", predictions)
    write_csv(run_dir / "fold_metrics.csv", metrics)
    for name in ("leaderboard", "comparisons", "robustness"):
        write_csv(run_dir / f"{name}.csv", tables[name])
    encoder_seconds = {}
    for entry in fold_records:
        for name, info in entry["encoders"].items():
            if info.get("seconds") is not None:
                encoder_seconds[name] = encoder_seconds.get(name, 0.0) + info["seconds"]
    summary = {
        "name": config.name,
        "task": cohort.task.kind,
        "primary_metric": tables["primary_metric"],
        "n_subjects": len(cohort.subject_ids),
        "modalities": cohort.modalities,
        "imaging_in_joint_models": config.benchmark.joint.imaging
        if any(isinstance(m, ImagingConfig) for m in config.modalities.values()) else None,
        "folds": fold_records,
        "encoder_seconds": encoder_seconds,
        "leaderboard": tables["leaderboard"].to_dict(orient="records"),
        "comparisons": tables["comparisons"].to_dict(orient="records"),
        "robustness": tables["robustness"].to_dict(orient="records"),
        "strategy_runs": records,
    }
    write_json(run_dir / "benchmark.json", summary)
    write_json(run_dir / "timings.json", timer.timings)


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text()) if path.is_file() else None
