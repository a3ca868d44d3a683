"""``FeatureGaussian``: a Gaussian of normal-image features, scored by Mahalanobis distance.

``pooled``: one Gaussian of the globally averaged feature vector. ``patch`` (PaDiM-style, Defard et
al. 2021): one Gaussian per feature-map position, giving an anomaly map; the image score is its
maximum.

``per_class`` (pooled, and its default there): one Gaussian per normal class, the score being the distance to the nearest.
When several NEU classes are normal (leave-one-class-out), their features form as many clusters;
one Gaussian around all of them spans the gaps between them, where a held-out class can sit.

``rotations`` (pooled; ``None``: all four there, none for a patch map): quarter turns of the image
whose pooled features are averaged, so an image and its turned copy have one embedding: the Gaussian
then does not tell a normal texture from itself turned by 90 degrees, which it learned from only ~200
images. Chosen on validation; one-vs-rest, scratches against inclusion gained most
(experiments/README.md, "Rotation-invariant embedding").

Covariances use Ledoit-Wolf shrinkage, since a class has ~200 normal images for
hundreds of feature dimensions. Fitting needs no gradients: ``update`` gathers features batch by
batch and ``finalize`` solves for means and precisions, which are buffers and travel in checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf

from neu_defects.core.errors import UserError
from neu_defects.models.nets.base import AnomalyNet, nearest_mahalanobis
from neu_defects.models.nets.features import FrozenFeatures


class FeatureGaussian(AnomalyNet):
    trainable = False

    def __init__(self, features: FrozenFeatures, mode: str = "pooled", max_channels: int = 100, seed: int = 0,
                 per_class: bool | None = None, rotations: Sequence[int] | None = (0,)):
        super().__init__()
        if mode not in ("pooled", "patch"):
            raise UserError(f"model.net.mode={mode!r}: use 'pooled' or 'patch'")
        if per_class is None:
            per_class = mode == "pooled"
        if per_class and mode != "pooled":
            raise UserError("model.net.per_class=true needs model.net.mode=pooled: a Gaussian per position "
                            "and per class would need more normal images than a class has")
        if rotations is None:
            rotations = [0, 1, 2, 3] if mode == "pooled" else [0]
        rotations = list(rotations)
        if not rotations or any(k not in (0, 1, 2, 3) for k in rotations) or len(set(rotations)) < len(rotations):
            raise UserError(f"model.net.rotations={rotations}: give distinct quarter turns from 0, 1, 2, 3, e.g. [0, 1, 2, 3]")
        if mode == "patch" and rotations != [0]:
            raise UserError("model.net.rotations needs model.net.mode=pooled: a patch Gaussian's positions turn "
                            "with the image; use rotations=[0]")
        self.features, self.mode, self.per_class, self.rotations = features, mode, per_class, rotations
        self.in_chans, self.mean, self.std = features.in_chans, features.mean, features.std
        c = features.num_channels
        # PaDiM's random channel subset keeps per-position covariances small and well conditioned.
        keep = c if mode == "pooled" else min(c, max_channels)
        channels = torch.randperm(c, generator=torch.Generator().manual_seed(seed))[:keep].sort().values
        self.register_buffer("channels", channels)
        self.register_buffer("mu", torch.zeros(0))
        self.register_buffer("precision", torch.zeros(0))
        self._gathered: list[torch.Tensor] = []
        self._modes: list[torch.Tensor] = []

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The fitted statistics are sized by the data; take the checkpoint's shapes before loading.
        for name in ("mu", "precision"):
            if prefix + name in state_dict:
                if self.mode == "pooled" and state_dict[prefix + name].dim() == (1 if name == "mu" else 2):
                    # Written before per-class Gaussians: the one Gaussian, without its class axis.
                    state_dict[prefix + name] = state_dict[prefix + name][None]
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "patch":
            return self.features(x)[:, self.channels]
        turns = [torch.rot90(x, k, dims=(2, 3)) if k else x for k in self.rotations]
        return torch.stack([self.features(t, pooled=True)[:, self.channels] for t in turns]).mean(dim=0)

    @torch.no_grad()
    def update(self, x: torch.Tensor, modes: torch.Tensor | None = None) -> None:
        self._gathered.append(self._embed(x).cpu())
        self._modes.append(modes.cpu() if self.per_class and modes is not None else torch.zeros(len(x), dtype=torch.long))

    @torch.no_grad()
    def finalize(self) -> None:
        data, modes = torch.cat(self._gathered).double(), torch.cat(self._modes)
        self._gathered, self._modes = [], []
        if self.mode == "pooled":
            fits = [LedoitWolf().fit(data[modes == m].numpy()) for m in modes.unique()]
            self.mu = torch.from_numpy(np.stack([est.location_ for est in fits])).float()
            self.precision = torch.from_numpy(np.stack([est.precision_ for est in fits])).float()
            return
        n, c, h, w = data.shape
        per_position = data.permute(2, 3, 0, 1).reshape(h * w, n, c).numpy()
        mus, precisions = [], []
        for samples in per_position:
            est = LedoitWolf().fit(samples)
            mus.append(est.location_)
            precisions.append(est.precision_)
        self.mu = torch.from_numpy(np.stack(mus)).float().reshape(h, w, c)
        self.precision = torch.from_numpy(np.stack(precisions)).float().reshape(h, w, c, c)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image score, anomaly map at input resolution)."""
        if self.mu.numel() == 0:
            raise RuntimeError("FeatureGaussian is not fitted: run training (update/finalize) first")
        emb = self._embed(x)
        if self.mode == "pooled":
            score = nearest_mahalanobis(emb, self.mu, self.precision)
            return score, score[:, None, None, None].expand(-1, 1, *x.shape[-2:])
        d = emb.permute(0, 2, 3, 1) - self.mu
        dist = torch.einsum("nhwc,hwcd,nhwd->nhw", d, self.precision, d).clamp_min(0).sqrt()
        amap = F.interpolate(dist[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
        return amap.flatten(1).amax(dim=1), amap
