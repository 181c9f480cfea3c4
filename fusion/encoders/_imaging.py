"""Imaging encoder: a MONAI 3D network whose pooled features meet the sequence flags."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DenseNet, ResNet
from torch import nn

__all__ = ["ImagingEncoder"]


class ImagingEncoder(nn.Module):
    """Map volumes ``(n, C, D, H, W)`` and acquisition flags ``(n, C)`` to ``(n, embedding_dim)``.

    ``C`` is the number of sequences (``in_channels``). A sequence that was not acquired
    arrives as a zero channel with flag 0; because z-scored images are also near zero,
    the flags are concatenated to the pooled features so the network can tell the two apart.

    Parameters
    ----------
    network
        ``"resnet"``: ``monai.networks.nets.ResNet`` with basic blocks, ``layers`` blocks per
        stage and ``widths`` channels per stage. ``"densenet"``: ``monai.networks.nets.DenseNet``
        with ``layers`` as block configuration and ``widths[0]`` as growth rate.
    stem_stride
        Stride of the ResNet's first convolution; 2 quarters the cost of every later layer
        of a 3D network, which is what makes CPU training of small cohorts practical.
    """

    def __init__(self, in_channels: int, *, network: str, layers: Sequence[int],
                 widths: Sequence[int], embedding_dim: int, dropout: float,
                 stem_stride: int = 2) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        if network == "resnet":
            self.backbone = ResNet(
                block="basic", layers=list(layers), block_inplanes=list(widths), spatial_dims=3,
                n_input_channels=in_channels, conv1_t_size=3, conv1_t_stride=stem_stride,
                no_max_pool=True, feed_forward=False,
            )
            features = widths[-1]
        else:
            self.backbone = DenseNet(
                spatial_dims=3, in_channels=in_channels, out_channels=embedding_dim,
                init_features=2 * widths[0], growth_rate=widths[0], block_config=tuple(layers),
            )
            # Drop DenseNet's own classifier so the pooled features come out.
            self.backbone.class_layers.out = nn.Identity()
            features = _densenet_features(self.backbone, in_channels)
        self.projection = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(features + in_channels, embedding_dim), nn.GELU()
        )

    def forward(self, volumes: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        pooled = self.backbone(volumes).flatten(1)  # (n, features)
        return self.projection(torch.cat([pooled, flags], dim=1))


def _densenet_features(backbone: nn.Module, in_channels: int) -> int:
    with torch.no_grad():
        backbone.eval()
        return int(backbone(torch.zeros(1, in_channels, 16, 16, 16)).shape[1])
