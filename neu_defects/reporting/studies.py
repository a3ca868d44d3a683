"""The table and figure of a research study multirun (``python -m neu_defects.studies SWEEP_DIR``).

A study is a multirun whose config names it (``study: cv5 | data_efficiency | robustness``, set
by the experiment overlay of the same name). Beside the sweep summary of ``neu_defects.report``
it writes ``study.md`` (the table a researcher reads), ``study.csv`` (the same numbers, long) and
``study.png``:

- ``cv5``: mean ± std over the folds (and seeds) of every overall test metric, and the confusion
  matrix summed over the folds (``study_confusion.csv``, ``study.png``): every image of the data
  set is tested exactly once.
- ``data_efficiency``: test accuracy per model and training images per class, mean ± std over
  seeds; the learning curve (log x) with its spread.
- ``robustness``: test accuracy per corruption and severity (with the corruption's parameter) of
  one checkpoint; accuracy against severity per corruption, clean accuracy as a reference line.

``reporting.callback.SummaryCallback`` runs it at the end of a study multirun.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import yaml

from neu_defects.core.cli import log
from neu_defects.core.errors import UserError
from neu_defects.core.figures import save_figure
from neu_defects.core.io import atomic_write, write_text
from neu_defects.data.corruptions import CLEAN, SEVERITIES, UNITS
from neu_defects.reporting.classification import (
    plot_confusion_counts,
    read_confusion_csv,
    write_confusion_csv,
)
from neu_defects.reporting.sweep import (
    collect_jobs,
    is_overall,
    markdown_table,
    mean_std,
    metric_columns,
    metric_values,
    ok_rows,
)

STUDIES = ("cv5", "data_efficiency", "robustness")
ALL = "all"


def study_of(sweep_dir: Path) -> str | None:
    """The ``study.name`` of the sweep's config (its multirun.yaml, else a job's config)."""
    for config_file in [sweep_dir / "multirun.yaml", *sorted(sweep_dir.glob("*/.hydra/config.yaml"))]:
        if config_file.is_file():
            return ((yaml.safe_load(config_file.read_text()) or {}).get("study") or {}).get("name")
    return None


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    columns = list(dict.fromkeys(k for r in rows for k in r))

    def write(handle):
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    return atomic_write(path, write)


def _failed_line(rows: Sequence[dict[str, Any]]) -> str:
    failed = [r for r in rows if r["status"] != "ok"]
    return f"\n{len(failed)} of {len(rows)} jobs not ok (see summary.md): {failed[0]['status']}\n" if failed else ""


# ---------------------------------------------------------------- cross-validation


def cv_study(sweep_dir: Path, rows: list[dict[str, Any]]) -> str:
    ok = ok_rows(rows)
    per_metric = {k: metric_values(rows, k) for k in metric_columns(rows)}
    table = [[k, mean_std(v, k), *(f"{x:.4f}" if k.startswith("test/") else f"{x:.1f}"
                                   for x in (min(v, default=np.nan), max(v, default=np.nan)))]
             for k, v in per_metric.items() if is_overall(k)]
    folds = sorted({str(r.get("data.fold", "")) for r in ok})
    text = (f"# Cross-validation {sweep_dir.name}: {len(ok)}/{len(rows)} folds ok (folds {', '.join(folds)})\n\n"
            + markdown_table(["metric", "mean ± std (sample) over folds", "min", "max"], table))
    matrices = [read_confusion_csv(sweep_dir / r["job"] / "confusion_matrix.csv")
                for r in ok if (sweep_dir / r["job"] / "confusion_matrix.csv").is_file()]
    if matrices:
        total = sum(cm for cm, _ in matrices)
        names = matrices[0][1]
        write_confusion_csv(sweep_dir / "study_confusion.csv", total, names)
        plot_confusion_counts(sweep_dir / "study.png", total, names,
                              title=f"summed over {len(matrices)} test folds")
        text += (f"\nConfusion matrix summed over the {len(matrices)} test folds (rows true, columns predicted; "
                 "study_confusion.csv, study.png):\n\n"
                 + markdown_table(["true \\ predicted", *names],
                                  [[n, *map(str, row)] for n, row in zip(names, total, strict=True)]))
    _write_csv(sweep_dir / "study.csv", [{"metric": k, "mean": statistics.fmean(v),
                                          "std": statistics.stdev(v) if len(v) > 1 else 0.0, "folds": len(v)}
                                         for k, v in per_metric.items() if v])
    return text + _failed_line(rows)


# ---------------------------------------------------------------- data efficiency


def _k(row: dict[str, Any]) -> str:
    value = str(row.get("data.samples_per_class", ALL))
    return ALL if value in ("null", "None", "", ALL) else value


def _k_order(k: str) -> float:
    return float("inf") if k == ALL else float(k)


def _train_per_class(sweep_dir: Path, row: dict[str, Any]) -> float | None:
    """Mean number of training images per class in a job's split.csv (what ``all`` means there)."""
    split_file = sweep_dir / row["job"] / "split.csv"
    if not split_file.is_file():
        return None
    with split_file.open(newline="") as handle:
        labels = [r["label"] for r in csv.DictReader(handle) if r["split"] == "train"]
    return len(labels) / max(1, len(set(labels)))


def data_efficiency_study(sweep_dir: Path, rows: list[dict[str, Any]], metric: str = "test/acc") -> str:
    models = list(dict.fromkeys(str(r.get("model", "default")) for r in rows))
    ks = sorted({_k(r) for r in rows}, key=_k_order)
    cell: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        cell.setdefault((str(r.get("model", "default")), _k(r)), []).append(r)
    table, long = [], []
    for k in ks:
        cells = [k]
        for m in models:
            members = cell.get((m, k), [])
            values = metric_values(members, metric)
            cells.append(f"{mean_std(values, metric)} ({len(values)})" if values else "")
            if values:
                long.append({"model": m, "samples_per_class": k, "mean": statistics.fmean(values),
                             "std": statistics.stdev(values) if len(values) > 1 else 0.0, "seeds": len(values),
                             "values": " ".join(f"{v:.4f}" for v in values)})
        table.append(cells)
    _write_csv(sweep_dir / "study.csv", long)
    full = [n for r in ok_rows(rows) if _k(r) == ALL and (n := _train_per_class(sweep_dir, r))]
    all_x = statistics.fmean(full) if full else None
    _plot_learning_curve(sweep_dir / "study.png", long, models, all_x, metric)
    note = f"; `all` is {all_x:.0f} training images per class" if all_x else ""
    return (f"# Data efficiency {sweep_dir.name}: {metric}, mean ± std over seeds (seeds ok)\n\n"
            f"Rows: training images per class (`data.samples_per_class`){note}; validation and test whole.\n\n"
            + markdown_table(["k per class", *models], table) + _failed_line(rows))


def _plot_learning_curve(path: Path, long: list[dict[str, Any]], models: list[str], all_x: float | None,
                         metric: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ticks: dict[float, str] = {}
    for m in models:
        points = [p for p in long if p["model"] == m and (p["samples_per_class"] != ALL or all_x)]
        x = [all_x if p["samples_per_class"] == ALL else float(p["samples_per_class"]) for p in points]
        if not points:
            continue
        mean = np.array([p["mean"] for p in points])
        std = np.array([p["std"] for p in points])
        ax.plot(x, mean, marker="o", label=m)
        ax.fill_between(x, mean - std, np.minimum(mean + std, 1.0), alpha=0.2)
        for xi, p in zip(x, points, strict=True):
            ax.scatter([xi] * p["seeds"], [float(v) for v in p["values"].split()], s=10, color="gray", zorder=3)
            ticks[xi] = f"all\n({xi:.0f})" if p["samples_per_class"] == ALL else p["samples_per_class"]
    ax.set_xscale("log")
    ax.set_xticks(list(ticks), list(ticks.values()))
    ax.minorticks_off()
    ax.set_xlabel("training images per class (log)")
    ax.set_ylabel(metric)
    ax.set_title("data efficiency: mean ± std over seeds, every seed a dot")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


# ---------------------------------------------------------------- robustness


def _corruption(row: dict[str, Any]) -> str:
    name = str(row.get("corruption", "none"))
    return "clean" if name.lower() in (*CLEAN, "null") else name


def robustness_study(sweep_dir: Path, rows: list[dict[str, Any]], metric: str = "test/acc") -> str:
    clean = metric_values([r for r in rows if _corruption(r) == "clean"], metric)
    clean_acc = statistics.fmean(clean) if clean else None
    names = [n for n in SEVERITIES if any(_corruption(r) == n for r in rows)]
    levels = range(1, max((len(SEVERITIES[n]) for n in names), default=0) + 1)
    long, table = [], []
    for name in names:
        cells = [f"{name} ({UNITS[name]})"]
        for s in levels:
            at_level = [r for r in rows if _corruption(r) == name and str(r.get("severity")) == str(s)]
            values = metric_values(at_level, metric)
            parameter = SEVERITIES[name][s - 1]
            cells.append(f"{statistics.fmean(values):.4f} ({parameter:g})" if values else "")
            if values:
                long.append({"corruption": name, "severity": s, "parameter": parameter, "unit": UNITS[name],
                             metric: statistics.fmean(values)})
        mean = [p[metric] for p in long if p["corruption"] == name]
        cells.append(f"{statistics.fmean(mean):.4f}" if mean else "")
        table.append(cells)
    if clean_acc is not None:
        long.insert(0, {"corruption": "clean", "severity": 0, "parameter": "", "unit": "", metric: clean_acc})
    _write_csv(sweep_dir / "study.csv", long)
    _plot_robustness(sweep_dir / "study.png", long, names, clean_acc, metric)
    head = f"clean {clean_acc:.4f}" if clean_acc is not None else "no clean job"
    return (f"# Robustness {sweep_dir.name}: {metric} per corruption and severity ({head})\n\n"
            "Cells: accuracy (the corruption's parameter at that severity); corruptions are applied to the "
            "200 x 200 uint8 image before resizing. Gaussian noise SNR: signal power = mean of squared pixel "
            "values (neu_defects/data/corruptions.py).\n\n"
            + markdown_table(["corruption", *(f"severity {s}" for s in levels), "mean"], table)
            + _failed_line(rows))


def _plot_robustness(path: Path, long: list[dict[str, Any]], names: list[str], clean_acc: float | None,
                     metric: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name in names:
        points = [p for p in long if p["corruption"] == name]
        ax.plot([p["severity"] for p in points], [p[metric] for p in points], marker="o", label=name)
    if clean_acc is not None:
        ax.axhline(clean_acc, color="black", linestyle="--", linewidth=1, label=f"clean ({clean_acc:.4f})")
    ax.set_xlabel("severity (1 mild .. 5 severe)")
    ax.set_ylabel(metric)
    ax.set_xticks(range(1, 6))
    ax.set_title("robustness to camera corruptions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# ---------------------------------------------------------------- entry points

BUILDERS = {"cv5": cv_study, "data_efficiency": data_efficiency_study, "robustness": robustness_study}


def write_study(sweep_dir: str | Path, study: str | None = None) -> Path:
    """Write study.md, study.csv and study.png for the sweep's study; return study.md's path."""
    sweep_dir = Path(sweep_dir)
    study = study or study_of(sweep_dir)
    if study not in BUILDERS:
        raise UserError(f"{sweep_dir} is not a study sweep (study={study!r}): pass --study "
                        f"{'|'.join(STUDIES)}, or run one with experiment=<study>")
    rows = collect_jobs(sweep_dir)
    text = BUILDERS[study](sweep_dir, rows)
    path = write_text(sweep_dir / "study.md", text)
    log.info("%s study: %s", study, path)
    return path
