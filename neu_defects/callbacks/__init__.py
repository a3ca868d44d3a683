"""Lightning callbacks that every run can switch on or off from ``conf/callbacks``."""

from neu_defects.callbacks.gradcam import GradCAMCallback
from neu_defects.callbacks.step_seed import StepSeedCallback

__all__ = ["GradCAMCallback", "StepSeedCallback"]
