"""Omics modalities read from ``.h5ad`` files (``obs_names`` = subject ids)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._errors import DataError
from .._logging import logger
from ._tables import check_unique_ids

__all__ = ["OmicsSource"]

_OBS_NAMES_FIX = (
    "Make obs_names unique before saving, with AnnData.obs_names_make_unique() or "
    "anndata.concat(..., index_unique='-') when joining batches, and use the same suffixed "
    "ids in the other sources"
)


def _read_h5ad(path: Path, *, modality: str) -> ad.AnnData:
    if not path.is_file():
        raise DataError(f"omics modality '{modality}': file not found: {path}")
    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:  # noqa: BLE001 - h5py and anndata raise many unrelated types for a bad file
        logger.debug("reading %s failed", path, exc_info=True)
        raise DataError(
            f"omics modality '{modality}': {path} is not a readable .h5ad file "
            f"({type(exc).__name__}: {exc}); re-export it with AnnData.write_h5ad"
        ) from None
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise DataError(
            f"omics modality '{modality}': {path} is empty "
            f"({adata.n_obs} subjects x {adata.n_vars} features)"
        )
    return adata


def _matrix(adata: ad.AnnData, layer: str | None, *, modality: str, path: Path) -> tuple[np.ndarray, list[str]]:
    """Return the chosen matrix as dense float32 and its feature names."""
    if layer is None:
        matrix, names = adata.X, list(adata.var_names)
        source = ".X"
    elif layer == "raw":
        if adata.raw is None:
            raise DataError(f"omics modality '{modality}': layer 'raw' requested but {path} has no .raw")
        matrix, names = adata.raw.X, list(adata.raw.var_names)
        source = ".raw.X"
    else:
        if layer not in adata.layers:
            raise DataError(
                f"omics modality '{modality}': layer '{layer}' not in {path} "
                f"(layers: {list(adata.layers) or 'none'}); set 'layer' to one of them or to null for .X"
            )
        matrix, names = adata.layers[layer], list(adata.var_names)
        source = f".layers['{layer}']"
    if matrix is None:
        raise DataError(f"omics modality '{modality}': {path} has no {source} matrix")
    logger.info("omics '%s': using %s of %s (%d features)", modality, source, path.name, len(names))
    dense = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    try:
        return dense.astype(np.float32), names
    except (TypeError, ValueError) as exc:
        raise DataError(f"omics modality '{modality}': {path} {source} is not numeric: {exc}") from None


class OmicsSource:
    """One omics modality: one ``.h5ad`` file, or several whose features are concatenated.

    A subject belongs to a grouped modality only when it is in every file; the others are
    logged with their count. Feature names that repeat across files are prefixed with the
    file's stem (``cnv:EGFR``).

    Parameters
    ----------
    name
        Modality name used in messages, outputs and attributions.
    files
        ``.h5ad`` paths.
    layer
        ``None`` for ``.X`` (the default), ``"raw"`` for ``.raw.X``, or a key of ``.layers``.
    """

    def __init__(self, name: str, files: Sequence[str | Path], *, layer: str | None = None) -> None:
        self.name = name
        self.files = [Path(f) for f in files]
        self.layer = layer
        self.data = self._load()

    @property
    def subject_ids(self) -> pd.Index:
        return self.data.index

    @property
    def feature_names(self) -> list[str]:
        return list(self.data.columns)

    def _load(self) -> pd.DataFrame:
        frames = []
        for path in self.files:
            adata = _read_h5ad(path, modality=self.name)
            ids = pd.Index(adata.obs_names.astype(str).str.strip(), name="subject_id")
            check_unique_ids(ids, what=f"omics modality '{self.name}' ({path})", fix=_OBS_NAMES_FIX)
            matrix, names = _matrix(adata, self.layer, modality=self.name, path=path)
            self._check_finite(matrix, ids, names, path)
            frames.append((path, pd.DataFrame(matrix, index=ids, columns=names)))

        if len(frames) == 1:
            return frames[0][1]

        all_names = [name for _, frame in frames for name in frame.columns]
        repeated = {n for n in all_names if all_names.count(n) > 1}
        renamed = []
        for path, frame in frames:
            frame = frame.rename(columns={c: f"{path.stem}:{c}" for c in frame.columns if c in repeated})
            renamed.append(frame)
        joined = pd.concat(renamed, axis=1, join="inner")
        union = set().union(*(frame.index for frame in renamed))
        dropped = len(union) - len(joined)
        if dropped:
            logger.warning(
                "omics '%s': %d subject(s) are not in every file of the group and are treated as "
                "missing this modality", self.name, dropped,
            )
        return joined

    def _check_finite(self, matrix: np.ndarray, ids: pd.Index, names: list[str], path: Path) -> None:
        bad = ~np.isfinite(matrix)
        if not bad.any():
            return
        rows, cols = np.nonzero(bad)
        examples = ", ".join(f"{ids[r]}/{names[c]}" for r, c in zip(rows[:5], cols[:5]))
        raise DataError(
            f"omics modality '{self.name}': {path} has {int(bad.sum())} NaN or infinite value(s) "
            f"in {len(np.unique(rows))} subject(s) (e.g. subject/feature {examples}); "
            "impute or drop them before training"
        )
