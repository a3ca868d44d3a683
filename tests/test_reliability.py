"""Runs that survive faults: SIGKILL and resume, same-seed reproducibility, DDP, safe checkpoint reading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch

from neu_defects.core.checkpoint import AtomicCheckpointIO, read_checkpoint
from neu_defects.core.errors import UserError
from neu_defects.workflows.builders import build_trainer
from neu_defects.workflows.evaluate import evaluate
from neu_defects.workflows.train import train

from .conftest import REPO, compose_cfg

# Small enough to run in seconds on NEU-DET, noisy enough (dropout, augmentation) that any lost
# generator or sampler state would change the numbers.
SHORT = ["model.net.widths=[8,16,32]", "model.image_size=32", "trainer.max_epochs=3", "trainer.deterministic=true",
         "callbacks.progress_bar=null", "callbacks.gradcam=null"]


def run_metrics(metrics):
    return {k: v for k, v in metrics.items() if k != "fit/seconds"}


def final_weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def read_checkpoint_epoch(path):
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


@pytest.fixture(scope="module")
def reference(neu_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    metrics, _ = train(compose_cfg("train", [f"data.root={neu_root}", *SHORT], run_dir))
    return run_dir, metrics


@pytest.mark.real_data
@pytest.mark.slow
def test_same_seed_gives_identical_metrics(neu_root, reference, tmp_path):
    metrics, _ = train(compose_cfg("train", [f"data.root={neu_root}", *SHORT], tmp_path))
    assert run_metrics(metrics) == run_metrics(reference[1])
    other = final_weights(reference[0])
    assert all(torch.equal(v, other[k]) for k, v in final_weights(tmp_path).items())


@pytest.mark.real_data
@pytest.mark.slow
def test_run_killed_mid_training_resumes_bit_identical(neu_root, reference, tmp_path):
    run_dir = tmp_path / "killed"
    last = run_dir / "checkpoints" / "last.ckpt"
    process = subprocess.Popen([sys.executable, "-m", "neu_defects.train", f"data.root={neu_root}", *SHORT,
                                f"hydra.run.dir={run_dir}"], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while not last.is_file():
            assert process.poll() is None, process.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.02)
        # The first epoch's checkpoint is whole the moment it appears (it is renamed into place).
        assert read_checkpoint(last)["epoch"] == 0
        assert process.poll() is None, "the run finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists()
    killed_at = read_checkpoint(last)["epoch"]
    assert killed_at < 2, "the kill came after the last epoch's checkpoint: nothing left to resume"

    metrics, _ = train(compose_cfg("train", [f"data.root={neu_root}", *SHORT, "ckpt_path=last"], run_dir))
    assert run_metrics(metrics) == run_metrics(reference[1])
    other = final_weights(reference[0])
    assert all(torch.equal(v, other[k]) for k, v in final_weights(run_dir).items())


@pytest.mark.real_data
@pytest.mark.slow
def test_ddp_on_two_cpu_processes_syncs_metrics_over_the_whole_test_split(neu_root, tmp_path):
    run_dir = tmp_path / "ddp"
    result = subprocess.run([sys.executable, "-m", "neu_defects.train", "trainer=ddp", f"data.root={neu_root}",
                             "model.net.widths=[8,16]", "model.image_size=32", "trainer.max_epochs=1",
                             "callbacks.progress_bar=null", f"hydra.run.dir={run_dir}"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stdout + result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # Every test image of the default 80/20 split is in the report: 60 per class, gathered from both processes.
    report = (run_dir / "classification_report.txt").read_text()
    assert report.split("accuracy")[1].split()[1] == "360"

    # One process testing the same checkpoint on the same split gives the metrics DDP synced.
    eval_metrics, _ = evaluate(compose_cfg("eval", [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
                                                    f"data.root={neu_root}", "callbacks.progress_bar=null"],
                                           tmp_path / "eval"))
    assert metrics["test/acc"] < 1.0  # an imperfect model, so a half test set would show
    for key, value in eval_metrics.items():
        assert metrics[key] == pytest.approx(value, abs=1e-5), key


def test_checkpoints_are_renamed_into_place(fixture_root, tmp_path, monkeypatch):
    cfg = compose_cfg("train", [f"data.root={fixture_root / 'neu-cls'}", "trainer.max_epochs=1"], tmp_path)
    assert isinstance(build_trainer(cfg).strategy.checkpoint_io, AtomicCheckpointIO)

    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1}, path)

    def killed(*args):
        raise KeyboardInterrupt  # what a kill between write and rename looks like to the old file

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


class FallingValidation(L.LightningModule):
    """Its monitored metric is best after the first epoch and worse after every later one."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", float(self.current_epoch))  # the default monitor, minimised

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_last_checkpoint_is_the_last_epoch_when_the_best_came_earlier(fixture_root, tmp_path):
    # Lightning 2.6 writes save_last's last.ckpt only when a top-k checkpoint is saved in the same
    # step: a run that peaked early would resume from its best epoch and lose the rest.
    cfg = compose_cfg("train", [f"data.root={fixture_root / 'neu-cls'}", "trainer.max_epochs=3",
                                "callbacks.progress_bar=null", "callbacks.gradcam=null"], tmp_path)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=2)
    build_trainer(cfg, enable_model_summary=False).fit(FallingValidation(), loader, loader)
    checkpoints = tmp_path / "checkpoints"
    assert read_checkpoint_epoch(checkpoints / "best.ckpt") == 0
    assert read_checkpoint_epoch(checkpoints / "last.ckpt") == 2
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]


class Payload:
    """Pickles into a call of os.system: what a hostile checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_with_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "hostile.ckpt"
    torch.save({"neu_defects": {}, "state_dict": {}, "payload": Payload(marker)}, path)
    with pytest.raises(UserError, match="cannot be read"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["truncated", "foreign"])
@pytest.mark.slow
def test_bad_checkpoint_is_one_line_on_resume_and_predict(fixture_root, tmp_path, kind):
    path = tmp_path / f"{kind}.ckpt"
    if kind == "truncated":
        torch.save({"neu_defects": {}, "state_dict": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:1500])
        expected = f"checkpoint {path} cannot be read"
    else:
        torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, path)  # another framework's checkpoint
        expected = f"checkpoint {path} was not written by neu-defects"
    for module, overrides in (("neu_defects.train", [f"data.root={fixture_root / 'neu-cls'}", f"ckpt_path={path}"]),
                              ("neu_defects.predict", [f"ckpt_path={path}", f"input={fixture_root / 'neu-cls'}"])):
        result = subprocess.run([sys.executable, "-m", module, *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
                                cwd=REPO, capture_output=True, text=True, timeout=300)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
        assert lines[0].startswith(f"neu-defects: error: {expected}")
