"""``LatentIsolationForest``: an Isolation Forest on a convolutional autoencoder's latent codes.

The first seed project's named future work. The autoencoder trains as usual; each epoch the
latent codes of the training images (encoded in eval mode, as at test time) are gathered and the
forest is fitted on them before validation. The codes are a buffer, so a checkpoint refits the
same forest (fixed seed) when it is loaded.
"""

from __future__ import annotations

import torch
from sklearn.ensemble import IsolationForest

from neu_defects.models.nets.autoencoder import ConvAutoencoder
from neu_defects.models.nets.base import AnomalyNet


class LatentIsolationForest(AnomalyNet):
    def __init__(self, autoencoder: ConvAutoencoder, n_estimators: int = 200, seed: int = 0):
        super().__init__()
        self.autoencoder = autoencoder
        self.in_chans, self.mean, self.std = autoencoder.in_chans, autoencoder.mean, autoencoder.std
        self.n_estimators, self.seed = n_estimators, seed
        self.register_buffer("latents", torch.zeros(0))
        self._gathered: list[torch.Tensor] = []
        self._forest: IsolationForest | None = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "latents" in state_dict:
            self.latents = torch.empty_like(state_dict[prefix + "latents"])
        self._forest = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset(self) -> None:
        self._gathered = []

    @torch.no_grad()
    def update(self, x: torch.Tensor, modes: torch.Tensor | None = None) -> None:
        was_training = self.autoencoder.training
        self.autoencoder.eval()
        self._gathered.append(self.autoencoder.encode(x).cpu())
        self.autoencoder.train(was_training)

    def finalize(self) -> None:
        self.latents = torch.cat(self._gathered)
        self._gathered, self._forest = [], None

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.training_loss(x)

    def forward(self, x: torch.Tensor):
        if self.training:
            return self.autoencoder(x)
        if self._forest is None:
            if self.latents.numel() == 0:
                raise RuntimeError("LatentIsolationForest has no latent codes: train it first")
            self._forest = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed)
            self._forest.fit(self.latents.numpy())
        _, amap = self.autoencoder(x)
        codes = self.autoencoder.encode(x).detach().cpu().numpy()
        score = torch.from_numpy(-self._forest.score_samples(codes)).to(x.dtype)
        return score, amap
