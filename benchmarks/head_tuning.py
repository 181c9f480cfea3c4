"""Time the Optuna tuning of the fusion head with and without early stopping.

Reads the cached, cross-fitted encoder outputs of a finished ``fusion benchmark`` (or
``fusion run``) directory and tunes the head of the given outer folds twice: training
every head for ``tuning.epochs`` (``patience`` 0), and with the config's
``tuning.patience``. Each study lives in a temporary SQLite file, so the run directory is
not changed. Prints the seconds and the best inner score of each.

    python benchmarks/head_tuning.py CONFIG RUN_DIR [--folds 0 1]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from fusion import load_config
from fusion._pipeline import _fold_seed, _load_outputs
from fusion.data._cohort import build_cohort
from fusion.evaluation import inner_folds
from fusion.strategies._late import stack_outputs
from fusion.tuning import tune_head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="YAML config of the run")
    parser.add_argument("run_dir", type=Path, help="finished benchmark or run directory of that config")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1], help="outer folds of repeat 0 to tune")
    args = parser.parse_args()

    config = load_config(args.config)
    cohort = build_cohort(config)
    splits = pd.read_csv(args.run_dir / "splits.csv", dtype={"subject_id": str})
    splits = splits[splits["repeat"] == 0] if "repeat" in splits else splits
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {config.tuning.n_trials} trials, "
          f"{config.tuning.inner_folds} inner folds, at most {config.tuning.epochs} epochs per head")

    storage_dir = Path(tempfile.mkdtemp(prefix="head-tuning-"))
    for fold in args.folds:
        fold_dir = args.run_dir / "folds" / f"repeat0-fold{fold}"
        train_ids = pd.Index(splits.loc[splits["fold"] != fold, "subject_id"])
        outputs = {m: _load_outputs(fold_dir / f"outputs_{m}.npz") for m in cohort.modalities}
        dims = {m: (o["train"].embedding.shape[1], o["train"].scores.shape[1]) for m, o in outputs.items()}
        inputs = stack_outputs(train_ids, {m: o["train"] for m, o in outputs.items()}, cohort.modalities, dims)
        seed = _fold_seed(config, 0, fold)
        folds = inner_folds(cohort.target.loc[train_ids], cohort.task, n_folds=config.tuning.inner_folds,
                            seed=seed + 7)
        for patience in (0, config.tuning.patience):
            start = time.perf_counter()
            study = tune_head(inputs, cohort.target, cohort.task, heads=config.tuning.heads, folds=folds,
                              n_trials=config.tuning.n_trials, epochs=config.tuning.epochs, patience=patience,
                              seed=seed, storage=f"sqlite:///{storage_dir / 'studies.db'}",
                              study_name=f"fold{fold}-patience{patience}")
            seconds = time.perf_counter() - start
            print(f"fold {fold}, patience {patience:>2}: {seconds:6.1f} s, best inner score {study.best_value:.4f}")


if __name__ == "__main__":
    main()
