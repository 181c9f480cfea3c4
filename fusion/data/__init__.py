"""Sources per modality and the cohort that aligns them by subject id."""

from ._cohort import ClinicalSource, Cohort, build_cohort
from ._imaging import ImagingSettings, ImagingSource
from ._omics import OmicsSource
from ._tables import read_table

__all__ = ["ClinicalSource", "Cohort", "ImagingSettings", "ImagingSource", "OmicsSource", "build_cohort", "read_table"]
