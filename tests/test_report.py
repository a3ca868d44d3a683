"""The multirun summary: a row per job with its overrides and metrics, failed jobs kept, a mean row."""

from __future__ import annotations

import json

import pytest

from neu_defects.errors import UserError
from neu_defects.report import main, write_summary


def make_job(sweep, num, overrides, metrics=None):
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))


def test_summary_rows_mean_and_failures(tmp_path):
    make_job(tmp_path, 0, ["data.normal_classes=[crazing]"], {"test/image_auroc": 0.9, "fit/seconds": 10.0})
    make_job(tmp_path, 1, ["data.normal_classes=[inclusion]"], {"test/image_auroc": 0.7, "fit/seconds": 20.0})
    make_job(tmp_path, 2, ["data.normal_classes=[patches]"])
    table = write_summary(tmp_path)
    assert [r["job"] for r in table] == ["0", "1", "2", "mean"]
    assert table[2]["status"].startswith("failed")
    assert table[-1]["test/image_auroc"] == pytest.approx(0.8)
    assert table[-1]["status"] == "2/3 ok"
    md = (tmp_path / "summary.md").read_text()
    assert "| 0 | [crazing] | 10.0000 | 0.9000 | ok |" in md
    assert (tmp_path / "summary.csv").read_text().splitlines()[0] == "job,data.normal_classes,fit/seconds,test/image_auroc,status"


def test_summary_of_a_folder_without_jobs(tmp_path, capsys):
    with pytest.raises(UserError, match="holds no job directories"):
        write_summary(tmp_path)
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "missing")])
    assert info.value.code == 2
    assert "does not exist" in capsys.readouterr().err
