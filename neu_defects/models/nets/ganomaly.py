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
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from anomalib.models.image.ganomaly.loss import DiscriminatorLoss, GeneratorLoss
from anomalib.models.image.ganomaly.torch_model import GanomalyModel
from torch import nn

from neu_defects.models.nets.base import AnomalyNet
from neu_defects.models.nets.features import FrozenFeatures

# step(group name, loss, retain_graph): zero that group's gradients, backpropagate, step its optimiser.
Step = Callable[[str, torch.Tensor, bool], None]


class GANomaly(AnomalyNet):
    adversarial = True

    def __init__(self, image_size: int = 64, in_chans: int = 1, n_features: int = 64, latent_vec_size: int = 100,
                 extra_layers: int = 0, add_final_conv_layer: bool = True, wadv: float = 1.0, wcon: float = 50.0,
                 wenc: float = 1.0, features: FrozenFeatures | None = None):
        super().__init__()
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

    def generator_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the generator reconstructs: the image, or its squashed standardised features."""
        if self.features is None:
            return x
        # tanh(z / 2) keeps the order of the values and keeps +-2 sigma clear of the saturation.
        return torch.tanh(self.norm(self.features(x)) / 2)

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
        """(image score: latent distance, anomaly map: reconstruction error at input resolution)."""
        z = self.generator_input(x)
        fake, latent_i, latent_o = self.model.generator(z)
        score = (latent_i - latent_o).pow(2).flatten(1).mean(1)
        amap = (z - fake).abs().mean(1, keepdim=True)
        if amap.shape[-2:] != x.shape[-2:]:
            amap = F.interpolate(amap, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return score, amap

    def reconstruction(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.features is not None:
            return None  # it reconstructs features, not an image to show
        return self.denormalize(self.model.generator(x)[0]).clamp(0, 1)
