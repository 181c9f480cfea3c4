"""Imaging source: per-subject 3D volumes read with MONAI, on one grid, cached on disk.

A manifest table lists, per subject, one file per sequence (a column each) and optionally a
mask file. :meth:`ImagingSource.load` turns one subject's files into a float32 array of shape
``(C, *spatial_size)``, one channel per sequence, with these steps in this order:

1. **Read.** :func:`fusion.data.read_volume` (MONAI ``LoadImage``) reads NIfTI (``.nii``,
   ``.nii.gz``), NRRD (``.nrrd``) or a folder holding one DICOM series into a ``MetaTensor`` of
   shape ``(1, X, Y, Z)`` that carries the affine. A file with more than one channel, a 4D
   file, a folder with several DICOM series or a file without three spatial dimensions raises
   :class:`~fusion._errors.DataError`.
2. **Resample onto the reference grid.** The reference sequence (``settings.reference``,
   default the first sequence) defines the subject's grid. Every other sequence is resampled
   onto it through the two affines with MONAI ``ResampleToMatch`` (bilinear, zero outside the
   source's field of view), so the voxel indices of the files need not agree. The mask goes the
   same way with nearest-neighbour interpolation only, then every label above 0 counts as
   foreground. A subject without the reference sequence uses the grid of its first acquired
   sequence instead, and the constructor warns about it.
3. **Crop (optional).** With ``crop_margin`` set, MONAI ``CropForegroundd`` crops all channels
   to the mask's bounding box plus ``crop_margin`` voxels of the reference grid on each side,
   clipped at the volume's edges. A subject whose mask cell is empty, or whose mask has no
   foreground on the reference grid, is not cropped and a :class:`~fusion._errors.DataWarning`
   names it.
4. **Resize to ``spatial_size``.** ``resize_mode="fit"`` (the default) scales the volume by one
   factor in millimetres on every axis, so that its physical extent just fits ``spatial_size``,
   then pads it symmetrically with zeros to ``spatial_size`` with MONAI ``SpatialPad``. Anatomy
   and tumour shape keep their proportions and the output voxels are isotropic, while
   stretching to a cube would distort each subject differently. ``resize_mode="stretch"``
   scales each axis to ``spatial_size`` by its own factor. Both use MONAI ``Resize``: area
   averaging on axes that shrink (no aliasing), then trilinear on axes that grow.
5. **Normalise.** MONAI ``NormalizeIntensity`` runs per sequence and per volume.
   ``"zscore_nonzero"`` subtracts the mean and divides by the standard deviation of the nonzero
   voxels only, so background and padding stay 0. ``"zscore"`` uses all voxels, padding
   included, and ``"none"`` keeps the read intensities. The statistics come from the one volume
   being normalised, so they carry no information across subjects or folds.

A sequence that was not acquired (an empty manifest cell) becomes a channel of zeros with flag
0. It is never filled from another sequence, because a copied channel would look acquired to an
encoder, and the flag lets a model tell "not acquired" from "dark".

The arrays after step 5 are cached in ``cache_dir`` as ``.npy`` files named by a SHA-256 key over
the absolute file paths, file sizes, modification times (ns), ``settings.key()``, the MONAI
version and a cache format version. A second source on the same files and settings reads the
cache and does not decode again, and touching a file or changing a setting selects a new key.
Writes go to a temporary file in the same folder followed by ``os.replace``, so a killed process
leaves at most a stray ``*.tmp`` file, never a partial cache entry under a key. A cache file that
cannot be read back with the expected shape and dtype is deleted, logged and rebuilt.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import numbers
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import monai
import numpy as np
import pandas as pd
import torch
from monai.data import MetaTensor
from monai.transforms import (
    CropForegroundd,
    NormalizeIntensity,
    ResampleToMatch,
    Resize,
    SpatialPad,
)
from tqdm.auto import tqdm

from fusion._errors import ConfigError, DataError, DataWarning
from fusion._logging import logger

from ._volumes import check_cache_memory, read_volume

__all__ = ["ImagingSettings", "ImagingSource"]

# Bump when the cached array layout or the processing steps change, so old entries stop matching.
CACHE_FORMAT_VERSION = 1

NORMALIZE_OPTIONS = ("zscore_nonzero", "zscore", "none")
RESIZE_OPTIONS = ("fit", "stretch")

# At most this many subjects, files or ids are listed in one message.
MAX_LISTED = 5


def _closest(value: str, options: Sequence[str]) -> str:
    """Return " Did you mean 'x'?" for the option closest to ``value``, or an empty string."""
    matches = difflib.get_close_matches(value, list(options), n=1)
    return f" Did you mean {matches[0]!r}?" if matches else ""


def _count(number: int, noun: str) -> str:
    """Return "1 subject" or "3 subjects"."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _is_integer(value: object) -> bool:
    """Return True for Python and NumPy integers, False for bool and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _listed(items: Sequence[object]) -> str:
    """Join the first ``MAX_LISTED`` items and append how many more there are."""
    shown = ", ".join(str(item) for item in items[:MAX_LISTED])
    if len(items) > MAX_LISTED:
        shown += f" and {len(items) - MAX_LISTED} more"
    return shown


@dataclasses.dataclass(frozen=True)
class ImagingSettings:
    """Processing settings of one imaging modality; see the module docstring for the steps.

    Parameters
    ----------
    sequences
        Manifest columns holding one file per sequence, one output channel each, in this order.
    mask
        Manifest column holding the mask file, or None. The mask is only used for cropping.
    reference
        Sequence whose grid every other sequence and the mask are resampled onto.
        Default: the first sequence.
    crop_margin
        Voxels of the reference grid added on each side of the mask's bounding box before
        cropping, or None to crop nothing. Requires ``mask``.
    spatial_size
        Output size ``(X, Y, Z)`` in voxels.
    resize_mode
        ``"fit"``: scale by one factor in mm on every axis and pad with zeros to
        ``spatial_size``. ``"stretch"``: scale each axis to ``spatial_size`` on its own.
    normalize
        ``"zscore_nonzero"``, ``"zscore"`` or ``"none"``, per sequence and per volume.
    """

    sequences: tuple[str, ...]
    mask: str | None = None
    reference: str | None = None
    crop_margin: int | None = None
    spatial_size: tuple[int, int, int] = (64, 64, 64)
    resize_mode: Literal["fit", "stretch"] = "fit"
    normalize: Literal["zscore_nonzero", "zscore", "none"] = "zscore_nonzero"

    def __post_init__(self) -> None:
        # Lists from a config file become tuples, so the settings stay hashable.
        object.__setattr__(self, "sequences", tuple(self.sequences))
        object.__setattr__(self, "spatial_size", tuple(self.spatial_size))

        if not self.sequences:
            msg = (
                "imaging settings: sequences is empty. "
                "List at least one manifest column, e.g. ['flair']."
            )
            raise ConfigError(msg)
        duplicated = sorted({name for name in self.sequences if self.sequences.count(name) > 1})
        if duplicated:
            msg = f"imaging settings: sequences lists {duplicated} more than once. List each once."
            raise ConfigError(msg)
        if self.mask is not None and self.mask in self.sequences:
            msg = (
                f"imaging settings: mask column {self.mask!r} is also listed in sequences. "
                "Remove it from sequences, because a mask is not an image channel."
            )
            raise ConfigError(msg)
        if self.reference is not None and self.reference not in self.sequences:
            msg = (
                f"imaging settings: reference {self.reference!r} is not one of the sequences "
                f"{list(self.sequences)}.{_closest(self.reference, self.sequences)}"
            )
            raise ConfigError(msg)

        if self.crop_margin is not None:
            if self.mask is None:
                msg = (
                    "imaging settings: crop_margin is set but mask is None. "
                    "Name the mask column, or set crop_margin to None."
                )
                raise ConfigError(msg)
            if not _is_integer(self.crop_margin) or self.crop_margin < 0:
                msg = (
                    "imaging settings: crop_margin must be an integer >= 0 (voxels), "
                    f"got {self.crop_margin!r}."
                )
                raise ConfigError(msg)
            object.__setattr__(self, "crop_margin", int(self.crop_margin))

        sizes_valid = all(_is_integer(size) and size > 0 for size in self.spatial_size)
        if len(self.spatial_size) != 3 or not sizes_valid:
            msg = (
                "imaging settings: spatial_size must be three positive integers (X, Y, Z), "
                f"got {self.spatial_size!r}."
            )
            raise ConfigError(msg)
        object.__setattr__(self, "spatial_size", tuple(int(size) for size in self.spatial_size))
        if self.resize_mode not in RESIZE_OPTIONS:
            msg = (
                f"imaging settings: resize_mode must be one of {list(RESIZE_OPTIONS)}, "
                f"got {self.resize_mode!r}.{_closest(str(self.resize_mode), RESIZE_OPTIONS)}"
            )
            raise ConfigError(msg)
        if self.normalize not in NORMALIZE_OPTIONS:
            msg = (
                f"imaging settings: normalize must be one of {list(NORMALIZE_OPTIONS)}, "
                f"got {self.normalize!r}.{_closest(str(self.normalize), NORMALIZE_OPTIONS)}"
            )
            raise ConfigError(msg)

    @property
    def reference_sequence(self) -> str:
        """Sequence whose grid is the target grid: ``reference`` or the first sequence."""
        return self.reference if self.reference is not None else self.sequences[0]

    def key(self) -> str:
        """Return a stable 16-hex-digit hash of the settings, the same in every process."""
        fields = dataclasses.asdict(self)
        fields["reference"] = self.reference_sequence
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _read_manifest(path: Path, *, modality: str) -> pd.DataFrame:
    """Read a CSV or TSV manifest as strings, with empty and blank cells as None."""
    if not path.is_file():
        msg = f"{modality}: manifest not found: {path}. Check the manifest path."
        raise DataError(msg)

    separator = "\t" if path.suffix.lower() in {".tsv", ".tab"} else ","
    try:
        table = pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        msg = (
            f"{modality}: manifest {path} could not be parsed as a table ({error}). "
            "Save it as UTF-8 CSV with a header row."
        )
        raise DataError(msg) from None

    stripped = table.apply(lambda column: column.str.strip())
    return stripped.mask(stripped == "", None)


def _check_columns(
    table: pd.DataFrame, required: dict[str, str], *, modality: str, manifest: Path
) -> None:
    """Raise DataError for the first required column missing from the manifest.

    ``required`` maps a column name to the setting it comes from (for the message).
    """
    for column, role in required.items():
        if column not in table.columns:
            msg = (
                f"{modality}: {role} column {column!r} not found in manifest {manifest}. "
                f"Its columns are {list(table.columns)}.{_closest(column, list(table.columns))} "
                "Fix the setting or the manifest header."
            )
            raise DataError(msg)


def _check_subject_ids(ids: pd.Series, *, modality: str, manifest: Path, id_column: str) -> None:
    """Raise DataError for empty or repeated subject ids."""
    empty_rows = [int(row) + 2 for row in np.flatnonzero(ids.isna().to_numpy())]
    if empty_rows:
        msg = (
            f"{modality}: manifest {manifest} has {_count(len(empty_rows), 'row')} with an empty "
            f"{id_column!r} (lines {_listed(empty_rows)}). "
            "Fill in the subject ids or delete those rows."
        )
        raise DataError(msg)

    counts = ids.value_counts()
    repeated = counts[counts > 1]
    if len(repeated) > 0:
        described = [f"{subject} ({count} rows)" for subject, count in repeated.items()]
        msg = (
            f"{modality}: manifest {manifest} lists {_count(len(repeated), 'subject id')} more "
            f"than once in {id_column!r}: {_listed(described)}. "
            "Keep one row per subject, with one column per sequence."
        )
        raise DataError(msg)


def _resolve_file(cell: str, root: Path) -> Path:
    """Join a manifest cell to ``root`` and normalise it lexically (symbolic links are kept)."""
    return Path(os.path.normpath(root / cell))


def _is_inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _spacing(image: MetaTensor) -> np.ndarray:
    """Voxel size in mm along each array axis, from the affine's column norms; shape (3,)."""
    affine = np.asarray(image.affine, dtype=np.float64)
    return np.linalg.norm(affine[:3, :3], axis=0)


def _resize_to(volume: MetaTensor, size: np.ndarray) -> MetaTensor:
    """Resize a (C, X, Y, Z) volume to ``size``: area averaging on shrinking axes, then trilinear.

    Area averaging (MONAI ``Resize`` mode ``"area"``) is the mean of the input voxels under each
    output voxel, so it does not alias, and unlike Gaussian anti-aliasing with zero padding it
    does not darken the volume's faces. It repeats voxels when enlarging, so axes that grow are
    then interpolated trilinearly.
    """
    current = np.asarray(volume.shape[1:])
    shrunk = np.minimum(current, size)
    if (shrunk < current).any():
        volume = Resize(tuple(int(edge) for edge in shrunk), mode="area")(volume)
    if (size > shrunk).any():
        volume = Resize(tuple(int(edge) for edge in size), mode="trilinear")(volume)
    return volume


class ImagingSource:
    """One imaging modality of a cohort: a manifest of files per subject, read and cached.

    Parameters
    ----------
    manifest
        CSV (or TSV) table with one row per subject, an id column, one column per sequence and
        optionally a mask column. An empty cell means the sequence was not acquired.
    name
        Modality name used in messages and in the cohort, e.g. ``"mri"``.
    id_column
        Column holding the subject ids.
    settings
        Processing settings; see :class:`ImagingSettings`.
    cache_dir
        Folder of the volume cache, created when missing. Sources with different settings may
        share it, since each entry's key covers files and settings.
    paths_relative_to
        Folder that the manifest's file paths are relative to. Default: the manifest's folder.
        Every file must lie inside it.

    Attributes
    ----------
    subject_ids : pandas.Index
        Subjects with at least one sequence acquired, in manifest order.
    availability : pandas.DataFrame
        Boolean, index ``subject_ids``, one column per sequence: True where the file is listed.
    cache_hits, cache_misses : int
        Calls of :meth:`load` served from the cache, and those that decoded the files.

    Raises
    ------
    DataError
        Manifest not found, a configured column missing, empty or repeated subject ids, a
        listed file that does not exist, or a path that leads outside ``paths_relative_to``.
    """

    def __init__(
        self,
        manifest: str | Path,
        *,
        name: str,
        id_column: str,
        settings: ImagingSettings,
        cache_dir: str | Path,
        paths_relative_to: str | Path | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.manifest = Path(manifest).absolute()
        root = self.manifest.parent if paths_relative_to is None else Path(paths_relative_to)
        self.root = Path(os.path.normpath(root.absolute()))
        self.cache_dir = Path(cache_dir).absolute()
        self.cache_hits = 0
        self.cache_misses = 0

        table = _read_manifest(self.manifest, modality=name)
        self._validate_table(table, id_column)
        self._files = self._collect_files(table, id_column)
        self._check_files_exist()

        self.availability = self._build_availability(table, id_column)
        self.subject_ids = self.availability.index
        self._reference_columns = self._choose_reference_columns()
        self._warn_missing_masks()

        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            msg = (
                f"{name}: cache folder {self.cache_dir} could not be created ({error}). "
                "Set cache_dir to a writable folder."
            )
            raise DataError(msg) from None

    def __repr__(self) -> str:
        return (
            f"ImagingSource(name={self.name!r}, n_subjects={len(self.subject_ids)}, "
            f"sequences={list(self.settings.sequences)}, spatial_size={self.settings.spatial_size})"
        )

    @property
    def files(self) -> dict[str, dict[str, Path | None]]:
        """Subject id -> manifest column -> absolute path (None where the cell is empty)."""
        return {subject: dict(columns) for subject, columns in self._files.items()}

    @property
    def _columns(self) -> tuple[str, ...]:
        """Manifest columns holding files: the sequences, then the mask if configured."""
        mask = () if self.settings.mask is None else (self.settings.mask,)
        return (*self.settings.sequences, *mask)

    @property
    def _crops(self) -> bool:
        return self.settings.crop_margin is not None

    def _validate_table(self, table: pd.DataFrame, id_column: str) -> None:
        required = {id_column: "id"}
        required.update({column: "sequence" for column in self.settings.sequences})
        if self.settings.mask is not None:
            required[self.settings.mask] = "mask"
        _check_columns(table, required, modality=self.name, manifest=self.manifest)
        _check_subject_ids(
            table[id_column], modality=self.name, manifest=self.manifest, id_column=id_column
        )

    def _collect_files(
        self, table: pd.DataFrame, id_column: str
    ) -> dict[str, dict[str, Path | None]]:
        """Map subject id -> column -> absolute file path (None for an empty cell)."""
        files: dict[str, dict[str, Path | None]] = {}
        outside: list[str] = []
        for _, row in table.iterrows():
            subject_id = row[id_column]
            files[subject_id] = {}
            for column in self._columns:
                cell = row[column]
                if cell is None:
                    files[subject_id][column] = None
                    continue
                path = _resolve_file(cell, self.root)
                if not _is_inside(path, self.root):
                    outside.append(f"{subject_id} {column}={cell!r}")
                files[subject_id][column] = path

        if outside:
            msg = (
                f"{self.name}: {_count(len(outside), 'manifest path')} outside paths_relative_to "
                f"{self.root}: {_listed(outside)}. Use paths inside that folder, or set "
                "paths_relative_to to the folder that contains the files."
            )
            raise DataError(msg)
        return files

    def _check_files_exist(self) -> None:
        missing = [
            f"{subject_id} {column}={str(path)!r}"
            for subject_id, paths in self._files.items()
            for column, path in paths.items()
            if path is not None and not (path.is_file() or path.is_dir())
        ]
        if missing:
            msg = (
                f"{self.name}: {_count(len(missing), 'file')} listed in manifest {self.manifest} "
                f"not found: {_listed(missing)}. Paths start at paths_relative_to {self.root}, so "
                "correct the manifest paths or set paths_relative_to to the folder they start from."
            )
            raise DataError(msg)

    def _build_availability(self, table: pd.DataFrame, id_column: str) -> pd.DataFrame:
        sequences = list(self.settings.sequences)
        acquired = table[sequences].notna().to_numpy()
        availability = pd.DataFrame(
            acquired, index=pd.Index(table[id_column], name=id_column), columns=sequences
        )

        has_any = availability.any(axis=1)
        if not has_any.all():
            without = list(availability.index[~has_any])
            logger.info(
                "%s: %s without any sequence file left out: %s",
                self.name,
                _count(len(without), "subject"),
                _listed(without),
            )
        return availability[has_any]

    def _choose_reference_columns(self) -> dict[str, str]:
        """Map each subject to the sequence whose grid it uses; warn where that is a fallback."""
        reference = self.settings.reference_sequence
        chosen: dict[str, str] = {}
        fallbacks: list[str] = []
        for subject_id, acquired in self.availability.iterrows():
            if acquired[reference]:
                chosen[subject_id] = reference
                continue
            chosen[subject_id] = next(
                column for column in self.settings.sequences if acquired[column]
            )
            fallbacks.append(f"{subject_id} (uses {chosen[subject_id]!r})")

        if fallbacks:
            msg = (
                f"{self.name}: {_count(len(fallbacks), 'subject')} without the reference sequence "
                f"{reference!r}, resampled onto the grid of the first acquired sequence instead: "
                f"{_listed(fallbacks)}."
            )
            warnings.warn(msg, DataWarning, stacklevel=3)
        return chosen

    def _warn_missing_masks(self) -> None:
        if not self._crops:
            return
        mask = self.settings.mask
        without = [
            subject_id for subject_id in self.subject_ids if self._files[subject_id][mask] is None
        ]
        if without:
            msg = (
                f"{self.name}: {_count(len(without), 'subject')} with an empty {mask!r} cell, "
                f"left uncropped: {_listed(without)}. Add their mask files, or set crop_margin "
                "to None to crop no subject."
            )
            warnings.warn(msg, DataWarning, stacklevel=3)

    # Loading

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one subject's volume: ``(C, X, Y, Z)``."""
        return (len(self.settings.sequences), *self.settings.spatial_size)

    def estimate_cache_bytes(self) -> int:
        """Return the bytes the cached float32 volumes of all subjects take.

        ``n_subjects * C * prod(spatial_size) * 4``, leaving out the 128-byte header of each
        ``.npy`` file.
        """
        return len(self.subject_ids) * int(np.prod(self.output_shape)) * 4

    def flags(self, subject_id: str) -> np.ndarray:
        """Return float32 acquisition flags of shape (C,): 1 = acquired, 0 = not acquired."""
        self._check_subject(subject_id)
        return self.availability.loc[subject_id].to_numpy(dtype=np.float32)

    def load(self, subject_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Return one subject's volume and acquisition flags, from the cache when possible.

        Returns
        -------
        volume : numpy.ndarray
            float32, shape ``(C, *spatial_size)``, channels in ``settings.sequences`` order.
            A channel that was not acquired is all zeros.
        flags : numpy.ndarray
            float32, shape ``(C,)``: 1 = acquired, 0 = not acquired.

        Raises
        ------
        DataError
            Unknown subject, a file that vanished since construction, a file MONAI cannot read,
            or a file that is not one single-channel 3D volume.
        """
        flags = self.flags(subject_id)
        cache_path = self.cache_dir / "imaging" / f"{self._cache_key(subject_id)}.npy"

        volume = self._read_cache(cache_path)
        if volume is not None:
            self.cache_hits += 1
            return volume, flags

        self.cache_misses += 1
        start = time.perf_counter()
        volume = self._decode(subject_id)
        logger.debug(
            "%s: decoded subject %s in %.2f s", self.name, subject_id, time.perf_counter() - start
        )
        self._write_cache(cache_path, volume)
        return volume, flags

    def load_many(
        self, subject_ids: Sequence[str], *, progress: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the volumes and flags of several subjects, stacked in the given order.

        Returns
        -------
        volumes : numpy.ndarray
            float32, shape ``(n, C, *spatial_size)``; ``estimate_cache_bytes`` gives the size for
            all subjects.
        flags : numpy.ndarray
            float32, shape ``(n, C)``.

        Raises
        ------
        DataError
            Before anything is read, when the stacked volumes do not fit in free memory; the
            message gives the sizes and the fixes.
        """
        check_cache_memory(len(subject_ids), self.output_shape, what=self.name)
        volumes = np.empty((len(subject_ids), *self.output_shape), dtype=np.float32)
        flags = np.empty((len(subject_ids), len(self.settings.sequences)), dtype=np.float32)
        bar = tqdm(
            subject_ids, desc=f"{self.name}: loading volumes", unit="subject", disable=not progress
        )
        for row, subject_id in enumerate(bar):
            volumes[row], flags[row] = self.load(subject_id)
        return volumes, flags

    def _check_subject(self, subject_id: str) -> None:
        if subject_id in self.subject_ids:
            return
        if subject_id in self._files:
            msg = (
                f"{self.name}: subject {subject_id!r} has no sequence file in manifest "
                f"{self.manifest}, so it has no volume. Leave it out or add its files."
            )
        else:
            msg = (
                f"{self.name}: subject {subject_id!r} not found in manifest {self.manifest}."
                f"{_closest(str(subject_id), [str(known) for known in self.subject_ids])}"
            )
        raise DataError(msg)

    # Cache

    def _cache_key(self, subject_id: str) -> str:
        """Hash the subject's files (path, size, mtime in ns), the settings and the versions."""
        reference = self._reference_columns[subject_id]
        used_columns = self._columns if self._crops else self.settings.sequences
        entries: list[list[object]] = []
        for column in used_columns:
            path = self._files[subject_id][column]
            if path is None:
                entries.append([column, None])
                continue
            try:
                status = path.stat()
            except OSError as error:
                msg = (
                    f"{self.name}: subject {subject_id!r}, column {column!r}: file {path} cannot "
                    f"be accessed ({error}). Restore the file or fix the manifest."
                )
                raise DataError(msg) from None
            entries.append([column, str(path), status.st_size, status.st_mtime_ns])

        payload = {
            "format": CACHE_FORMAT_VERSION,
            "monai": monai.__version__,
            "settings": self.settings.key(),
            "reference": reference,
            "files": entries,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:32]

    def _read_cache(self, path: Path) -> np.ndarray | None:
        """Return the cached volume, or None when absent; delete and log an unreadable entry."""
        if not path.is_file():
            return None
        try:
            volume = np.load(path, allow_pickle=False)
            problem = None
            if volume.dtype != np.float32 or volume.shape != self.output_shape:
                problem = (
                    f"float32 {self.output_shape} expected, found {volume.dtype} {volume.shape}"
                )
        except (OSError, ValueError, EOFError) as error:
            problem = f"{type(error).__name__}: {error}"

        if problem is None:
            return volume
        logger.warning(
            "%s: cache file %s is unreadable (%s); deleting it and decoding again",
            self.name,
            path,
            problem,
        )
        path.unlink(missing_ok=True)
        return None

    def _write_cache(self, path: Path, volume: np.ndarray) -> None:
        """Write ``volume`` to ``path`` atomically; log and continue when writing fails."""
        temporary: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(
                dir=path.parent, prefix=f"{path.stem}.", suffix=".tmp"
            )
            with os.fdopen(descriptor, "wb") as handle:
                np.save(handle, volume, allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except OSError as error:
            logger.warning(
                "%s: could not write cache file %s (%s); the volume is not cached",
                self.name,
                path,
                error,
            )
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)

    # Decoding

    def _read_volume(self, subject_id: str, column: str) -> MetaTensor:
        """Read one file or DICOM folder as a (1, X, Y, Z) MetaTensor; DataError when that fails."""
        path = self._files[subject_id][column]
        where = f"{self.name}: subject {subject_id!r}, column {column!r}, file {path}"
        # Each manifest column is one channel, so every file must hold exactly one.
        return read_volume(path, expected_channels=1, where=where)

    def _decode(self, subject_id: str) -> np.ndarray:
        """Run steps 1-5 of the module docstring for one subject; float32 (C, *spatial_size)."""
        reference_column = self._reference_columns[subject_id]
        reference = self._read_volume(subject_id, reference_column)
        to_grid = ResampleToMatch(padding_mode="zeros")

        # (C, X, Y, Z) on the reference grid; channels not acquired stay zero.
        stacked = torch.zeros(
            (len(self.settings.sequences), *reference.shape[1:]), dtype=torch.float32
        )
        for channel, column in enumerate(self.settings.sequences):
            if self._files[subject_id][column] is None:
                continue
            if column == reference_column:
                stacked[channel] = reference[0].as_tensor()
                continue
            image = self._read_volume(subject_id, column)
            stacked[channel] = to_grid(image, reference, mode="bilinear")[0].as_tensor()
        volume = MetaTensor(stacked, affine=reference.affine)

        if self._crops:
            volume = self._crop(subject_id, volume, reference, to_grid)
        volume = self._resize(volume)
        return self._normalize(subject_id, volume)

    def _crop(
        self, subject_id: str, volume: MetaTensor, reference: MetaTensor, to_grid: ResampleToMatch
    ) -> MetaTensor:
        mask_column = self.settings.mask
        if self._files[subject_id][mask_column] is None:
            return volume  # warned about in the constructor

        mask = to_grid(self._read_volume(subject_id, mask_column), reference, mode="nearest")
        foreground = (mask > 0).to(torch.uint8)  # a MetaTensor on the reference grid
        if not bool(foreground.any()):
            msg = (
                f"{self.name}: subject {subject_id!r}: the mask in column {mask_column!r} has no "
                "foreground on the reference grid, so the volume is not cropped. Check that the "
                "mask and the images share a field of view."
            )
            warnings.warn(msg, DataWarning, stacklevel=4)
            return volume

        cropper = CropForegroundd(
            keys="image", source_key="mask", margin=self.settings.crop_margin, allow_smaller=True
        )
        return cropper({"image": volume, "mask": foreground})["image"]

    def _resize(self, volume: MetaTensor) -> MetaTensor:
        target = np.asarray(self.settings.spatial_size)
        if self.settings.resize_mode == "stretch":
            return _resize_to(volume, target)

        # One scale factor (output voxels per mm) serves every axis. It makes the axis with the
        # largest extent relative to its target size fit exactly, and the others are padded.
        extent_mm = np.asarray(volume.shape[1:]) * _spacing(volume)
        voxels_per_mm = float(np.min(target / extent_mm))
        fitted = np.clip(np.rint(extent_mm * voxels_per_mm), 1, target).astype(int)
        volume = _resize_to(volume, fitted)
        return SpatialPad(tuple(int(size) for size in target), method="symmetric", mode="constant")(
            volume
        )

    def _normalize(self, subject_id: str, volume: MetaTensor) -> np.ndarray:
        array = volume.as_tensor().to(torch.float32)
        if self.settings.normalize != "none":
            normalizer = NormalizeIntensity(nonzero=self.settings.normalize == "zscore_nonzero")
            for channel, column in enumerate(self.settings.sequences):
                if self._files[subject_id][column] is not None:
                    array[channel] = normalizer(array[channel])
        return np.ascontiguousarray(array.numpy(), dtype=np.float32)
