"""``GANomaly``: anomalib's GANomaly (Akcay et al., ACCV 2018), the first seed project's GAN, behind ``AnomalyNet``.

anomalib's ``GanomalyModel`` owns the maths: an encoder-decoder-encoder generator trained against a
discriminator on normal images only, the image score being the distance between the two latent
codes of an image. Its losses are anomalib's too (adversarial, contextual L1, latent).

Adversarial training takes two optimisers in turn, so the net declares its ``parameter_groups``
and runs one ``adversarial_step`` per batch; ``AnomalyModule`` owns the optimisers and the
backward passes. GANomaly has no anomaly map of its own: the map here is the generator's
reconstruction error, |x - G(x)| averaged over channels, which the pixel metrics score.

With ``features`` (a ``FrozenFeatures``), the same encoder-decoder-encoder and discriminator run on
the frozen pretrained patch features of the image instead of its pixels, so its encoders start from
filters that already tell NEU's textures apart rather than learning them from 210 images (on NEU
one-vs-rest it gains on four classes and loses the mean: experiments/README.md). The features are
standardised per channel on the normal images and squashed by tanh into the (-1, 1) range of the
generator's tanh output; the map (their reconstruction error) is upsampled to the input.

``score="states"`` scores an image by how typical its states are rather than by the latent distance
alone, after DoSE (Morningstar et al., AISTATS 2021): a generative model can fit an input it never
saw better than its own kind, as likelihood models trained on CIFAR-10 give SVHN higher likelihood
(Nalisnick et al., ICLR 2019). GANomaly does this on NEU: trained on a busy texture, it encodes and
reconstructs the plainer ones more faithfully than held-out images of its own, and the one-sided
latent distance ranks them inverted. The states are three logs per image (latent distance,
reconstruction L1, distance between the discriminator's features of the image and of its
reconstruction); after every training epoch a Gaussian is fitted to the states of each normal
class's training images, and the score is the Mahalanobis distance to the nearest, so an image is anomalous
whether it is fitted worse or better than the normals are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from anomalib.models.image.ganomaly.loss import DiscriminatorLoss, GeneratorLoss
from anomalib.models.image.ganomaly.torch_model import GanomalyModel
from torch import nn

from neu_defects.core.errors import UserError
from neu_defects.models.nets.base import AnomalyNet, nearest_mahalanobis
from neu_defects.models.nets.features import FrozenFeatures

# step(group name, loss, retain_graph): zero that group's gradients, backpropagate, step its optimiser.
Step = Callable[[str, torch.Tensor, bool], None]


class GANomaly(AnomalyNet):
    adversarial = True

    def __init__(self, image_size: int = 64, in_chans: int = 1, n_features: int = 64, latent_vec_size: int = 100,
                 extra_layers: int = 0, add_final_conv_layer: bool = True, wadv: float = 1.0, wcon: float = 50.0,
                 wenc: float = 1.0, features: FrozenFeatures | None = None, score: str = "latent"):
        super().__init__()
        if score not in ("latent", "states"):
            raise UserError(f"model.net.score={score!r}: use 'latent' (GANomaly's latent distance) or 'states' "
                            "(the typicality of its latent distance, reconstruction error and discriminator features)")
        self.score = score
        self.features, self.in_chans = features, in_chans
        if features is None:
            stride, channels = 1, in_chans
            # DCGAN's generator ends in tanh: images in [-1, 1].
            self.mean = self.std = (0.5,) * in_chans
        else:
            if in_chans != features.in_chans:
                raise ValueError(f"model.net.in_chans={in_chans} but the features take {features.in_chans} channels: "
                                 "set model.net.features.in_chans to the same value")
            stride, channels = features.stride, features.num_channels
            self.mean, self.std = features.mean, features.std
            # Per-channel standardisation of the features, learned from normal images only.
            self.norm = nn.BatchNorm2d(channels, affine=False)
        side = image_size // stride
        # anomalib's first conv pads by 4, so below 32 the two latent codes come out of different sizes.
        if side < 32 or side & (side - 1) or side * stride != image_size:
            unit = f"{stride} x " if stride > 1 else ""
            raise ValueError(f"model.image_size={image_size}: GANomaly's encoder halves its input down to 4 px, "
                             f"so give {unit}a power of two of at least 32 (e.g. {unit}{64 if stride == 1 else 32})")
        self.model = GanomalyModel(input_size=(side, side), num_input_channels=channels,
                                   n_features=n_features, latent_vec_size=latent_vec_size, extra_layers=extra_layers,
                                   add_final_conv_layer=add_final_conv_layer)
        self.generator_loss = GeneratorLoss(wadv=wadv, wcon=wcon, wenc=wenc)
        self.discriminator_loss = DiscriminatorLoss()
        if score == "states":
            # A Gaussian of the normal training images' states per normal class, refitted after every epoch and
            # sized by the data. Registered only here, so latent-score checkpoints keep the keys they were written with.
            self.register_buffer("state_mean", torch.zeros(0, 3))
            self.register_buffer("state_precision", torch.zeros(0, 3, 3))
        self._normals: list[torch.Tensor] = []
        self._modes: list[torch.Tensor] = []

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # One Gaussian per normal class: take the checkpoint's number before loading.
        if self.score == "states":
            for name in ("state_mean", "state_precision"):
                if prefix + name in state_dict:
                    setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def generator_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the generator reconstructs: the image, or its squashed standardised features."""
        if self.features is None:
            return x
        # tanh(z / 2) keeps the order of the values and keeps +-2 sigma clear of the saturation.
        return torch.tanh(self.norm(self.features(x)) / 2)

    def reset(self) -> None:
        self._normals, self._modes = [], []

    def update(self, x: torch.Tensor, modes: torch.Tensor | None = None) -> None:
        if self.score == "states":
            self._normals.append(x.detach().cpu())
            self._modes.append(torch.zeros(len(x), dtype=torch.long) if modes is None else modes.cpu())

    @torch.no_grad()
    def finalize(self) -> None:
        # A validation before any training epoch (Lightning's sanity check, when enabled) has no normals yet.
        if self.score != "states" or not self._normals:
            return
        normals, modes = torch.cat(self._normals), torch.cat(self._modes)
        self._normals, self._modes = [], []
        # The states of the weights as they now are, with BatchNorm's running statistics left untouched.
        training = self.training
        self.eval()
        states = torch.cat([self._states(*self._generate(batch.to(self.state_mean.device)))
                            for batch in normals.split(128)]).double()
        self.train(training)
        # One Gaussian per normal class, as the feature Gaussian's per_class: with several normal textures
        # (leave-one-out), one Gaussian around all of them counts the space between them as normal.
        groups = [states[modes == m] for m in modes.unique()]
        # Maximum-likelihood covariance: a class's mean squared distance is then exactly 3, its number of states.
        self.state_mean = torch.stack([g.mean(0) for g in groups]).float()
        self.state_precision = torch.stack([torch.linalg.pinv(torch.cov(g.T, correction=0), hermitian=True)
                                            for g in groups]).float()

    def _generate(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(generator input, its reconstruction, the two latent codes)."""
        z = self.generator_input(x)
        return z, *self.model.generator(z)

    def _states(self, z: torch.Tensor, fake: torch.Tensor, latent_i: torch.Tensor, latent_o: torch.Tensor) -> torch.Tensor:
        """(N, 3) logs of the latent distance, the reconstruction L1 and the discriminator-feature distance."""
        real_features, fake_features = self.model.discriminator(z)[1], self.model.discriminator(fake)[1]
        states = torch.stack([(latent_i - latent_o).pow(2).flatten(1).mean(1), (z - fake).abs().flatten(1).mean(1),
                              (real_features - fake_features).pow(2).flatten(1).mean(1)], 1)
        return states.clamp_min(1e-12).log()

    def parameter_groups(self) -> dict[str, Iterator[nn.Parameter]]:
        """The parameters each optimiser owns, in the order ``adversarial_step`` steps them."""
        return {"generator": self.model.generator.parameters(),
                "discriminator": self.model.discriminator.parameters()}

    def adversarial_step(self, x: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        """One generator step, then one discriminator step on the same batch, as anomalib trains it."""
        x = self.generator_input(x)
        fake, latent_i, latent_o = self.model.generator(x)
        pred_real, _ = self.model.discriminator(x)
        pred_fake, _ = self.model.discriminator(fake)
        generator = self.generator_loss(latent_i, latent_o, x, fake, pred_real, pred_fake)
        step("generator", generator, True)
        pred_fake, _ = self.model.discriminator(fake.detach())
        discriminator = self.discriminator_loss(pred_real, pred_fake)
        step("discriminator", discriminator, False)
        return {"generator": generator.detach(), "discriminator": discriminator.detach()}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image score: latent distance or states' Mahalanobis distance, anomaly map: reconstruction error
        at input resolution)."""
        z, fake, latent_i, latent_o = self._generate(x)
        if self.score == "states":
            if self.state_mean.numel() == 0:
                raise RuntimeError("GANomaly's states Gaussian is fitted after a training epoch: train before scoring "
                                   "(and keep trainer.num_sanity_val_steps=0)")
            score = nearest_mahalanobis(self._states(z, fake, latent_i, latent_o), self.state_mean, self.state_precision)
        else:
            score = (latent_i - latent_o).pow(2).flatten(1).mean(1)
        amap = (z - fake).abs().mean(1, keepdim=True)
        if amap.shape[-2:] != x.shape[-2:]:
            amap = F.interpolate(amap, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return score, amap

    def reconstruction(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.features is not None:
            return None  # it reconstructs features, not an image to show
        return self.denormalize(self.model.generator(x)[0]).clamp(0, 1)
