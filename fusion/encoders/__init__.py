"""Encoders: every one maps a batch of subjects to an ``(n, embedding_dim)`` embedding."""

from ._clinical import ClinicalEncoder
from ._imaging import ImagingEncoder
from ._omics import OmicsEncoder

__all__ = ["ClinicalEncoder", "ImagingEncoder", "OmicsEncoder"]
