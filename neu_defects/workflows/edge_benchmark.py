"""Edge benchmark: each model in each deployment backend, as a device would run it.

``python -m neu_defects.workflows.edge_benchmark --model cnn=CKPT --model lite0=CKPT --model detector=CKPT
--images DIR --output DIR`` builds every form of each checkpoint (PyTorch eager; ONNX Runtime fp32 and
int8; TFLite fp32, dynamic-range int8 and full-integer int8), then measures each in a fresh process:

- single-thread batch-1 latency, median and p95 over ``--runs`` images after ``--warmup``;
- throughput (images/s) at batch 1 with every core the process may use (its CPU affinity);
- the model file's size (eager: the checkpoint);
- peak resident memory (ru_maxrss) of the process that loads the model and runs the latency loop;
  for exports, that process imports the torch-free runtime only, as a device would;
- for a classifier's TFLite forms, ``python -m neu_defects_runtime`` over every image of ``--images``
  (decoding included, one thread): its time and peak resident memory.

Inputs are real images preprocessed once, so decoding stays out of the timings. A form that cannot
be built (a detector's NMS in TFLite, int8 of a detector) is listed with the reason. Writes
``edge_benchmark.json`` and ``edge_benchmark.md`` to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

FORMS = ("torch eager", "ORT fp32", "ORT int8", "TFLite fp32", "TFLite dynamic int8", "TFLite full int8")


def build_forms(name: str, ckpt: Path, calibration_files: list[Path], work: Path) -> dict[str, Any]:
    """{form: model path, or the reason it could not be built}, plus the model's task and input spec."""
    from neu_defects_runtime.preprocess import Preprocessor

    from neu_defects.core.checkpoint import load_module
    from neu_defects.core.errors import UserError
    from neu_defects.deploy.backends import model_task
    from neu_defects.deploy.onnx_io import quantize_int8, save_onnx, to_onnx
    from neu_defects.deploy.tflite import convert, save_tflite, tflite_record

    task = model_task(ckpt)
    module = load_module(ckpt, task=task)
    spec = module.input_spec
    preprocess = Preprocessor(spec)
    calibration = np.stack([preprocess(p) for p in calibration_files])
    forms: dict[str, Any] = {"torch eager": str(ckpt)}
    if task == "detector":
        from neu_defects.deploy.detection import detector_to_onnx

        forms["ORT fp32"] = str(save_onnx(detector_to_onnx(module), work / f"{name}.onnx"))
        forms["ORT int8"] = "not built: int8 export covers classifiers only"
    else:
        model = to_onnx(module)
        forms["ORT fp32"] = str(save_onnx(model, work / f"{name}.onnx"))
        forms["ORT int8"] = str(save_onnx(quantize_int8(model, calibration), work / f"{name}.int8.onnx"))
    for form, quantize in (("TFLite fp32", None), ("TFLite dynamic int8", "dynamic_int8"),
                           ("TFLite full int8", "int8")):
        try:
            content = convert(module.net, spec, quantize, calibration, source=f"{name} ({task})")
        except UserError as err:
            forms[form] = f"not built: {err}"
            continue
        target = work / f"{name}.{quantize or 'fp32'}.tflite"
        forms[form] = str(save_tflite(content, tflite_record(module, quantize), target))
    return {"task": task, "input_spec": spec, "forms": forms}


def measure(form: str, path: str, task: str, inputs: Path, threads: int, runs: int, warmup: int) -> dict[str, Any]:
    """In a fresh process, so its peak memory is this model's alone."""
    command = [sys.executable, "-m", "neu_defects.workflows.edge_benchmark", "--child", form, path, task,
               str(inputs), str(threads), str(runs), str(warmup)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads or len(os.sched_getaffinity(0)))}
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    if done.returncode != 0:
        return {"error": f"exit status {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """This process's resident high-water mark. Not ru_maxrss: across fork and exec that keeps the
    parent's peak (here the benchmark's, over a gigabyte), whatever the child itself uses."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: the peak memory is measured on Linux only")


def child(form: str, path: str, task: str, inputs: str, threads: int, runs: int, warmup: int) -> None:
    """Load one form, answer ``warmup + runs`` batch-1 inputs, print the timings as JSON."""
    images = np.load(inputs)
    if form == "torch eager":
        import torch

        from neu_defects.core.checkpoint import load_module

        torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
        net = load_module(path, task=task).net.eval()

        def answer(x):
            with torch.inference_mode():
                return net(torch.from_numpy(x)[None])
    else:
        from neu_defects_runtime.models import open_model

        model = open_model(path, threads)
        answer = (lambda x: model.detect(x)) if task == "detector" else (lambda x: model.logits(x[None]))
    times = []
    for k in range(warmup + runs):
        start = time.perf_counter()
        answer(images[k % len(images)])
        times.append(time.perf_counter() - start)
    timed = np.array(times[warmup:]) * 1e3
    print(json.dumps({"median_ms": float(np.median(timed)), "p95_ms": float(np.percentile(timed, 95)),
                      "images_per_s": float(1e3 / timed.mean()), "peak_rss_mb": peak_rss_mb()}))


def runtime_run(path: str, images_dir: Path, output: Path) -> dict[str, Any]:
    """``python -m neu_defects_runtime`` over every image of ``images_dir``, one thread: time and peak RSS."""
    command = [sys.executable, "-m", "neu_defects.workflows.edge_benchmark", "--runtime", path, str(images_dir),
               "--output", str(output), "--threads", "1"]
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return {"error": f"exit status {done.returncode}"}
    with open(output) as handle:
        images = sum(1 for _ in handle) - 1
    return {"images": images, "seconds": seconds, "peak_rss_mb": float(done.stdout.strip().splitlines()[-1])}


def runtime_cli(argv: list[str]) -> None:
    """The runtime's command line, then this process's peak memory on stdout."""
    from neu_defects_runtime.cli import main as runtime_main

    status = runtime_main(argv)
    print(peak_rss_mb())
    sys.exit(status)


def file_mb(path: str) -> float:
    path = Path(path)
    extra = path.with_name(path.name + ".json")
    return (path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)) / 1e6


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Edge benchmark ({report['date']})", "",
             f"Machine: {report['machine']}; cores usable: {report['cores']}. Command: `{report['command']}`.", "",
             "Batch 1, preprocessed real NEU images. Latency: 1 thread, median / p95 (ms). Throughput: images/s "
             "with every usable core. Size: the model file (eager: the checkpoint). Memory: peak RSS of the "
             "process that loads the model and runs it (exports: the torch-free runtime).", "",
             "| model | backend | latency median | p95 | images/s (all cores) | size (MB) | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|"]
    for name, entry in report["models"].items():
        for form in FORMS:
            row = entry["results"].get(form)
            if row is None or "median_ms" not in row:
                reason = entry["forms"].get(form, "")
                lines.append(f"| {name} | {form} | {(row or {}).get('error') or reason} | | | | |")
                continue
            lines.append(f"| {name} | {form} | {row['median_ms']:.2f} | {row['p95_ms']:.2f} | "
                         f"{row['all_cores_images_per_s']:.1f} | {row['size_mb']:.2f} | {row['peak_rss_mb']:.0f} |")
    lines += ["", "The runtime's command line over every image (decoding included), 1 thread:", "",
              "| model | backend | images | seconds | images/s | peak RSS (MB) |", "|---|---|---|---|---|---|"]
    for name, entry in report["models"].items():
        for form, row in entry["results"].items():
            run = row.get("runtime_cli")
            if run and "error" not in run:
                lines.append(f"| {name} | {form} | {run['images']} | {run['seconds']:.1f} | "
                             f"{run['images'] / run['seconds']:.1f} | {run['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def edge_benchmark(models: dict[str, Path], images_dir: Path, output: Path, runs: int = 200, warmup: int = 20,
                   calibration_count: int = 128) -> dict[str, Any]:
    from neu_defects_runtime.preprocess import Preprocessor, find_images

    from neu_defects.core.io import write_json, write_text

    output.mkdir(parents=True, exist_ok=True)
    files = find_images(str(images_dir))
    rng = np.random.default_rng(0)
    chosen = [files[k] for k in rng.permutation(len(files))]
    calibration, timed = chosen[:calibration_count], chosen[calibration_count:calibration_count + 64]
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "machine": f"{platform.machine()}, Python {platform.python_version()}",
                              "cores": len(os.sched_getaffinity(0)), "command": " ".join(sys.argv),
                              "runs": runs, "warmup": warmup, "models": {}}
    for name, ckpt in models.items():
        entry = build_forms(name, ckpt, calibration, output)
        inputs = output / f"{name}.inputs.npy"
        np.save(inputs, np.stack([Preprocessor(entry["input_spec"])(p) for p in timed]))
        entry["results"] = {}
        for form, path in entry["forms"].items():
            if path.startswith("not built"):
                continue
            single = measure(form, path, entry["task"], inputs, 1, runs, warmup)
            if "error" not in single:
                every = measure(form, path, entry["task"], inputs, 0, runs, warmup)
                single.update(all_cores_images_per_s=every.get("images_per_s", float("nan")), size_mb=file_mb(path))
            if entry["task"] == "classifier" and form.startswith("TFLite") and "error" not in single:
                single["runtime_cli"] = runtime_run(path, images_dir, output / f"{name}.{len(entry['results'])}.csv")
            entry["results"][form] = single
            print(f"{name} {form}: {single}", file=sys.stderr, flush=True)
        report["models"][name] = entry
    write_json(output / "edge_benchmark.json", report)
    write_text(output / "edge_benchmark.md", markdown(report))
    return report


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--runtime"]:
        runtime_cli(argv[1:])
        return
    if argv[:1] == ["--child"]:
        form, path, task, inputs, threads, runs, warmup = argv[1:]
        child(form, path, task, inputs, int(threads), int(runs), int(warmup))
        return
    parser = argparse.ArgumentParser(prog="python -m neu_defects.workflows.edge_benchmark", description=__doc__)
    parser.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT, repeated")
    parser.add_argument("--images", type=Path, required=True, help="a folder of real images (NEU-DET/IMAGES)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)
    models = dict(entry.split("=", 1) for entry in args.model)
    edge_benchmark({k: Path(v) for k, v in models.items()}, args.images, args.output, args.runs, args.warmup)


if __name__ == "__main__":
    main()
