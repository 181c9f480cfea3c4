"""Fold-fitted omics preprocessing with scanpy.

``fit`` receives the training subjects of one fold only, and scanpy fits the statistics:
``sc.pp.scale`` stores each feature's mean and standard deviation in ``var``, and
``sc.pp.pca`` stores the loadings in ``varm['PCs']``. ``transform_features`` applies those
stored statistics to any subjects, so held-out subjects never influence them.
"""

from __future__ import annotations

import warnings
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

from .._errors import DataError, DataWarning
from .._logging import logger

__all__ = ["OmicsPreprocessor"]


class OmicsPreprocessor:
    """Drop constant features, keep the most variable ones, scale, and optionally PCA.

    Parameters
    ----------
    scale
        Centre each feature and divide by its training standard deviation (``sc.pp.scale``).
    n_top_features
        Keep this many features with the highest training variance; None keeps all.
        Variance ranking is used because scanpy's highly-variable-gene flavours assume
        expression counts, and this step also serves copy number and mutation calls.
    pca_components
        Project onto this many principal components (``sc.pp.pca``); None skips PCA.
    modality
        Name used in log messages and warnings.
    """

    def __init__(self, *, scale: bool = True, n_top_features: int | None = None,
                 pca_components: int | None = None, modality: str = "omics") -> None:
        self.scale = scale
        self.n_top_features = n_top_features
        self.pca_components = pca_components
        self.modality = modality

    def fit(self, data: pd.DataFrame) -> OmicsPreprocessor:
        """Fit on ``data`` (training subjects x features)."""
        values = data.to_numpy(dtype=np.float32)
        variance = values.var(axis=0)
        constant = variance <= 1e-12
        if constant.any():
            logger.info("omics '%s': %d of %d feature(s) are constant (zero variance) in the %d "
                        "training subjects and are dropped", self.modality, int(constant.sum()),
                        len(constant), len(values))
        keep = np.flatnonzero(~constant)
        if self.n_top_features is not None:
            if self.n_top_features >= len(keep):
                warnings.warn(
                    f"omics '{self.modality}': n_top_features={self.n_top_features} but only "
                    f"{len(keep)} non-constant features exist; all are kept",
                    DataWarning, stacklevel=2,
                )
            else:
                ranked = keep[np.argsort(-variance[keep], kind="stable")]
                keep = np.sort(ranked[: self.n_top_features])
        if len(keep) == 0:
            raise DataError(
                f"omics '{self.modality}': all {len(constant)} features are constant in the "
                f"{len(values)} training subject(s), so none can be used; a fold needs at least "
                "2 training subjects with differing values. Use fewer folds or check the matrix"
            )
        self.features_ = [str(data.columns[i]) for i in keep]
        # Value given to a feature that new data lacks: its training mean (0 after scaling).
        self.fill_values_ = values[:, keep].mean(axis=0, dtype=np.float64).astype(np.float32)

        adata = ad.AnnData(values[:, keep].copy())
        adata.var_names = self.features_
        if self.scale:
            sc.pp.scale(adata, zero_center=True)
            self.mean_ = adata.var["mean"].to_numpy(np.float32)
            self.std_ = adata.var["std"].to_numpy(np.float32)
        else:
            self.mean_ = np.zeros(len(keep), np.float32)
            self.std_ = np.ones(len(keep), np.float32)

        self.components_ = None
        if self.pca_components is not None:
            n_components = min(self.pca_components, adata.n_obs - 1, adata.n_vars - 1)
            if n_components < self.pca_components:
                warnings.warn(
                    f"omics '{self.modality}': pca_components={self.pca_components} reduced to "
                    f"{n_components} ({adata.n_obs} training subjects, {adata.n_vars} features)",
                    DataWarning, stacklevel=2,
                )
            sc.pp.pca(adata, n_comps=n_components, zero_center=True, random_state=0)
            # Scaled data are centred already; keep the PCA centre for unscaled data.
            self.pca_mean_ = np.asarray(adata.X.mean(axis=0), dtype=np.float32)
            self.components_ = np.ascontiguousarray(adata.varm["PCs"], dtype=np.float32)  # (features, k)
        return self

    def transform_features(self, data: pd.DataFrame) -> np.ndarray:
        """Return the selected, scaled features, ``(n, len(features_))`` float32.

        These are the inputs feature attributions are reported on (names ``features_``).
        Missing values (NaN, as left by reindexing new data to the training features) are
        replaced with the feature's training mean, ``fill_values_``.
        """
        values = data[self.features_].to_numpy(dtype=np.float32)
        missing = np.isnan(values)
        if missing.any():
            values = np.where(missing, self.fill_values_, values)
        return (values - self.mean_) / self.std_

    @property
    def output_dim(self) -> int:
        return len(self.features_) if self.components_ is None else self.components_.shape[1]

    def get_state(self) -> dict[str, Any]:
        """Return the fitted state as JSON-serialisable values."""
        return {
            "scale": self.scale,
            "features": self.features_,
            "fill_values": self.fill_values_.tolist(),
            "mean": self.mean_.tolist(),
            "std": self.std_.tolist(),
            "components": None if self.components_ is None else self.components_.tolist(),
            "pca_mean": None if self.components_ is None else self.pca_mean_.tolist(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], *, modality: str = "omics") -> OmicsPreprocessor:
        """Rebuild a fitted preprocessor from :meth:`get_state` output.

        Float32 values round-trip exactly through JSON, so the rebuilt preprocessor
        transforms data bit for bit as the fitted one did.
        """
        expected = ("scale", "features", "fill_values", "mean", "std", "components", "pca_mean")
        absent = [key for key in expected if key not in state]
        if absent:
            raise DataError(f"omics '{modality}': the saved preprocessing state lacks the keys {absent}")
        components = state["components"]
        preprocessor = cls(scale=bool(state["scale"]), modality=modality,
                           pca_components=None if components is None else len(components[0]))
        preprocessor.features_ = [str(name) for name in state["features"]]
        preprocessor.fill_values_ = np.asarray(state["fill_values"], dtype=np.float32)
        preprocessor.mean_ = np.asarray(state["mean"], dtype=np.float32)
        preprocessor.std_ = np.asarray(state["std"], dtype=np.float32)
        n_features = len(preprocessor.features_)
        for key in ("fill_values_", "mean_", "std_"):
            if getattr(preprocessor, key).shape != (n_features,):
                raise DataError(
                    f"omics '{modality}': the saved preprocessing state has {n_features} features "
                    f"but {getattr(preprocessor, key).shape[0]} values in '{key[:-1]}'"
                )
        preprocessor.components_ = None
        if components is not None:
            preprocessor.components_ = np.asarray(components, dtype=np.float32)
            preprocessor.pca_mean_ = np.asarray(state["pca_mean"], dtype=np.float32)
        return preprocessor
