"""Class activation maps for any classification net: methods, target layers, gradients, overlays.

``CAMExplainer`` wraps pytorch-grad-cam so that a map can be computed anywhere: on a frozen
backbone, inside Lightning's validation and test loops (which run under ``torch.inference_mode``)
or in a plain script, and the net comes back exactly as it was (train/eval mode of every
submodule, ``requires_grad`` and ``.grad`` of every parameter).

A target layer may be several module paths joined by ``+``: the maps of the layers, each scaled
to [0, 1] at the input size, are multiplied (RefineCAM's fusion, pytorch-grad-cam), so a coarse
layer says where the evidence is and the finer ones sharpen it to what they also see.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from pytorch_grad_cam import (
    ActivationsAndGradients,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    XGradCAM,
    base_cam,
    eigen_cam,
    layer_cam,
)
from pytorch_grad_cam.utils.image import scale_cam_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from threadpoolctl import threadpool_limits
from torch import nn

from neu_defects.errors import UserError

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM, "layercam": LayerCAM,
           "xgradcam": XGradCAM, "oriented-eigencam": EigenCAM}
# EigenCAM projects the centred activations on their first principal direction, whose sign an SVD
# leaves arbitrary: after the ReLU a wrong sign shows the background, and which sign LAPACK returns
# differs between layers. The oriented variant flips each projection that anti-correlates with the
# classifier's evidence for the explained class: the raw (centred, pre-ReLU) Grad-CAM map of the
# net's last layer with a spatial output.
ORIENTED = ("oriented-eigencam",)
# Methods whose map is a projection already, which eigen_smooth leaves unchanged.
PROJECTIONS = ("eigencam", "oriented-eigencam")


def fuse_layer_maps(per_layer: Sequence[np.ndarray]) -> np.ndarray:
    """RefineCAM's fusion: the product of the layers' maps (each in [0, 1]), rescaled to [0, 1]."""
    return scale_cam_image(np.prod(np.stack([np.maximum(m, 0) for m in per_layer]), axis=0))


def raw_gradcam(activations: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM before its ReLU, of centred activations: (N, C, h, w) -> (N, h, w)."""
    centred = activations - activations.mean(axis=(2, 3), keepdims=True)
    return np.einsum("nc,nchw->nhw", grads.mean(axis=(2, 3)), centred)


def orient(projections: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """Each (h, w) projection, negated where it anti-correlates with the evidence map (any size)."""
    out = []
    for projection, reference in zip(projections, evidence, strict=True):
        reference = cv2.resize(reference.astype(np.float32), projection.shape[::-1], interpolation=cv2.INTER_AREA)
        out.append(-projection if float((projection * reference).sum()) < 0 else projection)
    return np.float32(out)


def split_layers(layer: str) -> list[str]:
    return [part for part in layer.split("+") if part]


@dataclass(frozen=True)
class CAMSetting:
    """A CAM method, its target layer (a module path under the net) and pytorch-grad-cam's smoothing."""

    method: str
    layer: str
    aug_smooth: bool = False
    eigen_smooth: bool = False


# What experiments/cam_localisation measured best per net family (layers are paths under the net).
# Other families get Grad-CAM on their last module with a spatial output.
BEST_SETTINGS = {
    "DefectCNN": CAMSetting("gradcam", "features.2+features.3", eigen_smooth=True),
    "EfficientNet": CAMSetting("oriented-eigencam",
                               "backbone.blocks.2+backbone.blocks.4+backbone.blocks.5+backbone.blocks.6"),
}


def check_method(method: str) -> str:
    if method not in METHODS:
        raise UserError(f"CAM method {method!r} is not known: use one of {', '.join(METHODS)}")
    return method


def trace_feature_maps(net: nn.Module, in_chans: int, image_size: int) -> list[tuple[str, tuple[int, int]]]:
    """(module path, (h, w)) of every module with parameters that outputs a 4-D map wider than 1 x 1,
    in the order the modules finish during a forward pass. Parameter-free modules (activations,
    pooling shared between stages) are left out: they add no features of their own to explain."""
    events: list[tuple[str, tuple[int, int]]] = []

    def hook(name):
        def record(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-2:].numel() > 1:
                events.append((name, tuple(output.shape[-2:])))
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in net.named_modules()
               if name and next(m.parameters(), None) is not None]
    device = next(net.parameters()).device
    with preserved_state(net), torch.no_grad():
        net.eval()
        net(torch.zeros(1, in_chans, image_size, image_size, device=device))
    for handle in handles:
        handle.remove()
    return events


def candidate_layers(net: nn.Module, in_chans: int, image_size: int, count: int = 3) -> list[str]:
    """The module that ends each of the ``count`` coarsest resolutions, coarsest first: the last
    block and the blocks that end the earlier, finer stages.

    A stage's end is the last of the shallowest modules at its resolution: deeper ones may belong
    to the next stage, as the expansion of an inverted-residual block runs before its stride.
    """
    ends: dict[tuple[int, int], tuple[int, str]] = {}
    for name, hw in trace_feature_maps(net, in_chans, image_size):
        depth = name.count(".")
        if hw not in ends or depth <= ends[hw][0]:
            ends[hw] = (depth, name)
    by_size = sorted(ends.items(), key=lambda item: item[0][0] * item[0][1])
    return [name for _, (_, name) in by_size[:count]]


def _family(net: nn.Module) -> str:
    """The class that decides the layout: the timm model inside a BackboneClassifier, else the net."""
    inner = getattr(net, "backbone", None)
    return type(inner).__name__ if isinstance(inner, nn.Module) else type(net).__name__


def _has_modules(net: nn.Module, path: str) -> bool:
    try:
        for part in split_layers(path):
            net.get_submodule(part)
    except AttributeError:
        return False
    return True


def default_setting(net: nn.Module, in_chans: int, image_size: int) -> CAMSetting:
    best = BEST_SETTINGS.get(_family(net))
    if best is not None and _has_modules(net, best.layer):
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


def resolve_layer(net: nn.Module, path: str, in_chans: int, image_size: int) -> str:
    """``auto``, a module path under the net (a leading ``net.`` is accepted) or several joined by
    ``+`` -> a checked path; fused layers come back once each, in module order."""
    if path in (None, "", "auto"):
        return default_setting(net, in_chans, image_size).layer
    parts = [part.removeprefix("net.") for part in split_layers(str(path))]
    for part in parts:
        try:
            net.get_submodule(part)
        except AttributeError as err:
            options = ", ".join(candidate_layers(net, in_chans, image_size, count=4))
            raise UserError(f"target_layer={part!r} is not a module of {type(net).__name__}: use auto, a module "
                            f"path such as {options}, or several joined by +") from err
    if len(parts) > 1:
        order = {name: k for k, name in enumerate(n for n, _ in net.named_modules())}
        parts = sorted(dict.fromkeys(parts), key=order.__getitem__)
    return "+".join(parts)


def thin_2d_projection(activation_batch: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's ``get_2d_projection`` with a thin SVD: it only uses VT[0], but asks for the
    full (HW x HW) U, which cost 0.2 s per image at 32 x 32 on this machine."""
    activation_batch = activation_batch.copy()
    activation_batch[np.isnan(activation_batch)] = 0
    projections = []
    for activations in activation_batch:
        flat = activations.reshape(activations.shape[0], -1).transpose()
        flat = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        projections.append((flat @ vt[0, :]).reshape(activations.shape[1:]))
    return np.float32(projections)


@contextmanager
def cam_runtime() -> Iterator[None]:
    """Fast, quiet numerics for pytorch-grad-cam: the thin projection for eigencam / eigen_smooth,
    and single-threaded BLAS, because OpenBLAS threads contending with torch's for the cores made
    those small SVDs another 40x slower on 2 cores."""
    with ExitStack() as stack:
        for module in (base_cam, eigen_cam, layer_cam):
            stack.enter_context(mock.patch.object(module, "get_2d_projection", thin_2d_projection))
        stack.enter_context(threadpool_limits(limits=1, user_api="blas"))
        yield


@contextmanager
def preserved_state(net: nn.Module) -> Iterator[None]:
    """Put back every submodule's train/eval mode and every parameter's requires_grad and grad."""
    modes = [(m, m.training) for m in net.modules()]
    params = [(p, p.requires_grad, p.grad) for p in net.parameters()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad, grad in params:
            param.requires_grad_(requires_grad)
            param.grad = grad


@dataclass
class CAMExplainer:
    """Maps for one net, method and target layer; maps are (N, H, W) float32 in [0, 1] at input size."""

    net: nn.Module
    layer: str
    method: str = "gradcam"
    aug_smooth: bool = False
    eigen_smooth: bool = False
    chunk_size: int = 32
    _reference: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        check_method(self.method)
        for layer in split_layers(self.layer):
            self.net.get_submodule(layer)

    @classmethod
    def from_setting(cls, net: nn.Module, setting: CAMSetting, chunk_size: int = 32) -> CAMExplainer:
        return cls(net, setting.layer, setting.method, setting.aug_smooth, setting.eigen_smooth, chunk_size)

    def describe(self) -> str:
        smooth = [s for s, on in (("aug_smooth", self.aug_smooth), ("eigen_smooth", self.eigen_smooth)) if on]
        return f"{self.method} on {self.layer}" + (f" ({', '.join(smooth)})" if smooth else "")

    def __call__(self, images: torch.Tensor, targets: Sequence[int] | None = None
                 ) -> tuple[np.ndarray, torch.Tensor]:
        """(maps, logits) for a batch of normalised images; ``targets=None`` explains the prediction."""
        maps, logits = [], []
        for start in range(0, len(images), self.chunk_size):
            chunk = images[start:start + self.chunk_size]
            chunk_targets = None if targets is None else list(targets[start:start + self.chunk_size])
            m, z = self._explain(chunk, chunk_targets)
            maps.append(m)
            logits.append(z)
        return np.concatenate(maps), torch.cat(logits)

    def _explain(self, images: torch.Tensor, targets: list[int] | None) -> tuple[np.ndarray, torch.Tensor]:
        if self.method in ORIENTED and self._reference is None:
            self._reference = last_spatial_layer(self.net, images)
        maps, logits = cam_grid(self.net, images, targets, [self.layer], [self.method], self.aug_smooth,
                                self.eigen_smooth, self._reference)
        return maps[(self.method, self.layer)], logits


def last_spatial_layer(net: nn.Module, images: torch.Tensor) -> str:
    """The net's last module with a spatial output, for images of this shape."""
    return trace_feature_maps(net, images.shape[1], images.shape[-1])[-1][0]


def cam_grid(net: nn.Module, images: torch.Tensor, targets: Sequence[int] | None, layers: Sequence[str],
             methods: Sequence[str], aug_smooth: bool = False, eigen_smooth: bool = False,
             reference: str | None = None) -> tuple[dict[tuple[str, str], np.ndarray], torch.Tensor]:
    """({(method, layer): maps}, logits) for normalised images; ``targets=None`` explains the prediction.
    ``reference`` is the layer whose Grad-CAM orients ``oriented-eigencam``; None finds the net's last
    spatial layer with a traced forward pass, which repeated calls can save by passing it.

    pytorch-grad-cam's maths (``get_cam_image``, scaling, test-time augmentation; the tests check
    the maps equal the library's), with two differences: the activations and gradients of one
    pass serve every method and layer, which makes a study of methods x layers affordable, and
    ``+``-joined layers are fused by ``fuse_layer_maps``.

    Parameters are frozen for the pass and the input carries the gradient instead: frozen
    backbones still get gradients at the target layers, and no parameter's ``.grad`` is touched.
    Lightning's eval loops run in inference mode, whose tensors cannot enter autograd, hence
    ``inference_mode(False)`` and a clone.
    """
    for method in methods:
        check_method(method)
    size = (images.shape[-1], images.shape[-2])
    parts = list(dict.fromkeys(part for layer in layers for part in split_layers(layer)))
    if not any(m in ORIENTED for m in methods):
        reference = None
    elif reference is None:
        reference = last_spatial_layer(net, images)
    sums: dict[tuple[str, str], list[np.ndarray]] = {(m, layer): [] for m in methods for layer in layers}
    with preserved_state(net), torch.inference_mode(False), torch.enable_grad(), cam_runtime():
        for param in net.parameters():
            param.requires_grad_(False)
        # The library's objects only for their maths; they switch the net to eval mode, as wanted.
        engines = {m: METHODS[m](model=net, target_layers=[]) for m in methods}
        x = images.detach().clone().requires_grad_(True)
        if targets is None:
            with torch.no_grad():
                targets = net(x).argmax(-1).tolist()
        target_idx = torch.as_tensor(list(targets), device=images.device)
        cam_targets = [ClassifierOutputTarget(int(t)) for t in targets]
        # One recorder per layer: a shared one lists activations in execution order, not layer order.
        recorded = list(dict.fromkeys([*parts, *([reference] if reference else [])]))
        recorders = {name: ActivationsAndGradients(net, [net.get_submodule(name)], None) for name in recorded}
        logits = None
        try:
            transforms = list(next(iter(engines.values())).tta_transforms) if aug_smooth else [None]
            for transform in transforms:
                for recorder in recorders.values():
                    recorder.gradients, recorder.activations = [], []
                augmented = transform.augment_image(x) if transform is not None else x
                outputs = net(augmented)
                if transform is None:
                    logits = outputs.detach()
                outputs.gather(1, target_idx[:, None]).sum().backward()
                recordings = {name: (r.activations[0].numpy(), r.gradients[0].numpy()) for name, r in recorders.items()}
                evidence = raw_gradcam(*recordings[reference]) if reference else None
                for method, engine in engines.items():
                    per_layer = {}
                    for part in parts:
                        cam = engine.get_cam_image(augmented, net.get_submodule(part), cam_targets, *recordings[part],
                                                   eigen_smooth)
                        if method in ORIENTED:
                            cam = orient(cam, evidence)
                        # BaseCAM.compute_cam_per_layer: relu, then scale to the input.
                        per_layer[part] = scale_cam_image(np.maximum(cam, 0), size)
                    for layer in layers:
                        cam = fuse_layer_maps([per_layer[part] for part in split_layers(layer)])
                        if transform is not None:
                            cam = transform.deaugment_mask(torch.from_numpy(cam[:, None])).numpy()[:, 0]
                        sums[(method, layer)].append(cam)
        finally:
            for recorder in recorders.values():
                recorder.release()
        if logits is None:
            with torch.no_grad():
                logits = net(x).detach()
    return {key: np.mean(np.float32(cams), axis=0) for key, cams in sums.items()}, logits


def to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 1|3) uint8 -> (H, W, 3) uint8."""
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def overlay(image: np.ndarray, cam_map: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """The map as a jet heat map over the uint8 image, resized to the image if needed."""
    rgb = to_rgb(image)
    if cam_map.shape != rgb.shape[:2]:
        cam_map = cv2.resize(cam_map.astype(np.float32), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(rgb.astype(np.float32) / 255.0, np.clip(cam_map, 0, 1), use_rgb=True,
                             image_weight=image_weight)


@dataclass
class Tile:
    """One panel of a grid: the image beside its overlay, a caption, and boxes in image pixels."""

    image: np.ndarray
    cam_map: np.ndarray
    caption: str
    boxes: Sequence[tuple[float, float, float, float]] = ()


def save_png(pixels: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, 3) uint8 array as a PNG, whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    # zlib's default level spent most of a validation panel's time compressing; 3 is 3x faster.
    Image.fromarray(pixels).save(tmp, compress_level=3)
    tmp.replace(path)
    return path


def render_tiles(tiles: Sequence[Tile], path: str | Path, title: str, columns: int = 4,
                 empty_note: str = "nothing to show", panel: int = 160) -> np.ndarray:
    """Save a grid of tiles as a PNG and return its pixels (H, W, 3) for image loggers.

    Drawn with Pillow rather than matplotlib: a grid of every misclassified image of a poor model
    has hundreds of tiles, which took a minute as matplotlib axes.
    """
    font = ImageFont.load_default(size=12)
    pad, gap, line = 8, 4, 15
    lines = max([t.caption.count("\n") + 1 for t in tiles] or [1])
    tile_w, tile_h = 2 * panel + gap, panel + lines * line + 4
    columns = max(1, min(columns, len(tiles)))
    rows = max(1, -(-len(tiles) // columns))
    top = 2 * line + pad
    canvas = Image.new("RGB", (pad + columns * (tile_w + pad), top + rows * (tile_h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad // 2), title, fill="black", font=ImageFont.load_default(size=14))
    if not tiles:
        draw.text((pad, top), empty_note, fill="black", font=font)
    for k, tile in enumerate(tiles):
        x0 = pad + (k % columns) * (tile_w + pad)
        y0 = top + (k // columns) * (tile_h + pad)
        draw.multiline_text((x0, y0), tile.caption, fill="black", font=font, spacing=3)
        y_img = y0 + lines * line + 4
        rgb = to_rgb(tile.image)
        for offset, pixels in ((0, rgb), (panel + gap, overlay(rgb, tile.cam_map))):
            canvas.paste(Image.fromarray(pixels).resize((panel, panel), Image.Resampling.BILINEAR),
                         (x0 + offset, y_img))
        sx, sy = panel / rgb.shape[1], panel / rgb.shape[0]
        for bx0, by0, bx1, by1 in tile.boxes:
            left = x0 + panel + gap
            draw.rectangle((left + bx0 * sx, y_img + by0 * sy, left + bx1 * sx - 1, y_img + by1 * sy - 1),
                           outline="white", width=1)
    pixels = np.asarray(canvas)
    save_png(pixels, path)
    return pixels
