"""Model bundles: the trained models of a run, saved without pickled objects, for prediction."""

from ._predict import DEFAULT_MAX_MISSING_FRACTION, Bundle, load_bundle
from ._store import BUNDLE_FORMAT_VERSION, library_versions

__all__ = ["BUNDLE_FORMAT_VERSION", "DEFAULT_MAX_MISSING_FRACTION", "Bundle", "library_versions", "load_bundle"]
