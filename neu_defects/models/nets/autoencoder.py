"""Reconstruction models for anomaly detection, anomalib style.

In train mode ``forward`` returns what the loss needs; in eval mode it returns
``(image score, anomaly map)`` with the map at input resolution.

- ``ConvAutoencoder``: the first seed project's pixel autoencoder (stride-2 convolutions to a dense
  bottleneck and back), scored by per-pixel ``mse``, ``l1`` or ``ssim`` error. Pixel error tracks
  texture complexity, not abnormality, on NEU: kept as the baseline it is.
- ``FeatureAutoencoder``: reconstructs the frozen pretrained features of each patch through a 1 x 1
  convolutional bottleneck (feature reconstruction, cf. Shi et al. 2021 "DFR"). Normal texture is
  reconstructed well whatever its complexity; defects leave the learned feature manifold.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from neu_defects.models.nets.base import AnomalyNet, channel_stats
from neu_defects.models.nets.features import FrozenFeatures

SCORES = ("mse", "l1", "ssim")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur a (N, C, H, W) map with a Gaussian of ``sigma`` pixels, cut at 3 sigma, edges reflected."""
    if sigma <= 0:
        return x
    radius = max(1, round(3 * sigma))
    return TF.gaussian_blur(x, [2 * radius + 1] * 2, [sigma] * 2)


def row_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Each row's ``q`` quantile, linearly interpolated as ``torch.quantile`` does, in ops that export
    to ONNX (a sort and two gathers; ONNX has no quantile)."""
    ordered = values.sort(dim=1).values
    position = q * (values.shape[1] - 1)
    low = int(position)
    high = min(low + 1, values.shape[1] - 1)
    return ordered[:, low] + (position - low) * (ordered[:, high] - ordered[:, low])


def ssim_map(a: torch.Tensor, b: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel structural similarity of images in [0, 1] (Wang et al. 2004), averaged over channels."""
    _, full = structural_similarity_index_measure(a, b, gaussian_kernel=True, sigma=sigma, data_range=1.0,
                                                  reduction="none", return_full_image=True)
    return full.mean(dim=1, keepdim=True)


class ConvAutoencoder(AnomalyNet):
    def __init__(self, in_chans: int = 1, image_size: int = 64, widths: Sequence[int] = (32, 64, 128),
                 latent_dim: int = 128, score: str = "mse", map_sigma: float = 2.0, noise_std: float = 0.0,
                 mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,)):
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"score={score!r}: use one of {SCORES}")
        self.in_chans, self.score, self.map_sigma, self.noise_std = in_chans, score, map_sigma, noise_std
        self.mean, self.std = channel_stats(mean, in_chans), channel_stats(std, in_chans)
        enc, c = [], in_chans
        for w in widths:
            enc += [nn.Conv2d(c, w, 4, stride=2, padding=1), nn.BatchNorm2d(w), nn.LeakyReLU(0.2, inplace=True)]
            c = w
        self.encoder = nn.Sequential(*enc)
        side = image_size // 2 ** len(widths)
        self.bottleneck_shape = (c, side, side)
        self.to_latent = nn.Linear(c * side * side, latent_dim)
        self.from_latent = nn.Linear(latent_dim, c * side * side)
        dec = []
        for w in [*reversed(widths[:-1]), None]:
            out = w or in_chans
            dec.append(nn.ConvTranspose2d(c, out, 4, stride=2, padding=1))
            if w is not None:
                dec += [nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = out
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.encoder(x).flatten(1))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_latent(self.encode(x)).view(-1, *self.bottleneck_shape))

    def reconstruction(self, x: torch.Tensor) -> torch.Tensor:
        return self.denormalize(self.reconstruct(x)).clamp(0, 1)

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        noisy = x + self.noise_std * torch.randn_like(x) if self.noise_std > 0 else x
        return F.mse_loss(self.reconstruct(noisy), x)

    def anomaly_map(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        a, b = self.denormalize(x), self.denormalize(recon)
        if self.score == "ssim":
            amap = 1 - ssim_map(a, b)
        elif self.score == "l1":
            amap = (a - b).abs().mean(dim=1, keepdim=True)
        else:
            amap = ((a - b) ** 2).mean(dim=1, keepdim=True)
        return gaussian_blur(amap, self.map_sigma)

    def forward(self, x: torch.Tensor):
        recon = self.reconstruct(x)
        if self.training:
            return recon
        amap = self.anomaly_map(x, recon)
        return amap.flatten(1).mean(dim=1), amap


class FeatureAutoencoder(AnomalyNet):
    def __init__(self, features: FrozenFeatures, hidden: int = 128, bottleneck: int = 32,
                 score_quantile: float = 0.99, map_sigma: float = 4.0, normalize_error: bool = True):
        super().__init__()
        self.features = features
        self.in_chans, self.mean, self.std = features.in_chans, features.mean, features.std
        c = features.num_channels
        # Per-channel standardisation of the target features, learned from normal images only.
        self.norm = nn.BatchNorm2d(c, affine=False)
        self.encoder = nn.Sequential(nn.Conv2d(c, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                                     nn.Conv2d(hidden, bottleneck, 1))
        self.decoder = nn.Sequential(nn.Conv2d(bottleneck, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                                     nn.Conv2d(hidden, c, 1))
        self.score_quantile, self.map_sigma = score_quantile, map_sigma
        # Per-channel error of normal training patches: channels that normals themselves reconstruct
        # poorly (busy texture) must not outvote the ones where only defects fail.
        self.normalize_error = normalize_error
        self.register_buffer("error_scale", torch.ones(c))
        self.reset()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.norm(self.features(x))).mean(dim=(2, 3))

    def _channel_error(self, x: torch.Tensor) -> torch.Tensor:
        target = self.norm(self.features(x))
        return (self.decoder(self.encoder(target)) - target) ** 2

    def _error(self, x: torch.Tensor) -> torch.Tensor:
        error = self._channel_error(x)
        if self.normalize_error:
            error = error / self.error_scale.view(1, -1, 1, 1)
        return error.mean(dim=1, keepdim=True)

    def reset(self) -> None:
        self._error_sum, self._error_batches = torch.zeros_like(self.error_scale), 0

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        error = self._channel_error(x)
        self._error_sum += error.detach().mean(dim=(0, 2, 3))
        self._error_batches += 1
        return error.mean()

    def finalize(self) -> None:
        """At the end of each training epoch: the scale is the epoch's mean error per channel."""
        if self.normalize_error and self._error_batches:
            self.error_scale.copy_((self._error_sum / self._error_batches).clamp_min(1e-8))

    def forward(self, x: torch.Tensor):
        if self.training:
            return self._channel_error(x).mean(dim=1, keepdim=True)
        error = self._error(x)
        amap = gaussian_blur(F.interpolate(error, size=x.shape[-2:], mode="bilinear", align_corners=False),
                             self.map_sigma)
        return row_quantile(amap.flatten(1), self.score_quantile), amap
