"""What every wrapped anomalib model shares: offline pretrained weights in its timm feature extractor.

anomalib's models build their backbone with ``timm.create_model(name, pretrained=True,
features_only=True)``, which fetches weights from a hub. Here they are built without weights and
given ours (``models/weights.py``: ``model.weights=PATH`` or the offline EfficientNet-Lite0
package), so the zoo runs offline and on the same ImageNet filters as the rest of the project.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
from torch import nn

from neu_defects.core.errors import UserError
from neu_defects.models.nets.backbone import check_stages
from neu_defects.models.nets.base import channel_stats
from neu_defects.models.weights import build_backbone, check_backbone_name


def load_pretrained_features(features: nn.Module, backbone: str, weights: str | None, in_chans: int) -> None:
    """Copy the pretrained weights of ``backbone`` into ``features``, a timm ``features_only`` model of it.

    A features-only model is the full model less its head, under the same names: every one of its
    tensors must come from the pretrained state dict, or the weights do not fit.
    """
    source = build_backbone(backbone, pretrained=True, weights=weights, in_chans=in_chans).state_dict()
    missing, _ = features.load_state_dict(source, strict=False)
    if missing:
        raise UserError(f"the pretrained weights of {backbone} miss {len(missing)} tensors of its feature "
                        f"extractor ({', '.join(missing[:3])}): pass model.net.weights= a state dict of {backbone}")


def input_stats(backbone: str, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the pretrained filters of ``backbone`` expect, for ``in_chans`` channels."""
    config = timm.data.resolve_model_data_config(timm.create_model(backbone, pretrained=False))
    return channel_stats(config["mean"], in_chans), channel_stats(config["std"], in_chans)


def check_layers(backbone: str, layers: Sequence[int]) -> list[int]:
    """``model.net.layers`` checked against the feature stages of ``backbone`` (its extractor built without weights)."""
    extractor = timm.create_model(check_backbone_name(backbone), features_only=True)
    return check_stages(extractor, backbone, layers, key="model.net.layers")
