"""Class activation maps for any classification net: the methods' maths on one shared pass.

``CAMExplainer`` computes maps with pytorch-grad-cam's maths anywhere: on a frozen backbone,
inside Lightning's validation and test loops (which run under ``torch.inference_mode``) or in a
plain script, and the net comes back exactly as it was (train/eval mode of every submodule,
``requires_grad`` and ``.grad`` of every parameter).

A target layer may be several module paths joined by ``+``: the maps of the layers, each scaled
to [0, 1] at the input size, are multiplied (RefineCAM's fusion, pytorch-grad-cam), so a coarse
layer says where the evidence is and the finer ones sharpen it to what they also see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from pytorch_grad_cam import ActivationsAndGradients, EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from threadpoolctl import threadpool_limits
from torch import nn

from neu_defects.core.errors import UserError
from neu_defects.saliency.layers import last_spatial_layer, preserved_state, split_layers

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




@dataclass(frozen=True)
class CAMSetting:
    """A CAM method, its target layer (a module path under the net) and pytorch-grad-cam's smoothing."""

    method: str
    layer: str
    aug_smooth: bool = False
    eigen_smooth: bool = False


# What experiments/cam_localisation measured best per net family (layers are paths under the net).

def check_method(method: str) -> str:
    if method not in METHODS:
        raise UserError(f"CAM method {method!r} is not known: use one of {', '.join(METHODS)}")
    return method



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


def cam_image(engine, method: str, images: torch.Tensor, layer: nn.Module, targets: list,
              activations: np.ndarray, grads: np.ndarray, eigen_smooth: bool) -> np.ndarray:
    """The library's ``get_cam_image`` of one method, with ``thin_2d_projection`` where it projects.

    The weighting is the library's own (``get_cam_weights``; LayerCAM weighs each position by its
    positive gradient); only the projection of EigenCAM and of ``eigen_smooth`` is ours.
    """
    if method in PROJECTIONS:
        return thin_2d_projection(activations)
    if isinstance(engine, LayerCAM):
        weighted = np.maximum(grads, 0) * activations
    else:
        weighted = engine.get_cam_weights(images, layer, targets, activations, grads)[:, :, None, None] * activations
    return thin_2d_projection(weighted) if eigen_smooth else weighted.sum(axis=1)


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



def cam_grid(net: nn.Module, images: torch.Tensor, targets: Sequence[int] | None, layers: Sequence[str],
             methods: Sequence[str], aug_smooth: bool = False, eigen_smooth: bool = False,
             reference: str | None = None) -> tuple[dict[tuple[str, str], np.ndarray], torch.Tensor]:
    """({(method, layer): maps}, logits) for normalised images; ``targets=None`` explains the prediction.
    ``reference`` is the layer whose Grad-CAM orients ``oriented-eigencam``; None finds the net's last
    spatial layer with a traced forward pass, which repeated calls can save by passing it.

    pytorch-grad-cam's maths (``cam_image``, scaling, test-time augmentation; the tests check
    the maps equal the library's), with two differences: the activations and gradients of one
    pass serve every method and layer, which makes a study of methods x layers affordable, and
    ``+``-joined layers are fused by ``fuse_layer_maps``. BLAS runs single-threaded for the pass:
    OpenBLAS threads contending with torch's for the cores made the small SVDs of the projections
    another 40x slower on 2 cores.

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
    with preserved_state(net), torch.inference_mode(False), torch.enable_grad(), threadpool_limits(limits=1, user_api="blas"):
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
                        cam = cam_image(engine, method, augmented, net.get_submodule(part), cam_targets,
                                        *recordings[part], eigen_smooth)
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

