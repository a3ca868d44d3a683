"""Multiruns end to end on the fixture data: launchers, a failing job, the Optuna search, the summary."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import yaml

from neu_defects.core.cli import run_task
from neu_defects.core.errors import Interrupted
from neu_defects.reporting.classification import read_metrics_csv

from .conftest import REPO

# Two-job sweeps must stay fast: a tiny CNN, 32 px, one epoch, no CAM.
TINY = ["trainer.max_epochs=1", "callbacks.progress_bar=null", "callbacks.gradcam=null", "model.net.widths=[8,16]",
        "model.image_size=32", "data.split=80_20"]


def multirun(sweep_dir, data_root, *overrides):
    result = subprocess.run(
        [sys.executable, "-m", "neu_defects.train", "-m", f"data.root={data_root}", *TINY, *overrides,
         f"hydra.sweep.dir={sweep_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def summary_rows(sweep_dir):
    with open(sweep_dir / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def job_log_value(job_dir, metric="val/acc"):
    """The metric of a job's last epoch, from its CSV log: what train() hands the sweeper."""
    series = read_metrics_csv(job_dir / "csv" / "metrics.csv")[metric]
    return series[max(series)]


def assert_complete_jobs(sweep_dir, count):
    for num in range(count):
        job = sweep_dir / str(num)
        assert set(json.loads((job / "metrics.json").read_text())) >= {"test/acc", "fit/seconds"}
        assert (job / "checkpoints" / "best.ckpt").is_file() and (job / "plots" / "confusion_matrix.png").is_file()
    rows = summary_rows(sweep_dir)
    assert [r["status"] for r in rows[:count]] == ["ok"] * count and rows[-1]["job"] == "mean"
    for name in ("summary.md", "summary_grouped.md", "summary.png"):
        assert (sweep_dir / name).stat().st_size > 0


@pytest.mark.slow
def test_a_failed_job_is_recorded_and_the_sweep_goes_on(fixture_root, tmp_path):
    """The basic launcher stops at the first exception: the job must record its error instead."""
    sweep = tmp_path / "sweep"
    multirun(sweep, fixture_root / "neu-cls", "data.split='70_20','80_20'", "seed=0")
    error = (sweep / "0" / "error.txt").read_text().splitlines()[0]
    assert error.startswith("data.split=") and not (sweep / "0" / "metrics.json").exists()
    assert (sweep / "1" / "metrics.json").is_file()
    rows = summary_rows(sweep)
    assert rows[0]["status"] == f"failed: {error}"
    assert rows[1]["status"] == "ok" and rows[2]["status"] == "1/2 ok"
    grouped = (sweep / "summary_grouped.md").read_text()
    assert "| '70_20' | 0/1 |" in grouped and "| '80_20' | 1/1 |" in grouped


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(fixture_root, tmp_path):
    sweep = tmp_path / "joblib"
    result = multirun(sweep, fixture_root / "neu-cls", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert "Joblib.Parallel(n_jobs=2" in result.stderr + result.stdout
    assert_complete_jobs(sweep, 2)


@pytest.mark.slow
def test_submitit_local_launcher(fixture_root, tmp_path):
    sweep = tmp_path / "submitit"
    multirun(sweep, fixture_root / "neu-cls", "seed=0,1", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")
    assert (sweep / ".submitit").is_dir()
    assert_complete_jobs(sweep, 2)


@pytest.mark.slow
def test_slurm_launcher_config_composes():
    result = subprocess.run([sys.executable, "-m", "neu_defects.train", "hydra/launcher=slurm",
                             "hydra.launcher.partition=cpu", "--cfg", "hydra", "--package", "hydra.launcher"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    launcher = yaml.safe_load(result.stdout)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["partition"], launcher["cpus_per_task"], launcher["timeout_min"]) == ("cpu", 8, 120)


@pytest.mark.slow
def test_optuna_search_returns_the_metric_and_reports_the_best_trial(fixture_root, tmp_path):
    sweep = tmp_path / "optuna"
    multirun(sweep, fixture_root / "neu-cls", "hparams_search=cnn_optuna", "hydra.sweeper.n_trials=2")
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    # TINY fixes model.net.widths on the command line, which takes it out of the search.
    assert set(best["best_params"]) == {"model.optimizer.lr", "model.optimizer.weight_decay", "model.net.dropout",
                                        "data.augment.shift_rotate.p"}
    trials = summary_rows(sweep)[:2]
    assert {r["status"] for r in trials} == {"ok"}
    # The sweeper's trials are the jobs: each ran with the parameters Optuna asked for, and the value
    # Optuna kept is what the best job's train() returned.
    returned = []
    for num, row in enumerate(trials):
        overrides = yaml.safe_load((sweep / str(num) / ".hydra" / "overrides.yaml").read_text())
        assert "model.net.widths=[8,16]" in overrides and any(o.startswith("model.optimizer.lr=") for o in overrides)
        assert float(row["model.optimizer.lr"]) > 0
        returned.append(job_log_value(sweep / str(num)))
    assert best["best_value"] == pytest.approx(max(returned))
    assert "Optuna best:" in (sweep / "summary.md").read_text()


@pytest.fixture
def multirun_job(tmp_path):
    """HydraConfig as a multirun job sees it, with its output directory in tmp_path."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.hydra.mode = "MULTIRUN"
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.job.num = 3
    HydraConfig.instance().set_config(cfg)
    yield tmp_path
    HydraConfig.instance().cfg = None


def test_in_a_multirun_errors_are_recorded_but_an_interrupt_stops_the_sweep(multirun_job):
    def crash(cfg):
        raise RuntimeError("CUDA out of memory\nmore detail")

    assert run_task(crash, None) is None
    assert (multirun_job / "error.txt").read_text().startswith("RuntimeError: CUDA out of memory\n\nTraceback")
    assert run_task(lambda cfg: 0.9, None) == 0.9
    assert not (multirun_job / "error.txt").exists()  # a rerun that succeeds leaves no stale error

    def interrupted(cfg):
        raise Interrupted("training was interrupted")

    with pytest.raises(Interrupted):
        run_task(interrupted, None)
    assert (multirun_job / "error.txt").read_text().startswith("training was interrupted")
