"""Fold-fitted preprocessing per modality; fitted state is JSON-serialisable."""

from ._clinical import ClinicalPreprocessor, infer_column_types
from ._omics import OmicsPreprocessor

__all__ = ["ClinicalPreprocessor", "OmicsPreprocessor", "infer_column_types"]
