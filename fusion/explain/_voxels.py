"""Voxel attributions of the fused prediction, mapped back onto each subject's own scan.

:func:`voxel_attributions` runs Captum's integrated gradients on the preprocessed volume
``(C, X, Y, Z)`` that the imaging encoder reads, through the fusion head, with every other
modality held at the subject's outputs. The baseline is a volume of zeros: after z-scoring
that is the mean intensity inside the head and the background outside it. The acquisition
flags are passed as fixed arguments, so they are never interpolated. One subject is
attributed at a time and Captum evaluates ``internal_batch_size`` interpolation steps per
forward pass, so memory grows with that number, not with ``n_steps``.

:func:`to_source_geometry` maps a model-grid map back onto the grid of the subject's
reference sequence file. The spatial steps of :class:`~fusion.data.ImagingSource`
(crop, resize, pad) are replayed on an empty volume, which gives the model grid's affine.
MONAI ``ResampleToMatch`` then resamples the map through the two affines. The result has the
reference file's shape and affine, so it overlays on that scan in any viewer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from captum.attr import IntegratedGradients
from monai.data import MetaTensor
from monai.transforms import ResampleToMatch

from ..strategies._late import FusionHead, FusionInputs
from ._modalities import eval_mode

__all__ = ["SourceGeometry", "to_source_geometry", "voxel_attributions"]


def voxel_attributions(head: FusionHead, inputs: FusionInputs, learner, subject_ids: pd.Index, *,
                       n_steps: int = 32, internal_batch_size: int = 4) -> np.ndarray:
    """Return integrated-gradients attributions of the fused score per input voxel.

    Parameters
    ----------
    head
        Fitted fusion head.
    inputs
        Fusion inputs holding at least ``subject_ids``; the imaging modality's entry is
        recomputed from the volumes.
    learner
        Fitted imaging learner (``volume_inputs`` gives its volumes and flags).
    subject_ids
        Subjects that have the learner's modality.
    n_steps
        Integration steps of integrated gradients.
    internal_batch_size
        Interpolated volumes per forward pass; bounds the memory.

    Returns
    -------
    numpy.ndarray
        float32, ``(n, C, X, Y, Z)``: per subject the attribution of each voxel of each
        sequence, in the fused score's unit (for multiclass, the predicted class's logit).
        By completeness each subject's map sums, up to the integration error, to the fused
        score minus the score with a zero volume.
    """
    index = inputs.modalities.index(learner.name)
    n_modalities = len(inputs.modalities)
    subset = inputs.subset(pd.Index(subject_ids))
    volumes, flags = learner.volume_inputs(pd.Index(subject_ids))  # (n, C, X, Y, Z), (n, C)

    def fused(volume: torch.Tensor, flag: torch.Tensor, mask: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        embeddings, scores = list(rest[:n_modalities]), list(rest[n_modalities:])
        embedding, score = learner.model_(volume, flag)
        embeddings[index] = embedding
        scores[index] = score
        return head(embeddings, scores, mask)

    maps = np.zeros(tuple(volumes.shape), dtype=np.float32)
    integrated_gradients = IntegratedGradients(fused)
    with eval_mode(head, learner.model_):
        for row in range(len(subject_ids)):
            one = slice(row, row + 1)
            others = (subset.mask[one], *(e[one] for e in subset.embeddings), *(s[one] for s in subset.scores))
            target = 0
            if head.output_dim > 1:
                with torch.no_grad():
                    target = int(head(subset.embeddings, subset.scores, subset.mask)[row].argmax())
            attribution = integrated_gradients.attribute(
                volumes[one], baselines=torch.zeros_like(volumes[one]), target=target,
                additional_forward_args=(flags[one], *others), n_steps=n_steps,
                internal_batch_size=internal_batch_size,
            )
            maps[row] = attribution[0].detach().numpy()
    return maps


class SourceGeometry:
    """The reference scan of one subject and the affine of its model grid.

    Attributes
    ----------
    scan
        The reference sequence as read, float32 ``(X0, Y0, Z0)``.
    affine
        The reference file's affine as MONAI reads it, ``(4, 4)``.
    path
        The reference file.
    model_affine
        Affine of the model grid ``(X, Y, Z)`` after crop, resize and pad.
    """

    def __init__(self, source, subject_id: str) -> None:
        column = source._reference_columns[subject_id]
        reference = source._read_volume(subject_id, column)  # (1, X0, Y0, Z0)
        grid = MetaTensor(torch.zeros((1, *reference.shape[1:])), affine=reference.affine)
        if source._crops:
            grid = source._crop(subject_id, grid, reference, ResampleToMatch(padding_mode="zeros"))
        grid = source._resize(grid)

        self.path = Path(source._files[subject_id][column])
        self.reference = reference
        self.scan = reference[0].as_tensor().numpy().astype(np.float32)
        self.affine = np.asarray(reference.affine, dtype=np.float64)
        self.model_affine = np.asarray(grid.affine, dtype=np.float64)


def to_source_geometry(volume_map: np.ndarray, geometry: SourceGeometry) -> np.ndarray:
    """Resample a model-grid map ``(X, Y, Z)`` onto the subject's reference grid.

    Values are rescaled from per model voxel to per source voxel by the ratio of the voxel
    volumes, so the returned map sums to about the same total as ``volume_map``. Voxels
    outside the cropped field of view are 0.

    Returns
    -------
    numpy.ndarray
        float32 with the reference file's spatial shape.
    """
    attribution = MetaTensor(torch.as_tensor(volume_map, dtype=torch.float32)[None],
                             affine=torch.as_tensor(geometry.model_affine))
    resampled = ResampleToMatch(padding_mode="zeros")(attribution, geometry.reference, mode="bilinear")
    ratio = abs(np.linalg.det(geometry.affine[:3, :3]) / np.linalg.det(geometry.model_affine[:3, :3]))
    return (resampled[0].as_tensor().numpy() * ratio).astype(np.float32)
