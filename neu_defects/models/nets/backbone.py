"""``BackboneClassifier``: any timm backbone, its ImageNet classifier replaced by a new head."""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from neu_defects.models.weights import build_backbone


class BackboneClassifier(nn.Module):
    """``backbone`` (timm, ``num_classes=0``) maps images to pooled features; ``head`` maps those to logits.

    The split is what fine-tuning freezes and what the feature cache stores. Normalisation and
    channels come from the backbone's pretrained config, so the data pipeline feeds what the
    weights were trained on.
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int = 6,
        pretrained: bool = False,
        weights: str | None = None,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        pretrained_cfg_overlay: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.backbone = build_backbone(backbone, pretrained, weights, in_chans, pretrained_cfg_overlay)
        self.in_chans, self.num_classes = in_chans, num_classes
        data_config = timm.data.resolve_model_data_config(self.backbone)
        mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
        if in_chans != len(mean):
            # One gray channel takes the average normalisation: exact for folded filters when the
            # channels share it (EfficientNet-Lite: 0.5 / 0.5), close for ImageNet's mean and std.
            mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
        self.mean, self.std = mean, std
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(self.backbone.num_features, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map (before pooling)."""
        return self.backbone.forward_features(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features: the head's input, and what the feature cache stores."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))
