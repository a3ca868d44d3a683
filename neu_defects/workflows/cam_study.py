"""``run_study(cfg)``: which class activation map localises defects (``python -m neu_defects.cam_study``).

For one trained classifier, every method x target layer x smoothing setting is scored on the
test split against the NEU-DET boxes (pointing game, energy in box, IoU), with the map of the
true class, overall and per class, beside the chance row (a uniform map, or a point drawn
uniformly, scores the box coverage). Writes ``results.csv``, ``table.md`` and
``cam_localisation_best.png`` to the run directory. Combinations are ranked by the mean of
pointing game and energy in box.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from omegaconf import DictConfig, ListConfig
from rich.progress import track

from neu_defects.core.cli import log, quiet_libraries
from neu_defects.core.errors import UserError
from neu_defects.core.io import write_text
from neu_defects.data.io import original_size
from neu_defects.reporting.tables import markdown_table, write_csv
from neu_defects.saliency.cam import PROJECTIONS, cam_grid, check_method
from neu_defects.saliency.layers import candidate_layers, resolve_layer, split_layers, trace_feature_maps
from neu_defects.saliency.localisation import SCORES, LocalisationTally, box_mask
from neu_defects.saliency.plots import plot_localisation
from neu_defects.workflows.builders import load_checkpoint_and_data

SMOOTHING = {"none": (False, False), "aug": (True, False), "eigen": (False, True), "both": (True, True)}


def _settings(study: DictConfig) -> tuple[list[str], list[str]]:
    methods = [check_method(m) for m in study.methods]
    smoothing = list(study.smoothing)
    unknown = [s for s in smoothing if s not in SMOOTHING]
    if unknown:
        raise UserError(f"study.smoothing={unknown} is not known: use any of {', '.join(SMOOTHING)}")
    return methods, smoothing


def _layers(net, spec: dict[str, Any], layers) -> list[str]:
    """``auto``: the last block and the blocks ending the two finer stages, alone, each finer one
    fused with the last block, and all three fused; or the given paths (``+`` fuses)."""
    if layers in (None, "auto"):
        coarsest, *finer = candidate_layers(net, spec["in_chans"], spec["image_size"])
        fused = [resolve_layer(net, f"{coarsest}+{layer}", spec["in_chans"], spec["image_size"]) for layer in finer]
        if len(finer) > 1:
            fused.append(resolve_layer(net, "+".join([coarsest, *finer]), spec["in_chans"], spec["image_size"]))
        return [coarsest, *finer, *fused]
    layers = list(layers) if isinstance(layers, list | ListConfig) else [layers]
    return [resolve_layer(net, str(layer), spec["in_chans"], spec["image_size"]) for layer in layers]


def _test_set(cfg: DictConfig):
    """(model, dataset, box mask per item or None) for the study split, as the training run split it."""
    model, datamodule = load_checkpoint_and_data(cfg, task="classifier", needs_boxes=True)
    index, size = datamodule.index, (model.image_size, model.image_size)
    masks = []
    for i in datamodule.dataset_indices[cfg.study.split]:
        sample = index.samples[i]
        masks.append(box_mask(sample.boxes, original_size(index.abspath(sample)), size) if sample.boxes else None)
    return model, datamodule.datasets[cfg.study.split], masks


def run_study(cfg: DictConfig) -> list[dict[str, Any]]:
    quiet_libraries()
    run_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    ckpt_path = Path(cfg.ckpt_path)
    study = cfg.study
    methods, smoothing = _settings(study)
    model, dataset, masks = _test_set(cfg)
    net, spec, names = model.net, model.input_spec, model.class_names
    layers = _layers(net, spec, study.layers)
    feature_maps = trace_feature_maps(net, spec["in_chans"], spec["image_size"])
    resolution, last_layer = dict(feature_maps), feature_maps[-1][0]
    name = study.label or ckpt_path.resolve().parent.parent.name
    log.info("CAM study of %s (%s) on %d %s images: %s x %s x %s", name, type(net).__name__, len(dataset),
             study.split, methods, layers, smoothing)

    rows, accuracy, coverage = [], None, {}
    for setting in smoothing:
        aug, eigen = SMOOTHING[setting]
        # EigenCAM is a projection already: eigen_smooth leaves it unchanged.
        setting_methods = [m for m in methods if not (eigen and m in PROJECTIONS)]
        tallies = {(m, layer): LocalisationTally(names, study.iou_threshold) for m in setting_methods for layer in layers}
        correct, start = 0, time.perf_counter()
        for first in track(range(0, len(dataset), study.batch_size), transient=True,
                           description=f"CAMs of {len(dataset)} images ({setting})"):
            items = [dataset[i] for i in range(first, min(first + study.batch_size, len(dataset)))]
            x, y = torch.stack([item[0] for item in items]), [int(item[1]) for item in items]
            grid, logits = cam_grid(net, x, y, layers, setting_methods, aug, eigen, reference=last_layer)
            correct += int((logits.argmax(-1) == torch.tensor(y)).sum())
            for key, maps in grid.items():
                for j, label in enumerate(y):
                    if masks[first + j] is not None:
                        tallies[key].add(maps[j], masks[first + j], label)
        seconds = time.perf_counter() - start
        accuracy = correct / len(dataset)
        log.info("smoothing %s: %d combinations in %.0f s", setting, len(tallies), seconds)
        for (method, layer), tally in tallies.items():
            summary = tally.summary("cam")
            coverage = {k.removeprefix("cam_chance"): v for k, v in summary.items() if k.startswith("cam_chance")}
            map_sizes = "+".join("x".join(map(str, resolution[part])) for part in split_layers(layer))
            rows.append({"method": method, "layer": layer, "map": map_sizes,
                         "smoothing": setting, **{k: v for k, v in summary.items() if "chance" not in k},
                         "seconds": round(seconds, 1)})
    rows.sort(key=lambda r: -(r["cam_pointing_game"] + r["cam_energy_in_box"]))
    chance_row = {"method": "chance (uniform map or point)", "layer": "", "map": "", "smoothing": "",
                  **{f"cam_{s}{suffix}": v for s in SCORES for suffix, v in coverage.items()}}
    context = {"name": name, "ckpt": str(ckpt_path), "net": type(net).__name__, "image_size": spec["image_size"],
               "images": sum(m is not None for m in masks), "accuracy": accuracy, "split": study.split}
    write_outputs(run_dir, rows, chance_row, coverage, names, context)
    best = rows[0]
    log.info("best: %s on %s (%s smoothing): pointing game %.3f, energy in box %.3f (chance %.3f); %s acc %.4f",
             best["method"], best["layer"], best["smoothing"], best["cam_pointing_game"], best["cam_energy_in_box"],
             coverage[""], study.split, accuracy)
    return [*rows, chance_row]


def _fmt(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.3f}" if key in row else "–"


def write_outputs(run_dir: Path, rows: list[dict], chance_row: dict, coverage: dict[str, float], names: list[str],
                  context: dict) -> None:
    columns = ["method", "layer", "map", "smoothing", *[f"cam_{s}" for s in SCORES],
               *[f"cam_{s}/{c}" for s in SCORES for c in names], "seconds"]
    # A class without annotated images has no score: NaN, an empty CSV cell.
    write_csv(run_dir / "results.csv", pd.DataFrame([*rows, chance_row]).reindex(columns=columns))
    header = ["#", "method", "layer (map)", "smoothing", "pointing game", "energy in box", "IoU@thr",
              *[f"{c}: PG / EiB" for c in names]]
    body = []
    for rank, row in enumerate([*rows, chance_row], start=1):
        layer = f"{row['layer']} ({row['map']})" if row["layer"] else ""
        body.append([str(rank) if row is not chance_row else "", row["method"], layer, row["smoothing"],
                     _fmt(row, "cam_pointing_game"), _fmt(row, "cam_energy_in_box"), _fmt(row, "cam_iou"),
                     *[f"{_fmt(row, f'cam_pointing_game/{c}')} / {_fmt(row, f'cam_energy_in_box/{c}')}"
                       for c in names]])
    split = context["split"]
    intro = (f"{context['net']} at {context['image_size']} px, checkpoint `{context['ckpt']}`; {split} accuracy "
             f"{context['accuracy']:.4f}; {context['images']} annotated {split} images; map of the true class. "
             "Ranked by the mean of pointing game and energy in box.")
    write_text(run_dir / "table.md", f"# CAM localisation: {context['name']}\n\n{intro}\n\n"
               + markdown_table(pd.DataFrame(body, columns=header)))
    best = rows[0]
    summary = {**{k: v for k, v in best.items() if k.startswith("cam_")},
               **{f"cam_chance{suffix}": v for suffix, v in coverage.items()}}
    plot_localisation(run_dir / "cam_localisation_best.png", summary, names,
                      f"{context['name']}: best, {best['method']} on {best['layer']} ({best['smoothing']} smoothing)")
