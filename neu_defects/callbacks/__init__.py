"""Lightning callbacks that every run can switch on or off from ``conf/callbacks``."""

from neu_defects.callbacks.epoch_seed import EpochSeedCallback
from neu_defects.callbacks.gradcam import GradCAMCallback

__all__ = ["EpochSeedCallback", "GradCAMCallback"]
