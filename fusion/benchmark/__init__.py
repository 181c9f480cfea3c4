"""Benchmark fusion strategies under one protocol: same folds, encoders and metrics.

See :func:`run_benchmark` and the :class:`Strategy` interface for strategies of your own.
"""

from ._builtin import builtin_strategies, resolve_strategies
from ._features import IMAGING_STATISTICS, FeatureMatrix, imaging_statistics
from ._interface import FoldContext, Strategy
from ._runner import BenchmarkResult, run_benchmark

__all__ = [
    "IMAGING_STATISTICS",
    "BenchmarkResult",
    "FeatureMatrix",
    "FoldContext",
    "Strategy",
    "builtin_strategies",
    "imaging_statistics",
    "resolve_strategies",
    "run_benchmark",
]
