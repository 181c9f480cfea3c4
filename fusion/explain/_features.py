"""Feature attributions of the fused prediction with Captum's integrated gradients.

For modality ``m`` the attributed function is: its attributable inputs, through its
encoder and task head, into the fusion head, with every other modality held at the
subject's cached outputs. Omics features are named by ``var_names`` and clinical columns
by their original names. Categorical columns are attributed at their embedding output and
summed back to one score per column, because integer codes cannot be interpolated.
"""

from __future__ import annotations

import pandas as pd
import torch
from captum.attr import IntegratedGradients

from ..strategies._late import FusionHead, FusionInputs
from ..strategies._unimodal import UnimodalLearner
from ._modalities import eval_mode

__all__ = ["feature_attributions"]


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
