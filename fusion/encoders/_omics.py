"""Omics encoder: an MLP over the preprocessed features, with PCA as a fixed first layer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["OmicsEncoder"]


class OmicsEncoder(nn.Module):
    """Map scaled omics features ``(n, n_features)`` to an embedding ``(n, embedding_dim)``.

    When ``components`` (PCA loadings, ``(n_features, k)``) is given, the projection is a
    frozen buffer inside the network, so attributions reach the original features.
    """

    def __init__(self, n_features: int, *, hidden_dims: Sequence[int], embedding_dim: int,
                 dropout: float, components: np.ndarray | None = None,
                 pca_mean: np.ndarray | None = None) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        if components is not None:
            self.register_buffer("components", torch.as_tensor(components, dtype=torch.float32))
            self.register_buffer("pca_mean", torch.as_tensor(pca_mean, dtype=torch.float32))
            width = components.shape[1]
        else:
            self.components = None
            width = n_features
        layers: list[nn.Module] = []
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        layers += [nn.Linear(width, embedding_dim), nn.GELU()]
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.components is not None:
            features = (features - self.pca_mean) @ self.components  # (n, k)
        return self.mlp(features)
