"""``TransferModule``: a pretrained timm backbone with a new head, fine-tuned frozen, fully or gradually.

It is the ``ClassifierModule`` (same steps, metrics, reports) with what transfer learning adds:

- ``finetune``: ``frozen`` trains the head only and keeps the backbone's BatchNorm statistics;
  ``full`` trains everything, the backbone at ``backbone_lr_scale`` times the head's rate;
  ``gradual`` is frozen for ``unfreeze_at_epoch`` epochs, then full.
- With ``pretrained=false`` the whole net trains at one rate: there is nothing to preserve.
- ``cache_features`` (frozen only; ``auto``, the default, caches whenever the backbone is frozen
  throughout): the backbone runs once per training image and augmented view
  (``cache_views`` views, epoch e trains on view e % cache_views) and once per validation image;
  the epochs then train the head on those features. Checkpoints still hold the whole net. A
  training set that the data module repeats within an epoch (``data.min_epoch_samples``) gets a
  view cached for every repeat too, as the uncached run would augment each repeat afresh.

The backbone's settings (``backbone``, ``pretrained``, ``weights``, ``in_chans``) are arguments
here, and ``net`` is a partial ``BackboneClassifier`` (head settings) that this module completes,
so the overrides are short: ``model.backbone=resnet18 model.in_chans=1``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from rich.progress import track
from torch.utils.data import DataLoader, Dataset, Subset

from neu_defects.core.checkpoint import RECORD
from neu_defects.core.errors import UserError
from neu_defects.data.dataset import epoch_passes
from neu_defects.models.classifier import ClassifierModule
from neu_defects.models.frozen import FrozenRunner, Method
from neu_defects.models.nets import BackboneClassifier

log = logging.getLogger(__name__)

FINETUNE_MODES = ("frozen", "full", "gradual")
EMBED_BATCH = 64


class FeatureViews(Dataset):
    """(features, label) from a (views, N x passes, D) tensor; the sampler's ``set_epoch`` picks the view.

    Its length is the N images; index ``i + r * N`` is repeat r of image i within an epoch (see
    ``EpochShuffleSampler``), with features of its own.
    """

    def __init__(self, features: torch.Tensor, labels: np.ndarray):
        self.features, self.labels = features, labels
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.features[self.epoch % len(self.features), i], int(self.labels[i % len(self.labels)])


class TransferModule(ClassifierModule):
    def __init__(
        self,
        backbone: str | None,
        net: Callable[..., BackboneClassifier],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        pretrained: bool = True,
        weights: str | None = None,
        in_chans: int = 3,
        finetune: str = "frozen",
        unfreeze_at_epoch: int = 0,
        backbone_lr_scale: float = 0.1,
        cache_features: bool | str = "auto",
        cache_views: int = 2,
        embed_backend: str = "auto",
        **kwargs: Any,
    ):
        if cache_features not in (True, False, "auto"):
            raise UserError(f"model.cache_features={cache_features}: use true, false or auto (cache when frozen)")
        if not pretrained:
            if (finetune, backbone_lr_scale) != ("full", 1.0) or cache_features is True:
                # A random backbone has nothing to preserve: it trains with the head, at the head's rate.
                log.info("model.pretrained=false: the whole net trains at one rate (model.finetune, "
                         "model.backbone_lr_scale and model.cache_features apply to pretrained backbones)")
            finetune, backbone_lr_scale, cache_features = "full", 1.0, False
        if cache_features == "auto":
            # A frozen backbone computes the same features for the same view every epoch: computing
            # them once makes a frozen run cost about one backbone pass per view instead of per epoch.
            cache_features = finetune == "frozen"
        if finetune not in FINETUNE_MODES:
            raise UserError(f"model.finetune={finetune} is not a fine-tuning mode: use one of {', '.join(FINETUNE_MODES)}")
        if cache_features and finetune != "frozen":
            raise UserError(f"model.cache_features=true needs model.finetune=frozen (got {finetune}): "
                            "features of a backbone that trains change every step")
        if cache_views < 1:
            raise UserError(f"model.cache_views={cache_views}: cache at least one view per training image")
        if unfreeze_at_epoch < 0:
            raise UserError(f"model.unfreeze_at_epoch={unfreeze_at_epoch}: pass an epoch number >= 0")
        super().__init__(net(backbone=backbone, pretrained=pretrained, weights=weights, in_chans=in_chans),
                         optimizer, scheduler, **kwargs)
        self.finetune, self.unfreeze_at_epoch, self.backbone_lr_scale = finetune, unfreeze_at_epoch, backbone_lr_scale
        self.cache_features, self.cache_views = cache_features, cache_views
        self.backbone_frozen = finetune != "full"
        self.net.backbone.requires_grad_(not self.backbone_frozen)
        # Lightning keeps each submodule's mode across its loops rather than calling train(), so
        # the frozen backbone starts out in eval mode; train() below guards explicit calls.
        self.net.backbone.train(not self.backbone_frozen)
        # While the backbone is frozen its features come from the fastest runtime (models/frozen.py).
        # Its name keys the export with the weights and input shape: it says what embed computes.
        stages = ".".join(map(str, self.net.feature_stages)) or "none"
        self.frozen_embed = FrozenRunner(Method(self.net, "embed"), f"{backbone}-embed-stages{stages}", embed_backend,
                                         weights=self.net.backbone)
        # Validation features by batch index: the validation loader is unshuffled and unaugmented.
        self.val_features: dict[int, torch.Tensor] | None = None
        self.image_train_set: Dataset | None = None

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.backbone_frozen:
            # A frozen backbone keeps its pretrained BatchNorm statistics: NEU batches would shift them.
            self.net.backbone.eval()
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features; through ``frozen_embed`` while the backbone is frozen."""
        return self.frozen_embed(x) if self.backbone_frozen else self.net.embed(self.net_input(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two dimensions: a batch of cached backbone features, not of images.
        return self.net.head(x if x.dim() == 2 else self.embed(x))

    def build_optimizer(self) -> torch.optim.Optimizer:
        optimizer = self.optimizer_factory(params=list(self.net.head.parameters()))
        if self.finetune != "frozen":
            # In gradual mode the backbone's parameters have no gradient until unfrozen, and
            # optimisers skip parameters without one, so the group can be there from the start.
            optimizer.add_param_group({"params": list(self.net.backbone.parameters()),
                                       "lr": optimizer.defaults["lr"] * self.backbone_lr_scale})
        return optimizer

    def on_train_epoch_start(self) -> None:
        if self.finetune == "gradual" and self.backbone_frozen and self.current_epoch >= self.unfreeze_at_epoch:
            self.backbone_frozen = False
            self.net.backbone.requires_grad_(True)
            self.net.backbone.train()
            log.info("epoch %d: backbone unfrozen (lr x %g)", self.current_epoch, self.backbone_lr_scale)

    @torch.no_grad()
    def embed_views(self, dataset: Dataset, views: int, passes: int = 1) -> torch.Tensor:
        """(views, N x passes, D) pooled features of the dataset as its epochs 0 .. views-1 augment it."""
        self.net.backbone.eval()
        out = []
        for view in range(views):
            dataset.epoch = view
            loader = DataLoader(Subset(dataset, range(len(dataset) * passes)), batch_size=EMBED_BATCH, shuffle=False)
            batches = track(loader, description=f"feature cache: view {view + 1} of {views}", transient=True)
            out.append(torch.cat([self.embed(x.to(self.device)).cpu() for x, _ in batches]))
        dataset.epoch = 0
        return torch.stack(out)

    def on_fit_start(self) -> None:
        if not self.cache_features:
            return
        datasets = getattr(self.trainer.datamodule, "datasets", None)
        if not datasets or "train" not in datasets:
            raise UserError("model.cache_features=true needs the NEU data module (data=neu): "
                            "it replaces the training images by their cached features")
        start = time.perf_counter()
        self.image_train_set = datasets["train"]
        passes = epoch_passes(len(self.image_train_set), getattr(self.trainer.datamodule, "min_epoch_samples", 0))
        datasets["train"] = FeatureViews(self.embed_views(self.image_train_set, self.cache_views, passes),
                                         self.image_train_set.labels)
        self.val_features = {}
        log.info("feature cache: %d training images x %d views%s in %.1f s", len(self.image_train_set),
                 self.cache_views, f" x {passes} repeats per epoch" if passes > 1 else "",
                 time.perf_counter() - start)

    def on_fit_end(self) -> None:
        if self.image_train_set is not None:
            self.trainer.datamodule.datasets["train"] = self.image_train_set
        self.image_train_set, self.val_features = None, None

    def validation_step(self, batch, batch_idx):
        if self.val_features is not None:
            x, y = batch
            if batch_idx not in self.val_features:
                self.val_features[batch_idx] = self.embed(x)
            batch = (self.val_features[batch_idx], y)
        return super().validation_step(batch, batch_idx)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        record = checkpoint[RECORD]
        if record["config"]:
            # The state dict holds the weights: rebuilding from this record must not fetch them again.
            record["config"] = {**record["config"], "pretrained": False, "weights": None}
