"""``python -m neu_defects.report SWEEP_DIR``: one table of a multirun's jobs.

Reads every job directory (its ``.hydra/overrides.yaml`` and ``metrics.json``) and writes
``summary.csv`` and ``summary.md``: a row per job with its overrides and test metrics, and a mean
row. ``SummaryCallback`` runs it at the end of every multirun.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from neu_defects.cli import log
from neu_defects.errors import UserError
from neu_defects.io_utils import atomic_write, write_text


def collect_jobs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"sweep directory {sweep_dir} does not exist: pass a multirun directory")
    rows = []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml"), key=lambda p: _job_key(p.parent.parent)):
        job_dir = overrides_file.parent.parent
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        row: dict[str, Any] = {"job": job_dir.name}
        row.update(dict(o.split("=", 1) for o in overrides if "=" in o))
        metrics_file = job_dir / "metrics.json"
        if metrics_file.is_file():
            row.update(json.loads(metrics_file.read_text()))
            row["status"] = "ok"
        else:
            row["status"] = "failed (no metrics.json)"
        rows.append(row)
    if not rows:
        raise UserError(f"{sweep_dir} holds no job directories (*/.hydra/overrides.yaml): is it a multirun directory?")
    return rows


def _job_key(path: Path):
    return (0, int(path.name)) if path.name.isdigit() else (1, path.name)


def _is_metric(key: str) -> bool:
    return key.startswith(("test/", "fit/"))


def mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == "ok"]
    keys = sorted({k for r in ok for k in r if _is_metric(k)})
    out: dict[str, Any] = {"job": "mean", "status": f"{len(ok)}/{len(rows)} ok"}
    for k in keys:
        values = [float(r[k]) for r in ok if k in r and not math.isnan(float(r[k]))]
        if values:
            out[k] = sum(values) / len(values)
    return out


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(r))
    params = [k for k in seen if not _is_metric(k) and k not in ("job", "status")]
    metrics = sorted(k for k in seen if _is_metric(k))
    return ["job", *params, *metrics, "status"]


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_summary(sweep_dir: str | Path) -> list[dict[str, Any]]:
    sweep_dir = Path(sweep_dir)
    rows = collect_jobs(sweep_dir)
    table = [*rows, mean_row(rows)]
    columns = _columns(table)

    def write_csv(handle):
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)

    atomic_write(sweep_dir / "summary.csv", write_csv)
    md = io.StringIO()
    md.write("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")
    for r in table:
        md.write("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |\n")
    write_text(sweep_dir / "summary.md", md.getvalue())
    log.info("summary of %d jobs: %s", len(rows), sweep_dir / "summary.md")
    return table


class SummaryCallback(Callback):
    """Hydra callback: write the summary table when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_summary(config.hydra.sweep.dir)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m neu_defects.report SWEEP_DIR", file=sys.stderr)
        sys.exit(2)
    try:
        write_summary(args[0])
    except UserError as err:
        print(f"neu-defects: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
