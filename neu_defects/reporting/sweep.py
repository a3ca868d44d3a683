"""The tables and figure of a multirun (``python -m neu_defects.report SWEEP_DIR``).

Reads every job directory (``.hydra/overrides.yaml``, ``.hydra/config.yaml``, ``metrics.json``,
``error.txt``) and writes into the sweep directory:

- ``summary.csv``: a row per job with its overridden parameters, every test metric, fit seconds
  and status (``ok``, ``failed: <error>``, or ``incomplete`` for a job still running or killed);
- ``summary.md``: the same rows with the overall metrics (per-class ones stay in the CSV), the
  parameters every job shares above the table, a mean row, and Optuna's best trial if any;
- ``summary_grouped.md``: mean ± std over seeds of each configuration (the parameters but seed);
- ``summary.png``: the main metric (the test twin of ``optimized_metric``) per configuration.

``reporting.callback.SummaryCallback`` runs it at the end of every multirun.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import yaml

from neu_defects.core.cli import ERROR_FILE, log
from neu_defects.core.errors import UserError
from neu_defects.core.figures import save_figure
from neu_defects.core.io import atomic_write, write_text

SEED_KEYS = ("seed",)
FALLBACK_METRICS = ("test/acc", "test/image_auroc")
DECIMAL = re.compile(r"-?\d*\.\d+(?:[eE][-+]?\d+)?|-?\d+[eE][-+]?\d+")


def job_status(job_dir: Path) -> str:
    if (job_dir / "metrics.json").is_file():
        return "ok"
    error_file = job_dir / ERROR_FILE
    if error_file.is_file():
        lines = error_file.read_text().splitlines()
        return f"failed: {lines[0] if lines else 'no message'}"
    return "incomplete (no metrics.json)"


def _job_key(path: Path):
    return (0, int(path.name)) if path.name.isdigit() else (1, path.name)


def _optimized_metric(job_dir: Path) -> str | None:
    config_file = job_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        return None
    return (yaml.safe_load(config_file.read_text()) or {}).get("optimized_metric")


def collect_jobs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"sweep directory {sweep_dir} does not exist: pass a multirun directory")
    rows = []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml"), key=lambda p: _job_key(p.parent.parent)):
        job_dir = overrides_file.parent.parent
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        row: dict[str, Any] = {"job": job_dir.name}
        row.update(o.split("=", 1) for o in overrides if "=" in o)
        metrics_file = job_dir / "metrics.json"
        if metrics_file.is_file():
            row.update(json.loads(metrics_file.read_text()))
        row["status"] = job_status(job_dir)
        rows.append(row)
    if not rows:
        raise UserError(f"{sweep_dir} holds no job directories (*/.hydra/overrides.yaml): is it a multirun directory?")
    return rows


def _is_metric(key: str) -> bool:
    return key.startswith(("test/", "fit/"))


def is_overall(key: str) -> bool:
    """``test/acc`` but not ``test/f1/crazing``: the per-class metrics stay in the CSV."""
    return _is_metric(key) and key.count("/") == 1


def ok_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "ok"]


def metric_values(rows: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in ok_rows(rows) if key in r and not math.isnan(float(r[key]))]


def param_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(r))
    return [k for k in seen if not _is_metric(k) and k not in ("job", "status")]


def metric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    return sorted({k for r in rows for k in r if _is_metric(k)})


def split_params(rows: Sequence[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """The parameters that differ between jobs, and those every job shares (with their value)."""
    varying, fixed = [], {}
    for key in param_columns(rows):
        values = {r.get(key) for r in rows}
        if len(values) == 1 and len(rows) > 1:
            fixed[key] = rows[0][key]
        else:
            varying.append(key)
    return varying, fixed


def main_metric(sweep_dir: Path, rows: Sequence[dict[str, Any]]) -> str | None:
    """The test twin of the sweep's ``optimized_metric`` (val/acc -> test/acc), else a known headline."""
    available = set(metric_columns(rows))
    first_job = sweep_dir / rows[0]["job"]
    optimized = _optimized_metric(first_job)
    candidates = [f"test/{optimized.split('/', 1)[1]}"] if optimized and "/" in optimized else []
    for name in [*candidates, *FALLBACK_METRICS]:
        if name in available:
            return name
    overall = [k for k in sorted(available) if is_overall(k) and k.startswith("test/")]
    return overall[0] if overall else None


def mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"job": "mean", "status": f"{len(ok_rows(rows))}/{len(rows)} ok"}
    for key in metric_columns(rows):
        values = metric_values(rows, key)
        if values:
            out[key] = sum(values) / len(values)
    return out


def group_rows(rows: Sequence[dict[str, Any]], varying: Sequence[str]) -> list[tuple[dict[str, str], list[dict]]]:
    """Jobs grouped by their configuration: every varying parameter but the seed, in first-seen order."""
    keys = [k for k in varying if k not in SEED_KEYS]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k, "") for k in keys), []).append(r)
    return [(dict(zip(keys, config, strict=True)), members) for config, members in groups.items()]


def _fmt(value: Any, key: str = "") -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if key.startswith("fit/") else f"{value:.4f}"
    return _fmt_param(value)


def _fmt_param(value: Any) -> str:
    """Optuna writes floats in full (lr=0.0012345678): four significant digits are enough to read.

    Only plain decimals are shortened: ``float("70_20")`` parses too, but that is a split name.
    """
    text = str(value)
    if len(text) <= 8 or not DECIMAL.fullmatch(text):
        return text
    return f"{float(text):.4g}"


def mean_std(values: Sequence[float], key: str) -> str:
    if not values:
        return ""
    mean = _fmt(statistics.fmean(values), key)
    return f"{mean} ± {_fmt(statistics.stdev(values), key)}" if len(values) > 1 else mean


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def _fixed_line(fixed: dict[str, str]) -> str:
    return "All jobs: " + " ".join(f"`{k}={v}`" for k, v in fixed.items()) + "\n\n" if fixed else ""


def optuna_best(sweep_dir: Path) -> dict[str, Any] | None:
    """Optuna's ``optimization_results.yaml`` (best_params, best_value), if the sweeper wrote one."""
    results = sweep_dir / "optimization_results.yaml"
    return yaml.safe_load(results.read_text()) if results.is_file() else None


def jobs_markdown(sweep_dir: Path, rows: list[dict[str, Any]]) -> str:
    varying, fixed = split_params(rows)
    metrics = [k for k in metric_columns(rows) if is_overall(k)]
    columns = ["job", *varying, *metrics, "status"]
    body = [[_fmt(r.get(c, ""), c) for c in columns] for r in [*rows, mean_row(rows)]]
    text = f"# Sweep {sweep_dir.name}\n\n{_fixed_line(fixed)}{markdown_table(columns, body)}"
    text += "\nPer-class metrics of every job: summary.csv.\n"
    best = optuna_best(sweep_dir)
    if best and "best_params" in best:
        params = " ".join(f"`{k}={_fmt_param(v)}`" for k, v in best["best_params"].items())
        text += f"\nOptuna best: {_fmt(float(best['best_value']))} with {params}\n"
    return text


def grouped_markdown(sweep_dir: Path, rows: list[dict[str, Any]]) -> str:
    varying, fixed = split_params(rows)
    groups = group_rows(rows, varying)
    config_keys = list(groups[0][0])
    metrics = [k for k in metric_columns(rows) if is_overall(k)]
    columns = [*(config_keys or ["configuration"]), "jobs ok", *metrics]
    body = []
    for config, members in groups:
        cells = [_fmt_param(v) for v in config.values()] or ["all jobs"]
        cells.append(f"{len(ok_rows(members))}/{len(members)}")
        cells += [mean_std(metric_values(members, k), k) for k in metrics]
        body.append(cells)
    seeds = [k for k in varying if k in SEED_KEYS]
    over = f"over {', '.join(seeds)}" if seeds else "over the jobs of each configuration"
    return (f"# Sweep {sweep_dir.name}: mean ± std (sample) {over}\n\n{_fixed_line(fixed)}"
            f"{markdown_table(columns, body)}")


def plot_summary(path: Path, rows: list[dict[str, Any]], metric: str) -> Path:
    """One column per configuration: every job as a dot, the mean as a bar, ± std as an error bar."""
    varying, _ = split_params(rows)
    groups = group_rows(rows, varying)
    labels = ["\n".join(f"{k}={_fmt_param(v)}" for k, v in config.items()) or "all jobs" for config, _ in groups]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(groups) + 1.5), 4.0))
    for i, (_, members) in enumerate(groups):
        values = metric_values(members, metric)
        if not values:
            ax.text(i, 0.5, "no ok job", ha="center", transform=ax.get_xaxis_transform(), color="tab:red")
            continue
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        ax.bar(i, statistics.fmean(values), color="tab:blue", alpha=0.35, width=0.6)
        ax.errorbar(i, statistics.fmean(values), yerr=std, color="black", capsize=6)
        ax.scatter([i] * len(values), values, color="tab:blue", zorder=3, s=18)
    everything = [v for _, members in groups for v in metric_values(members, metric)]
    if everything:
        # Metrics close to 1 differ in the second decimal: a zero-based axis would hide that.
        low, high = min(everything), max(everything)
        margin = max(0.01, 0.25 * (high - low))
        ax.set_ylim(max(0.0, low - margin), high + margin if high + margin <= 1 or high > 1 else 1.0)
    ax.set_xticks(range(len(groups)), labels, fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per configuration ({len(ok_rows(rows))}/{len(rows)} jobs ok)")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def write_summary(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write summary.csv, summary.md, summary_grouped.md and summary.png; return the rows and the mean."""
    sweep_dir = Path(sweep_dir)
    rows = collect_jobs(sweep_dir)
    table = [*rows, mean_row(rows)]
    columns = ["job", *param_columns(rows), *metric_columns(rows), "status"]

    def write_csv(handle):
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)

    atomic_write(sweep_dir / "summary.csv", write_csv)
    write_text(sweep_dir / "summary.md", jobs_markdown(sweep_dir, rows))
    write_text(sweep_dir / "summary_grouped.md", grouped_markdown(sweep_dir, rows))
    metric = main_metric(sweep_dir, rows)
    if metric:
        plot_summary(sweep_dir / "summary.png", rows, metric)
    log.info("summary of %d jobs (%d ok): %s", len(rows), len(ok_rows(rows)), sweep_dir / "summary.md")
    return table
