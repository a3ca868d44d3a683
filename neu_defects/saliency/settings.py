"""Which CAM method and target layer explain a net by default, and resolving ``auto`` settings."""

from __future__ import annotations

from torch import nn

from neu_defects.core.errors import UserError
from neu_defects.saliency.cam import CAMSetting, check_method
from neu_defects.saliency.layers import has_modules, resolve_layer, trace_feature_maps

# What experiments/cam_localisation measured best per net family (layers are paths under the net).
# Other families get Grad-CAM on their last module with a spatial output.
BEST_SETTINGS = {
    "DefectCNN": CAMSetting("gradcam", "features.2+features.3", eigen_smooth=True),
    "EfficientNet": CAMSetting("oriented-eigencam",
                               "backbone.blocks.2+backbone.blocks.4+backbone.blocks.5+backbone.blocks.6"),
}


def _family(net: nn.Module) -> str:
    """The class that decides the layout: the timm model inside a BackboneClassifier, else the net."""
    inner = getattr(net, "backbone", None)
    return type(inner).__name__ if isinstance(inner, nn.Module) else type(net).__name__


def default_setting(net: nn.Module, in_chans: int, image_size: int) -> CAMSetting:
    best = BEST_SETTINGS.get(_family(net))
    if best is not None and has_modules(net, best.layer):
        return best
    events = trace_feature_maps(net, in_chans, image_size)
    if not events:
        raise UserError(f"{type(net).__name__} has no module with a spatial output: it cannot be explained "
                        "with a class activation map")
    return CAMSetting("gradcam", events[-1][0])


def resolve_setting(net: nn.Module, in_chans: int, image_size: int, method: str = "auto", layer: str = "auto",
                    aug_smooth: bool | None = None, eigen_smooth: bool | None = None) -> CAMSetting:
    """Fill ``auto`` method and layer from the study's best for this net family. Smoothing left
    ``None`` follows that best too when the method is ``auto``, and is off for a chosen method."""
    default = default_setting(net, in_chans, image_size)
    auto_method = method in (None, "", "auto")
    return CAMSetting(
        method=default.method if auto_method else check_method(method),
        layer=default.layer if layer in (None, "", "auto") else resolve_layer(net, layer, in_chans, image_size),
        aug_smooth=(default.aug_smooth if auto_method else False) if aug_smooth is None else bool(aug_smooth),
        eigen_smooth=(default.eigen_smooth if auto_method else False) if eigen_smooth is None else bool(eigen_smooth),
    )
