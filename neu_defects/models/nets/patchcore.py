"""``PatchCore``: anomalib's PatchCore (Roth et al., CVPR 2022) behind ``AnomalyNet``.

anomalib's ``PatchcoreModel`` owns the maths: locally averaged mid-level features of a frozen
backbone, a memory bank of normal patches, nearest-neighbour distances as the anomaly map and the
re-weighted maximum as the image score. This wrapper adds what a line needs around it:

- offline ImageNet weights (``zoo.py``);
- a memory bank that is bounded: k-center-greedy coreset subsampling keeps ``coreset_ratio`` of the
  training patches, and never more than ``memory_bank_size`` rows, so memory and test time do not
  grow with the training set (anomalib issues #228, #236). The bank is a buffer: it travels in the
  checkpoint, and its size is reported;
- a coreset selection that does not stall on a CPU. anomalib's ``KCenterGreedy`` first projects the
  patches to a Johnson-Lindenstrauss dimension (296 for NEU's 165k patches, more than Lite0's 152
  feature channels) and recomputes every distance as a norm of a fresh (N, d) difference: on one
  core it selected about 2 centres a second, over half an hour for 4,096. A step of the greedy
  search reads every candidate once, so its cost is the candidates' bytes: ``greedy_coreset``
  selects among at most ``coreset_pool`` patches drawn at random, each step one matrix-vector
  product with cached norms, on a ``coreset_projection``-dimensional Gaussian random projection
  (the paper's own speed-up for this search; the bank keeps the full features).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from rich.progress import track

from neu_defects.models.nets.base import AnomalyNet
from neu_defects.models.nets.zoo import check_layers, input_stats, load_pretrained_features

log = logging.getLogger(__name__)


def greedy_coreset(patches: torch.Tensor, size: int, seed: int = 0, pool: int | None = None,
                   projection: int | None = None) -> torch.Tensor:
    """Indices of ``size`` rows of ``patches`` chosen by k-center greedy: each next row is the one
    farthest from all chosen so far (the first is drawn from ``seed``), so the chosen rows cover
    the rest within the smallest radius this greedy rule finds.

    ``pool``: choose among that many rows drawn at random (all when None or more than there are);
    ``projection``: measure distances on that many random Gaussian projections of the features.
    """
    generator = torch.Generator().manual_seed(seed)
    candidates = torch.arange(len(patches))
    if pool is not None and pool < len(patches):
        candidates = torch.randperm(len(patches), generator=generator)[:max(pool, size)].sort().values
    patches = patches[candidates]
    if projection is not None and projection < patches.shape[1]:
        matrix = torch.randn(patches.shape[1], projection, generator=generator) / projection ** 0.5
        patches = patches @ matrix
    n = len(patches)
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = torch.randint(n, (1,), generator=generator)
    squared_norms = (patches * patches).sum(1)
    nearest = torch.full((n,), float("inf"))
    for k in track(range(1, size), description=f"coreset: {size} of {n} patches", transient=True):
        centre = patches[chosen[k - 1]]
        # |p - c|^2 = |p|^2 - 2 p.c + |c|^2: one matrix-vector product a step.
        distances = squared_norms - 2 * (patches @ centre) + squared_norms[chosen[k - 1]]
        torch.minimum(nearest, distances, out=nearest)
        chosen[k] = torch.argmax(nearest)
    return candidates[chosen]


class CentredPatchcoreModel(PatchcoreModel):
    """anomalib's PatchcoreModel measuring its distances about the memory bank's mean.

    It computes |x - y| as sqrt(|x|^2 + |y|^2 - 2 x.y), which loses float32 digits to cancellation
    when the features lie far from the origin: ONNX Runtime and PyTorch, summing in different
    orders, then disagree by more than 1e-4. Distances do not change under a shift of both
    points; about the bank's mean the norms are small and the digits stay.
    """

    def euclidean_dist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        centre = self.memory_bank.mean(0)
        return PatchcoreModel.euclidean_dist(x - centre, y - centre)


class PatchCore(AnomalyNet):
    trainable = False

    def __init__(self, backbone: str = "tf_efficientnet_lite0", layers: Sequence[int] = (2, 3),
                 pretrained: bool = True, weights: str | None = None, in_chans: int = 3,
                 coreset_ratio: float = 0.1, memory_bank_size: int = 4096, coreset_pool: int | None = 65536,
                 coreset_projection: int | None = 64, num_neighbors: int = 9, seed: int = 0):
        super().__init__()
        if not 0 < coreset_ratio <= 1:
            raise ValueError(f"model.net.coreset_ratio={coreset_ratio}: give a share of patches in (0, 1]")
        if memory_bank_size < 1:
            raise ValueError(f"model.net.memory_bank_size={memory_bank_size}: give a positive number of patches")
        layers = check_layers(backbone, layers)
        self.model = CentredPatchcoreModel(layers=layers, backbone=backbone, pre_trained=False,
                                           num_neighbors=num_neighbors)
        if pretrained:
            load_pretrained_features(self.model.feature_extractor.feature_extractor, backbone, weights, in_chans)
        self.in_chans = in_chans
        self.mean, self.std = input_stats(backbone, in_chans)
        self.coreset_ratio, self.memory_bank_size, self.seed = coreset_ratio, memory_bank_size, seed
        self.coreset_pool, self.coreset_projection = coreset_pool, coreset_projection
        self.model.eval()

    def train(self, mode: bool = True):
        # The backbone is frozen; PatchcoreModel's own mode only says whether forward gathers patches.
        return super().train(False)

    def reset(self) -> None:
        self.model.embedding_store.clear()

    @torch.no_grad()
    def update(self, x: torch.Tensor, modes: torch.Tensor | None = None) -> None:
        self.model.training = True  # PatchcoreModel gathers the batch's patches in training mode
        try:
            self.model(x)
        finally:
            self.model.training = False

    @torch.no_grad()
    def finalize(self) -> None:
        gathered = torch.vstack(self.model.embedding_store)
        self.model.embedding_store.clear()
        size = min(self.memory_bank_size, max(1, int(self.coreset_ratio * len(gathered))))
        bank = gathered
        if size < len(gathered):
            bank = gathered[greedy_coreset(gathered, size, self.seed, self.coreset_pool, self.coreset_projection)]
        log.info("PatchCore memory bank: %d patches of %d gathered (coreset_ratio %g, memory_bank_size %d)",
                 len(bank), len(gathered), self.coreset_ratio, self.memory_bank_size)
        self.model.memory_bank = bank

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image score, anomaly map at input resolution)."""
        if self.model.memory_bank.numel() == 0:
            raise RuntimeError("PatchCore has no memory bank: run training (update/finalize) first")
        out = self.model(x)
        return out.pred_score.reshape(-1), out.anomaly_map

    def record_entries(self) -> dict[str, int]:
        return {"fit/memory_bank_size": int(self.model.memory_bank.shape[0])}
