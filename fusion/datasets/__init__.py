"""Datasets shipped with fusion: a synthetic demo cohort with known ground truth."""

from ._synthetic import DemoCohort, make_demo_cohort

__all__ = ["DemoCohort", "make_demo_cohort"]
