"""The speed section of the benchmark: how much of this CPU the framework's hot paths use.

Measured in one run, so every ratio compares figures taken under the same machine load:

- ``embedding``: pooled backbone features of real NEU images, images/s of eager PyTorch (NCHW and
  channels-last), of ``FrozenRunner`` (what the framework runs) and of plain ONNX Runtime on the
  same numpy batches;
- ``cache_build``: a frozen run's feature cache (loader, augmentation, backend) against plain ONNX
  Runtime on the same augmented images;
- ``training``: the plain training loop's steps eager NCHW against channels-last for each model,
  with the data pipeline alone beside them;
- ``time_to_accuracy``: whole training runs (fit, then test), their wall seconds and whether test
  accuracy reached the target;
- ``detector_latency``: a detector's batch-1 latency, eager and ONNX Runtime (``detector_speed.py``).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from neu_defects.core.cli import log
from neu_defects.deploy.backends import split_arrays
from neu_defects.deploy.onnx_io import ort_session
from neu_defects.models.frozen import FrozenRunner, Method, to_channels_last
from neu_defects.workflows.builders import build_model_and_data
from neu_defects.workflows.detector_speed import detector_latency, detector_markdown
from neu_defects.workflows.timing import data_round, median_rate, plain_round, train_config
from neu_defects.workflows.train import train


def rate(run, images: int, repeats: int) -> float:
    """Images per second of the median of ``repeats`` timed calls, after one untimed call."""
    run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return images / float(np.median(seconds))


def batched(fn, images: np.ndarray, batch_size: int):
    return lambda: [fn(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]


def embedding(settings: DictConfig, bench: DictConfig, run_dir: Path) -> dict[str, Any]:
    cfg = train_config(list(settings.overrides), bench, run_dir / "embedding")
    model, datamodule = build_model_and_data(cfg)
    datamodule.setup("fit")
    images, _ = split_arrays(datamodule, "val", settings.images)
    net = model.net.eval()
    # Copies in each layout: the model config may already have put the net in channels-last.
    nchw = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
    last = copy.deepcopy(net).to(memory_format=torch.channels_last)
    runner = FrozenRunner(Method(copy.deepcopy(net), "embed"), "benchmark-embed", "onnxruntime",
                          weights=net.backbone)
    start = time.perf_counter()
    runner(torch.from_numpy(images[:settings.batch_size]))
    first_call = time.perf_counter() - start
    session = ort_session(runner.exports[tuple(images.shape[1:])], torch.get_num_threads())
    with torch.no_grad():
        backends = {
            "eager NCHW": lambda b: nchw.embed(torch.from_numpy(b)),
            "eager channels-last": lambda b: last.embed(to_channels_last(torch.from_numpy(b))),
            "FrozenRunner (ONNX Runtime)": lambda b: runner(torch.from_numpy(b)),
            "plain ONNX Runtime": lambda b: session.run(None, {"input": b}),
        }
        rates = {name: rate(batched(fn, images, settings.batch_size), len(images), settings.repeats)
                 for name, fn in backends.items()}
    log.info("embedding, images/s: %s", ", ".join(f"{k} {v:.1f}" for k, v in rates.items()))
    return {"overrides": list(settings.overrides), "images": len(images), "batch_size": settings.batch_size,
            "images_per_s": rates, "first_call_seconds": first_call,
            "runner_over_eager": rates["FrozenRunner (ONNX Runtime)"] / rates["eager NCHW"]}


def cache_build(settings: DictConfig, bench: DictConfig, run_dir: Path) -> dict[str, Any]:
    cfg = train_config(list(settings.overrides), bench, run_dir / "cache_build")
    model, datamodule = build_model_and_data(cfg)
    datamodule.setup("fit")
    dataset = datamodule.datasets["train"]
    model.embed(dataset[0][0][None])  # export and parity check: once per backbone, not part of a build
    start = time.perf_counter()
    features = model.embed_views(dataset, views=1)
    build_rate = features.shape[1] / (time.perf_counter() - start)
    dataset.epoch = 0
    images = np.stack([dataset[i][0].numpy() for i in range(len(dataset))])  # the same augmented view
    session = ort_session(model.frozen_embed.exports[tuple(images.shape[1:])], torch.get_num_threads())
    plain = rate(batched(lambda b: session.run(None, {"input": b}), images, 64), len(images), 1)
    log.info("feature cache build %.1f images/s, plain ONNX Runtime on the same images %.1f", build_rate, plain)
    return {"overrides": list(settings.overrides), "images": len(images), "cache_build_images_per_s": build_rate,
            "plain_ort_images_per_s": plain, "cache_over_plain_ort": build_rate / plain}


def training(settings: DictConfig, bench: DictConfig, run_dir: Path) -> dict[str, Any]:
    out = {}
    steps, warmup = settings.warmup_batches + settings.batches, settings.warmup_batches
    for name, overrides in settings.models.items():
        if overrides is None:
            continue
        built = {}
        for layout in ("NCHW", "channels-last"):
            cfg = train_config([*overrides, f"model.channels_last={layout != 'NCHW'}"], bench, run_dir / name)
            model, datamodule = build_model_and_data(cfg)
            datamodule.setup("fit")
            built[layout] = (model, datamodule)
        rounds = {"NCHW": [], "channels-last": [], "data": []}
        for _ in range(settings.rounds):  # alternating, so a change in machine load hits both layouts
            for layout, (model, datamodule) in built.items():
                rounds[layout] += plain_round(model, datamodule, steps, warmup)
            rounds["data"] += data_round(built["NCHW"][1], steps, warmup)
        rates = {k: median_rate(v)[0] for k, v in rounds.items()}
        out[name] = {"overrides": list(overrides), "images_per_s": rates,
                     "channels_last_over_nchw": rates["channels-last"] / rates["NCHW"],
                     "data_over_training": rates["data"] / max(rates["NCHW"], rates["channels-last"])}
        log.info("[%s] training images/s: %s", name, ", ".join(f"{k} {v:.1f}" for k, v in rates.items()))
    return out


def time_to_accuracy(settings: DictConfig, bench: DictConfig, run_dir: Path) -> dict[str, Any]:
    out = {}
    for name, overrides in settings.runs.items():
        if overrides is None:
            continue
        cfg = train_config(list(overrides), bench, run_dir / "runs" / name)
        start = time.perf_counter()
        metrics, _ = train(cfg)
        wall = time.perf_counter() - start
        acc = metrics["test/acc"]
        out[name] = {"overrides": list(overrides), "wall_seconds": wall, "fit_seconds": metrics["fit/seconds"],
                     "test_acc": acc, "reached": acc >= settings.target}
        log.info("[%s] test/acc %.4f in %.0f s (fit %.0f s)", name, acc, wall, metrics["fit/seconds"])
    return out


def speed_bars(speed: dict[str, Any], bars: DictConfig) -> list[dict[str, Any]]:
    rows = []

    def bar(model: str, text: str, value: float, ok: bool) -> None:
        rows.append({"model": model, "bar": text, "value": value, "ok": bool(ok)})

    if "cache_build" in speed:
        value = speed["cache_build"]["cache_over_plain_ort"]
        bar("feature cache", f"cache build / plain ONNX Runtime >= {bars.cache_over_plain_ort}", value,
            value >= bars.cache_over_plain_ort)
    for name, r in speed.get("training", {}).items():
        if name in bars.channels_last_models:
            bar(name, f"channels-last / NCHW training >= {bars.channels_last_speedup}", r["channels_last_over_nchw"],
                r["channels_last_over_nchw"] >= bars.channels_last_speedup)
        bar(name, f"data / training >= {bars.data_over_training}", r["data_over_training"],
            r["data_over_training"] >= bars.data_over_training)
    runs = speed.get("time_to_accuracy", {})
    for name, r in runs.items():
        bar(name, f"test/acc >= {bars.time_to_accuracy_target} (wall s)", r["wall_seconds"], r["reached"])
    if {"lite0_frozen", "lite0_frozen_eager"} <= set(runs):
        value = runs["lite0_frozen"]["fit_seconds"] / runs["lite0_frozen_eager"]["fit_seconds"]
        bar("lite0_frozen", f"fit, ONNX Runtime / eager <= {bars.frozen_fit_ratio}", value,
            value <= bars.frozen_fit_ratio)
    return rows


def speed_markdown(speed: dict[str, Any]) -> list[str]:
    lines = []
    if "embedding" in speed:
        e = speed["embedding"]
        lines += ["", f"## Frozen embedding ({e['images']} validation images, batch {e['batch_size']}, "
                  f"`{' '.join(e['overrides'])}`)", "", "| backend | images/s | vs eager NCHW |", "|---|---|---|"]
        base = e["images_per_s"]["eager NCHW"]
        lines += [f"| {k} | {v:.1f} | {v / base:.2f}x |" for k, v in e["images_per_s"].items()]
        lines += ["", f"FrozenRunner's first call (export or cache hit, parity check): {e['first_call_seconds']:.1f} s."]
    if "cache_build" in speed:
        c = speed["cache_build"]
        lines += ["", "## Feature cache build", "", f"`{' '.join(c['overrides'])}`: {c['images']} training images, "
                  f"{c['cache_build_images_per_s']:.1f} images/s; plain ONNX Runtime on the same images "
                  f"{c['plain_ort_images_per_s']:.1f}: **{c['cache_over_plain_ort']:.2f}x**."]
    if "training" in speed:
        lines += ["", "## Training steps, plain loop (images/s, median step)", "",
                  "| model | NCHW | channels-last | ratio | data pipeline | data / training |", "|---|---|---|---|---|---|"]
        for name, r in speed["training"].items():
            v = r["images_per_s"]
            lines.append(f"| {name} | {v['NCHW']:.1f} | {v['channels-last']:.1f} | {r['channels_last_over_nchw']:.2f}x "
                         f"| {v['data']:.0f} | {r['data_over_training']:.1f}x |")
    if "time_to_accuracy" in speed:
        lines += ["", "## Time to accuracy (whole runs: fit, then test)", "",
                  "| run | overrides | test/acc | fit s | wall s |", "|---|---|---|---|---|"]
        lines += [f"| {name} | `{' '.join(r['overrides'])}` | {r['test_acc']:.4f} | {r['fit_seconds']:.0f} | "
                  f"{r['wall_seconds']:.0f} |" for name, r in speed["time_to_accuracy"].items()]
    if "detector_latency" in speed:
        lines += detector_markdown(speed["detector_latency"])
    return lines


SECTIONS = {"embedding": embedding, "cache_build": cache_build, "training": training,
            "time_to_accuracy": time_to_accuracy, "detector_latency": detector_latency}


def benchmark_speed(bench: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Each section of ``bench.speed`` that is not null."""
    return {name: SECTIONS[name](section, bench, run_dir) for name, section in bench.speed.items()
            if section is not None}
