"""The benchmark's ``detector_latency`` section: a detector's batch-1 CPU latency, eager and ONNX Runtime.

Batch 1 is how a line inspects: one image as it arrives. Each backend detects the same real test
images in turn (the whole graph, post-processing included), so the figure holds the cost of the
detections a trained model makes. With ``ckpt_path: null`` the detector has its ImageNet backbone
and an untrained head, which emits few boxes: give a trained checkpoint for the deployed figure.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from neu_defects.core.checkpoint import check_state_dict, read_checkpoint
from neu_defects.core.cli import log
from neu_defects.deploy.backends import split_arrays
from neu_defects.deploy.detection import OnnxDetector, TorchDetector, box_parity, detector_to_onnx
from neu_defects.workflows.builders import build_model_and_data
from neu_defects.workflows.timing import latency_ms, train_config


def detector_latency(settings: DictConfig, bench: DictConfig, run_dir: Path) -> dict[str, Any]:
    cfg = train_config(list(settings.overrides), bench, run_dir / "detector")
    model, datamodule = build_model_and_data(cfg)
    datamodule.setup("test")
    if settings.ckpt_path:
        state_dict = read_checkpoint(settings.ckpt_path)["state_dict"]
        check_state_dict(model, state_dict, settings.ckpt_path)
        model.load_state_dict(state_dict)
    model.eval()
    images, _ = split_arrays(datamodule, "test", settings.images)
    threads = torch.get_num_threads()
    backends = {"torch eager": TorchDetector(model),
                "ORT fp32": OnnxDetector(detector_to_onnx(model), "benchmark", threads)}
    latency = {}
    for label, backend in backends.items():
        cycle = itertools.cycle(images)
        latency[label] = latency_ms(lambda b=backend, c=cycle: b.detect(next(c)), settings.warmup, settings.runs)
        log.info("[detector] batch 1, %s: median %.1f ms, p90 %.1f ms", label, latency[label]["median_ms"],
                 latency[label]["p90_ms"])
    parity = box_parity([backends["torch eager"].detect(x) for x in images],
                        [backends["ORT fp32"].detect(x) for x in images], 0.1)
    return {"overrides": list(settings.overrides), "image_size": model.input_spec["image_size"],
            "weights": settings.ckpt_path or "ImageNet backbone, untrained head", "threads": threads,
            "images": len(images), "latency": latency, "parity": parity,
            "eager_over_ort": latency["torch eager"]["median_ms"] / latency["ORT fp32"]["median_ms"]}


def detector_markdown(r: dict[str, Any]) -> list[str]:
    lines = ["", f"## Detector latency, batch 1 (`{' '.join(r['overrides'])}`, {r['image_size']} px, "
             f"{r['threads']} threads)", "", f"Weights: {r['weights']}; {r['images']} real test images in turn.", "",
             "| backend | median ms | p90 ms |", "|---|---|---|"]
    lines += [f"| {k} | {v['median_ms']:.1f} | {v['p90_ms']:.1f} |" for k, v in r["latency"].items()]
    p = r["parity"]
    lines += ["", f"Eager / ORT: **{r['eager_over_ort']:.2f}x**. Parity (scores >= 0.1): boxes within "
              f"{p['max_box_diff']:.2g} px, scores within {p['max_score_diff']:.2g}, "
              f"{p['count_mismatches']} count and {p['label_mismatches']} label mismatches."]
    return lines
