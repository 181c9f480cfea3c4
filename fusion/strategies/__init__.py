"""Unimodal learners and late-fusion heads."""

from ._late import HEADS, FusionHead, FusionInputs, fit_head, make_head, predict_head, stack_outputs
from ._unimodal import (
    AttributionInputs,
    ModalityOutputs,
    UnimodalLearner,
    align_embeddings,
    make_learner,
)

__all__ = [
    "HEADS",
    "AttributionInputs",
    "FusionHead",
    "FusionInputs",
    "ModalityOutputs",
    "UnimodalLearner",
    "align_embeddings",
    "fit_head",
    "make_head",
    "make_learner",
    "predict_head",
    "stack_outputs",
]
