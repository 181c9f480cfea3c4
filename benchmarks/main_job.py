"""Time every stage of the main job on a config (default: the TCGA-LGG fast preset).

Prints, for the machine it runs on:

- volume caching, cold (empty cache) and warm (second read);
- each encoder's cross-fitting, the tuning, the attribution and the report stages of a full run;
- peak resident memory of the process;
- the time of 100 tuning trials against one imaging-encoder training, both on fold 0.

Usage::

    python benchmarks/main_job.py [CONFIG] [--out DIR]

The run directory defaults to a fresh temporary folder, and the volume cache to an empty
folder inside it, so the cold figures are really cold.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from fusion import load_config
from fusion._pipeline import _load_outputs, run
from fusion.config import ImagingConfig
from fusion.data import build_cohort
from fusion.evaluation import inner_folds, iter_folds
from fusion.strategies import make_learner, stack_outputs
from fusion.tuning import tune_head

REPOSITORY = Path(__file__).resolve().parents[1]


def _machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")


def _time_volume_cache(config) -> dict[str, float]:
    cohort = build_cohort(config)
    timings = {}
    for name, modality in config.modalities.items():
        if not isinstance(modality, ImagingConfig):
            continue
        ids = list(cohort.present(name, cohort.subject_ids))
        for state in ("cold", "warm"):
            source = build_cohort(config).sources[name] if state == "warm" else cohort.sources[name]
            start = time.perf_counter()
            source.load_many(ids)
            timings[f"volumes:{name} ({state}, {len(ids)} subjects)"] = time.perf_counter() - start
    return timings


def _time_tuning_versus_imaging(config, run_dir: Path) -> dict[str, float]:
    cohort = build_cohort(config)
    splits = pd.read_csv(run_dir / "splits.csv", dtype={"subject_id": str})
    fold, train_ids, _ = next(iter_folds(splits, 0))
    fold_dir = run_dir / "folds" / f"repeat0-fold{fold}"
    outputs = {name: _load_outputs(fold_dir / f"outputs_{name}.npz")["train"] for name in cohort.modalities}
    dims = {n: (o.embedding.shape[1], o.scores.shape[1]) for n, o in outputs.items()}
    inputs = stack_outputs(train_ids, outputs, cohort.modalities, dims)
    folds = inner_folds(cohort.target.loc[train_ids], cohort.task, n_folds=config.tuning.inner_folds, seed=0)

    start = time.perf_counter()
    tune_head(inputs, cohort.target, cohort.task, heads=config.tuning.heads, folds=folds, n_trials=100,
              epochs=config.tuning.epochs, seed=0, storage="sqlite:///" + str(run_dir / "benchmark_tuning.db"),
              study_name="benchmark")
    tuning = time.perf_counter() - start

    result = {"100 tuning trials (fold 0)": tuning}
    for name, modality in config.modalities.items():
        if not isinstance(modality, ImagingConfig):
            continue
        source = cohort.sources[name]
        present = cohort.present(name, train_ids)
        arrays, flags = source.load_many(list(present))
        volumes = {s: (arrays[i], flags[i]) for i, s in enumerate(present)}
        learner = make_learner(name, modality, source, cohort.task, 0, volumes)
        start = time.perf_counter()
        learner.fit(present, cohort.target)
        result[f"one {name} encoder training ({len(present)} subjects)"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default=str(REPOSITORY / "examples" / "tcga_lgg_survival.yaml"))
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: a new temporary folder)")
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="fusion-benchmark-"))
    config = load_config(args.config)
    config = config.model_copy(update={"cache_dir": out / "volume-cache"})

    print(f"machine: {_machine()}")
    print(f"config: {args.config}")
    cache = _time_volume_cache(config)

    start = time.perf_counter()
    result = run(config, out / "run")
    total = time.perf_counter() - start

    print("\nstage timings of the run (seconds; volumes read from the warm cache):")
    for stage, seconds in result.timings.items():
        print(f"  {stage:<40} {seconds:8.1f}")
    print(f"  {'total wall time':<40} {total:8.1f}")
    print("\nvolume cache (seconds):")
    for stage, seconds in cache.items():
        print(f"  {stage:<40} {seconds:8.1f}")

    ratio = _time_tuning_versus_imaging(config, out / "run")
    print("\ntuning versus imaging-encoder training (seconds):")
    for stage, seconds in ratio.items():
        print(f"  {stage:<40} {seconds:8.1f}")
    imaging = [v for k, v in ratio.items() if k.startswith("one ")]
    if imaging:
        print(f"  ratio 100 trials / one imaging training: {ratio['100 tuning trials (fold 0)'] / imaging[0]:.2f}")

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    print(f"\npeak resident memory: {peak:.0f} MiB")
    print(f"run directory: {out / 'run'}")


if __name__ == "__main__":
    main()
