"""``STFPM``: anomalib's Student-Teacher Feature Pyramid Matching (Wang et al., 2021) behind ``AnomalyNet``.

anomalib's ``STFPMModel`` owns the maths: a frozen pretrained teacher and a student of the same
architecture trained from scratch to match the teacher's L2-normalised features on a few stages;
the anomaly map is the product over stages of the upsampled student-teacher distance, the image
score its maximum. Its loss is anomalib's ``STFPMLoss``.

What this wrapper adds: the teacher carries our offline ImageNet weights (``zoo.py``). anomalib
builds the teacher with ``pre_trained=True`` and no way to turn the hub download off, so
``OfflineSTFPMModel`` builds both extractors without weights and ours are loaded into the teacher.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from anomalib.models.components import TimmFeatureExtractor
from anomalib.models.image.stfpm.anomaly_map import AnomalyMapGenerator
from anomalib.models.image.stfpm.loss import STFPMLoss
from anomalib.models.image.stfpm.torch_model import STFPMModel
from torch import nn

from neu_defects.models.nets.base import AnomalyNet
from neu_defects.models.nets.zoo import check_layers, input_stats, load_pretrained_features


class OfflineSTFPMModel(STFPMModel):
    """anomalib's STFPMModel with the teacher built without hub weights; forward is anomalib's.

    ``STFPMModel.__init__`` always asks timm for the teacher's pretrained weights, which fails
    offline, so this sets up the same attributes with ``pre_trained=False`` instead of calling it.
    """

    def __init__(self, layers: Sequence[int], backbone: str):
        nn.Module.__init__(self)
        self.tiler = None
        self.backbone = backbone
        self.teacher_model = TimmFeatureExtractor(backbone=backbone, pre_trained=False, layers=layers).eval()
        self.teacher_model.requires_grad_(False)
        self.student_model = TimmFeatureExtractor(backbone=backbone, pre_trained=False, layers=layers,
                                                  requires_grad=True)
        self.anomaly_map_generator = AnomalyMapGenerator()


class STFPM(AnomalyNet):
    # timm's features_only extractors are built for RGB: gray images are repeated to three channels.
    in_chans = 3

    def __init__(self, backbone: str = "tf_efficientnet_lite0", layers: Sequence[int] = (1, 2, 3),
                 pretrained: bool = True, weights: str | None = None):
        super().__init__()
        layers = check_layers(backbone, layers)
        self.model = OfflineSTFPMModel(layers=layers, backbone=backbone)
        if pretrained:
            load_pretrained_features(self.model.teacher_model.feature_extractor, backbone, weights, self.in_chans)
        self.loss = STFPMLoss()
        self.mean, self.std = input_stats(backbone, self.in_chans)

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        teacher_features, student_features = self.model(x)
        return self.loss(teacher_features, student_features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image score: the map's maximum, anomaly map at input resolution)."""
        out = self.model(x)
        return out.pred_score.reshape(-1), out.anomaly_map
