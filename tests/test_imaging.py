"""Tests of the imaging source: grids, crop, resize, normalisation, cache and input errors."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from monai.transforms import LoadImage, ResampleToMatch

from fusion._errors import ConfigError, DataError, DataWarning
from fusion.data._imaging import ImagingSettings, ImagingSource


def write_nifti(
    path: Path,
    array: np.ndarray,
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
    origin: tuple[float, ...] = (0.0, 0.0, 0.0),
) -> Path:
    """Save ``array`` as NIfTI with a diagonal affine.

    Voxel ``i`` along axis ``a`` is centred at ``origin[a] + i * spacing[a]`` mm.
    """
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine), path)
    return path


def write_manifest(folder: Path, rows: list[dict[str, str]], name: str = "manifest.csv") -> Path:
    path = folder / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def make_source(manifest: Path, cache_dir: Path, **settings: object) -> ImagingSource:
    return ImagingSource(
        manifest,
        name="mri",
        id_column="subject_id",
        settings=ImagingSettings(**settings),  # type: ignore[arg-type]
        cache_dir=cache_dir,
    )


@pytest.fixture
def two_grid_cohort(tmp_path: Path) -> Path:
    """Write a manifest of two subjects with a 'fine' and a 'coarse' sequence.

    S1 has a 1 mm 20^3 'fine' volume and a 2 mm 10^3 'coarse' volume on the same field of view.
    The coarse volume contains a cube of 100 at voxels [2:4, 5:7, 6:8]. With origin 0.5 mm, its
    voxel i is centred at 2 i + 0.5 mm. S2 has the fine volume only.
    """
    fine = np.ones((20, 20, 20), dtype=np.float32)
    coarse = np.zeros((10, 10, 10), dtype=np.float32)
    coarse[2:4, 5:7, 6:8] = 100.0
    write_nifti(tmp_path / "fine.nii.gz", fine)
    write_nifti(tmp_path / "coarse.nii.gz", coarse, spacing=(2.0, 2.0, 2.0), origin=(0.5, 0.5, 0.5))
    rows = [
        {"subject_id": "S1", "fine": "fine.nii.gz", "coarse": "coarse.nii.gz"},
        {"subject_id": "S2", "fine": "fine.nii.gz", "coarse": ""},
    ]
    return write_manifest(tmp_path, rows)


# Settings


def test_settings_key_stable_and_sensitive() -> None:
    settings = ImagingSettings(sequences=("flair", "t1"), spatial_size=(32, 32, 24))
    assert (
        settings.key()
        == ImagingSettings(sequences=["flair", "t1"], spatial_size=[32, 32, 24]).key()
    )  # type: ignore[arg-type]
    assert (
        settings.key()
        != ImagingSettings(sequences=("flair", "t1"), spatial_size=(32, 32, 32)).key()
    )
    assert (
        settings.key()
        != ImagingSettings(
            sequences=("flair", "t1"), spatial_size=(32, 32, 24), normalize="none"
        ).key()
    )


def test_settings_default_reference_same_key() -> None:
    implicit = ImagingSettings(sequences=("flair", "t1"))
    explicit = ImagingSettings(sequences=("flair", "t1"), reference="flair")
    assert implicit.key() == explicit.key()


def test_settings_accept_numpy_integers() -> None:
    settings = ImagingSettings(
        sequences=("t1",), spatial_size=np.array([8, 8, 4]), crop_margin=None
    )
    assert settings.spatial_size == (8, 8, 4)
    assert all(type(size) is int for size in settings.spatial_size)
    assert settings.key() == ImagingSettings(sequences=("t1",), spatial_size=(8, 8, 4)).key()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sequences": ()}, "sequences is empty"),
        ({"sequences": ("a", "a")}, "more than once"),
        ({"sequences": ("flair",), "reference": "flare"}, "Did you mean 'flair'"),
        ({"sequences": ("flair",), "crop_margin": 2}, "mask is None"),
        ({"sequences": ("flair",), "mask": "mask", "crop_margin": -1}, "integer >= 0"),
        ({"sequences": ("flair",), "mask": "flair"}, "also listed in sequences"),
        ({"sequences": ("flair",), "spatial_size": (32, 32)}, "three positive integers"),
        ({"sequences": ("flair",), "normalize": "zscore_nonzer"}, "Did you mean 'zscore_nonzero'"),
        ({"sequences": ("flair",), "resize_mode": "stretched"}, "Did you mean 'stretch'"),
    ],
)
def test_settings_invalid(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ImagingSettings(**fields)  # type: ignore[arg-type]


# Grids, crop, resize, normalisation


def test_coarse_cube_lands_where_affine_says(two_grid_cohort: Path, tmp_path: Path) -> None:
    source = make_source(
        two_grid_cohort,
        tmp_path / "cache",
        sequences=("fine", "coarse"),
        spatial_size=(20, 20, 20),
        normalize="none",
    )
    volume, _ = source.load("S1")

    # Coarse cube voxels 2 and 3 are centred at 4.5 and 6.5 mm, so fine voxels 5 and 6 lie between
    # two cube centres (100). Fine voxel 4 lies 3/4 of the way from the zero centre at 2.5 mm to
    # the cube centre at 4.5 mm (75), and fine voxel 3 lies 1/4 of the way (25).
    expected_x_profile = np.zeros(20, dtype=np.float32)
    expected_x_profile[[3, 4, 5, 6, 7, 8]] = [25.0, 75.0, 100.0, 100.0, 75.0, 25.0]
    np.testing.assert_allclose(volume[1, :, 11, 13], expected_x_profile, atol=1e-4)

    full = np.argwhere(np.isclose(volume[1], 100.0, atol=1e-4))
    assert full.min(axis=0).tolist() == [5, 11, 13]
    assert full.max(axis=0).tolist() == [6, 12, 14]
    assert len(full) == 2 * 2 * 2


def test_reference_channel_unchanged(two_grid_cohort: Path, tmp_path: Path) -> None:
    source = make_source(
        two_grid_cohort,
        tmp_path / "cache",
        sequences=("fine", "coarse"),
        spatial_size=(20, 20, 20),
        normalize="none",
    )
    volume, _ = source.load("S1")
    np.testing.assert_array_equal(volume[0], np.ones((20, 20, 20), dtype=np.float32))


@pytest.mark.filterwarnings("ignore::fusion._errors.DataWarning")
def test_coarse_reference_sets_grid(two_grid_cohort: Path, tmp_path: Path) -> None:
    source = make_source(
        two_grid_cohort,
        tmp_path / "cache",
        sequences=("fine", "coarse"),
        reference="coarse",
        spatial_size=(10, 10, 10),
        normalize="none",
    )
    volume, _ = source.load("S1")
    cube = np.argwhere(volume[1] == 100.0)
    assert cube.min(axis=0).tolist() == [2, 5, 6]
    assert cube.max(axis=0).tolist() == [3, 6, 7]


def test_missing_sequence_zeros_and_flag(two_grid_cohort: Path, tmp_path: Path) -> None:
    source = make_source(
        two_grid_cohort, tmp_path / "cache", sequences=("fine", "coarse"), spatial_size=(20, 20, 20)
    )
    volume, flags = source.load("S2")
    np.testing.assert_array_equal(flags, np.array([1.0, 0.0], dtype=np.float32))
    assert not volume[1].any()
    assert source.availability.loc["S2"].tolist() == [True, False]


def test_missing_reference_falls_back_with_warning(two_grid_cohort: Path, tmp_path: Path) -> None:
    with pytest.warns(DataWarning, match="S2 \\(uses 'fine'\\)"):
        source = make_source(
            two_grid_cohort,
            tmp_path / "cache",
            sequences=("fine", "coarse"),
            reference="coarse",
            spatial_size=(10, 10, 10),
        )
    volume, flags = source.load("S2")
    assert volume.shape == (2, 10, 10, 10)
    np.testing.assert_array_equal(flags, np.array([1.0, 0.0], dtype=np.float32))


def test_subject_without_sequences_left_out(tmp_path: Path) -> None:
    write_nifti(tmp_path / "a.nii.gz", np.ones((4, 4, 4)))
    rows = [{"subject_id": "S1", "t1": "a.nii.gz"}, {"subject_id": "S2", "t1": ""}]
    source = make_source(
        write_manifest(tmp_path, rows),
        tmp_path / "cache",
        sequences=("t1",),
        spatial_size=(4, 4, 4),
    )
    assert source.subject_ids.tolist() == ["S1"]
    with pytest.raises(DataError, match="'S2' has no sequence file"):
        source.load("S2")


def test_mask_resampled_nearest_stays_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_nifti(tmp_path / "image.nii.gz", np.ones((20, 20, 20)))
    coarse_mask = np.zeros((10, 10, 10))
    coarse_mask[3:6, 3:5, 4:7] = 1.0
    write_nifti(
        tmp_path / "mask.nii.gz", coarse_mask, spacing=(2.0, 2.0, 2.0), origin=(0.5, 0.5, 0.5)
    )
    rows = [{"subject_id": "S1", "t1": "image.nii.gz", "mask": "mask.nii.gz"}]

    calls: list[tuple[str, set[float]]] = []
    original_call = ResampleToMatch.__call__

    def recording_call(self: ResampleToMatch, img, img_dst, mode=None, **kwargs):
        output = original_call(self, img, img_dst, mode=mode, **kwargs)
        calls.append((mode, set(np.unique(output.numpy()).tolist())))
        return output

    monkeypatch.setattr(ResampleToMatch, "__call__", recording_call)
    source = make_source(
        write_manifest(tmp_path, rows),
        tmp_path / "cache",
        sequences=("t1",),
        mask="mask",
        crop_margin=0,
        spatial_size=(8, 8, 8),
    )
    source.load("S1")

    assert len(calls) == 1
    assert calls[0][0] == "nearest"
    assert calls[0][1] == {0.0, 1.0}


def test_crop_keeps_mask_box(tmp_path: Path) -> None:
    # Each voxel's value encodes its coordinates, so the output shows where the crop started.
    x, y, z = np.meshgrid(np.arange(40), np.arange(40), np.arange(40), indexing="ij")
    write_nifti(tmp_path / "image.nii.gz", x * 10000 + y * 100 + z + 1)
    mask = np.zeros((40, 40, 40))
    mask[10:20, 12:18, 25:30] = 1.0
    write_nifti(tmp_path / "mask.nii.gz", mask)
    rows = [{"subject_id": "S1", "t1": "image.nii.gz", "mask": "mask.nii.gz"}]

    # Box [10:20, 12:18, 25:30] plus 2 voxels each side is [8:22, 10:20, 23:32], shape (14, 10, 9);
    # with spatial_size equal to that shape the fit step changes nothing.
    source = make_source(
        write_manifest(tmp_path, rows),
        tmp_path / "cache",
        sequences=("t1",),
        mask="mask",
        crop_margin=2,
        spatial_size=(14, 10, 9),
        normalize="none",
    )
    volume, _ = source.load("S1")
    assert volume[0, 0, 0, 0] == 8 * 10000 + 10 * 100 + 23 + 1
    assert volume[0, -1, -1, -1] == 21 * 10000 + 19 * 100 + 31 + 1


def test_crop_margin_clipped_at_edge(tmp_path: Path) -> None:
    write_nifti(tmp_path / "image.nii.gz", np.ones((20, 20, 20)))
    mask = np.zeros((20, 20, 20))
    mask[0:4, 16:20, 8:12] = 1.0
    write_nifti(tmp_path / "mask.nii.gz", mask)
    rows = [{"subject_id": "S1", "t1": "image.nii.gz", "mask": "mask.nii.gz"}]

    # Box plus 3 voxels is [-3:7, 13:23, 5:15], clipped to [0:7, 13:20, 5:15] of shape (7, 7, 10).
    # Fitting into 10^3 keeps the scale and pads x and y by 1 voxel before and 2 after.
    source = make_source(
        write_manifest(tmp_path, rows),
        tmp_path / "cache",
        sequences=("t1",),
        mask="mask",
        crop_margin=3,
        spatial_size=(10, 10, 10),
        normalize="none",
    )
    volume, _ = source.load("S1")
    content = np.argwhere(volume[0] > 0)
    assert content.min(axis=0).tolist() == [1, 1, 0]
    assert content.max(axis=0).tolist() == [7, 7, 9]


def test_empty_mask_cell_warns_and_skips_crop(tmp_path: Path) -> None:
    write_nifti(tmp_path / "image.nii.gz", np.ones((12, 12, 12)))
    mask = np.zeros((12, 12, 12))
    mask[4:6, 4:6, 4:6] = 1.0
    write_nifti(tmp_path / "mask.nii.gz", mask)
    rows = [
        {"subject_id": "S1", "t1": "image.nii.gz", "mask": "mask.nii.gz"},
        {"subject_id": "S2", "t1": "image.nii.gz", "mask": ""},
    ]
    with pytest.warns(DataWarning, match="1 subject with an empty 'mask' cell, left uncropped: S2"):
        source = make_source(
            write_manifest(tmp_path, rows),
            tmp_path / "cache",
            sequences=("t1",),
            mask="mask",
            crop_margin=0,
            spatial_size=(12, 12, 12),
            normalize="none",
        )
    volume, _ = source.load("S2")
    np.testing.assert_array_equal(volume[0], np.ones((12, 12, 12), dtype=np.float32))


def test_mask_without_foreground_warns(tmp_path: Path) -> None:
    write_nifti(tmp_path / "image.nii.gz", np.ones((8, 8, 8)))
    write_nifti(tmp_path / "mask.nii.gz", np.zeros((8, 8, 8)))
    rows = [{"subject_id": "S1", "t1": "image.nii.gz", "mask": "mask.nii.gz"}]
    source = make_source(
        write_manifest(tmp_path, rows),
        tmp_path / "cache",
        sequences=("t1",),
        mask="mask",
        crop_margin=1,
        spatial_size=(8, 8, 8),
    )
    with pytest.warns(DataWarning, match="'S1'.*no foreground"):
        volume, _ = source.load("S1")
    assert volume.shape == (1, 8, 8, 8)


def test_fit_keeps_proportions_and_pads(tmp_path: Path) -> None:
    # 20 x 20 x 10 mm fitted into 10^3 scales every axis by 1/2, so z gets 5 slices, padded 2
    # before and 3 after.
    write_nifti(tmp_path / "image.nii.gz", np.ones((20, 20, 10)))
    rows = [{"subject_id": "S1", "t1": "image.nii.gz"}]
    source = make_source(
        write_manifest(tmp_path, rows),
        tmp_path / "cache",
        sequences=("t1",),
        spatial_size=(10, 10, 10),
        normalize="none",
    )
    volume, _ = source.load("S1")
    filled_slices = np.flatnonzero(volume[0].any(axis=(0, 1)))
    assert filled_slices.tolist() == [2, 3, 4, 5, 6]


def test_fit_uses_spacing_in_mm(tmp_path: Path) -> None:
    # 20 x 20 x 10 voxels at 1 x 1 x 2 mm is a 20 mm cube, so it fills 10^3 without padding.
    write_nifti(tmp_path / "image.nii.gz", np.ones((20, 20, 10)), spacing=(1.0, 1.0, 2.0))
    rows = [{"subject_id": "S1", "t1": "image.nii.gz"}]
    source = make_source(
        write_manifest(tmp_path, rows),
        tmp_path / "cache",
        sequences=("t1",),
        spatial_size=(10, 10, 10),
        normalize="none",
    )
    volume, _ = source.load("S1")
    assert volume[0].all()


def test_stretch_fills_every_axis(tmp_path: Path) -> None:
    write_nifti(tmp_path / "image.nii.gz", np.ones((20, 20, 10)))
    rows = [{"subject_id": "S1", "t1": "image.nii.gz"}]
    source = make_source(
        write_manifest(tmp_path, rows),
        tmp_path / "cache",
        sequences=("t1",),
        spatial_size=(10, 10, 10),
        resize_mode="stretch",
        normalize="none",
    )
    volume, _ = source.load("S1")
    np.testing.assert_allclose(volume[0], np.ones((10, 10, 10)), atol=1e-5)


def test_zscore_nonzero_hand_computed(tmp_path: Path) -> None:
    # Nonzero voxels are half 2 and half 4: mean 3, standard deviation 1, so they become -1 and +1.
    image = np.zeros((4, 4, 4))
    image[1:3, 1:3, 1] = 2.0
    image[1:3, 1:3, 2] = 4.0
    write_nifti(tmp_path / "image.nii.gz", image)
    rows = [{"subject_id": "S1", "t1": "image.nii.gz"}]
    source = make_source(
        write_manifest(tmp_path, rows),
        tmp_path / "cache",
        sequences=("t1",),
        spatial_size=(4, 4, 4),
    )
    volume, _ = source.load("S1")

    expected = np.zeros((4, 4, 4), dtype=np.float32)
    expected[1:3, 1:3, 1] = -1.0
    expected[1:3, 1:3, 2] = 1.0
    np.testing.assert_allclose(volume[0], expected, atol=1e-6)


def test_zscore_all_voxels_hand_computed(tmp_path: Path) -> None:
    # Half the voxels 0 and half 2: mean 1, standard deviation 1, so they become -1 and +1.
    image = np.zeros((4, 4, 4))
    image[:, :, 2:] = 2.0
    write_nifti(tmp_path / "image.nii.gz", image)
    rows = [{"subject_id": "S1", "t1": "image.nii.gz"}]
    source = make_source(
        write_manifest(tmp_path, rows),
        tmp_path / "cache",
        sequences=("t1",),
        spatial_size=(4, 4, 4),
        normalize="zscore",
    )
    volume, _ = source.load("S1")
    np.testing.assert_allclose(np.unique(volume[0]), [-1.0, 1.0], atol=1e-6)


def test_load_many_order_and_shapes(two_grid_cohort: Path, tmp_path: Path) -> None:
    source = make_source(
        two_grid_cohort, tmp_path / "cache", sequences=("fine", "coarse"), spatial_size=(8, 8, 8)
    )
    volumes, flags = source.load_many(["S2", "S1"], progress=True)
    assert volumes.shape == (2, 2, 8, 8, 8)
    assert volumes.dtype == np.float32
    np.testing.assert_array_equal(flags, np.array([[1.0, 0.0], [1.0, 1.0]], dtype=np.float32))
    np.testing.assert_array_equal(volumes[0], source.load("S2")[0])


def test_estimate_cache_bytes_formula(two_grid_cohort: Path, tmp_path: Path) -> None:
    source = make_source(
        two_grid_cohort, tmp_path / "cache", sequences=("fine", "coarse"), spatial_size=(8, 6, 4)
    )
    assert source.estimate_cache_bytes() == 2 * 2 * (8 * 6 * 4) * 4


# Cache


def test_cache_hit_skips_loader(
    two_grid_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"sequences": ("fine", "coarse"), "spatial_size": (8, 8, 8)}
    first = make_source(two_grid_cohort, tmp_path / "cache", **settings)
    cold = first.load_many(["S1", "S2"])
    assert (first.cache_hits, first.cache_misses) == (0, 2)

    def fail_if_called(*args: object, **kwargs: object) -> None:
        pytest.fail("MONAI LoadImage was called although the cache holds the volume")

    monkeypatch.setattr(LoadImage, "__call__", fail_if_called)
    second = make_source(two_grid_cohort, tmp_path / "cache", **settings)
    warm = second.load_many(["S1", "S2"])
    assert (second.cache_hits, second.cache_misses) == (2, 0)
    np.testing.assert_array_equal(warm[0], cold[0])


def test_cache_miss_after_setting_change(two_grid_cohort: Path, tmp_path: Path) -> None:
    make_source(
        two_grid_cohort, tmp_path / "cache", sequences=("fine", "coarse"), spatial_size=(8, 8, 8)
    ).load("S1")
    changed = make_source(
        two_grid_cohort,
        tmp_path / "cache",
        sequences=("fine", "coarse"),
        spatial_size=(8, 8, 8),
        normalize="none",
    )
    changed.load("S1")
    assert (changed.cache_hits, changed.cache_misses) == (0, 1)


def test_cache_miss_after_file_touched(two_grid_cohort: Path, tmp_path: Path) -> None:
    make_source(
        two_grid_cohort, tmp_path / "cache", sequences=("fine", "coarse"), spatial_size=(8, 8, 8)
    ).load("S1")
    coarse = tmp_path / "coarse.nii.gz"
    status = coarse.stat()
    os.utime(coarse, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))

    again = make_source(
        two_grid_cohort, tmp_path / "cache", sequences=("fine", "coarse"), spatial_size=(8, 8, 8)
    )
    again.load("S1")
    assert (again.cache_hits, again.cache_misses) == (0, 1)


def test_cache_write_leaves_no_tmp(two_grid_cohort: Path, tmp_path: Path) -> None:
    source = make_source(
        two_grid_cohort, tmp_path / "cache", sequences=("fine", "coarse"), spatial_size=(8, 8, 8)
    )
    source.load_many(["S1", "S2"])
    written = sorted(path.suffix for path in (tmp_path / "cache").rglob("*") if path.is_file())
    assert written == [".npy", ".npy"]


def test_failed_cache_write_leaves_nothing(
    two_grid_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write_half_then_fail(file, array, **kwargs) -> None:
        file.write(b"\x93NUMPY partial")
        raise OSError("No space left on device")

    source = make_source(
        two_grid_cohort, tmp_path / "cache", sequences=("fine", "coarse"), spatial_size=(8, 8, 8)
    )
    with monkeypatch.context() as patch:
        patch.setattr(np, "save", write_half_then_fail)
        volume, _ = source.load("S1")
    assert volume.shape == (2, 8, 8, 8)
    assert [path for path in (tmp_path / "cache").rglob("*") if path.is_file()] == []

    again = make_source(
        two_grid_cohort, tmp_path / "cache", sequences=("fine", "coarse"), spatial_size=(8, 8, 8)
    )
    np.testing.assert_array_equal(again.load("S1")[0], volume)
    assert again.cache_misses == 1


def test_corrupt_cache_file_rebuilt(
    two_grid_cohort: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = make_source(
        two_grid_cohort, tmp_path / "cache", sequences=("fine", "coarse"), spatial_size=(8, 8, 8)
    )
    expected, _ = first.load("S1")
    (entry,) = (tmp_path / "cache").rglob("*.npy")
    entry.write_bytes(entry.read_bytes()[:100])

    second = make_source(
        two_grid_cohort, tmp_path / "cache", sequences=("fine", "coarse"), spatial_size=(8, 8, 8)
    )
    with caplog.at_level(logging.WARNING, logger="fusion"):
        volume, _ = second.load("S1")
    assert second.cache_misses == 1
    assert "unreadable" in caplog.text
    np.testing.assert_array_equal(volume, expected)
    np.testing.assert_array_equal(np.load(entry), expected)


# Input errors


def test_manifest_not_found(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="mri: manifest not found: .*missing.csv"):
        make_source(tmp_path / "missing.csv", tmp_path / "cache", sequences=("t1",))


def test_id_column_missing_suggests(tmp_path: Path) -> None:
    write_nifti(tmp_path / "a.nii.gz", np.ones((4, 4, 4)))
    manifest = write_manifest(tmp_path, [{"subject": "S1", "t1": "a.nii.gz"}])
    with pytest.raises(DataError, match="id column 'subject_id' not found.*Did you mean 'subject'"):
        make_source(manifest, tmp_path / "cache", sequences=("t1",))


def test_sequence_column_missing_suggests(tmp_path: Path) -> None:
    write_nifti(tmp_path / "a.nii.gz", np.ones((4, 4, 4)))
    manifest = write_manifest(tmp_path, [{"subject_id": "S1", "flair": "a.nii.gz"}])
    with pytest.raises(DataError, match="sequence column 'flari' not found.*Did you mean 'flair'"):
        make_source(manifest, tmp_path / "cache", sequences=("flari",))


def test_mask_column_missing(tmp_path: Path) -> None:
    write_nifti(tmp_path / "a.nii.gz", np.ones((4, 4, 4)))
    manifest = write_manifest(tmp_path, [{"subject_id": "S1", "t1": "a.nii.gz", "seg": "a.nii.gz"}])
    with pytest.raises(DataError, match="mask column 'mask' not found"):
        make_source(manifest, tmp_path / "cache", sequences=("t1",), mask="mask")


def test_duplicate_subject_ids_listed(tmp_path: Path) -> None:
    write_nifti(tmp_path / "a.nii.gz", np.ones((4, 4, 4)))
    rows = [
        {"subject_id": subject, "t1": "a.nii.gz"}
        for subject in ("S1", "S2", "S1", "S3", "S2", "S1")
    ]
    with pytest.raises(
        DataError, match="lists 2 subject ids more than once.*S1 \\(3 rows\\), S2 \\(2 rows\\)"
    ):
        make_source(write_manifest(tmp_path, rows), tmp_path / "cache", sequences=("t1",))


def test_empty_subject_id_line(tmp_path: Path) -> None:
    write_nifti(tmp_path / "a.nii.gz", np.ones((4, 4, 4)))
    rows = [{"subject_id": "S1", "t1": "a.nii.gz"}, {"subject_id": "", "t1": "a.nii.gz"}]
    with pytest.raises(DataError, match="1 row with an empty 'subject_id' \\(lines 3\\)"):
        make_source(write_manifest(tmp_path, rows), tmp_path / "cache", sequences=("t1",))


def test_missing_file_named(tmp_path: Path) -> None:
    rows = [{"subject_id": "S1", "t1": "gone.nii.gz"}]
    with pytest.raises(
        DataError,
        match="1 file listed in manifest .* not found: S1 t1=.*gone.nii.gz.*paths_relative_to",
    ):
        make_source(write_manifest(tmp_path, rows), tmp_path / "cache", sequences=("t1",))


def test_path_escaping_root_rejected(tmp_path: Path) -> None:
    rows = [{"subject_id": "S1", "t1": "../../etc/x.nii.gz"}]
    with pytest.raises(DataError, match="outside paths_relative_to.*S1 t1='../../etc/x.nii.gz'"):
        make_source(write_manifest(tmp_path, rows), tmp_path / "cache", sequences=("t1",))


def test_paths_relative_to_other_root(tmp_path: Path) -> None:
    (tmp_path / "cohort" / "imaging").mkdir(parents=True)
    write_nifti(tmp_path / "cohort" / "imaging" / "a.nii.gz", np.ones((4, 4, 4)))
    manifest = write_manifest(
        tmp_path / "cohort" / "imaging", [{"subject_id": "S1", "t1": "imaging/a.nii.gz"}]
    )
    source = ImagingSource(
        manifest,
        name="mri",
        id_column="subject_id",
        settings=ImagingSettings(sequences=("t1",), spatial_size=(4, 4, 4)),
        cache_dir=tmp_path / "cache",
        paths_relative_to=tmp_path / "cohort",
    )
    assert source.load("S1")[0].shape == (1, 4, 4, 4)


def test_truncated_file_one_line_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    whole = write_nifti(tmp_path / "whole.nii.gz", np.random.default_rng(0).random((16, 16, 16)))
    data = whole.read_bytes()
    (tmp_path / "broken.nii.gz").write_bytes(data[: len(data) // 2])
    rows = [{"subject_id": "S1", "t1": "broken.nii.gz"}]
    source = make_source(
        write_manifest(tmp_path, rows),
        tmp_path / "cache",
        sequences=("t1",),
        spatial_size=(4, 4, 4),
    )

    with caplog.at_level(logging.DEBUG, logger="fusion"), pytest.raises(DataError) as raised:
        source.load("S1")
    message = str(raised.value)
    assert "subject 'S1'" in message
    assert "broken.nii.gz" in message
    assert "MONAI could not read" in message
    assert "\n" not in message
    assert "Traceback" in caplog.text


def test_multichannel_volume_shows_shape(tmp_path: Path) -> None:
    nib.save(
        nib.Nifti1Image(np.zeros((8, 8, 6, 3), dtype=np.float32), np.eye(4)),
        tmp_path / "four.nii.gz",
    )
    rows = [{"subject_id": "S1", "t1": "four.nii.gz"}]
    source = make_source(
        write_manifest(tmp_path, rows),
        tmp_path / "cache",
        sequences=("t1",),
        spatial_size=(4, 4, 4),
    )
    with pytest.raises(
        DataError, match="4D with shape \\(8, 8, 6, 3\\).*channels or time points"
    ):
        source.load("S1")


def test_vector_volume_rejected(tmp_path: Path) -> None:
    vector = nib.Nifti1Image(np.zeros((8, 8, 6, 1, 2), dtype=np.float32), np.eye(4))
    vector.header.set_intent("vector")
    nib.save(vector, tmp_path / "vector.nii.gz")
    rows = [{"subject_id": "S1", "t1": "vector.nii.gz"}]
    source = make_source(
        write_manifest(tmp_path, rows),
        tmp_path / "cache",
        sequences=("t1",),
        spatial_size=(4, 4, 4),
    )
    with pytest.raises(DataError, match="expected 1 channel.*file has 2.*\\(2, 8, 8, 6\\)"):
        source.load("S1")


def test_unknown_subject_suggests(two_grid_cohort: Path, tmp_path: Path) -> None:
    source = make_source(
        two_grid_cohort, tmp_path / "cache", sequences=("fine", "coarse"), spatial_size=(8, 8, 8)
    )
    with pytest.raises(DataError, match="'S11' not found.*Did you mean 'S1'"):
        source.load("S11")


# Real data


def test_nrrd_volume_loads(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "pyradiomics_volumes"
    rows = [{"subject_id": "brain1", "t1": "brain1_image.nrrd", "mask": "brain1_label.nrrd"}]
    manifest = write_manifest(tmp_path, rows)
    settings = ImagingSettings(
        sequences=("t1",), mask="mask", crop_margin=2, spatial_size=(16, 16, 16)
    )
    source = ImagingSource(
        manifest,
        name="mri",
        id_column="subject_id",
        settings=settings,
        cache_dir=tmp_path / "cache",
        paths_relative_to=folder,
    )
    volume, flags = source.load("brain1")
    assert volume.shape == (1, 16, 16, 16)
    np.testing.assert_array_equal(flags, np.array([1.0], dtype=np.float32))
    assert np.isfinite(volume).all()
    assert volume.std() > 0


def test_nrrd_anisotropic_spacing_fit(shared_data: Path, tmp_path: Path) -> None:
    # 256 x 256 x 25 voxels at 0.78 x 0.78 x 6.5 mm is 200 x 200 x 162.5 mm: fitted into 32^3 the
    # z axis gets round(32 * 162.5 / 200) = 26 slices, padded 3 before and 3 after.
    folder = shared_data / "pyradiomics_volumes"
    manifest = write_manifest(tmp_path, [{"subject_id": "brain1", "t1": "brain1_image.nrrd"}])
    settings = ImagingSettings(sequences=("t1",), spatial_size=(32, 32, 32))
    source = ImagingSource(
        manifest,
        name="mri",
        id_column="subject_id",
        settings=settings,
        cache_dir=tmp_path / "cache",
        paths_relative_to=folder,
    )
    volume, _ = source.load("brain1")
    filled_slices = np.flatnonzero(volume[0].any(axis=(0, 1)))
    assert filled_slices.min() == 3
    assert filled_slices.max() == 28


def test_tcga_lgg_subjects(shared_data: Path, tmp_path: Path) -> None:
    cohort = shared_data / "tcga_lgg"
    settings = ImagingSettings(
        sequences=("flair", "t1pre", "t1post"),
        mask="mask",
        crop_margin=4,
        spatial_size=(32, 32, 32),
    )
    source = ImagingSource(
        cohort / "imaging" / "manifest.csv",
        name="mri",
        id_column="patient_id",
        settings=settings,
        cache_dir=tmp_path / "cache",
        paths_relative_to=cohort,
    )
    assert len(source.subject_ids) == 110
    assert source.availability.sum().tolist() == [110, 104, 100]

    # TCGA-DU-6407 lacks t1post; TCGA-DU-7013 lacks both T1 sequences.
    subjects = ["TCGA-CS-4941", "TCGA-DU-6407", "TCGA-DU-7013"]
    volumes, flags = source.load_many(subjects)
    assert volumes.shape == (3, 3, 32, 32, 32)
    expected_flags = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(flags, expected_flags)
    for row, channel in np.argwhere(expected_flags == 0):
        assert not volumes[row, channel].any()
    for row, channel in np.argwhere(expected_flags == 1):
        nonzero = volumes[row, channel][volumes[row, channel] != 0]
        assert abs(float(nonzero.mean())) < 1e-3
        assert abs(float(nonzero.std()) - 1.0) < 1e-3
