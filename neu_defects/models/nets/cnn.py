"""``DefectCNN``: a compact VGG-style CNN for small grayscale defect images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from neu_defects.models.nets.base import channel_stats


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class DefectCNN(nn.Module):
    """Stages of 3x3 conv-BN-ReLU, each halving the resolution, then global pooling and a linear head.

    ``features[-1]`` is the last convolutional stage, the natural Grad-CAM target; at 64 x 64 input
    with four stages it is 8 x 8 before its pooling.
    """

    def __init__(
        self,
        num_classes: int = 6,
        in_chans: int = 1,
        widths: Sequence[int] = (32, 64, 128, 256),
        convs_per_stage: int = 1,
        dropout: float = 0.2,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.25,),
    ):
        super().__init__()
        self.in_chans, self.num_classes = in_chans, num_classes
        # Normalisation belongs to the net so data pipelines and exports read it from one place.
        self.mean, self.std = channel_stats(mean, in_chans), channel_stats(std, in_chans)
        stages, c_in = [], in_chans
        for width in widths:
            layers = []
            for _ in range(convs_per_stage):
                layers += _conv_bn_relu(c_in, width)
                c_in = width
            stages.append(nn.Sequential(*layers))
        self.features = nn.ModuleList(stages)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for i, stage in enumerate(self.features):
            x = stage(x)
            if i < len(self.features) - 1:
                x = self.pool(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
