"""``GANomaly``: anomalib's GANomaly (Akcay et al., ACCV 2018), the first seed project's GAN, behind ``AnomalyNet``.

anomalib's ``GanomalyModel`` owns the maths: an encoder-decoder-encoder generator trained against a
discriminator on normal images only, the image score being the distance between the two latent
codes of an image. Its losses are anomalib's too (adversarial, contextual L1, latent).

Adversarial training takes two optimisers in turn, so the net declares its ``parameter_groups``
and runs one ``adversarial_step`` per batch; ``AnomalyModule`` owns the optimisers and the
backward passes. GANomaly has no anomaly map of its own: the map here is the generator's
reconstruction error, |x - G(x)| averaged over channels, which the pixel metrics score.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from anomalib.models.image.ganomaly.loss import DiscriminatorLoss, GeneratorLoss
from anomalib.models.image.ganomaly.torch_model import GanomalyModel
from torch import nn

from neu_defects.models.nets.base import AnomalyNet

# step(group name, loss, retain_graph): zero that group's gradients, backpropagate, step its optimiser.
Step = Callable[[str, torch.Tensor, bool], None]


class GANomaly(AnomalyNet):
    adversarial = True

    def __init__(self, image_size: int = 64, in_chans: int = 1, n_features: int = 64, latent_vec_size: int = 100,
                 extra_layers: int = 0, add_final_conv_layer: bool = True, wadv: float = 1.0, wcon: float = 50.0,
                 wenc: float = 1.0):
        super().__init__()
        if image_size < 16 or image_size & (image_size - 1):
            raise ValueError(f"model.image_size={image_size}: GANomaly's encoder halves the image down to 4 px, "
                             "so give a power of two of at least 16 (e.g. 64)")
        self.model = GanomalyModel(input_size=(image_size, image_size), num_input_channels=in_chans,
                                   n_features=n_features, latent_vec_size=latent_vec_size, extra_layers=extra_layers,
                                   add_final_conv_layer=add_final_conv_layer)
        self.generator_loss = GeneratorLoss(wadv=wadv, wcon=wcon, wenc=wenc)
        self.discriminator_loss = DiscriminatorLoss()
        # DCGAN's generator ends in tanh: images in [-1, 1].
        self.in_chans, self.mean, self.std = in_chans, (0.5,) * in_chans, (0.5,) * in_chans

    def parameter_groups(self) -> dict[str, Iterator[nn.Parameter]]:
        """The parameters each optimiser owns, in the order ``adversarial_step`` steps them."""
        return {"generator": self.model.generator.parameters(),
                "discriminator": self.model.discriminator.parameters()}

    def adversarial_step(self, x: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        """One generator step, then one discriminator step on the same batch, as anomalib trains it."""
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
        fake, latent_i, latent_o = self.model.generator(x)
        score = (latent_i - latent_o).pow(2).flatten(1).mean(1)
        return score, (x - fake).abs().mean(1, keepdim=True)

    def reconstruction(self, x: torch.Tensor) -> torch.Tensor:
        return self.denormalize(self.model.generator(x)[0]).clamp(0, 1)
