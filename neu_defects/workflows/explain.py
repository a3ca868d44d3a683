"""``explain(cfg)``: class activation maps for any image files (``python -m neu_defects.explain``).

Each readable image is decoded, resized and normalised exactly as in training, classified, and
explained; the run directory gets ``overlays/<name>.png`` (the map over the image at its own
resolution), ``contact_sheet.png``, ``predictions.csv`` and, when some files cannot be read,
``unreadable.txt`` listing them (they are reported, not fatal).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from neu_defects.core.checkpoint import load_module
from neu_defects.core.cli import log, quiet_libraries
from neu_defects.core.errors import UserError
from neu_defects.core.io import atomic_write, write_text
from neu_defects.data.io import decode_image, find_images, resize
from neu_defects.data.transforms import build_transform
from neu_defects.saliency.cam import CAMExplainer
from neu_defects.saliency.render import Tile, overlay, render_tiles, save_png
from neu_defects.saliency.settings import resolve_setting


def _target(target: Any, class_names: list[str]) -> int | None:
    if target is None:
        return None
    if str(target) in class_names:
        return class_names.index(str(target))
    if isinstance(target, int) and 0 <= target < len(class_names):
        return target
    raise UserError(f"target={target} is not a class of this model: use null (the prediction), "
                    f"a class name ({', '.join(class_names)}) or an index 0..{len(class_names) - 1}")


def _unique_names(files: list[Path]) -> list[str]:
    """Output names from file stems, numbered where two inputs share a stem."""
    seen: dict[str, int] = {}
    names = []
    for path in files:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        names.append(path.stem if count == 0 else f"{path.stem}_{count}")
    return names


def explain(cfg: DictConfig) -> dict[str, Any]:
    quiet_libraries()
    run_dir = Path(cfg.paths.output_dir)
    model = load_module(cfg.ckpt_path, task="classifier")
    spec, names = model.input_spec, model.class_names
    files = find_images(str(cfg.input))
    setting = resolve_setting(model.net, spec["in_chans"], spec["image_size"], cfg.method, cfg.target_layer,
                              cfg.aug_smooth, cfg.eigen_smooth)
    explainer = CAMExplainer.from_setting(model.net, setting, cfg.batch_size)
    target = _target(cfg.get("target"), names)
    transform = build_transform(spec["mean"], spec["std"])
    log.info("explaining %d file(s) with %s -> %s", len(files), explainer.describe(), run_dir)

    (run_dir / "overlays").mkdir(parents=True, exist_ok=True)
    named = list(zip(files, _unique_names(files), strict=True))
    rows, tiles, unreadable = [], [], []
    for first in range(0, len(named), cfg.batch_size):
        chunk = []
        for path, out_name in named[first:first + cfg.batch_size]:
            try:
                chunk.append((path, out_name, decode_image(path, spec["in_chans"])))
            except UserError as err:
                unreadable.append((path, str(err)))
        if not chunk:
            continue
        x = torch.stack([transform(image=resize(image, spec["image_size"]))["image"] for _, _, image in chunk])
        maps, logits = explainer(x, None if target is None else [target] * len(chunk))
        probs = logits.float().softmax(-1)
        for (path, out_name, image), cam_map, p in zip(chunk, maps, probs, strict=True):
            pred = int(p.argmax())
            explained = names[pred if target is None else target]
            save_png(overlay(image, cam_map), run_dir / "overlays" / f"{out_name}.png")
            caption = f"{path.name}\npred {names[pred]} ({p[pred]:.2f})"
            if target is not None:
                caption += f", map: {explained}"
            if len(tiles) < cfg.contact_sheet_max:
                tiles.append(Tile(resize(image, spec["image_size"]), cam_map, caption))
            rows.append({"path": str(path), "overlay": f"overlays/{out_name}.png", "predicted": names[pred],
                         "confidence": round(float(p[pred]), 4), "explained_class": explained,
                         **{f"p_{c}": round(float(v), 4) for c, v in zip(names, p, strict=True)}})

    title = f"{explainer.describe()}: {len(tiles)} of {len(rows)} readable image(s)"
    if unreadable:
        title += f"; {len(unreadable)} unreadable, listed in unreadable.txt"
    render_tiles(tiles, run_dir / "contact_sheet.png", title, columns=4, empty_note="no readable images")
    fields = ["path", "overlay", "predicted", "confidence", "explained_class", *[f"p_{c}" for c in names]]

    def write_predictions(handle):
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(run_dir / "predictions.csv", write_predictions)
    if unreadable:
        write_text(run_dir / "unreadable.txt", "".join(f"{p}\t{reason}\n" for p, reason in unreadable))
        for path, reason in unreadable:
            log.warning("skipped %s: %s", path, reason)
    log.info("%d overlay(s), %d unreadable file(s); outputs in %s", len(rows), len(unreadable), run_dir)
    return {"explained": rows, "unreadable": [str(p) for p, _ in unreadable], "setting": setting}
