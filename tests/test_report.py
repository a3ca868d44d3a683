"""The multirun summary: a row per job, failed jobs kept with their error, seeds grouped, a figure."""

from __future__ import annotations

import csv
import json

import pytest

from neu_defects.core.errors import UserError
from neu_defects.report import main
from neu_defects.reporting.sweep import write_summary


def make_job(sweep, num, overrides, metrics=None, error=None, optimized_metric="val/acc"):
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / ".hydra" / "config.yaml").write_text(f"optimized_metric: {optimized_metric}\n")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if error is not None:
        (job / "error.txt").write_text(f"{error}\n\nTraceback (most recent call last):\n  ...\n")


def test_summary_rows_mean_and_failures(tmp_path):
    make_job(tmp_path, 0, ["data.normal_classes=[crazing]"], {"test/image_auroc": 0.9, "fit/seconds": 10.0},
             optimized_metric="val/image_auroc")
    make_job(tmp_path, 1, ["data.normal_classes=[inclusion]"], {"test/image_auroc": 0.7, "fit/seconds": 20.0},
             optimized_metric="val/image_auroc")
    make_job(tmp_path, 2, ["data.normal_classes=[patches]"], error="data root /x does not exist")
    make_job(tmp_path, 3, ["data.normal_classes=[scratches]"])
    table = write_summary(tmp_path)
    assert table["job"].tolist() == ["0", "1", "2", "3", "mean"]
    assert table["status"][2] == "failed: data root /x does not exist"
    assert table["status"][3].startswith("incomplete")
    assert table.iloc[-1]["test/image_auroc"] == pytest.approx(0.8)
    assert table.iloc[-1]["status"] == "2/4 ok"
    assert table.iloc[-1]["fit/seconds"] == pytest.approx(15.0)
    assert table.iloc[:2]["fit/seconds"].tolist() == [10.0, 20.0]
    md = (tmp_path / "summary.md").read_text()
    assert "| 0 | [crazing] | 10.0 | 0.9000 | ok |" in md
    assert "| 2 | [patches] |  |  | failed: data root /x does not exist |" in md
    assert (tmp_path / "summary.csv").read_text().splitlines()[0] == "job,data.normal_classes,fit/seconds,test/image_auroc,status"
    assert (tmp_path / "summary.png").stat().st_size > 0


def test_grouped_summary_is_mean_and_std_over_seeds(tmp_path):
    accs = {("cnn", 0): 0.90, ("cnn", 1): 0.94, ("cnn", 2): 0.98, ("lite0", 0): 0.99, ("lite0", 1): 0.97}
    for num, ((model, seed), acc) in enumerate(accs.items()):
        metrics = {"test/acc": acc, "test/f1/crazing": acc, "fit/seconds": 100.0 + num}
        make_job(tmp_path, num, [f"model={model}", f"seed={seed}", "trainer.max_epochs=5"], metrics)
    make_job(tmp_path, 5, ["model=lite0", "seed=2", "trainer.max_epochs=5"], error="RuntimeError: out of memory")
    write_summary(tmp_path)

    grouped = (tmp_path / "summary_grouped.md").read_text()
    assert "All jobs: `trainer.max_epochs=5`" in grouped
    assert "| model | jobs ok | fit/seconds | test/acc |" in grouped
    assert "| cnn | 3/3 | 101.0 ± 1.0 | 0.9400 ± 0.0400 |" in grouped
    assert "| lite0 | 2/3 | 103.5 ± 0.7 | 0.9800 ± 0.0141 |" in grouped
    jobs_md = (tmp_path / "summary.md").read_text()
    assert "test/f1/crazing" not in jobs_md and "| 5 | lite0 | 2 |" in jobs_md
    with open(tmp_path / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["test/f1/crazing"] == "0.9" and rows[5]["status"] == "failed: RuntimeError: out of memory"


def test_optuna_best_trial_is_reported(tmp_path):
    make_job(tmp_path, 0, ["model.optimizer.lr=0.0012345678901"], {"test/acc": 0.9})
    make_job(tmp_path, 1, ["model.optimizer.lr=0.01"], {"test/acc": 0.8})
    (tmp_path / "optimization_results.yaml").write_text(
        "name: optuna\nbest_params:\n  model.optimizer.lr: 0.0012345678901\nbest_value: 0.95\n")
    write_summary(tmp_path)
    md = (tmp_path / "summary.md").read_text()
    assert "| 0 | 0.001235 | 0.9000 | ok |" in md
    assert "Optuna best: 0.9500 with `model.optimizer.lr=0.001235`" in md


def test_summary_of_a_folder_without_jobs(tmp_path, capsys):
    with pytest.raises(UserError, match="holds no job directories"):
        write_summary(tmp_path)
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "missing")])
    assert info.value.code == 2
    assert "does not exist" in capsys.readouterr().err
