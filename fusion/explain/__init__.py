"""Modality-level (Shapley), feature-level and voxel-level (Captum) attributions."""

from ._features import feature_attributions, integrated_gradients
from ._modalities import MAX_EXACT_MODALITIES, eval_mode, modality_shapley
from ._voxels import SourceGeometry, to_source_geometry, voxel_attributions

__all__ = ["MAX_EXACT_MODALITIES", "SourceGeometry", "eval_mode", "feature_attributions",
           "integrated_gradients", "modality_shapley", "to_source_geometry", "voxel_attributions"]
