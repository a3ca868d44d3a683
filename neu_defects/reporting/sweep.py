"""The tables and figure of a multirun (``python -m neu_defects.report SWEEP_DIR``).

Reads every job directory (``.hydra/overrides.yaml``, ``.hydra/config.yaml``, ``metrics.json``,
``error.txt``) into a pandas DataFrame, a row per job, and writes into the sweep directory:

- ``summary.csv``: a row per job with its overridden parameters, every test metric, fit seconds
  and status (``ok``, ``failed: <error>``, or ``incomplete`` for a job still running or killed);
- ``summary.md``: the same rows with the overall metrics (per-class ones stay in the CSV), the
  parameters every job shares above the table, a mean row, and Optuna's best trial if any;
- ``summary_grouped.md``: mean ± std over seeds of each configuration (the parameters but seed);
- ``summary.png``: the main metric (the test twin of ``optimized_metric``) per configuration.

Parameters stay the text of their override; a job without a metric or an override has NaN there,
which the aggregations skip and the tables show empty. ``reporting.callback.SummaryCallback``
runs it at the end of every multirun.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import yaml
from pandas.api.typing import DataFrameGroupBy

from neu_defects.core.cli import ERROR_FILE, log
from neu_defects.core.errors import UserError
from neu_defects.core.figures import save_figure
from neu_defects.core.io import write_text
from neu_defects.reporting.tables import (
    STATS,
    fmt,
    fmt_column,
    fmt_param,
    markdown_table,
    mean_std_cells,
    write_csv,
)

SEED_KEYS = ("seed",)
FALLBACK_METRICS = ("test/acc", "test/image_auroc")


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


def _is_metric(key: str) -> bool:
    return key.startswith(("test/", "fit/"))


def collect_jobs(sweep_dir: str | Path) -> pd.DataFrame:
    """A row per job in job order: ``job``, its overrides (first-seen order), metrics (sorted), ``status``."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"sweep directory {sweep_dir} does not exist: pass a multirun directory")
    # Hand-written: the rows come from YAML and JSON files of each job, which pandas does not read as a table.
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
    # The columns in first-seen order over the jobs, as pandas builds them from the rows.
    jobs = pd.DataFrame(rows)
    return jobs[["job", *param_columns(jobs), *metric_columns(jobs), "status"]]


def is_overall(key: str) -> bool:
    """``test/acc`` but not ``test/f1/crazing``: the per-class metrics stay in the CSV."""
    return _is_metric(key) and key.count("/") == 1


def ok_rows(jobs: pd.DataFrame) -> pd.DataFrame:
    return jobs[jobs["status"] == "ok"]


def metric_values(jobs: pd.DataFrame, key: str) -> list[float]:
    """The metric of every ok job that has it (not NaN), in job order."""
    return ok_rows(jobs)[key].dropna().tolist() if key in jobs else []


def param_columns(jobs: pd.DataFrame) -> list[str]:
    return [k for k in jobs.columns if not _is_metric(k) and k not in ("job", "status")]


def metric_columns(jobs: pd.DataFrame) -> list[str]:
    return sorted(k for k in jobs.columns if _is_metric(k))


def overall_columns(jobs: pd.DataFrame) -> list[str]:
    return [k for k in metric_columns(jobs) if is_overall(k)]


def split_params(jobs: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """The parameters that differ between jobs, and those every job shares (with their value)."""
    params = param_columns(jobs)
    # A job without an override counts as a value of its own: nunique(dropna=False).
    fixed = {k: jobs[k].iloc[0] for k in params if len(jobs) > 1 and jobs[k].nunique(dropna=False) == 1}
    return [k for k in params if k not in fixed], fixed


def main_metric(sweep_dir: Path, jobs: pd.DataFrame) -> str | None:
    """The test twin of the sweep's ``optimized_metric`` (val/acc -> test/acc), else a known headline."""
    available = metric_columns(jobs)
    optimized = _optimized_metric(Path(sweep_dir) / jobs["job"].iloc[0])
    candidates = [f"test/{optimized.split('/', 1)[1]}"] if optimized and "/" in optimized else []
    for name in [*candidates, *FALLBACK_METRICS]:
        if name in available:
            return name
    overall = [k for k in available if is_overall(k) and k.startswith("test/")]
    return overall[0] if overall else None


def with_mean_row(jobs: pd.DataFrame) -> pd.DataFrame:
    """The jobs and a last ``mean`` row: each metric's mean over the ok jobs, ``<ok>/<jobs> ok`` as status."""
    ok = ok_rows(jobs)
    mean = {"job": "mean", **ok[metric_columns(jobs)].mean(), "status": f"{len(ok)}/{len(jobs)} ok"}
    return pd.concat([jobs, pd.DataFrame([mean])], ignore_index=True)


def configurations(jobs: pd.DataFrame, varying: list[str]) -> tuple[list[str], DataFrameGroupBy]:
    """Jobs grouped by their configuration: every varying parameter but the seed, in first-seen order.

    Metrics of jobs that are not ok are masked, so the groups' aggregations are over ok jobs only.
    """
    keys = [k for k in varying if k not in SEED_KEYS]
    ok = jobs["status"] == "ok"
    masked = jobs.assign(**{k: jobs[k].where(ok) for k in metric_columns(jobs)})
    # No parameter but the seed: every job is one configuration, a constant column to group by.
    if not keys:
        masked = masked.assign(configuration="all jobs")
    return keys, masked.groupby(keys or ["configuration"], sort=False, dropna=False)


def _fixed_line(fixed: dict[str, str]) -> str:
    return "All jobs: " + " ".join(f"`{k}={v}`" for k, v in fixed.items()) + "\n\n" if fixed else ""


def optuna_best(sweep_dir: Path) -> dict[str, Any] | None:
    """Optuna's ``optimization_results.yaml`` (best_params, best_value), if the sweeper wrote one."""
    results = sweep_dir / "optimization_results.yaml"
    return yaml.safe_load(results.read_text()) if results.is_file() else None


def jobs_markdown(sweep_dir: Path, table: pd.DataFrame) -> str:
    """summary.md from the jobs and their mean row."""
    jobs = table.iloc[:-1]
    varying, fixed = split_params(jobs)
    cells = table[["job", *varying, *overall_columns(jobs), "status"]].apply(fmt_column)
    text = f"# Sweep {sweep_dir.name}\n\n{_fixed_line(fixed)}{markdown_table(cells)}"
    text += "\nPer-class metrics of every job: summary.csv.\n"
    best = optuna_best(sweep_dir)
    if best and "best_params" in best:
        params = " ".join(f"`{k}={fmt_param(v)}`" for k, v in best["best_params"].items())
        text += f"\nOptuna best: {fmt(float(best['best_value']))} with {params}\n"
    return text


def grouped_markdown(sweep_dir: Path, jobs: pd.DataFrame) -> str:
    varying, fixed = split_params(jobs)
    keys, groups = configurations(jobs, varying)
    metrics = overall_columns(jobs)
    ok = groups["status"].agg(lambda s: (s == "ok").sum())
    table = ok.index.to_frame(index=False).map(fmt_param)
    table["jobs ok"] = [f"{n}/{size}" for n, size in zip(ok, groups.size(), strict=True)]
    if metrics:  # none when every job failed
        stats = groups[metrics].agg(STATS)
        table[metrics] = pd.concat([mean_std_cells(stats, key) for key in metrics], axis=1).to_numpy()
    seeds = [k for k in varying if k in SEED_KEYS]
    over = f"over {', '.join(seeds)}" if seeds else "over the jobs of each configuration"
    return (f"# Sweep {sweep_dir.name}: mean ± std (sample) {over}\n\n{_fixed_line(fixed)}"
            f"{markdown_table(table)}")


def plot_summary(path: Path, jobs: pd.DataFrame, metric: str) -> Path:
    """One column per configuration: every job as a dot, the mean as a bar, ± std as an error bar."""
    keys, groups = configurations(jobs, split_params(jobs)[0])
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * groups.ngroups + 1.5), 4.0))
    labels = []
    for i, (config, members) in enumerate(groups):
        labels.append("\n".join(f"{k}={fmt_param(v)}" for k, v in zip(keys, config, strict=True)) if keys
                      else "all jobs")
        values = members[metric].dropna()
        if values.empty:
            ax.text(i, 0.5, "no ok job", ha="center", transform=ax.get_xaxis_transform(), color="tab:red")
            continue
        ax.bar(i, values.mean(), color="tab:blue", alpha=0.35, width=0.6)
        ax.errorbar(i, values.mean(), yerr=values.std() if len(values) > 1 else 0.0, color="black", capsize=6)
        ax.scatter([i] * len(values), values, color="tab:blue", zorder=3, s=18)
    everything = pd.Series(metric_values(jobs, metric), dtype=float)
    if not everything.empty:
        # Metrics close to 1 differ in the second decimal: a zero-based axis would hide that.
        low, high = everything.min(), everything.max()
        margin = max(0.01, 0.25 * (high - low))
        ax.set_ylim(max(0.0, low - margin), high + margin if high + margin <= 1 or high > 1 else 1.0)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per configuration ({len(ok_rows(jobs))}/{len(jobs)} jobs ok)")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def write_summary(sweep_dir: str | Path) -> pd.DataFrame:
    """Write summary.csv, summary.md, summary_grouped.md and summary.png; return the jobs and a mean row."""
    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir)
    table = with_mean_row(jobs)
    write_csv(sweep_dir / "summary.csv", table)
    write_text(sweep_dir / "summary.md", jobs_markdown(sweep_dir, table))
    write_text(sweep_dir / "summary_grouped.md", grouped_markdown(sweep_dir, jobs))
    metric = main_metric(sweep_dir, jobs)
    if metric:
        plot_summary(sweep_dir / "summary.png", jobs, metric)
    log.info("summary of %d jobs (%d ok): %s", len(jobs), len(ok_rows(jobs)), sweep_dir / "summary.md")
    return table
