"""``BackboneClassifier``: any timm backbone, its ImageNet classifier replaced by a new head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import nn

from neu_defects.core.errors import UserError
from neu_defects.models.nets.base import channel_stats
from neu_defects.models.weights import build_backbone


def check_stages(backbone: nn.Module, name: str, stages: Sequence[int],
                 key: str = "model.net.feature_stages", allow_empty: bool = False) -> list[int]:
    """``stages`` sorted, or one line naming ``key`` (the config that set them) and the stages there are."""
    count = len(backbone.feature_info)
    stages = list(stages)
    if ((not stages and not allow_empty) or len(set(stages)) != len(stages)
            or not all(isinstance(i, int) and 0 <= i < count for i in stages)):
        channels = ", ".join(str(f["num_chs"]) for f in backbone.feature_info)
        strides = ", ".join(str(f["reduction"]) for f in backbone.feature_info)
        raise UserError(f"{key}={stages}: {name} has feature stages 0..{count - 1} "
                        f"({channels} channels at strides {strides}); "
                        f"list {'' if allow_empty else 'one or more, '}each at most once")
    return sorted(stages)


class BackboneClassifier(nn.Module):
    """``backbone`` (timm, ``num_classes=0``) maps images to pooled features; ``head`` maps those to logits.

    The split is what fine-tuning freezes and what the feature cache stores. Normalisation and
    channels come from the backbone's pretrained config, so the data pipeline feeds what the
    weights were trained on.

    ``feature_stages`` (indices into the backbone's ``feature_info``) adds the average-pooled maps
    of earlier stages to the head's input. ImageNet's last layer is tuned to objects; the
    mid-level stages describe texture, which is what tells NEU's defects apart when only a few
    labelled images train the head (experiments/README.md, data efficiency).
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
        feature_stages: Sequence[int] = (),
    ):
        super().__init__()
        self.backbone = build_backbone(backbone, pretrained, weights, in_chans, pretrained_cfg_overlay)
        self.in_chans, self.num_classes = in_chans, num_classes
        data_config = timm.data.resolve_model_data_config(self.backbone)
        self.mean, self.std = channel_stats(data_config["mean"], in_chans), channel_stats(data_config["std"], in_chans)
        self.feature_stages = check_stages(self.backbone, backbone, feature_stages, allow_empty=True)
        width = self.backbone.num_features + sum(self.backbone.feature_info[i]["num_chs"] for i in self.feature_stages)
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(width, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map (before pooling)."""
        return self.backbone.forward_features(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features: the head's input, and what the feature cache stores."""
        if not self.feature_stages:
            return self.backbone(x)
        final, stages = self.backbone.forward_intermediates(x, indices=self.feature_stages)
        return torch.cat([self.backbone.forward_head(final, pre_logits=True), *(m.mean((2, 3)) for m in stages)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))
