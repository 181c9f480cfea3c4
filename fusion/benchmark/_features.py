"""Fold-fitted feature matrices for early fusion and the penalized linear baselines.

Each modality becomes a block of columns:

- omics: the modality's own preprocessing (``OmicsPreprocessor``: constant features
  dropped, top-variance selection, scaling, and the PCA projection when configured);
- clinical: ``ClinicalPreprocessor``'s standardised continuous columns, and its category
  codes one-hot encoded by scikit-learn's ``OneHotEncoder`` (unseen levels get all zeros);
- imaging: radiomics-style first-order statistics of every sequence inside the
  foreground (the non-zero voxels of the cached, normalised volume), standardised.

Every fitted statistic comes from the training subjects of the fold that have the
modality. A subject without a modality gets zeros in its block, which is the training
mean of every standardised column, and 1 in the block's ``<modality>:missing`` column.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ..config import ClinicalConfig, FusionConfig, ImagingConfig
from ..data._cohort import Cohort
from ..preprocessing._clinical import ClinicalPreprocessor
from ..preprocessing._omics import OmicsPreprocessor

__all__ = ["IMAGING_STATISTICS", "FeatureMatrix", "imaging_statistics"]

IMAGING_STATISTICS = ("mean", "sd", "p10", "p25", "p50", "p75", "p90", "skewness", "kurtosis")
"""First-order statistics computed per sequence inside the foreground."""


def imaging_statistics(volumes: dict[str, tuple[np.ndarray, np.ndarray]], sequences: list[str]) -> pd.DataFrame:
    """Return per-subject intensity statistics of cached volumes.

    Parameters
    ----------
    volumes
        Subject id to ``(volume (C, D, H, W), flags (C,))`` as cached by the imaging source.
    sequences
        Names of the ``C`` channels, used in the column names.

    Returns
    -------
    pandas.DataFrame
        Indexed by subject id: ``<sequence>:<statistic>`` for every statistic of
        :data:`IMAGING_STATISTICS` (NaN for a sequence that was not acquired) and
        ``foreground_fraction``. The statistics hold no fitted state, so computing them
        once for the whole cohort leaks nothing between folds.
    """
    rows = {}
    for subject_id, (volume, flags) in volumes.items():
        foreground = np.any(volume != 0, axis=0)                      # (D, H, W)
        row = {"foreground_fraction": float(foreground.mean())}
        for channel, sequence in enumerate(sequences):
            values = volume[channel][foreground].astype(np.float64)
            if flags[channel] == 0 or values.size < 2:
                row.update({f"{sequence}:{name}": np.nan for name in IMAGING_STATISTICS})
                continue
            p10, p25, p50, p75, p90 = np.percentile(values, [10, 25, 50, 75, 90])
            row.update({
                f"{sequence}:mean": values.mean(), f"{sequence}:sd": values.std(),
                f"{sequence}:p10": p10, f"{sequence}:p25": p25, f"{sequence}:p50": p50,
                f"{sequence}:p75": p75, f"{sequence}:p90": p90,
                f"{sequence}:skewness": float(stats.skew(values)),
                f"{sequence}:kurtosis": float(stats.kurtosis(values)),
            })
        rows[subject_id] = row
    return pd.DataFrame.from_dict(rows, orient="index")


class FeatureMatrix:
    """Per-modality feature blocks fitted on one fold's training subjects.

    Parameters
    ----------
    cohort, config
        The cohort and run configuration (for each modality's preprocessing options).
    imaging_tables
        Imaging modality name to the output of :func:`imaging_statistics`.
    """

    def __init__(self, cohort: Cohort, config: FusionConfig, imaging_tables: dict[str, pd.DataFrame]) -> None:
        self.cohort = cohort
        self.config = config
        self.imaging_tables = imaging_tables

    def fit(self, subject_ids: pd.Index, availability: pd.DataFrame) -> FeatureMatrix:
        """Fit every block on the subjects of ``subject_ids`` that have the modality."""
        self.fitted_: dict[str, object] = {}
        self.columns_: dict[str, list[str]] = {}
        for name in self.cohort.modalities:
            present = subject_ids[availability.loc[subject_ids, name].to_numpy(bool)]
            if len(present) < 2:
                continue
            self.fitted_[name] = self._fit_block(name, present)
            self.columns_[name] = [f"{name}:{c}" for c in self._transform_block(name, present[:1]).columns]
        return self

    def _fit_block(self, name: str, ids: pd.Index) -> object:
        modality = self.config.modalities[name]
        source = self.cohort.sources[name]
        if isinstance(modality, ImagingConfig):
            table = self.imaging_tables[name].loc[ids]
            return make_pipeline(SimpleImputer(strategy="mean", keep_empty_features=True),
                                 StandardScaler()).fit(table)
        if isinstance(modality, ClinicalConfig):
            preprocessor = ClinicalPreprocessor(categorical=source.categorical, continuous=source.continuous,
                                                impute=modality.impute, modality=name).fit(source.table.loc[ids])
            _, codes = preprocessor.transform(source.table.loc[ids])
            encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(codes)
            return preprocessor, encoder
        options = modality.preprocessing
        return OmicsPreprocessor(scale=options.scale, n_top_features=options.n_top_features,
                                 pca_components=options.pca_components, modality=name).fit(source.data.loc[ids])

    def _transform_block(self, name: str, ids: pd.Index) -> pd.DataFrame:
        modality = self.config.modalities[name]
        source = self.cohort.sources[name]
        fitted = self.fitted_[name]
        if isinstance(modality, ImagingConfig):
            table = self.imaging_tables[name].loc[ids]
            return pd.DataFrame(fitted.transform(table), index=ids, columns=table.columns)
        if isinstance(modality, ClinicalConfig):
            preprocessor, encoder = fitted
            continuous, codes = preprocessor.transform(source.table.loc[ids])
            names = [str(c) for c in source.continuous] + [
                f"{column}={level}" for column, levels in zip(source.categorical, encoder.categories_)
                for level in levels
            ]
            return pd.DataFrame(np.hstack([continuous, encoder.transform(codes)]), index=ids, columns=names)
        values = fitted.transform_features(source.data.loc[ids])
        if fitted.components_ is not None:
            values = (values - fitted.pca_mean_) @ fitted.components_          # (n, k)
            return pd.DataFrame(values, index=ids, columns=[f"PC{i + 1}" for i in range(values.shape[1])])
        return pd.DataFrame(values, index=ids, columns=fitted.features_)

    def transform(self, subject_ids: pd.Index, availability: pd.DataFrame,
                  modalities: list[str] | None = None) -> pd.DataFrame:
        """Return the feature matrix of ``subject_ids`` for ``modalities`` (default all fitted).

        Blocks of unavailable modalities hold zeros and their ``<modality>:missing`` column 1.
        """
        blocks = []
        for name in modalities or list(self.fitted_):
            if name not in self.fitted_:
                continue
            block = pd.DataFrame(0.0, index=subject_ids, columns=self.columns_[name])
            present = subject_ids[availability.loc[subject_ids, name].to_numpy(bool)]
            if len(present):
                block.loc[present] = self._transform_block(name, present).to_numpy()
            block[f"{name}:missing"] = (~subject_ids.isin(present)).astype(float)
            blocks.append(block)
        return pd.concat(blocks, axis=1)
