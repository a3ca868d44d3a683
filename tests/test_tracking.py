"""Experiment tracking: a sweep's jobs in one MLflow experiment with their config, metrics and files;
a W&B run written offline; a tracker that cannot be used stops the run with one line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from neu_defects.core.errors import UserError
from neu_defects.reporting.tracking import prepare_trackers
from neu_defects.workflows.train import train

from .conftest import REPO, compose_cfg

# Two epochs, so that a metric logged once per epoch has two values; a tiny CNN, no CAM.
TINY = ["trainer.max_epochs=2", "callbacks.progress_bar=null", "callbacks.gradcam=null", "model.net.widths=[8,16]",
        "model.image_size=32", "data.split=80_20"]


def artifact_paths(client, run_id, folder=None):
    for entry in client.list_artifacts(run_id, folder):
        yield from artifact_paths(client, run_id, entry.path) if entry.is_dir else [entry.path]


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_a_sweep_lands_in_one_mlflow_experiment_with_each_jobs_config_metrics_and_files(
        fixture_root, tmp_path, hydra_sweep_runner, capfd, caplog):
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    sweep, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Hydra's own multirun (basic launcher) in this process: a subprocess would pay every import again.
    # hydra.mode=MULTIRUN is what -m adds; train itself, not run_task, so that a failing job fails here;
    # the runner deletes the sweep directory on leaving.
    with hydra_sweep_runner(
        calling_file=str(REPO / "neu_defects" / "train.py"), calling_module=None, config_path="../conf",
        config_name="train", task_function=lambda cfg: train(cfg)[0], temp_dir=sweep,
        overrides=[f"data.root={fixture_root / 'neu-cls'}", *TINY, "logger=mlflow", f"logger.mlflow.tracking_uri={uri}",
                   f"logger.mlflow.artifact_location={tmp_path / 'artifacts'}", "seed=0,1", "hydra.mode=MULTIRUN",
                   "~hydra.callbacks.summary"],
    ):
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(str(sweep))
        runs = {run.data.tags["run_dir"]: run for run in client.search_runs([experiment.experiment_id])}
        assert set(runs) == {str(sweep / "0"), str(sweep / "1")}
        for seed in (0, 1):
            run, job = runs[str(sweep / str(seed))], sweep / str(seed)
            # Named and tagged by the job's own overrides; where it is tracked is no part of its name.
            overrides = run.data.tags["overrides"].split()
            assert f"seed={seed}" in overrides and not any(o.startswith("logger") for o in overrides)
            assert run.info.run_name == run.data.tags["overrides"]

            written = json.loads((job / "metrics.json").read_text())
            assert {"test/acc", "test/f1_macro", "test/f1/crazing", "fit/seconds"} <= set(written)
            assert {k: run.data.metrics[k] for k in written} == written
            for name in ("val/acc", "train/loss"):
                assert len(client.get_metric_history(run.info.run_id, name)) == 2, name

            params = run.data.params
            assert (params["model.optimizer.lr"], params["seed"]) == ("0.002", str(seed))
            assert params["model.scheduler.T_max"] == "2"  # an interpolation of trainer.max_epochs, resolved

            assert {"metrics.json", "classification_report.txt", "plots/training_curves.png",
                    "checkpoints/best.ckpt"} <= set(artifact_paths(client, run.info.run_id))
            copy = download_artifacts(run_id=run.info.run_id, artifact_path="metrics.json",
                                      dst_path=str(tmp_path / "download" / str(seed)), tracking_uri=uri)
            assert json.loads(Path(copy).read_text()) == written
    # MLflow narrates creating its store, Lightning the sweep's new experiment: neither reaches the user.
    assert "database tables" not in capfd.readouterr().err and "Creating it" not in caplog.text


def test_a_wandb_run_is_written_offline_under_the_run_directory(fixture_root, tmp_path, monkeypatch):
    import wandb

    for name, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"), ("WANDB_CONFIG_DIR", tmp_path / "cfg"),
                        ("WANDB_CACHE_DIR", tmp_path / "cache"), ("WANDB_DATA_DIR", tmp_path / "data")):
        monkeypatch.setenv(name, str(value))
    run_dir = tmp_path / "run"
    train(compose_cfg("train", [f"data.root={fixture_root / 'neu-cls'}", *TINY, "logger=wandb"], run_dir))
    # An offline run's log is complete once wandb's service stops, as it does when a process exits;
    # run.finish() may return before.
    wandb.teardown()

    [offline] = (run_dir / "wandb").glob("offline-run-*")
    [log_file] = offline.glob("run-*.wandb")
    for name in ("metrics.json", "classification_report.txt", "plots/training_curves.png", "checkpoints/best.ckpt"):
        assert (offline / "files" / name).read_bytes() == (run_dir / name).read_bytes(), name
    # The run's records (config, history, summary) are in its log, for `wandb sync` to send.
    records = log_file.read_bytes()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert b"model.optimizer.lr" in records and all(k.encode() in records for k in metrics)


def test_a_tracker_that_cannot_be_used_stops_the_run_with_one_line(tmp_path, monkeypatch):
    uri = f"file:{tmp_path / 'mlruns'}"
    cfg = compose_cfg("train", ["logger=mlflow", f"logger.mlflow.tracking_uri={uri}"], tmp_path / "run")
    with pytest.raises(UserError, match=f"logger.mlflow.tracking_uri={uri} .*sqlite:///"):
        prepare_trackers(cfg)

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(UserError, match=r"logger=wandb needs .*pip install -e '\.\[wandb\]'"):
        prepare_trackers(compose_cfg("train", ["logger=wandb"], tmp_path / "run"))
