"""Reading single volumes: files and DICOM series into channel-first arrays, headers, memory.

:func:`read_volume` returns a MONAI ``MetaTensor`` of shape ``(C, X, Y, Z)`` that carries the
affine, whatever the layout on disk:

* a 3D file ``(X, Y, Z)`` gets one channel, ``(1, X, Y, Z)``;
* a NIfTI vector image, stored as ``(X, Y, Z, 1, C)`` (dimension 4 is time and has length 1),
  becomes ``(C, X, Y, Z)``;
* a 4D file is ambiguous, because its fourth axis may hold channels or time points. It is read
  only when ``channel_axis`` names that axis; otherwise a :class:`~fusion._errors.DataError`
  shows the shape and requests the axis. MONAI's ``LoadImage`` would silently take the last axis as
  channels;
* a folder is a DICOM series read with MONAI's ``PydicomReader``. A folder with several series
  is rejected with the list of series and their slice counts unless ``series`` picks one,
  because ``PydicomReader`` would stack all of them into one volume with a wrong spacing.

:func:`volume_header` reads only the header (nibabel for NIfTI, pynrrd for NRRD, pydicom for
DICOM), so a preflight can summarise shapes and spacings without decoding voxels.
:func:`cache_memory_estimate` compares the memory a set of volumes needs with the free memory.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import logging
import re
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
from monai.data import MetaTensor, PydicomReader
from monai.transforms import EnsureChannelFirst, LoadImage

from fusion._errors import DataError
from fusion._logging import logger

__all__ = [
    "CacheMemoryEstimate",
    "VolumeHeader",
    "cache_memory_estimate",
    "check_volume_data",
    "dicom_series",
    "read_volume",
    "volume_header",
]

_GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class VolumeHeader:
    """Shape, spacing and channel count of one volume, read from its header only.

    ``spatial_shape`` is ``(X, Y, Z)`` in voxels, ``spacing`` the voxel size in mm along those
    axes, ``channels`` the channel count (1 for a 3D file), ``dtype`` the stored type.
    ``channel_axis_needed`` is True for a 4D file, whose fourth axis may be channels or time.
    """

    path: Path
    spatial_shape: tuple[int, ...]
    spacing: tuple[float, ...]
    channels: int
    dtype: str
    channel_axis_needed: bool = False


def dicom_series(folder: Path) -> dict[str, list[Path]]:
    """Group the DICOM files of ``folder`` (not its subfolders) by ``SeriesInstanceUID``.

    Files without a DICOM preamble are ignored, as MONAI's ``PydicomReader`` ignores them.
    Only the headers are read. Slices keep the folder's sorted file order.
    """
    import pydicom

    series: dict[str, list[Path]] = {}
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        if not pydicom.misc.is_dicom(str(path)):
            continue
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        uid = str(getattr(header, "SeriesInstanceUID", "unknown"))
        series.setdefault(uid, []).append(path)
    return series


def _describe_series(series: dict[str, list[Path]]) -> str:
    import pydicom

    described = []
    for uid, files in series.items():
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        description = str(getattr(header, "SeriesDescription", "") or "no description")
        number = getattr(header, "SeriesNumber", None)
        label = f"number {number}, " if number is not None else ""
        order = (number is None, int(number) if number is not None else 0, uid)
        described.append((order, f"{uid} ({label}{description!r}, {len(files)} slices)"))
    return "; ".join(text for _, text in sorted(described))


def _choose_series(folder: Path, series: str | None, where: str) -> list[Path]:
    """Return the slice files of the requested series, or of the only one."""
    import pydicom

    found = dicom_series(folder)
    if not found:
        msg = f"{where}: the folder holds no DICOM file. Point it at a DICOM series folder."
        raise DataError(msg)
    if series is None:
        if len(found) == 1:
            return next(iter(found.values()))
        msg = (
            f"{where}: the folder holds {len(found)} DICOM series: {_describe_series(found)}. "
            "Choose one by its SeriesInstanceUID or SeriesNumber, or move each series into its "
            "own folder."
        )
        raise DataError(msg)

    if series in found:
        return found[series]
    for files in found.values():
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        if str(getattr(header, "SeriesNumber", "")) == str(series):
            return files
    msg = (
        f"{where}: series {series!r} not found in the DICOM folder; it holds "
        f"{_describe_series(found)}."
    )
    raise DataError(msg)


def _quiet_loader(**kwargs: object) -> LoadImage:
    """Build a MONAI LoadImage without its notice about the optional nvImageCodec decoder.

    With pydicom installed, MONAI (1.6 here) registers a GPU DICOM reader by default and logs a
    warning when nvImageCodec is absent, on every construction. Nothing here needs that reader.
    """
    plugin_logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_logger.level
    plugin_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nvImageCodec")
            return LoadImage(image_only=True, **kwargs)
    finally:
        plugin_logger.setLevel(level)


@functools.lru_cache(maxsize=1)
def _file_loader() -> LoadImage:
    return _quiet_loader()


def _load(path: Path, series: str | None, where: str) -> MetaTensor:
    """Read a file or one DICOM series with MONAI, without adding a channel axis."""
    if path.is_dir():
        files = _choose_series(path, series, where)
        # PydicomReader reads every DICOM file of a folder; the regex keeps only this series.
        pattern = "^(" + "|".join(re.escape(str(f)) for f in files) + ")$"
        loader = _quiet_loader(reader=PydicomReader(fname_regex=pattern))
    else:
        loader = _file_loader()
    try:
        return loader(str(path))
    # The readers raise many unrelated types for a damaged file (EOFError, zlib.error,
    # nibabel's ImageFileError, RuntimeError for an unknown suffix), so all are caught here.
    except Exception as error:  # noqa: BLE001
        logger.debug("%s: MONAI LoadImage failed", where, exc_info=True)
        reason = str(error).splitlines()[0] if str(error) else ""
        msg = (
            f"{where}: MONAI could not read the file ({type(error).__name__}: {reason}). "
            "Replace it with a complete NIfTI (.nii, .nii.gz), NRRD (.nrrd) volume or DICOM "
            "series folder."
        )
        raise DataError(msg) from None


def read_volume(
    path: str | Path,
    *,
    channel_axis: int | None = None,
    series: str | None = None,
    expected_channels: int | None = None,
    where: str | None = None,
) -> MetaTensor:
    """Read one volume as a channel-first ``MetaTensor`` ``(C, X, Y, Z)`` with its affine.

    Parameters
    ----------
    path
        NIfTI or NRRD file, or a folder containing one or more DICOM series.
    channel_axis
        Axis of a 4D file that contains the channels (``3`` for channels last, ``0`` for first).
        Required for 4D files; ignored otherwise.
    series
        SeriesInstanceUID or SeriesNumber to read from a folder holding several DICOM series.
    expected_channels
        Channel count the consumer (an encoder's ``in_channels``) takes; another count raises.
    where
        Prefix of error messages, for example the modality, subject and manifest column.

    Raises
    ------
    DataError
        The file cannot be read, a 4D file without ``channel_axis``, a shape that is not a
        volume, several DICOM series without ``series``, or a channel count other than
        ``expected_channels``.
    """
    path = Path(path)
    where = where or f"{'folder' if path.is_dir() else 'file'} {path}"
    image = _load(path, series, where)
    shape = tuple(image.shape)

    if image.ndim == 3:
        volume = EnsureChannelFirst(channel_dim="no_channel")(image)
    elif image.ndim == 5 and shape[3] == 1:
        # NIfTI stores vector images as (X, Y, Z, 1, C): dimension 4 is time, of length 1.
        volume = EnsureChannelFirst(channel_dim=-1)(image[:, :, :, 0, :])
    elif image.ndim == 4 and channel_axis is None:
        msg = (
            f"{where}: the file is 4D with shape {shape}, and its fourth axis may hold channels "
            f"or time points. Declare which axis holds the channels (channel_axis=3 for {shape[3]} "
            "channels last), or save each channel or time point as its own 3D file."
        )
        raise DataError(msg)
    elif image.ndim == 4:
        if not -4 <= channel_axis < 4:
            msg = f"{where}: channel_axis {channel_axis} is outside the 4 axes of shape {shape}."
            raise DataError(msg)
        volume = EnsureChannelFirst(channel_dim=channel_axis)(image)
    else:
        msg = (
            f"{where}: expected a 3D volume (X, Y, Z), a 4D volume with a declared channel "
            f"axis or a NIfTI vector image (X, Y, Z, 1, C), but MONAI read shape {shape}."
        )
        raise DataError(msg)

    channels = int(volume.shape[0])
    if expected_channels is not None and channels != expected_channels:
        msg = (
            f"{where}: expected {expected_channels} channel(s) (the encoder's in_channels), but "
            f"the file has {channels}, channel-first shape {tuple(volume.shape)}. Give the "
            "encoder matching in_channels, or save each channel as its own 3D file."
        )
        raise DataError(msg)
    return volume


def volume_header(path: str | Path, *, series: str | None = None) -> VolumeHeader:
    """Return shape, spacing and channels of a volume from its header, without reading voxels.

    Raises
    ------
    DataError
        The header cannot be read, or the file is not a volume.
    """
    path = Path(path)
    try:
        if path.is_dir():
            return _dicom_header(path, series)
        name = path.name.lower()
        if name.endswith((".nrrd", ".nhdr")):
            return _nrrd_header(path)
        return _nifti_header(path)
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - nibabel, pynrrd and pydicom raise many types
        logger.debug("reading the header of %s failed", path, exc_info=True)
        if path.name.lower().endswith(".gz") and path.stat().st_size > 0:
            _inflated_size(path)  # names a truncated or corrupt stream when that is the cause
        reason = str(error).splitlines()[0] if str(error) else ""
        msg = (
            f"file {path}: the header could not be read ({type(error).__name__}: {reason}). "
            "Replace it with a complete NIfTI, NRRD or DICOM volume."
        )
        raise DataError(msg) from None


def check_volume_data(path: str | Path) -> None:
    """Check that a NIfTI file contains as many voxel bytes as its header declares.

    An uncompressed file is checked by its size. A ``.nii.gz`` file is inflated as a stream
    and counted, without building an array, so a truncated or corrupt gzip stream is found
    as well. Other formats and DICOM folders are not checked here; MONAI finds their faults
    when it decodes them.

    Raises
    ------
    DataError
        The stream is corrupt or ends early, or it contains fewer bytes than the header declares.
    """
    import nibabel as nib

    path = Path(path)
    name = path.name.lower()
    if path.is_dir() or not name.endswith((".nii", ".nii.gz")):
        return
    header = volume_header(path)
    image = nib.load(path)
    offset = int(image.header.get("vox_offset", 352))
    itemsize = np.dtype(image.get_data_dtype()).itemsize
    expected = offset + int(np.prod(image.shape, dtype=np.int64)) * itemsize

    if name.endswith(".nii"):
        actual = path.stat().st_size
    else:
        actual = _inflated_size(path)
    if actual < expected:
        msg = (
            f"file {path}: the header declares shape {tuple(image.shape)} of "
            f"{image.get_data_dtype()} ({expected} bytes with the header), but the file holds "
            f"{actual} bytes; it is truncated or its header and data disagree. Export the "
            f"volume again (spatial shape read from the header: {header.spatial_shape})."
        )
        raise DataError(msg)


def _inflated_size(path: Path, chunk: int = 1 << 20) -> int:
    """Return the uncompressed size of a gzip file; DataError when the stream is damaged."""
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while True:
                block = stream.read(chunk)
                if not block:
                    return total
                total += len(block)
    except (EOFError, OSError, zlib.error) as error:
        msg = (
            f"file {path}: the gzip stream is damaged after {total} uncompressed bytes "
            f"({type(error).__name__}: {error}); the file is truncated or corrupt. Copy or "
            "export it again."
        )
        raise DataError(msg) from None


def _nifti_header(path: Path) -> VolumeHeader:
    import nibabel as nib

    image = nib.load(path)  # lazy: the voxel data stay on disk
    shape = tuple(int(size) for size in image.shape)
    zooms = tuple(float(zoom) for zoom in image.header.get_zooms()[:3])
    dtype = str(image.get_data_dtype())
    if len(shape) == 3:
        return VolumeHeader(path, shape, zooms, 1, dtype)
    if len(shape) == 5 and shape[3] == 1:
        return VolumeHeader(path, shape[:3], zooms, shape[4], dtype)
    if len(shape) == 4:
        return VolumeHeader(path, shape[:3], zooms, shape[3], dtype, channel_axis_needed=True)
    msg = f"file {path}: header shape {shape} is not a 3D volume"
    raise DataError(msg)


def _nrrd_header(path: Path) -> VolumeHeader:
    import nrrd

    header = nrrd.read_header(str(path))
    shape = tuple(int(size) for size in header["sizes"])
    directions = header.get("space directions")
    if directions is None:
        spatial = list(range(len(shape)))
        spacing = [float(s) for s in header.get("spacings", [1.0] * len(shape))]
    else:
        # pynrrd marks a non-spatial axis (channels, time) with a row of NaN or None.
        rows = [None if d is None else np.asarray(d, dtype=float) for d in directions]
        spatial = [i for i, row in enumerate(rows) if row is not None and np.isfinite(row).all()]
        spacing = [float(np.linalg.norm(rows[i])) for i in spatial]
    if len(spatial) != 3:
        msg = f"file {path}: NRRD header has {len(spatial)} spatial axes (sizes {shape}), expected 3"
        raise DataError(msg)
    channels = int(np.prod([size for i, size in enumerate(shape) if i not in spatial]))
    spatial_shape = tuple(shape[i] for i in spatial)
    return VolumeHeader(path, spatial_shape, tuple(spacing), channels, str(header.get("type")))


def _dicom_header(folder: Path, series: str | None) -> VolumeHeader:
    import pydicom

    files = _choose_series(folder, series, f"folder {folder}")
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    rows, columns = int(header.Rows), int(header.Columns)
    pixel = [float(v) for v in getattr(header, "PixelSpacing", [1.0, 1.0])]
    thickness = float(getattr(header, "SpacingBetweenSlices", getattr(header, "SliceThickness", 1.0)))
    bits = int(getattr(header, "BitsAllocated", 16))
    return VolumeHeader(folder, (columns, rows, len(files)), (pixel[1], pixel[0], thickness), 1, f"int{bits}")


@dataclasses.dataclass(frozen=True)
class CacheMemoryEstimate:
    """Memory that ``n_volumes`` volumes of ``shape`` take in RAM, against the free memory.

    Sizes are in bytes: ``float64_bytes`` as decoded by most readers, ``float32_bytes`` as
    fusion caches them. ``available_bytes`` is ``psutil.virtual_memory().available`` unless
    given.
    """

    n_volumes: int
    shape: tuple[int, ...]
    float64_bytes: int
    float32_bytes: int
    available_bytes: int

    @property
    def fits(self) -> bool:
        """True when the float32 volumes fit in the free memory."""
        return self.float32_bytes <= self.available_bytes

    def describe(self) -> str:
        """Return the sizes in GiB as one sentence."""
        return (
            f"{self.n_volumes} volumes of shape {self.shape} take "
            f"{self.float64_bytes / _GIB:.1f} GiB as float64 and {self.float32_bytes / _GIB:.1f} "
            f"GiB as float32, with {self.available_bytes / _GIB:.1f} GiB of memory free"
        )


CACHE_MEMORY_FIXES = (
    "keep the volumes in the disk cache and read them per batch instead of holding all in "
    "memory, cache a fraction of the subjects (a lower cache rate), store float32 instead of "
    "float64, or reduce spatial_size"
)


def cache_memory_estimate(
    n_volumes: int, shape: tuple[int, ...], *, available_bytes: int | None = None
) -> CacheMemoryEstimate:
    """Estimate the memory of ``n_volumes`` arrays of ``shape`` (channels included)."""
    voxels = int(np.prod(shape, dtype=np.int64))
    available = psutil.virtual_memory().available if available_bytes is None else int(available_bytes)
    return CacheMemoryEstimate(
        n_volumes=int(n_volumes),
        shape=tuple(int(size) for size in shape),
        float64_bytes=n_volumes * voxels * 8,
        float32_bytes=n_volumes * voxels * 4,
        available_bytes=available,
    )


def check_cache_memory(
    n_volumes: int, shape: tuple[int, ...], *, what: str, available_bytes: int | None = None
) -> CacheMemoryEstimate:
    """Raise DataError before caching when the float32 volumes do not fit in free memory."""
    estimate = cache_memory_estimate(n_volumes, shape, available_bytes=available_bytes)
    if not estimate.fits:
        msg = f"{what}: caching in memory does not fit: {estimate.describe()}. Fixes: {CACHE_MEMORY_FIXES}."
        raise DataError(msg)
    return estimate


def count_by_value(values: list[object], *, limit: int = 4) -> str:
    """Return ``"(64, 64, 40) x 3, (32, 32, 20) x 1"``, the ``limit`` most common first."""
    counts = Counter(values).most_common()
    text = ", ".join(f"{value} x {count}" for value, count in counts[:limit])
    if len(counts) > limit:
        text += f" and {len(counts) - limit} other values"
    return text
