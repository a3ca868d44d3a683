"""``AnomalyNet``: what ``AnomalyModule`` asks of a one-class anomaly net.

In eval mode ``forward`` returns ``(image score, anomaly map at input resolution)``. A net is
either trained by gradient (``trainable``, minimising ``training_loss``) or fitted: it gathers
training batches in ``update`` and solves in ``finalize``, before validation. Every hook has a
no-op default, so a net implements only what it uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def channel_stats(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """A per-channel normalisation for ``in_chans`` channels: repeated, or averaged into one gray channel."""
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if in_chans == 1:
        return (sum(values) / len(values),)
    return values * (in_chans // len(values))


def nearest_mahalanobis(x: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(N,) Mahalanobis distance of each row of ``x`` (N, D) to the nearest of K Gaussians: ``mean`` (K, D),
    ``precision`` (K, D, D)."""
    offset = x[:, None] - mean
    return torch.einsum("nkd,kde,nke->nk", offset, precision, offset).clamp_min(0).sqrt().amin(dim=1)


class AnomalyNet(nn.Module):
    trainable = True
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def reset(self) -> None:
        """At the start of every training epoch."""

    def update(self, x: torch.Tensor, modes: torch.Tensor | None = None) -> None:
        """With every training batch, before ``training_loss``; ``modes`` says which normal class
        (0 .. k-1 of the data's ``normal_classes``) each image is."""

    def finalize(self) -> None:
        """After every training epoch, before validation."""

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is trainable: it must define training_loss")

    def record_entries(self) -> dict[str, float]:
        """Figures of the fitted net worth reporting beside its metrics (e.g. a memory bank's size)."""
        return {}

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the input normalisation: back to [0, 1] intensities."""
        return x * x.new_tensor(self.std).view(1, -1, 1, 1) + x.new_tensor(self.mean).view(1, -1, 1, 1)

    def reconstruction(self, x: torch.Tensor) -> torch.Tensor | None:
        """The images as the net reconstructs them, in [0, 1]; None for nets that do not reconstruct."""
        return None
