"""``DefectDetector``: a torchvision detector (FCOS, RetinaNet, Faster R-CNN) on a timm backbone + FPN.

The backbone is any timm model with ``forward_intermediates``; three of its feature stages feed a
feature pyramid, whose levels feed the detection head. Labels at this boundary are class ids
``0..K-1``. FCOS and RetinaNet score each class with its own sigmoid, background being no class
at all, so they take these ids as they are; Faster R-CNN's softmax reserves 0 for the background
and sees ``1..K``.

Images go in as float ``[0, 1]`` tensors at their own size; the detector's transform resizes them
to ``image_size`` and normalises them with the backbone's ImageNet statistics, and boxes come back
in the pixels of the image given.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from typing import Any

import timm
import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from neu_defects.core.errors import UserError
from neu_defects.models.nets.backbone import check_stages
from neu_defects.models.nets.base import channel_stats
from neu_defects.models.weights import build_backbone

ARCHITECTURES = ("fcos", "retinanet", "faster_rcnn")


class PyramidBackbone(nn.Module):
    """A timm backbone's feature stages ``stages`` and a feature pyramid over them.

    ``trainable_stages`` counts the backbone's feature stages, from the deepest, whose weights
    train: 0 freezes the backbone, ``len(feature_info)`` trains it all. Frozen blocks keep their
    batch-norm statistics (they stay in eval mode whatever the module's mode).
    """

    def __init__(self, backbone: str, stages: Sequence[int] = (2, 3, 4), trainable_stages: int = 0,
                 fpn_channels: int = 128, extra_levels: str = "p6p7", pretrained: bool = True,
                 weights: str | None = None):
        super().__init__()
        self.body = build_backbone(backbone, pretrained, weights, in_chans=3)
        self.stages = check_stages(self.body, backbone, stages, key="model.net.stages")
        self.body.prune_intermediate_layers(self.stages, prune_head=True)
        count = len(self.body.feature_info)
        if not 0 <= trainable_stages <= count:
            raise UserError(f"model.trainable_stages={trainable_stages}: {backbone} has {count} feature stages; "
                            f"use 0 (frozen) to {count} (all trained)")
        self.trainable_stages = trainable_stages
        self.frozen = self._freeze(count - trainable_stages)
        in_channels = [self.body.feature_info[i]["num_chs"] for i in self.stages]
        extra = {"p6p7": LastLevelP6P7(fpn_channels, fpn_channels), "maxpool": LastLevelMaxPool(),
                 "none": None}
        if extra_levels not in extra:
            raise UserError(f"model.net.extra_levels={extra_levels!r}: use one of {', '.join(extra)}")
        self.fpn = FeaturePyramidNetwork(in_channels, fpn_channels, extra_blocks=extra[extra_levels])
        self.out_channels = fpn_channels
        data_config = timm.data.resolve_model_data_config(self.body)
        self.mean, self.std = channel_stats(data_config["mean"], 3), channel_stats(data_config["std"], 3)

    def _freeze(self, frozen_stages: int) -> list[nn.Module]:
        """Freeze every module up to the end of feature stage ``frozen_stages - 1``, in definition order.

        timm names each stage's last module in ``feature_info`` (``blocks.2`` in an EfficientNet,
        ``layer2`` in a ResNet); the walk stops at the first module past that one's subtree.
        """
        if frozen_stages == 0:
            return []
        last = self.body.feature_info[frozen_stages - 1]["module"]
        frozen: list[nn.Module] = []
        inside = False
        for name, module in self.body.named_modules():
            within = name == last or name.startswith(last + ".")
            if inside and not within:
                break
            inside = inside or within
            if name and list(module.parameters(recurse=False)) or not list(module.children()):
                frozen.append(module)
        for module in frozen:
            module.requires_grad_(False)
        return frozen

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's maps at ``stages``: what a frozen backbone's feature cache stores."""
        return self.body.forward_intermediates(x, indices=self.stages, intermediates_only=True)

    def pyramid(self, features: Sequence[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.pyramid(self.features(x))


def _anchors(levels: int, sizes: Sequence[float], ratios: Sequence[float], scales: Sequence[float]):
    return AnchorGenerator(tuple(tuple(s * k for k in scales) for s in sizes[:levels]),
                           (tuple(ratios),) * levels)


class DefectDetector(nn.Module):
    """``arch`` in ``fcos | retinanet | faster_rcnn`` over a ``PyramidBackbone``.

    ``head_convs`` is the depth of FCOS's towers (RetinaNet's are torchvision's four);
    ``head_options`` passes further keywords to the torchvision detector (e.g. Faster R-CNN's
    ``box_batch_size_per_image``).

    ``forward(images, targets)`` is torchvision's contract: in training, a dict of losses; in
    eval, one dict per image with ``boxes`` (x1, y1, x2, y2 in the input's pixels), ``scores`` and
    ``labels`` (``0..K-1``).
    """

    def __init__(
        self,
        arch: str = "fcos",
        backbone: str = "tf_efficientnet_lite0",
        num_classes: int = 6,
        image_size: int = 320,
        pretrained: bool = True,
        weights: str | None = None,
        stages: Sequence[int] = (2, 3, 4),
        trainable_stages: int = 5,
        fpn_channels: int = 128,
        head_convs: int = 4,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        anchor_sizes: Sequence[float] | None = None,
        anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        head_options: dict[str, Any] | None = None,
    ):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise UserError(f"model.net.arch={arch!r} is not a detector: use one of {', '.join(ARCHITECTURES)}")
        self.arch, self.num_classes, self.image_size = arch, num_classes, image_size
        # A sigmoid head given a background slot would score it like a class and return it as one.
        self.label_offset = 1 if arch == "faster_rcnn" else 0
        outputs = num_classes + self.label_offset
        self.in_chans = 3
        self.backbone = PyramidBackbone(backbone, stages, trainable_stages, fpn_channels,
                                        "maxpool" if arch == "faster_rcnn" else "p6p7", pretrained, weights)
        self.mean, self.std = self.backbone.mean, self.backbone.std
        strides = [self.backbone.body.feature_info[i]["reduction"] for i in self.backbone.stages]
        strides += [strides[-1] * 2 ** k for k in range(1, 2 if arch == "faster_rcnn" else 3)]
        levels = len(strides)
        if anchor_sizes is None:
            # FCOS reads its one "anchor" per location as the stride, and assigns a box to the level
            # whose [4, 8] x stride range holds its half-size; anchor boxes are 4 x the stride.
            anchor_sizes = strides if arch == "fcos" else [4 * s for s in strides]
        if len(anchor_sizes) < levels:
            raise UserError(f"model.net.anchor_sizes={list(anchor_sizes)}: {arch} has {levels} pyramid levels "
                            f"(strides {strides}); give one size per level")
        common = {"min_size": image_size, "max_size": image_size, "image_mean": list(self.mean),
                  "image_std": list(self.std), "detections_per_img": detections_per_img,
                  **(head_options or {})}
        if arch == "fcos":
            head = FCOSHead(fpn_channels, 1, outputs, num_convs=head_convs)
            self.model = FCOS(self.backbone, outputs, score_thresh=score_thresh, nms_thresh=nms_thresh,
                              anchor_generator=_anchors(levels, anchor_sizes, [1.0], [1.0]), head=head, **common)
        elif arch == "retinanet":
            anchors = _anchors(levels, anchor_sizes, anchor_ratios, (1.0, 2 ** (1 / 3), 2 ** (2 / 3)))
            head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], outputs,
                                 norm_layer=partial(nn.GroupNorm, 16))
            self.model = RetinaNet(self.backbone, outputs, anchor_generator=anchors, head=head,
                                   score_thresh=score_thresh, nms_thresh=nms_thresh, **common)
        else:
            self.model = FasterRCNN(self.backbone, outputs,
                                    rpn_anchor_generator=_anchors(levels, anchor_sizes, anchor_ratios, [1.0]),
                                    box_score_thresh=score_thresh, box_nms_thresh=nms_thresh,
                                    **{("box_" + k if k == "detections_per_img" else k): v
                                       for k, v in common.items()})

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None):
        if targets is not None and self.label_offset:
            targets = [{**t, "labels": t["labels"] + self.label_offset} for t in targets]
        out = self.model(images, targets)
        if self.training or not self.label_offset:
            return out
        return [{**d, "labels": d["labels"] - self.label_offset} for d in out]
