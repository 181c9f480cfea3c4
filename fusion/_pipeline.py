"""The main job: cross-validated unimodal and fused models, attributions and a report.

For each outer fold:

1. every modality's learner is cross-fitted inside the training part (``inner_folds``),
   so each training subject gets out-of-fold embeddings and scores. A learner fitted on
   the whole training part produces the test subjects' outputs. Both are cached;
2. Optuna tunes the late-fusion head on the cached training outputs (inner CV);
3. the best head is refitted on all training outputs and predicts the test subjects;
4. modality Shapley values and feature attributions are computed for the test subjects.

Everything is written to the run directory; finished folds are reused on ``resume``.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from tqdm.auto import tqdm

from ._errors import ConfigError, DataError
from ._io import write_atomic, write_csv, write_json, write_npz
from ._logging import logger
from ._preflight import preflight
from ._task import Task
from .bundle._store import (
    has_fold_learner,
    load_fold_learner,
    save_fold_head,
    save_fold_learner,
    write_bundle,
)
from .config import FusionConfig, ImagingConfig
from .data._cohort import Cohort
from .evaluation import (
    PRIMARY_METRIC,
    bootstrap_ci,
    compute_metrics,
    inner_folds,
    iter_folds,
    make_splits,
    summarize_folds,
)
from .explain import feature_attributions, modality_shapley
from .strategies._late import fit_head, predict_head, stack_outputs
from .strategies._unimodal import ModalityOutputs, UnimodalLearner, align_embeddings, make_learner
from .training import single_thread
from .tuning import best_params, tune_head

__all__ = ["RunResult", "prepare_run_dir", "run"]


@dataclasses.dataclass
class RunResult:
    """Run directory, metrics, report path and stage timings of a finished run."""

    run_dir: Path
    metrics: dict[str, Any]
    report: Path | None
    timings: dict[str, float]


class _Timer:
    """Accumulate the wall time of named stages; show the current one on a progress bar."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.progress: Any = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        logger.info("stage '%s' started", name)
        if self.progress is not None:
            self.progress.set_postfix_str(name)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.timings[name] = self.timings.get(name, 0.0) + elapsed
            logger.info("stage '%s' finished in %.1f s", name, elapsed)


def prepare_run_dir(run_dir: Path, config: FusionConfig, *, resume: bool, overwrite: bool) -> Path:
    """Create the run directory, or check it can be resumed.

    An existing, non-empty directory is an error unless ``resume`` (same config required)
    or ``overwrite`` (the old directory is moved aside to ``<name>.previous-<timestamp>``,
    so nothing is deleted).
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ConfigError("choose either --resume or --overwrite, not both")
    exists = run_dir.exists() and any(run_dir.iterdir())
    if exists and overwrite:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        moved = run_dir.with_name(f"{run_dir.name}.previous-{stamp}")
        shutil.move(str(run_dir), moved)
        logger.warning("moved the previous run directory %s to %s", run_dir, moved)
    elif exists and not resume:
        raise ConfigError(
            f"run directory {run_dir} already exists and is not empty; pass --resume to continue "
            "that run, --overwrite to move it aside and start again, or --out for a new directory"
        )
    elif exists and resume:
        saved = run_dir / "config.yaml"
        if saved.is_file():
            previous = yaml.safe_load(saved.read_text())
            if previous != config.to_yaml_dict():
                raise ConfigError(
                    f"cannot resume {run_dir}: the config differs from the one it was started "
                    "with (see its config.yaml); use --overwrite or a new --out"
                )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def write_config(run_dir: Path, config: FusionConfig) -> None:
    """Write the resolved config as ``config.yaml``, which ``resume`` compares against."""
    write_atomic(run_dir / "config.yaml",
                 lambda path: path.write_text(yaml.safe_dump(config.to_yaml_dict(), sort_keys=False)))


@contextmanager
def _log_to(path: Path) -> Iterator[None]:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if previous in (logging.NOTSET, logging.WARNING) else previous)
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        warnings_logger.removeHandler(handler)
        logging.captureWarnings(False)
        logger.setLevel(previous)
        handler.close()


def _save_outputs(path: Path, outputs: dict[str, ModalityOutputs]) -> None:
    """Write the train (out-of-fold) and test outputs of one modality as one ``.npz``."""
    arrays = {}
    for part, out in outputs.items():
        arrays[f"{part}_ids"] = out.subject_ids.to_numpy().astype(str)
        arrays[f"{part}_embedding"] = out.embedding
        arrays[f"{part}_scores"] = out.scores
    write_npz(path, **arrays)


def _load_outputs(path: Path) -> dict[str, ModalityOutputs]:
    data = np.load(path, allow_pickle=False)
    return {
        part: ModalityOutputs(pd.Index(data[f"{part}_ids"].astype(str)), data[f"{part}_embedding"], data[f"{part}_scores"])
        for part in ("train", "test")
    }


def _crossfit(cohort: Cohort, config: FusionConfig, name: str, volumes: dict, train_ids: pd.Index,
              test_ids: pd.Index, seed: int) -> tuple[dict[str, ModalityOutputs], UnimodalLearner | None]:
    """Return out-of-fold outputs of the training subjects, test outputs, and the full learner."""
    modality_config = config.modalities[name]
    source = cohort.sources[name]
    present_train = cohort.present(name, train_ids)
    present_test = cohort.present(name, test_ids)
    if len(present_train) < 4:
        logger.warning("modality '%s': only %d training subjects in this fold; it is left out of the fold",
                       name, len(present_train))
        return {}, None

    groups = cohort.groups.loc[present_train] if cohort.groups is not None else None
    folds = inner_folds(cohort.target.loc[present_train], cohort.task, n_folds=config.evaluation.inner_folds,
                        seed=seed, groups=groups)
    full = make_learner(name, modality_config, source, cohort.task, seed, volumes)
    full.fit(present_train, cohort.target)

    parts = []
    for j, (inner_train, inner_valid) in enumerate(folds):
        learner = make_learner(name, modality_config, source, cohort.task, seed + 101 * (j + 1), volumes)
        learner.fit(inner_train, cohort.target)
        # Each fitted network has its own embedding basis, and the head applies what it learns
        # from these out-of-fold embeddings to the full model's test embeddings. Map this
        # model's embeddings onto the full model's, fitted on its own training subjects only.
        mapping = align_embeddings(learner.predict(inner_train).embedding, full.predict(inner_train).embedding)
        valid = learner.predict(inner_valid)
        parts.append(dataclasses.replace(valid, embedding=mapping(valid.embedding)))
    oof = ModalityOutputs(
        subject_ids=pd.Index(np.concatenate([p.subject_ids.to_numpy() for p in parts])),
        embedding=np.concatenate([p.embedding for p in parts]),
        scores=np.concatenate([p.scores for p in parts]),
    )
    test = full.predict(present_test) if len(present_test) else ModalityOutputs(
        pd.Index([]), np.zeros((0, oof.embedding.shape[1]), np.float32), np.zeros((0, oof.scores.shape[1]), np.float32))
    return {"train": oof, "test": test}, full


def _load_volumes(cohort: Cohort, config: FusionConfig, timer: _Timer) -> dict[str, dict]:
    volumes: dict[str, dict] = {}
    for name, modality in config.modalities.items():
        if not isinstance(modality, ImagingConfig):
            continue
        source = cohort.sources[name]
        ids = cohort.present(name, cohort.subject_ids)
        with timer.stage(f"volumes:{name}"):
            arrays, flags = source.load_many(list(ids), progress=True)
        logger.info("imaging '%s': %d volumes, cache hits %d, misses %d", name, len(ids),
                    source.cache_hits, source.cache_misses)
        volumes[name] = {s: (arrays[i], flags[i]) for i, s in enumerate(ids)}
    return volumes


def make_outer_splits(config: FusionConfig, cohort: Cohort, *, repeats: int | None = None) -> pd.DataFrame:
    """Make the configured outer folds; leave-one-group-out ignores ``outer_folds``."""
    by_group = bool(config.groups and config.groups.leave_one_group_out)
    return make_splits(
        cohort.target, cohort.task, n_folds=None if by_group else config.evaluation.outer_folds,
        seed=config.seed, groups=cohort.groups, leave_one_group_out=by_group,
        repeats=config.evaluation.repeats if repeats is None else repeats,
    )


def load_or_make_splits(run_dir: Path, config: FusionConfig, cohort: Cohort) -> pd.DataFrame:
    """Read ``splits.csv`` of ``run_dir``, or make the outer folds and write it.

    Saved folds are reused as they are, so a resumed run keeps its folds; they must list
    exactly the cohort's subjects.
    """
    path = run_dir / "splits.csv"
    if path.is_file():
        splits = pd.read_csv(path, dtype={"subject_id": str}).set_index("subject_id", drop=False)
        if set(splits["subject_id"]) != set(cohort.subject_ids):
            raise DataError(f"{path} does not list the cohort's subjects; the inputs changed since it was written")
        return splits
    splits = make_outer_splits(config, cohort)
    write_csv(path, splits.reset_index(drop=True))
    return splits


def _fold_seed(config: FusionConfig, repeat: int, fold: int) -> int:
    return config.seed + 1000 * repeat + 10 * fold


def _run_fold(cohort: Cohort, config: FusionConfig, volumes: dict, repeat: int, fold: int,
              train_ids: pd.Index, test_ids: pd.Index, fold_dir: Path, storage: str, timer: _Timer) -> dict[str, Any]:
    task = cohort.task
    seed = _fold_seed(config, repeat, fold)
    modalities = cohort.modalities
    outputs: dict[str, dict[str, ModalityOutputs]] = {}
    learners: dict[str, UnimodalLearner] = {}
    dims: dict[str, tuple[int, int]] = {}

    for name in modalities:
        cached = fold_dir / f"outputs_{name}.npz"
        with timer.stage(f"encoder:{name}"):
            if cached.is_file():
                outputs[name] = _load_outputs(cached)
                logger.info("fold %d: reusing cached outputs of '%s'", fold, name)
            else:
                outputs[name], learner = _crossfit(cohort, config, name, volumes.get(name, {}), train_ids, test_ids, seed)
                if learner is not None:
                    learners[name] = learner
                    # The model is saved before the outputs, so cached outputs imply a saved model.
                    save_fold_learner(fold_dir, learner)
                    _save_outputs(cached, outputs[name])
        if outputs[name]:
            dims[name] = (outputs[name]["train"].embedding.shape[1], outputs[name]["train"].scores.shape[1])
        else:
            dims[name] = (1, task.output_dim)

    train_inputs = stack_outputs(train_ids, {n: o["train"] for n, o in outputs.items() if o}, modalities, dims)
    test_inputs = stack_outputs(test_ids, {n: o["test"] for n, o in outputs.items() if o}, modalities, dims)

    with timer.stage("tuning"):
        groups = cohort.groups.loc[train_ids] if cohort.groups is not None else None
        folds = inner_folds(cohort.target.loc[train_ids], task, n_folds=config.tuning.inner_folds,
                            seed=seed + 7, groups=groups)
        study = tune_head(train_inputs, cohort.target, task, heads=config.tuning.heads, folds=folds,
                          n_trials=config.tuning.n_trials, epochs=config.tuning.epochs,
                          patience=config.tuning.patience, seed=seed,
                          storage=storage, study_name=f"{config.name}-repeat{repeat}-fold{fold}")
        params = best_params(study)
        head = fit_head(train_inputs, cohort.target, task, params, epochs=config.tuning.epochs,
                        patience=config.tuning.patience, seed=seed)
        fused = predict_head(head, test_inputs)
        save_fold_head(fold_dir, head, params, modalities, dims)

    with timer.stage("attribution"), single_thread():
        contributions = modality_shapley(head, test_inputs, seed=seed)
        attributions = []
        for name in modalities:
            if not outputs[name] or not config_attributable(config, name):
                continue
            learner = learners.get(name)
            if learner is None and has_fold_learner(fold_dir, name):
                learner = load_fold_learner(fold_dir, name, config, cohort.sources[name], task, volumes.get(name, {}))
                logger.info("fold %d: loaded the saved model of '%s'", fold, name)
            elif learner is None:
                # Resumed fold of an older run without a saved model: refit the full learner.
                # Training is seeded, so it is the same model on the CPU.
                learner = make_learner(name, config.modalities[name], cohort.sources[name], task, seed, volumes.get(name, {}))
                learner.fit(cohort.present(name, train_ids), cohort.target)
                save_fold_learner(fold_dir, learner)
            attributions.append(feature_attributions(head, test_inputs, learner, n_steps=config.attribution.n_steps))

    predictions = pd.DataFrame(index=test_ids)
    predictions.index.name = "subject_id"
    _add_scores(predictions, "fused", fused, task)
    for name in modalities:
        scores = np.full((len(test_ids), task.output_dim), np.nan)
        if outputs[name]:
            test = outputs[name]["test"]
            scores[test_ids.get_indexer(test.subject_ids)] = test.scores
        _add_scores(predictions, name, scores if task.kind == "multiclass" else scores[:, 0], task)

    feature_frame = pd.concat(attributions, ignore_index=True) if attributions else pd.DataFrame(
        columns=["subject_id", "modality", "feature", "attribution"])
    return {
        "predictions": predictions,
        "contributions": contributions,
        "attributions": feature_frame,
        "tuning": {"repeat": repeat, "fold": fold, "best_params": params, "best_value": study.best_value,
                   "n_trials": len(study.trials)},
        "n_parameters": {n: learners[n].n_parameters for n in learners},
    }


def config_attributable(config: FusionConfig, name: str) -> bool:
    """Return True for modalities with feature attributions (omics and clinical, not imaging)."""
    return not isinstance(config.modalities[name], ImagingConfig)


def _add_scores(frame: pd.DataFrame, model: str, scores: np.ndarray, task: Task) -> None:
    if task.kind == "multiclass":
        for k in range(scores.shape[1]):
            frame[f"score_{model}_{k}"] = scores[:, k]
    else:
        frame[f"score_{model}"] = np.asarray(scores, dtype=float).reshape(-1)


def _scored_rows(predictions: pd.DataFrame, model: str, task: Task) -> tuple[pd.Index, np.ndarray]:
    """Return the subjects ``model`` scored (its modality present) and their scores."""
    if task.kind == "multiclass":
        scores = predictions[[c for c in predictions.columns if c.startswith(f"score_{model}_")]].to_numpy()
    else:
        scores = predictions[f"score_{model}"].to_numpy()
    present = ~np.isnan(scores.reshape(len(predictions), -1)).any(axis=1)
    return predictions.index[present], scores[present]


# Metrics bounded by [0, 1]; a t interval over few folds can cross the bounds otherwise.
_UNIT_INTERVAL_METRICS = {"auroc", "auprc", "balanced_accuracy", "brier", "accuracy", "auroc_macro",
                          "c_index", "c_index_uno"}


def _clip_interval(metric: str, summary: dict[str, float]) -> dict[str, float]:
    if metric in _UNIT_INTERVAL_METRICS:
        summary["ci_low"] = float(np.clip(summary["ci_low"], 0.0, 1.0))
        summary["ci_high"] = float(np.clip(summary["ci_high"], 0.0, 1.0))
    return summary


def _evaluate(cohort: Cohort, predictions: pd.DataFrame, models: list[str], seed: int) -> dict[str, Any]:
    task = cohort.task
    target = cohort.target
    result: dict[str, Any] = {"task": task.kind, "primary_metric": PRIMARY_METRIC[task.kind], "models": {}}
    for model in models:
        per_fold = []
        for (repeat, fold), part in predictions.groupby(["repeat", "fold"]):
            ids, scores = _scored_rows(part, model, task)
            train_target = target.drop(index=part.index)
            metrics = compute_metrics(task, target.loc[ids], scores, train_target=train_target)
            per_fold.append({"repeat": int(repeat), "fold": int(fold), "n": len(ids), **metrics})
        metric_names = [k for k in per_fold[0] if k not in ("repeat", "fold", "n")]
        summary = {m: _clip_interval(m, summarize_folds([row[m] for row in per_fold])) for m in metric_names}

        ids, scores = _scored_rows(predictions[predictions["repeat"] == 0], model, task)
        pooled = compute_metrics(task, target.loc[ids], scores, train_target=target)
        primary = PRIMARY_METRIC[task.kind]
        low, high = bootstrap_ci(task, target.loc[ids], scores, primary, seed=seed)
        result["models"][model] = {
            "kind": "fused" if model == "fused" else "unimodal",
            "n_subjects": len(ids),
            "per_fold": per_fold,
            "summary": summary,
            "pooled": pooled,
            "pooled_bootstrap_ci": {primary: [low, high]},
        }
    return result


def run(config: FusionConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
        report: bool = True) -> RunResult:
    """Run the main job for ``config`` into ``run_dir``; see the module docstring."""
    timer = _Timer()
    with timer.stage("preflight"):
        checked = preflight(config)
    checked.raise_for_errors()
    run_dir = prepare_run_dir(Path(run_dir), config, resume=resume, overwrite=overwrite)
    with _log_to(run_dir / "run.log"):
        logger.info("run '%s' started in %s", config.name, run_dir)
        write_config(run_dir, config)
        checked.log_warnings()

        cohort = checked.cohort
        write_json(run_dir / "alignment.json", cohort.alignment)

        splits = load_or_make_splits(run_dir, config, cohort)

        volumes = _load_volumes(cohort, config, timer)
        storage = config.tuning.storage or f"sqlite:///{(run_dir / 'optuna.db').resolve()}"

        fold_results = []
        fold_list = [(r, f, tr, te) for r in range(config.evaluation.repeats) for f, tr, te in iter_folds(splits, r)]
        timer.progress = tqdm(fold_list, desc="outer folds", unit="fold")
        for repeat, fold, train_ids, test_ids in timer.progress:
            fold_dir = run_dir / "folds" / f"repeat{repeat}-fold{fold}"
            done = fold_dir / "done.json"
            if done.is_file():
                logger.info("repeat %d fold %d already finished; reusing it", repeat, fold)
                fold_results.append(_read_fold(fold_dir))
                continue
            result = _run_fold(cohort, config, volumes, repeat, fold, train_ids, test_ids, fold_dir, storage, timer)
            _write_fold(fold_dir, result, repeat, fold)
            fold_results.append(_read_fold(fold_dir))

        timer.progress = None
        predictions = pd.concat([r["predictions"] for r in fold_results])
        predictions = cohort.target.join(predictions, how="inner")
        models = ["fused", *cohort.modalities]
        with timer.stage("evaluation"):
            metrics = _evaluate(cohort, predictions, models, config.seed)
        write_json(run_dir / "metrics.json", metrics)
        with timer.stage("bundle"):
            write_bundle(run_dir, config, cohort, splits, metrics)

        ordered = ["fold", "repeat", *cohort.target.columns]
        out = predictions[ordered + [c for c in predictions.columns if c not in ordered]].reset_index()
        write_csv(run_dir / "predictions.csv", out)
        contributions = pd.concat([r["contributions"] for r in fold_results])
        write_csv(run_dir / "modality_contributions.csv", contributions, index=True)
        write_csv(run_dir / "feature_attributions.csv", pd.concat([r["attributions"] for r in fold_results], ignore_index=True))
        write_json(run_dir / "tuning.json", {"per_fold": [r["tuning"] for r in fold_results]})

        report_path = None
        if report:
            with timer.stage("report"):
                from .report import write_report
                write_json(run_dir / "timings.json", timer.timings)
                report_path = write_report(run_dir)
        write_json(run_dir / "timings.json", timer.timings)
        logger.info("run '%s' finished; report: %s", config.name, report_path)
    return RunResult(run_dir=run_dir, metrics=metrics, report=report_path, timings=timer.timings)


def _write_fold(fold_dir: Path, result: dict[str, Any], repeat: int, fold: int) -> None:
    # Predictions and contributions are indexed by subject; attributions keep it as column 0.
    for key, position, index in (("predictions", 0, True), ("contributions", 0, True), ("attributions", 1, False)):
        frame = result[key].copy()
        frame.insert(position, "fold", fold)
        frame.insert(position + 1, "repeat", repeat)
        write_csv(fold_dir / f"{key}.csv", frame, index=index)
    # Written last: its presence marks the fold as finished.
    write_json(fold_dir / "done.json", {"tuning": result["tuning"], "n_parameters": result["n_parameters"]})


def _read_fold(fold_dir: Path) -> dict[str, Any]:
    import json

    read = lambda name: pd.read_csv(fold_dir / name, dtype={"subject_id": str})
    done = json.loads((fold_dir / "done.json").read_text())
    return {
        "predictions": read("predictions.csv").set_index("subject_id"),
        "contributions": read("contributions.csv").set_index("subject_id"),
        "attributions": read("attributions.csv"),
        "tuning": done["tuning"],
    }
