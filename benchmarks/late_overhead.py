"""Measure what the five late-fusion strategies add to the encoders' time in ``fusion benchmark``.

Late strategies read the cached, cross-fitted encoder outputs, so adding them to a
benchmark should cost a small fraction of training the encoders. Modes:

    python benchmarks/late_overhead.py CONFIG [--out DIR]
        runs a benchmark of the unimodal and late strategies only (no robustness scenarios)
        into DIR (default: a temporary folder, so the encoders are trained afresh);

    python benchmarks/late_overhead.py --from-benchmark DIR
        reads the timings of a finished ``fusion benchmark`` directory;

    python benchmarks/late_overhead.py CONFIG --imaging-size 64 --imaging-epochs 15 [--out DIR]
        runs the same benchmark with every imaging modality at that volume size (a cube) and
        number of training epochs, for example the library's defaults of 64 and 15;

    python benchmarks/late_overhead.py CONFIG --from-run DIR [--out OUT]
        runs the late strategies on the encoder outputs and Optuna studies of the finished
        benchmark DIR, as ``fusion benchmark --from-run`` does, and compares them with the
        encoder times DIR recorded.

Every mode prints the encoders' cross-fitting seconds, each late strategy's fit and predict
seconds over all folds (full data only), and their ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

LATE = ["late:mean", "late:weighted_mean", "late:stacking", "late:tuned", "late:gating"]


def _run(config_path: Path, out: Path | None, source: Path | None, imaging_size: int | None,
         imaging_epochs: int | None) -> Path:
    from fusion import load_config
    from fusion.benchmark import run_benchmark
    from fusion.config import ImagingConfig

    config = load_config(config_path)
    for modality in config.modalities.values():
        if not isinstance(modality, ImagingConfig):
            continue
        if imaging_size is not None:
            modality.spatial_size = (imaging_size,) * 3
        if imaging_epochs is not None:
            modality.training.epochs = imaging_epochs
    config.benchmark.strategies = ["unimodal", "late"]
    config.benchmark.missing_fractions = []
    config.benchmark.test_without_each_modality = False
    directory = out or Path(tempfile.mkdtemp(prefix="late-overhead-")) / "benchmark"
    run_benchmark(config, directory, overwrite=True, report=False, from_run=source)
    return directory


def _overhead(directory: Path) -> pd.DataFrame:
    summary = json.loads((directory / "benchmark.json").read_text())
    encoders = summary["encoder_seconds"]
    if not encoders:
        sys.exit(f"{directory}: the encoder outputs were copied from another run, so their time is unknown")
    encoder_total = sum(encoders.values())
    runs = pd.DataFrame(summary["strategy_runs"])
    late = runs[runs["strategy"].isin(LATE)]
    per_strategy = late.groupby("strategy")[["fit_seconds", "predict_seconds"]].sum()
    per_strategy["seconds"] = per_strategy.sum(axis=1)
    per_strategy["share_of_encoders"] = per_strategy["seconds"] / encoder_total
    print(f"benchmark: {directory} ({summary['name']}, {summary['n_subjects']} subjects, "
          f"{len(summary['folds'])} outer folds)")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print("encoder cross-fitting seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in encoders.items())
          + f"; total {encoder_total:.1f}")
    print(per_strategy.reindex(LATE).round(3).to_string())
    total = per_strategy["seconds"].sum()
    print(f"five late strategies: {total:.1f} s = {100 * total / encoder_total:.1f}% of the encoders' time")
    fixed = per_strategy.drop(index="late:tuned", errors="ignore")["seconds"].sum()
    print(f"without the Optuna-tuned head: {fixed:.1f} s = {100 * fixed / encoder_total:.1f}%")
    return per_strategy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", type=Path, help="YAML config to benchmark")
    parser.add_argument("--out", type=Path, default=None, help="benchmark directory (default: a temporary one)")
    parser.add_argument("--from-benchmark", type=Path, default=None, help="read a finished benchmark directory")
    parser.add_argument("--from-run", type=Path, default=None,
                        help="with CONFIG: reuse this benchmark directory's encoder outputs, encoder times and "
                             "Optuna studies, so only the late strategies run")
    parser.add_argument("--imaging-size", type=int, default=None,
                        help="with CONFIG: train every imaging encoder on volumes of this size (voxels per axis)")
    parser.add_argument("--imaging-epochs", type=int, default=None,
                        help="with CONFIG: train every imaging encoder for this many epochs")
    args = parser.parse_args()
    if (args.config is None) == (args.from_benchmark is None):
        parser.error("give either CONFIG or --from-benchmark DIR")
    directory = args.from_benchmark or _run(args.config, args.out, args.from_run, args.imaging_size,
                                            args.imaging_epochs)
    _overhead(directory)


if __name__ == "__main__":
    main()
