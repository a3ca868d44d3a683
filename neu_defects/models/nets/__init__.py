"""Plain ``nn.Module`` networks: the maths, with no training logic."""

from neu_defects.models.nets.backbone import BackboneClassifier
from neu_defects.models.nets.cnn import DefectCNN

__all__ = ["BackboneClassifier", "DefectCNN"]
