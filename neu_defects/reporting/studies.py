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

The tables are pandas groupbys of the jobs of ``reporting.sweep.collect_jobs`` over the ok jobs.
``reporting.callback.SummaryCallback`` runs it at the end of a study multirun.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml

from neu_defects.core.cli import log
from neu_defects.core.errors import UserError
from neu_defects.core.figures import save_figure
from neu_defects.core.io import write_text
from neu_defects.data.corruptions import CLEAN, SEVERITIES, UNITS
from neu_defects.reporting.classification import (
    plot_confusion_counts,
    read_confusion_csv,
    write_confusion_csv,
)
from neu_defects.reporting.sweep import collect_jobs, is_overall, metric_columns, ok_rows
from neu_defects.reporting.tables import (
    STATS,
    column,
    fmt,
    fmt_mean_std,
    markdown_table,
    write_csv,
)

STUDIES = ("cv5", "data_efficiency", "robustness")
ALL = "all"


def study_of(sweep_dir: Path) -> str | None:
    """The ``study.name`` of the sweep's config (its multirun.yaml, else a job's config)."""
    for config_file in [sweep_dir / "multirun.yaml", *sorted(sweep_dir.glob("*/.hydra/config.yaml"))]:
        if config_file.is_file():
            return ((yaml.safe_load(config_file.read_text()) or {}).get("study") or {}).get("name")
    return None


def _ok_values(jobs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The ok jobs that have ``metric`` (not NaN): what every study cell aggregates."""
    if metric not in jobs:  # no job wrote it: no rows, but the column the groupbys aggregate
        return jobs.iloc[:0].assign(**{metric: np.nan})
    return ok_rows(jobs).dropna(subset=[metric])


def _failed_line(jobs: pd.DataFrame) -> str:
    failed = jobs.loc[jobs["status"] != "ok", "status"]
    return f"\n{len(failed)} of {len(jobs)} jobs not ok (see summary.md): {failed.iloc[0]}\n" if len(failed) else ""


# ---------------------------------------------------------------- cross-validation


def cv_study(sweep_dir: Path, jobs: pd.DataFrame) -> str:
    ok = ok_rows(jobs)
    stats = ok[metric_columns(jobs)].agg([*STATS, "min", "max"]).T
    overall = stats[[is_overall(k) for k in stats.index]]
    # A row per metric, each formatted by its own name (4 decimals, 1 for fit/seconds).
    table = pd.DataFrame([[k, fmt_mean_std(r["mean"], r["std"], r["count"], k), fmt(r["min"], k),
                           fmt(r["max"], k)] for k, r in overall.iterrows()],
                         columns=["metric", "mean ± std (sample) over folds", "min", "max"])
    folds = sorted(set(column(ok, "data.fold", "")))
    text = (f"# Cross-validation {sweep_dir.name}: {len(ok)}/{len(jobs)} folds ok (folds {', '.join(folds)})\n\n"
            + markdown_table(table))
    matrices = [read_confusion_csv(sweep_dir / job / "confusion_matrix.csv")
                for job in ok["job"] if (sweep_dir / job / "confusion_matrix.csv").is_file()]
    if matrices:
        total = sum(cm for cm, _ in matrices)
        names = matrices[0][1]
        write_confusion_csv(sweep_dir / "study_confusion.csv", total, names)
        plot_confusion_counts(sweep_dir / "study.png", total, names,
                              title=f"summed over {len(matrices)} test folds")
        confusion = pd.DataFrame(total, columns=names).astype(str)
        confusion.insert(0, "true \\ predicted", names)
        text += (f"\nConfusion matrix summed over the {len(matrices)} test folds (rows true, columns predicted; "
                 "study_confusion.csv, study.png):\n\n" + markdown_table(confusion))
    # A single fold has no sample std: 0 in the CSV, as the mean ± std cell shows the mean alone.
    long = stats.loc[stats["count"] > 0, STATS].fillna({"std": 0.0}).astype({"count": int})
    long = long.rename(columns={"count": "folds"}).rename_axis("metric").reset_index()
    write_csv(sweep_dir / "study.csv", long)
    return text + _failed_line(jobs)


# ---------------------------------------------------------------- data efficiency


def _k(jobs: pd.DataFrame) -> pd.Series:
    k = column(jobs, "data.samples_per_class", ALL)
    return k.where(~k.isin(["null", "None", "", ALL]), ALL)


def _k_order(k: str) -> float:
    return float("inf") if k == ALL else float(k)


def _train_per_class(sweep_dir: Path, job: str) -> float | None:
    """Mean number of training images per class in a job's split.csv (what ``all`` means there)."""
    split_file = sweep_dir / job / "split.csv"
    if not split_file.is_file():
        return None
    split = pd.read_csv(split_file, dtype=str, keep_default_na=False, usecols=["label", "split"])
    labels = split.loc[split["split"] == "train", "label"]
    return len(labels) / max(1, labels.nunique())


def data_efficiency_study(sweep_dir: Path, jobs: pd.DataFrame, metric: str = "test/acc") -> str:
    jobs = jobs.assign(model=column(jobs, "model", "default"), samples_per_class=_k(jobs))
    models = list(jobs["model"].unique())
    ks = sorted(jobs["samples_per_class"].unique(), key=_k_order)
    long = (_ok_values(jobs, metric).groupby(["model", "samples_per_class"], sort=False)[metric]
            .agg(mean="mean", std="std", seeds="count", values=lambda s: " ".join(f"{v:.4f}" for v in s))
            .reset_index())
    # Rows k ascending (``all`` last), models in first-seen order within each.
    order = {"samples_per_class": {k: i for i, k in enumerate(ks)},
             "model": {m: i for i, m in enumerate(models)}}
    long = long.sort_values(["samples_per_class", "model"], key=lambda c: c.map(order[c.name]),
                            ignore_index=True)
    cells = [f"{fmt_mean_std(mean, std, n, metric)} ({n})"
             for mean, std, n in zip(long["mean"], long["std"], long["seeds"], strict=True)]
    table = (long.assign(cell=cells).pivot(index="samples_per_class", columns="model", values="cell")
             .reindex(index=ks, columns=models, fill_value="").fillna("")
             .rename_axis("k per class").reset_index())
    # A single seed has no sample std: 0 in the CSV, as its cell shows the mean alone.
    long = long.fillna({"std": 0.0})
    write_csv(sweep_dir / "study.csv", long)
    ok = ok_rows(jobs)
    full = pd.Series([_train_per_class(sweep_dir, job)
                      for job in ok.loc[ok["samples_per_class"] == ALL, "job"]], dtype=float)
    all_x = full[full > 0].mean() if (full > 0).any() else None  # jobs without a split.csv (NaN) left out
    _plot_learning_curve(sweep_dir / "study.png", long, models, all_x, metric)
    note = f"; `all` is {all_x:.0f} training images per class" if all_x else ""
    return (f"# Data efficiency {sweep_dir.name}: {metric}, mean ± std over seeds (seeds ok)\n\n"
            f"Rows: training images per class (`data.samples_per_class`){note}; validation and test whole.\n\n"
            + markdown_table(table) + _failed_line(jobs))


def _plot_learning_curve(path: Path, long: pd.DataFrame, models: list[str], all_x: float | None,
                         metric: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ticks: dict[float, str] = {}
    for m in models:
        points = long[(long["model"] == m) & ((long["samples_per_class"] != ALL) | bool(all_x))]
        if points.empty:
            continue
        x = [all_x if k == ALL else float(k) for k in points["samples_per_class"]]
        mean, std = points["mean"].to_numpy(), points["std"].to_numpy()
        ax.plot(x, mean, marker="o", label=m)
        ax.fill_between(x, mean - std, np.minimum(mean + std, 1.0), alpha=0.2)
        for xi, k, seeds, values in zip(x, points["samples_per_class"], points["seeds"], points["values"],
                                        strict=True):
            ax.scatter([xi] * seeds, [float(v) for v in values.split()], s=10, color="gray", zorder=3)
            ticks[xi] = f"all\n({xi:.0f})" if k == ALL else k
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


def _corruption(jobs: pd.DataFrame) -> pd.Series:
    name = column(jobs, "corruption", "none")
    return name.where(~name.str.lower().isin([*CLEAN, "null"]), "clean")


def robustness_study(sweep_dir: Path, jobs: pd.DataFrame, metric: str = "test/acc") -> str:
    # Severities are override text ("1"): matched as text against the levels of SEVERITIES.
    jobs = jobs.assign(corruption=_corruption(jobs), level=column(jobs, "severity", "None"))
    ok = _ok_values(jobs, metric)
    clean = ok.loc[ok["corruption"] == "clean", metric]
    clean_acc = clean.mean() if len(clean) else None
    names = [n for n in SEVERITIES if n in set(jobs["corruption"])]
    levels = range(1, max((len(SEVERITIES[n]) for n in names), default=0) + 1)
    # SEVERITIES is a dict of tuples; as a frame, a row per corruption and severity with its parameter.
    grid = pd.DataFrame([(n, s, str(s), p, UNITS[n])
                         for n in names for s, p in enumerate(SEVERITIES[n], start=1)],
                        columns=["corruption", "severity", "level", "parameter", "unit"])
    means = ok.groupby(["corruption", "level"], as_index=False)[metric].mean()
    long = grid.merge(means, on=["corruption", "level"], how="inner").drop(columns="level")
    cells = [f"{v:.4f} ({p:g})" for v, p in zip(long[metric], long["parameter"], strict=True)]
    table = (long.assign(cell=cells).pivot(index="corruption", columns="severity", values="cell")
             .reindex(index=names, columns=list(levels), fill_value="").fillna(""))
    table.columns = [f"severity {s}" for s in levels]
    table["mean"] = long.groupby("corruption")[metric].mean().reindex(names).map(fmt)
    table.insert(0, "corruption", [f"{n} ({UNITS[n]})" for n in names])
    if clean_acc is not None:
        clean_row = {"corruption": "clean", "severity": 0, "parameter": np.nan, "unit": "", metric: clean_acc}
        long = pd.concat([pd.DataFrame([clean_row]), long], ignore_index=True)
    write_csv(sweep_dir / "study.csv", long)
    _plot_robustness(sweep_dir / "study.png", long, names, clean_acc, metric)
    head = f"clean {clean_acc:.4f}" if clean_acc is not None else "no clean job"
    return (f"# Robustness {sweep_dir.name}: {metric} per corruption and severity ({head})\n\n"
            "Cells: accuracy (the corruption's parameter at that severity); corruptions are applied to the "
            "200 x 200 uint8 image before resizing. Gaussian noise SNR: signal power = mean of squared pixel "
            "values (neu_defects/data/corruptions.py).\n\n"
            + markdown_table(table) + _failed_line(jobs))


def _plot_robustness(path: Path, long: pd.DataFrame, names: list[str], clean_acc: float | None,
                     metric: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name in names:
        points = long[long["corruption"] == name]
        ax.plot(points["severity"], points[metric], marker="o", label=name)
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
    jobs = collect_jobs(sweep_dir)
    text = BUILDERS[study](sweep_dir, jobs)
    path = write_text(sweep_dir / "study.md", text)
    log.info("%s study: %s", study, path)
    return path
