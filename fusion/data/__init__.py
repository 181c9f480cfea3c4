"""Sources per modality and the cohort that aligns them by subject id."""

from ._cohort import ClinicalSource, Cohort, build_cohort
from ._imaging import ImagingSettings, ImagingSource
from ._omics import OmicsSource
from ._tables import read_table
from ._volumes import (
    CacheMemoryEstimate,
    VolumeHeader,
    cache_memory_estimate,
    dicom_series,
    read_volume,
    volume_header,
)

__all__ = [
    "CacheMemoryEstimate",
    "ClinicalSource",
    "Cohort",
    "ImagingSettings",
    "ImagingSource",
    "OmicsSource",
    "VolumeHeader",
    "build_cohort",
    "cache_memory_estimate",
    "dicom_series",
    "read_table",
    "read_volume",
    "volume_header",
]
