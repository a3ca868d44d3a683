"""``FrozenFeatures``: multi-scale features of a frozen pretrained timm backbone, one map per image.

Anomaly models that score in feature space (Gaussian, feature reconstruction) share it. Stages are
resized to ``1 / stride`` of the input and concatenated, then averaged over a 3 x 3 neighbourhood
so each position describes a patch rather than a pixel.

The backbone never changes, so its features come from the fastest runtime (``models/frozen.py``:
ONNX Runtime when installed, ``embed_backend``) and are cached per input image (keyed by its
pixels): epochs after the first, and later jobs of a multirun in the same process, skip it. The
cache holds up to ``cache_items`` maps' worth of bytes; pooled features (``pooled=True``) are kept
as vectors, so a model that pools caches every image of NEU in a few MB.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from neu_defects.models.frozen import FrozenRunner, Method
from neu_defects.models.nets.backbone import check_stages
from neu_defects.models.nets.base import channel_stats
from neu_defects.models.weights import build_backbone


class _Cache(OrderedDict):
    """Feature tensors by key, the oldest out first once they pass a budget in bytes."""

    nbytes = 0

    def put(self, key: tuple, value: torch.Tensor, budget: int) -> None:
        # NEU holds byte-identical images, so one batch can bring the same key twice.
        if key in self:
            self.nbytes -= self.pop(key).nbytes
        self[key] = value
        self.nbytes += value.nbytes
        while self.nbytes > budget and len(self) > 1:
            self.nbytes -= self.popitem(last=False)[1].nbytes


_CACHE = _Cache()


class FrozenFeatures(nn.Module):
    def __init__(self, backbone: str = "tf_efficientnet_lite0", layers: Sequence[int] = (1, 2, 3),
                 pretrained: bool = True, weights: str | None = None, in_chans: int = 3, stride: int = 8,
                 cache_items: int = 4000, embed_backend: str = "auto"):
        super().__init__()
        self.model = build_backbone(backbone, pretrained=pretrained, weights=weights, in_chans=in_chans)
        self.layers = check_stages(self.model, backbone, layers, key="model.net.features.layers")
        self.stride, self.cache_items = stride, cache_items
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.num_channels = sum(self.model.feature_info[i]["num_chs"] for i in self.layers)
        # What the pretrained weights expect, for the anomaly nets that embed with them.
        self.in_chans = in_chans
        config = timm.data.resolve_model_data_config(self.model)
        self.mean, self.std = channel_stats(config["mean"], in_chans), channel_stats(config["std"], in_chans)
        self._cache_tag = (backbone, tuple(self.layers), stride, pretrained, weights, in_chans)
        self.runner = FrozenRunner(Method(self, "compute"), f"{backbone}-layers{'.'.join(map(str, self.layers))}",
                                   embed_backend, weights=self.model)
        # exact: eager float32 every call, no float16 cache, no ONNX Runtime (see exact_features).
        self.exact = False
        # Lightning keeps each submodule's own train/eval mode rather than calling .train() on the
        # whole model, so the frozen backbone must start in eval mode itself.
        self.eval()

    def train(self, mode: bool = True):
        # Frozen: BatchNorm statistics stay the pretrained ones whatever mode the owner is in.
        return super().train(False)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        """The patch features, eager (``forward`` runs them through ``runner``)."""
        maps = self.model.forward_intermediates(x, indices=self.layers, intermediates_only=True)
        size = (x.shape[-2] // self.stride, x.shape[-1] // self.stride)
        maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                for m in maps]
        return F.avg_pool2d(torch.cat(maps, dim=1), 3, stride=1, padding=1, count_include_pad=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, pooled: bool = False) -> torch.Tensor:
        """Patch features (N, C, H / stride, W / stride); with ``pooled``, their mean over the
        positions (N, C), which the cache keeps in a few kB per image instead of a map's hundreds."""
        # An export of the net that holds these features traces the backbone itself.
        if self.exact or torch.onnx.is_in_onnx_export():
            return self._pool(self.compute(x), pooled)
        if self.cache_items <= 0:
            return self._pool(self.runner(x), pooled)
        keys = [(*self._cache_tag, pooled, hashlib.sha1(xi.cpu().numpy().tobytes()).hexdigest()) for xi in x]
        found = [_CACHE.get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            maps = self.runner(x[missing])
            budget = self.cache_items * maps[0].numel() * 2  # cache_items maps in float16
            for i, f in zip(missing, self._pool(maps, pooled), strict=True):
                # Maps are large and float16 is close enough for training; a pooled vector is small.
                found[i] = f.clone() if pooled else f.to(torch.float16)
                _CACHE.put(keys[i], found[i], budget)
        return torch.stack(found).to(x.dtype)

    @staticmethod
    def _pool(maps: torch.Tensor, pooled: bool) -> torch.Tensor:
        return maps.mean(dim=(2, 3)) if pooled else maps


def exact_features(net: nn.Module) -> nn.Module:
    """``net`` with every ``FrozenFeatures`` in it computing eager float32: the float16 cache and ONNX
    Runtime speed up training's epochs, but a deployed model's answers, and the export checked
    against them, are the exact ones."""
    for module in net.modules():
        if isinstance(module, FrozenFeatures):
            module.exact = True
    return net
