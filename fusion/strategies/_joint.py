"""Intermediate (joint) fusion: modality encoders and a fusion layer trained end to end.

Each modality contributes a :class:`ModalityBranch`: an encoder that maps its input tensors
to an ``(n, d_m)`` embedding, and a function that builds those tensors for subject ids. The
fusion layer is a :class:`~fusion.strategies.FusionHead` that reads the embeddings and the
availability mask. It replaces the embedding of an absent modality with a learned
"missing" token, so the encoder's output for that subject is never used. Fusion layers:

- ``concat``: projected embeddings concatenated into an MLP (the late ``mlp`` head);
- ``attention``: a learned query attends over modality tokens (the late ``attention`` head);
- ``gated``: each token is scaled by a sigmoid gate computed from all tokens, then summed
  (a gated multimodal unit);
- ``low_rank``: low-rank multimodal tensor fusion. Each token with a constant 1 appended
  is projected by ``rank`` modality-specific factors; the product over modalities, summed
  over the rank, approximates the outer-product tensor of all modalities.

During training each present modality of each subject is hidden with probability
``modality_dropout`` per batch, so the model learns to predict from any subset.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._task import Task
from ..training import seed_everything, single_thread, target_tensor, train_network
from ._late import AttentionHead, FusionHead, MLPHead, _ProjectedTokens

__all__ = ["JOINT_FUSIONS", "GatedFusion", "JointModel", "LowRankFusion", "ModalityBranch", "fit_joint",
           "predict_joint"]


@dataclasses.dataclass
class ModalityBranch:
    """One modality of a joint model.

    Attributes
    ----------
    encoder
        ``encoder(*tensors)`` returns ``(n, embedding_dim)``; it must expose ``embedding_dim``.
    inputs
        Returns the encoder's input tensors for subject ids that have the modality.
    example_id
        A subject that has the modality, used for input shapes when no subject in a batch has it.
    small_network
        False for 3D convolutional networks, which train faster on every CPU thread.
    """

    encoder: nn.Module
    inputs: Callable[[pd.Index], tuple[torch.Tensor, ...]]
    example_id: str
    small_network: bool = True


class GatedFusion(FusionHead):
    """Sum of modality tokens, each scaled by a sigmoid gate computed from all tokens."""

    def __init__(self, dims: Sequence[int], output_dim: int, *, hidden: int = 16, dropout: float = 0.1) -> None:
        super().__init__(output_dim)
        self.tokens = _ProjectedTokens(dims, hidden)
        self.gate = nn.Linear(hidden * len(dims), len(dims))
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, output_dim))

    def fuse(self, embeddings, scores, mask):
        tokens = self.tokens(embeddings, mask)                         # (n, M, h)
        gates = torch.sigmoid(self.gate(tokens.flatten(1)))            # (n, M)
        return self.out((gates.unsqueeze(-1) * tokens).sum(dim=1))


class LowRankFusion(FusionHead):
    """Low-rank multimodal tensor fusion over modality tokens (with a learned missing token)."""

    def __init__(self, dims: Sequence[int], output_dim: int, *, hidden: int = 16, rank: int = 4,
                 dropout: float = 0.1) -> None:
        super().__init__(output_dim)
        self.tokens = _ProjectedTokens(dims, hidden)
        self.factors = nn.Parameter(torch.randn(len(dims), rank, hidden + 1, hidden) / (hidden + 1) ** 0.5)
        self.rank_weights = nn.Parameter(torch.ones(rank) / rank)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, output_dim))

    def fuse(self, embeddings, scores, mask):
        tokens = self.tokens(embeddings, mask)                                     # (n, M, h)
        ones = tokens.new_ones(tokens.shape[0], tokens.shape[1], 1)
        augmented = torch.cat([tokens, ones], dim=2)                               # (n, M, h + 1)
        projected = torch.einsum("nmd,mrdo->nmro", augmented, self.factors)        # (n, M, r, h)
        fused = projected.prod(dim=1)                                              # (n, r, h)
        return self.out(torch.einsum("r,nro->no", self.rank_weights, fused))


JOINT_FUSIONS: dict[str, Callable[..., FusionHead]] = {
    "concat": lambda dims, k, hidden, rank, dropout: MLPHead(dims, k, hidden=hidden, dropout=dropout),
    "attention": lambda dims, k, hidden, rank, dropout: AttentionHead(dims, k, hidden=hidden, dropout=dropout),
    "gated": lambda dims, k, hidden, rank, dropout: GatedFusion(dims, k, hidden=hidden, dropout=dropout),
    "low_rank": lambda dims, k, hidden, rank, dropout: LowRankFusion(dims, k, hidden=hidden, rank=rank,
                                                                     dropout=dropout),
}
"""Fusion layers of the joint strategies: ``factory(dims, output_dim, hidden, rank, dropout)``."""


class JointModel(nn.Module):
    """Modality encoders followed by a fusion layer; ``forward(mask, *tensors)`` gives scores."""

    def __init__(self, encoders: dict[str, nn.Module], fusion: FusionHead, input_counts: Sequence[int]) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.input_counts = list(input_counts)

    def forward(self, mask: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        embeddings, start = [], 0
        for encoder, count in zip(self.encoders.values(), self.input_counts):
            embeddings.append(encoder(*tensors[start:start + count]))
            start += count
        return self.fusion(embeddings, [], mask)


def _stack_inputs(branches: dict[str, ModalityBranch], subject_ids: pd.Index,
                  availability: pd.DataFrame) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
    """Build the mask ``(n, M)`` and every modality's tensors for all ``n`` subjects.

    Rows of an unavailable modality hold zeros; the mask hides them from the fusion layer.
    """
    mask = torch.as_tensor(availability.loc[subject_ids, list(branches)].to_numpy(np.float32))
    tensors, counts = [], []
    for m, (name, branch) in enumerate(branches.items()):
        present = mask[:, m].numpy() > 0
        ids = subject_ids[present]
        # With no subject present, one training subject gives the shapes of the zero blocks.
        template = branch.inputs(ids if len(ids) else pd.Index([branch.example_id]))
        full = []
        for part in template:
            block = part.new_zeros((len(subject_ids), *part.shape[1:]))
            if len(ids):
                block[torch.as_tensor(np.flatnonzero(present))] = part
            full.append(block)
        tensors.extend(full)
        counts.append(len(full))
    return mask, tensors, counts


def fit_joint(branches: dict[str, ModalityBranch], fusion: str, subject_ids: pd.Index, availability: pd.DataFrame,
              target: pd.DataFrame, task: Task, *, epochs: int, batch_size: int, learning_rate: float,
              weight_decay: float, modality_dropout: float, hidden: int, rank: int, seed: int,
              dropout: float = 0.1) -> JointModel:
    """Train encoders and fusion layer ``fusion`` (a key of :data:`JOINT_FUSIONS`) end to end.

    ``availability`` is a boolean frame (subjects x modalities, at least the branches'
    columns); a False cell hides that modality of that subject from training.
    """
    if fusion not in JOINT_FUSIONS:
        raise ValueError(f"unknown joint fusion '{fusion}'; choose one of {sorted(JOINT_FUSIONS)}")
    small = all(branch.small_network for branch in branches.values())
    with single_thread() if small else contextlib.nullcontext():
        generator = seed_everything(seed)
        mask, tensors, counts = _stack_inputs(branches, subject_ids, availability)
        dims = [branch.encoder.embedding_dim for branch in branches.values()]
        head = JOINT_FUSIONS[fusion](dims, task.output_dim, hidden, rank, dropout)
        model = JointModel({name: b.encoder for name, b in branches.items()}, head, counts)

        values = target.loc[subject_ids].to_numpy()
        y = target_tensor(task, values if task.kind == "survival" else values[:, 0])
        if task.kind == "regression":
            head.target_mean.fill_(y.mean())
            head.target_scale.fill_(y.std().clamp_min(1e-6))

        def forward(batch_mask: torch.Tensor, *batch: torch.Tensor) -> torch.Tensor:
            if modality_dropout > 0:
                keep = torch.rand(batch_mask.shape, generator=generator) >= modality_dropout
                batch_mask = batch_mask * keep
            scores = model(batch_mask, *batch)
            return scores if task.kind == "multiclass" else scores[:, 0]

        train_network(forward, list(model.parameters()), [mask, *tensors], y, task, epochs=epochs,
                      batch_size=batch_size, learning_rate=learning_rate, weight_decay=weight_decay,
                      generator=generator, modules=[model])
    return model


@torch.no_grad()
def predict_joint(model: JointModel, branches: dict[str, ModalityBranch], subject_ids: pd.Index,
                  availability: pd.DataFrame, *, batch_size: int = 32) -> np.ndarray:
    """Return raw scores ``(n,)`` (``(n, K)`` for multiclass) of ``subject_ids``."""
    small = all(branch.small_network for branch in branches.values())
    with single_thread() if small else contextlib.nullcontext():
        model.eval()
        mask, tensors, _ = _stack_inputs(branches, subject_ids, availability)
        parts = []
        for start in range(0, len(subject_ids), batch_size):
            rows = slice(start, start + batch_size)
            parts.append(model(mask[rows], *(t[rows] for t in tensors)))
        scores = torch.cat(parts).numpy()
    return scores if model.fusion.output_dim > 1 else scores[:, 0]
