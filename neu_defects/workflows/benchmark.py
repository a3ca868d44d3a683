"""``benchmark(cfg)``: how fast the framework trains and infers on this machine (``python -m neu_defects.benchmark``).

For each model of ``models`` (a train config's overrides), in one run:

- training throughput (images/s) of the framework's default Lightning loop (the train config's
  trainer, callbacks and loggers) and of a plain hand-written PyTorch loop on the same module, data
  loader, batch size and optimiser; rounds alternate the two so a change in machine load hits both;
- data throughput alone: the DataModule's training loader (cached images, augmentation, collation);
- inference latency at each batch size, median and p90, for PyTorch eager, ONNX Runtime fp32 and
  ONNX Runtime int8, and the int8 accuracy change on the test split;
- parameters and multiply-accumulates (MACs) per image.

Training throughput times whole steps (loading, forward, backward, optimiser, logging, callbacks),
end of one batch to the end of the next, after the warm-up batches; a loop's figure is its median
step over all rounds. Writes
``benchmark.json`` and ``benchmark.md`` to the run directory.
"""

from __future__ import annotations

import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import onnxruntime as ort
import torch
from hydra import compose
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from neu_defects.core.checkpoint import check_state_dict, read_checkpoint
from neu_defects.core.cli import log, quiet_libraries
from neu_defects.core.errors import UserError
from neu_defects.core.io import write_json, write_text
from neu_defects.deploy.backends import OnnxBackend, TorchBackend, accuracy, split_arrays
from neu_defects.deploy.onnx_io import quantize_int8, to_onnx
from neu_defects.workflows.builders import build_model_and_data
from neu_defects.workflows.speed import benchmark_speed, speed_bars, speed_markdown
from neu_defects.workflows.timing import data_round, latency_ms, lightning_round, median_rate, plain_round

BACKENDS = ("torch eager", "ORT fp32", "ORT int8")


def macs_per_image(net: torch.nn.Module, spec: dict[str, Any]) -> int:
    x = torch.zeros(1, spec["in_chans"], spec["image_size"], spec["image_size"])
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    # The counter reports a multiply-accumulate as two floating-point operations.
    return counter.get_total_flops() // 2


def model_config(name: str, entry: DictConfig, bench: DictConfig, run_dir: Path) -> DictConfig:
    overrides = [*entry.overrides, f"seed={bench.seed}", f"paths.output_dir={run_dir}"]
    if bench.data_root:
        overrides.append(f"data.root={bench.data_root}")
    cfg = compose(config_name="train", overrides=overrides)
    log.info("[%s] %s", name, " ".join(entry.overrides))
    return cfg


def benchmark_model(name: str, entry: DictConfig, bench: DictConfig, run_dir: Path) -> dict[str, Any]:
    cfg = model_config(name, entry, bench, run_dir / name)
    L.seed_everything(bench.seed, workers=True, verbose=False)
    model, datamodule = build_model_and_data(cfg)
    datamodule.setup("fit")
    spec, t = model.input_spec, bench.train
    steps = t.warmup_batches + t.batches
    available = len(datamodule.train_dataloader())
    if steps > available:
        raise UserError(f"train.warmup_batches + train.batches = {steps} exceeds the {available} training batches "
                        f"of {name}: measure fewer batches")

    result: dict[str, Any] = {"overrides": list(entry.overrides), "image_size": spec["image_size"],
                              "in_chans": spec["in_chans"], "batch_size": int(cfg.data.batch_size),
                              "params": sum(p.numel() for p in model.net.parameters()),
                              "trainable_params": sum(p.numel() for p in model.net.parameters() if p.requires_grad),
                              "macs": macs_per_image(model.net, spec)}
    rounds: dict[str, list[list[tuple[float, float]]]] = {"lightning": [], "plain": [], "data": []}
    for r in range(t.rounds):
        rounds["data"].append(data_round(datamodule, steps, t.warmup_batches))
        rounds["plain"].append(plain_round(model, datamodule, steps, t.warmup_batches))
        rounds["lightning"].append(lightning_round(cfg, model, datamodule, steps, t.warmup_batches))
        log.info("[%s] round %d/%d, median images per wall s (per CPU s): %s", name, r + 1, t.rounds,
                 ", ".join(f"{k} {wall:.1f} ({cpu:.1f})" for k, v in rounds.items()
                           for wall, cpu in [median_rate(v[-1])]))
    pooled = {k: median_rate([step for steps_ in v for step in steps_]) for k, v in rounds.items()}
    rate = {k: wall for k, (wall, _) in pooled.items()}
    rate_cpu = {k: cpu for k, (_, cpu) in pooled.items()}
    result["train"] = {"images_per_s": rate, "images_per_cpu_s": rate_cpu,
                       "round_medians": {k: [median_rate(steps_) for steps_ in v] for k, v in rounds.items()},
                       "measured_batches": t.batches, "rounds": t.rounds,
                       "lightning_over_plain": rate["lightning"] / rate["plain"],
                       "lightning_over_plain_cpu": rate_cpu["lightning"] / rate_cpu["plain"],
                       "data_over_training": rate["data"] / rate["lightning"]}

    if entry.get("ckpt_path"):
        state_dict = read_checkpoint(entry.ckpt_path)["state_dict"]
        check_state_dict(model, state_dict, entry.ckpt_path)
        model.load_state_dict(state_dict)
    result["weights"] = entry.get("ckpt_path") or f"trained here by the {t.rounds} Lightning rounds above"
    result["inference"] = benchmark_inference(name, model.eval(), datamodule, bench.inference)
    return result


def benchmark_inference(name: str, model, datamodule, settings: DictConfig) -> dict[str, Any]:
    datamodule.setup("test")
    test_images, test_labels = split_arrays(datamodule, "test")
    calibration, _ = split_arrays(datamodule, "train", settings.calibration_images)
    onnx_model = to_onnx(model)
    # ONNX Runtime gets the threads torch has, so the backends race on equal terms.
    threads = torch.get_num_threads()
    backends = {"torch eager": TorchBackend(model), "ORT fp32": OnnxBackend(onnx_model, name, threads),
                "ORT int8": OnnxBackend(quantize_int8(onnx_model, calibration), name, threads)}
    out: dict[str, Any] = {"threads": threads, "latency": {}, "test_images": len(test_labels)}
    for batch_size in settings.batch_sizes:
        batch = np.ascontiguousarray(np.resize(test_images, (batch_size, *test_images.shape[1:])))
        for label, backend in backends.items():
            timing = latency_ms(lambda b=backend, x=batch: b.logits(x), settings.warmup, settings.runs)
            out["latency"].setdefault(f"batch {batch_size}", {})[label] = timing
            log.info("[%s] batch %d, %s: median %.2f ms, p90 %.2f ms", name, batch_size, label,
                     timing["median_ms"], timing["p90_ms"])
    out["test_acc"] = {label: accuracy(backend, test_images, test_labels) for label, backend in backends.items()}
    out["int8_acc_change_points"] = 100 * (out["test_acc"]["ORT int8"] - out["test_acc"]["ORT fp32"])
    log.info("[%s] test accuracy: %s", name, ", ".join(f"{k} {v:.4f}" for k, v in out["test_acc"].items()))
    return out


def check_bars(results: dict[str, Any], bars: DictConfig) -> list[dict[str, Any]]:
    """The acceptance bars, each with its measured value and whether it holds."""
    rows = []
    for name, r in results.items():
        train, lat = r["train"], r["inference"]["latency"].get("batch 1", {})
        rows.append({"model": name, "bar": f"Lightning / plain >= {bars.lightning_over_plain}",
                     "value": train["lightning_over_plain"], "ok": train["lightning_over_plain"] >= bars.lightning_over_plain})
        rows.append({"model": name, "bar": f"data / training >= {bars.data_over_training}",
                     "value": train["data_over_training"], "ok": train["data_over_training"] >= bars.data_over_training})
        if lat:
            speedup = lat["torch eager"]["median_ms"] / lat["ORT fp32"]["median_ms"]
            rows.append({"model": name, "bar": f"eager / ORT fp32 batch-1 median >= {bars.ort_speedup}",
                         "value": speedup, "ok": speedup >= bars.ort_speedup})
        change = r["inference"]["int8_acc_change_points"]
        rows.append({"model": name, "bar": f"|int8 accuracy change| <= {bars.int8_change_points} points",
                     "value": change, "ok": abs(change) <= bars.int8_change_points})
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Benchmark ({report['date']})", "", f"Machine: {report['machine']}. Command: `{report['command']}`."]
    if report["models"]:
        lines += model_markdown(report["models"])
    lines += speed_markdown(report["speed"])
    lines += ["", "## Bars", "", "| model | bar | measured | holds |", "|---|---|---|---|"]
    lines += [f"| {b['model']} | {b['bar']} | {b['value']:.3f} | {'yes' if b['ok'] else '**no**'} |"
              for b in report["bars"]]
    return "\n".join(lines) + "\n"


def model_markdown(models: dict[str, Any]) -> list[str]:
    lines = ["", "## Training (images/s of the median step, all rounds pooled)", "",
             "| model | input | batch | Lightning loop | plain loop | ratio | ratio in CPU time | data pipeline "
             "| data / training |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in models.items():
        t = r["train"]
        lines.append(f"| {name} | {r['in_chans']}x{r['image_size']}² | {r['batch_size']} | "
                     f"{t['images_per_s']['lightning']:.1f} | {t['images_per_s']['plain']:.1f} | "
                     f"{t['lightning_over_plain']:.3f} | {t['lightning_over_plain_cpu']:.3f} | "
                     f"{t['images_per_s']['data']:.0f} | {t['data_over_training']:.1f}x |")
    lines += ["", "Wall-clock images/s; the CPU-time ratio divides images per CPU second of the process, "
              "which other jobs on the machine hardly change."]
    lines += ["", "## Inference latency (ms, median / p90)", "",
              "| model | batch | " + " | ".join(BACKENDS) + " | eager / ORT fp32 |", "|---|---|---|---|---|---|"]
    for name, r in models.items():
        for batch, row in r["inference"]["latency"].items():
            cells = " | ".join(f"{row[b]['median_ms']:.2f} / {row[b]['p90_ms']:.2f}" for b in BACKENDS)
            lines.append(f"| {name} | {batch.split()[1]} | {cells} | "
                         f"{row['torch eager']['median_ms'] / row['ORT fp32']['median_ms']:.2f}x |")
    lines += ["", "## Accuracy on the test split, size", "",
              "| model | weights | test images | eager | ORT fp32 | ORT int8 | int8 change (points) | params | MACs |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, r in models.items():
        acc = r["inference"]["test_acc"]
        lines.append(f"| {name} | {r['weights']} | {r['inference']['test_images']} | {acc['torch eager']:.4f} | "
                     f"{acc['ORT fp32']:.4f} | {acc['ORT int8']:.4f} | {r['inference']['int8_acc_change_points']:+.2f} | "
                     f"{r['params'] / 1e6:.2f} M | {r['macs'] / 1e6:.1f} M |")
    return lines


def benchmark(cfg: DictConfig) -> dict[str, Any]:
    quiet_libraries()
    # The timed rounds run no validation, so the checkpoint callback finds no val/loss: expected.
    warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")
    run_dir = Path(cfg.paths.output_dir)
    results = {name: benchmark_model(name, entry, cfg, run_dir) for name, entry in (cfg.models or {}).items()
               if entry is not None}
    speed = benchmark_speed(cfg, run_dir) if cfg.speed else {}
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
                         f"torch {torch.__version__}, onnxruntime {ort.__version__}",
              "command": " ".join(["python -m neu_defects.benchmark", *sys.argv[1:]]), "settings": OmegaConf.to_container(cfg, resolve=True),
              "models": results, "speed": speed}
    report["bars"] = [*check_bars(results, cfg.bars), *speed_bars(speed, cfg.bars)]
    write_json(run_dir / "benchmark.json", report)
    write_text(run_dir / "benchmark.md", markdown(report))
    log.info("benchmark: %s", "; ".join(f"{b['model']} {b['bar']}: {b['value']:.3f} ({'ok' if b['ok'] else 'NOT MET'})"
                                        for b in report["bars"]))
    log.info("outputs in %s", run_dir)
    return report
