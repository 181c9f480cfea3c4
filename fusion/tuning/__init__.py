"""Optuna tuning of the late-fusion head on cached encoder outputs."""

from ._search import best_params, suggest_params, tune_head

__all__ = ["best_params", "suggest_params", "tune_head"]
