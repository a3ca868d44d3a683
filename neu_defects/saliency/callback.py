"""``GradCAMCallback``: class activation maps of a classifier run, and how well they localise defects.

- Validation: a fixed panel of samples per class, drawn once from the validation split by seed,
  rendered every ``every_n_epochs`` epochs (the map of the predicted class). A panel is skipped
  when it would take the callback's time over ``max_overhead`` of the training time so far: head-only
  epochs on cached features last a second, a panel of backbone CAMs about as long.
- Test: a grid of correct predictions per class and a grid of every misclassified sample (the map
  of the predicted class), and, when the data module's index has boxes (NEU-DET), the localisation
  scores of the map of the true class for every test image, logged as ``test/cam_*``.

Grids go to ``<output_dir>/gradcam/*.png`` and to every logger that takes images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from neu_defects.data.io import original_size
from neu_defects.saliency.cam import CAMExplainer, check_method
from neu_defects.saliency.localisation import LocalisationTally, box_mask, scale_boxes
from neu_defects.saliency.plots import plot_localisation
from neu_defects.saliency.render import Tile, render_tiles
from neu_defects.saliency.settings import resolve_setting

log = logging.getLogger(__name__)


class GradCAMCallback(Callback):
    def __init__(
        self,
        method: str = "auto",
        target_layer: str = "auto",
        aug_smooth: bool | None = None,
        eigen_smooth: bool | None = None,
        every_n_epochs: int = 5,
        max_overhead: float = 0.1,
        samples_per_class: int = 2,
        correct_per_class: int = 4,
        iou_threshold: float = 0.5,
        chunk_size: int = 16,
        seed: int = 0,
        output_dir: str | None = None,
    ):
        super().__init__()
        self.method = method if method in (None, "", "auto") else check_method(method)
        self.target_layer = target_layer
        self.aug_smooth, self.eigen_smooth = aug_smooth, eigen_smooth
        self.every_n_epochs, self.max_overhead = every_n_epochs, max_overhead
        self.samples_per_class, self.correct_per_class = samples_per_class, correct_per_class
        self.iou_threshold, self.chunk_size, self.seed = iou_threshold, chunk_size, seed
        self.output_dir = output_dir
        self.panel: list[int] | None = None
        self._explainer: CAMExplainer | None = None
        self._test: dict | None = None
        self._fit_start: float | None = None
        self._spent, self._last_cost = 0.0, 0.0
        self.active = True

    # -- shared ----------------------------------------------------------------------------------

    def explainer(self, pl_module: LightningModule) -> CAMExplainer:
        if self._explainer is None or self._explainer.net is not pl_module.net:
            spec = pl_module.input_spec
            setting = resolve_setting(pl_module.net, spec["in_chans"], spec["image_size"], self.method,
                                      self.target_layer, self.aug_smooth, self.eigen_smooth)
            self._explainer = CAMExplainer.from_setting(pl_module.net, setting, self.chunk_size)
            log.info("Grad-CAM: %s", self._explainer.describe())
        return self._explainer

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.active = getattr(pl_module, "task", None) == "classifier" and trainer.world_size == 1
        if not self.active:
            reason = ("its panels and test grids need the whole split in one process; run eval on the checkpoint"
                      if trainer.world_size > 1 else f"{type(pl_module).__name__} is not a classifier")
            log.info("Grad-CAM is off: %s", reason)
            return
        # A wrong target_layer fails here, before any epoch, rather than at the first panel.
        self.explainer(pl_module)

    def _dir(self, trainer: Trainer) -> Path:
        return Path(self.output_dir or trainer.default_root_dir)

    @staticmethod
    def _display(pl_module: LightningModule, x: torch.Tensor) -> np.ndarray:
        """Normalised (C, H, W) tensor -> (H, W, C) uint8, undoing the model's normalisation."""
        spec = pl_module.input_spec
        mean = torch.tensor(spec["mean"]).view(-1, 1, 1)
        std = torch.tensor(spec["std"]).view(-1, 1, 1)
        pixels = (x.detach().cpu().float() * std + mean).clamp(0, 1) * 255
        return pixels.round().byte().permute(1, 2, 0).numpy()

    def _tiles(self, pl_module: LightningModule, dataset, positions: Sequence[int], targets: Sequence[int] | None,
               labels: Sequence[int] | None = None, boxes: dict[int, list] | None = None) -> list[Tile]:
        """Tiles for dataset items; the map explains ``targets`` (the prediction when None)."""
        if not positions:
            return []
        items = [dataset[int(i)] for i in positions]
        x = torch.stack([item[0] for item in items]).to(pl_module.device)
        maps, logits = self.explainer(pl_module)(x, targets)
        probs = logits.float().softmax(-1).cpu()
        names = pl_module.class_names
        tiles = []
        for j, i in enumerate(positions):
            true = int(items[j][1]) if labels is None else int(labels[j])
            pred = int(probs[j].argmax())
            caption = f"true {names[true]}\npred {names[pred]} ({probs[j, pred]:.2f})"
            tiles.append(Tile(self._display(pl_module, x[j]), maps[j], caption, (boxes or {}).get(int(i), ())))
        return tiles

    def _publish(self, trainer: Trainer, tiles: list[Tile], name: str, title: str, columns: int,
                 empty_note: str = "nothing to show") -> None:
        pixels = render_tiles(tiles, self._dir(trainer) / "gradcam" / f"{name}.png", title, columns, empty_note)
        tag = f"gradcam/{name.split('_epoch')[0]}"
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, pixels, trainer.global_step, dataformats="HWC")
            elif callable(getattr(logger, "log_image", None)):
                logger.log_image(key=tag, images=[pixels], step=trainer.global_step)

    def _title(self) -> str:
        return self._explainer.describe()

    # -- validation panel ------------------------------------------------------------------------

    def _choose_panel(self, dataset) -> list[int]:
        labels = getattr(dataset, "labels", None)
        labels = np.asarray(labels if labels is not None else [int(dataset[i][1]) for i in range(len(dataset))])
        rng = np.random.default_rng(self.seed)
        panel = []
        for k in np.unique(labels):
            members = np.flatnonzero(labels == k)
            panel += sorted(rng.choice(members, min(self.samples_per_class, len(members)), replace=False).tolist())
        return panel

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_start, self._spent, self._last_cost = time.perf_counter(), 0.0, 0.0

    def _within_budget(self, start: float) -> bool:
        """Whether one more panel, costing what the last one did, keeps the callback within budget."""
        if self._fit_start is None:
            return True
        training = start - self._fit_start - self._spent
        return self._spent + self._last_cost <= self.max_overhead * training

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        due = self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if not self.active or trainer.sanity_checking or not due:
            return
        loader = trainer.val_dataloaders
        loader = loader[0] if isinstance(loader, Sequence) else loader
        if loader is None:
            return
        start = time.perf_counter()
        epoch = trainer.current_epoch + 1
        if not self._within_budget(start):
            log.info("Grad-CAM validation panel of epoch %d skipped: it would take the callback over %.0f%% of "
                     "the training time", epoch, 100 * self.max_overhead)
            return
        if self.panel is None:
            self.panel = self._choose_panel(loader.dataset)
        tiles = self._tiles(pl_module, loader.dataset, self.panel, targets=None)
        self._publish(trainer, tiles, f"val_epoch{epoch:03d}", f"validation panel, epoch {epoch}: {self._title()}",
                      columns=2 * self.samples_per_class)
        self._last_cost = time.perf_counter() - start
        self._spent += self._last_cost
        training = time.perf_counter() - (self._fit_start or start) - self._spent
        log.info("Grad-CAM validation panel of epoch %d: %.2f s (so far: callback %.1f s, training %.1f s)", epoch,
                 self._last_cost, self._spent, training)

    # -- test ------------------------------------------------------------------------------------

    def _test_boxes(self, trainer: Trainer) -> list[tuple] | None:
        """Per test-loader position: (boxes in the original frame, original (w, h)), or None without boxes."""
        datamodule = trainer.datamodule
        index = getattr(datamodule, "index", None)
        positions = getattr(datamodule, "dataset_indices", {}).get("test")
        if index is None or not index.has_boxes or positions is None:
            return None
        samples = [index.samples[i] for i in positions]
        return [(s.boxes, original_size(index.abspath(s))) if s.boxes else None for s in samples]

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.active:
            return
        boxes = self._test_boxes(trainer)
        self._test = {"probs": [], "labels": [], "boxes": boxes, "seconds": 0.0,
                      "tally": LocalisationTally(pl_module.class_names, self.iou_threshold) if boxes else None}

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        if not self.active:
            return
        start = time.perf_counter()
        x, y = batch[0], batch[1]
        state = self._test
        offset = sum(len(p) for p in state["probs"])
        tally = state["tally"]
        if tally is None:
            with torch.no_grad():
                logits = pl_module.net(x)
        else:
            maps, logits = self.explainer(pl_module)(x, y.tolist())
            for j, (cam_map, label) in enumerate(zip(maps, y.tolist(), strict=True)):
                entry = state["boxes"][offset + j]
                if entry is not None:
                    tally.add(cam_map, box_mask(entry[0], entry[1], cam_map.shape), label)
        state["probs"].append(logits.float().softmax(-1).cpu())
        state["labels"].append(y.detach().cpu())
        state["seconds"] += time.perf_counter() - start

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.active:
            return
        start = time.perf_counter()
        state = self._test
        probs, labels = torch.cat(state["probs"]), torch.cat(state["labels"])
        preds = probs.argmax(-1)
        loader = trainer.test_dataloaders
        dataset = (loader[0] if isinstance(loader, Sequence) else loader).dataset
        names = pl_module.class_names
        size = pl_module.input_spec["image_size"]
        boxes = {i: scale_boxes(entry[0], entry[1], (size, size))
                 for i, entry in enumerate(state["boxes"] or []) if entry is not None}

        rng = np.random.default_rng(self.seed)
        correct = []
        for k in range(len(names)):
            members = np.flatnonzero(((preds == k) & (labels == k)).numpy())
            correct += sorted(rng.choice(members, min(self.correct_per_class, len(members)), replace=False).tolist())
        tiles = self._tiles(pl_module, dataset, correct, [int(labels[i]) for i in correct], boxes=boxes)
        self._publish(trainer, tiles, "test_correct", f"test, correct predictions: {self._title()}",
                      columns=self.correct_per_class)

        wrong = np.flatnonzero((preds != labels).numpy()).tolist()
        tiles = self._tiles(pl_module, dataset, wrong, [int(preds[i]) for i in wrong],
                            labels=[int(labels[i]) for i in wrong], boxes=boxes)
        self._publish(trainer, tiles, "test_misclassified",
                      f"test, all {len(wrong)} misclassified (map of the predicted class): {self._title()}",
                      columns=4, empty_note=f"no misclassified test images ({len(labels)} tested)")

        tally = state["tally"]
        if tally is not None and len(tally):
            summary = tally.summary("cam")
            pl_module.log_dict({f"test/{k}": v for k, v in summary.items()})
            plot_localisation(self._dir(trainer) / "plots" / "cam_localisation.png", summary, names,
                              f"localisation of the true-class map on {len(tally)} test images: {self._title()}")
            log.info("Grad-CAM localisation (%s): pointing game %.3f, energy in box %.3f, IoU %.3f, chance %.3f",
                     self._title(), summary["cam_pointing_game"], summary["cam_energy_in_box"], summary["cam_iou"],
                     summary["cam_chance"])
        log.info("Grad-CAM test: %.1f s in batches, %.1f s for grids and metrics",
                 state["seconds"], time.perf_counter() - start)
        self._test = None
