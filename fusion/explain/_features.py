"""Feature attributions of the fused prediction with Captum's integrated gradients.

For modality ``m`` the attributed function is: its attributable inputs, through its
encoder and task head, into the fusion head, with every other modality held at the
subject's cached outputs. Omics features are named by ``var_names`` and clinical columns
by their original names. Categorical columns are attributed at their embedding output and
summed back to one score per column, because integer codes cannot be interpolated.

:func:`integrated_gradients` is the same rule for any model with named inputs: float
inputs are attributed as they are, integer inputs at the output of their embedding.
Before Captum runs, every input must have the same number of samples on dimension 0 and
the model must return one row per sample, so a mis-batched input raises an error instead
of giving attributions of the wrong samples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pandas as pd
import torch
from captum.attr import IntegratedGradients

from .._errors import DataError
from ..strategies._late import FusionHead, FusionInputs
from ..strategies._unimodal import UnimodalLearner
from ._modalities import eval_mode

__all__ = ["feature_attributions", "integrated_gradients"]


def _check_leading_dimension(inputs: Mapping[str, torch.Tensor]) -> int:
    """Return the shared sample count N of dimension 0; DataError naming a mismatched input."""
    names = list(inputs)
    if not names:
        raise DataError("integrated gradients: no inputs were given")
    first = names[0]
    n = int(inputs[first].shape[0]) if inputs[first].ndim else 0
    for name in names:
        tensor = inputs[name]
        if tensor.ndim == 0 or int(tensor.shape[0]) != n:
            msg = (
                f"integrated gradients: input {name!r} has shape {tuple(tensor.shape)}, but input "
                f"{first!r} has N={n} samples on dimension 0; every input needs the same N "
                "first. Move the sample dimension to the front (for example permute or "
                "unsqueeze) before attributing."
            )
            raise DataError(msg)
    return n


def _check_integer_inputs(inputs: Mapping[str, torch.Tensor], embeddings: Mapping[str, Callable]) -> None:
    for name, tensor in inputs.items():
        if tensor.is_floating_point() or name in embeddings:
            continue
        msg = (
            f"integrated gradients: input {name!r} has dtype {tensor.dtype}. Integrated "
            "gradients interpolates every input between its baseline and its value, which is "
            "undefined for integer codes; pass an embedding for it (embeddings={name!r: ...}) "
            "so that it is attributed at the embedding output."
        )
        raise DataError(msg)


def integrated_gradients(
    forward: Callable[..., torch.Tensor],
    inputs: Mapping[str, torch.Tensor],
    *,
    embeddings: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    target: int | torch.Tensor | None = None,
    n_steps: int = 32,
) -> dict[str, torch.Tensor]:
    """Attribute ``forward(**inputs)`` with Captum's integrated gradients, one map per input.

    Parameters
    ----------
    forward
        Called with keyword arguments named like ``inputs``. An input listed in
        ``embeddings`` arrives as its embedding output, shape ``(N, columns, e)``.
    inputs
        Name to tensor, each with the N samples on dimension 0. Float tensors are attributed
        directly; integer tensors need an entry in ``embeddings``.
    embeddings
        Name to a function mapping integer codes ``(N, columns)`` to ``(N, columns, e)``,
        for example one ``nn.Embedding`` per column stacked on dimension 1.
    target
        Output column to attribute for a model with several outputs.
    n_steps
        Steps of the Riemann approximation of the path integral.

    Returns
    -------
    dict of str to torch.Tensor
        Float inputs keep their shape. Embedded inputs are summed over the embedding axis
        back to one score per column, shape ``(N, columns)``. Baselines are zeros of the
        attributed tensor (the embedding output for integer inputs).

    Raises
    ------
    DataError
        An input whose dimension 0 differs from the others, an integer input without an
        embedding, or a model that returns another number of rows than N.
    """
    embeddings = dict(embeddings or {})
    n = _check_leading_dimension(inputs)
    _check_integer_inputs(inputs, embeddings)

    names = list(inputs)
    attributed = tuple(
        embeddings[name](inputs[name]).detach() if name in embeddings else inputs[name].detach()
        for name in names
    )

    def wrapped(*tensors: torch.Tensor) -> torch.Tensor:
        return forward(**dict(zip(names, tensors)))

    with torch.no_grad():
        output = wrapped(*attributed)
    if output.ndim == 0 or int(output.shape[0]) != n:
        msg = (
            f"integrated gradients: the model returned shape {tuple(output.shape)} for inputs "
            f"with N={n} samples; it must return one row per sample. A layer inside forward "
            "moves or merges the sample dimension (for example a reshape of (1, 4, 41) to "
            "(4, 41)); keep dimension 0 as the samples."
        )
        raise DataError(msg)

    baselines = tuple(torch.zeros_like(tensor) for tensor in attributed)
    values = IntegratedGradients(wrapped).attribute(
        attributed, baselines=baselines, target=target, n_steps=n_steps
    )
    result = {}
    for name, value in zip(names, values):
        # (N, columns, e) -> (N, columns) for embedded inputs: one score per column.
        result[name] = value.detach().sum(dim=-1) if name in embeddings else value.detach()
    return result


def feature_attributions(head: FusionHead, inputs: FusionInputs, learner: UnimodalLearner, *,
                         n_steps: int = 32, internal_batch_size: int = 256) -> pd.DataFrame:
    """Return long-format attributions: ``subject_id``, ``modality``, ``feature``, ``attribution``.

    Only subjects that have the learner's modality are attributed. Returns an empty frame
    when the modality has no feature-level attribution (imaging voxels are not attributed
    here).
    """
    columns = ["subject_id", "modality", "feature", "attribution"]
    index = inputs.modalities.index(learner.name)
    present = inputs.subject_ids[inputs.mask[:, index].numpy() > 0]
    if len(present) == 0:
        return pd.DataFrame(columns=columns)
    attributable = learner.attribution_inputs(present)
    if attributable is None:
        return pd.DataFrame(columns=columns)
    subset = inputs.subset(present)
    _check_leading_dimension({
        **{f"{learner.name} input {i}": t for i, t in enumerate(attributable.tensors)},
        "fusion mask": subset.mask,
    })
    n_inputs = len(attributable.tensors)
    n_modalities = len(subset.modalities)

    def fused(*args: torch.Tensor) -> torch.Tensor:
        tensors, rest = args[:n_inputs], args[n_inputs:]
        mask, embeddings, scores = rest[0], list(rest[1:1 + n_modalities]), list(rest[1 + n_modalities:])
        embedding, score = learner.forward_attribution(*tensors)
        embeddings[index] = embedding
        scores[index] = score
        return head(embeddings, scores, mask)

    target = None
    with eval_mode(head, learner.model_):
        if head.output_dim > 1:
            with torch.no_grad():
                target = head(subset.embeddings, subset.scores, subset.mask).argmax(dim=1)
        attributions = IntegratedGradients(fused).attribute(
            attributable.tensors,
            baselines=attributable.baselines,
            target=target if target is not None else 0,
            additional_forward_args=(subset.mask, *subset.embeddings, *subset.scores),
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
        )

    rows = []
    for values, names, summed in zip(attributions, attributable.names, attributable.summed_axes):
        values = values.detach()
        if summed:
            values = values.sum(dim=-1)  # (n, columns, e) -> (n, columns)
        values = values.numpy()
        for column, name in enumerate(names):
            rows.append(pd.DataFrame({
                "subject_id": present, "modality": learner.name, "feature": name,
                "attribution": values[:, column].astype(float),
            }))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)
