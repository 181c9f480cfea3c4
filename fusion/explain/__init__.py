"""Modality-level (Shapley) and feature-level (Captum) attributions."""

from ._features import feature_attributions
from ._modalities import MAX_EXACT_MODALITIES, eval_mode, modality_shapley

__all__ = ["MAX_EXACT_MODALITIES", "eval_mode", "feature_attributions", "modality_shapley"]
