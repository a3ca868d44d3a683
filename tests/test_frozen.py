"""Frozen backbones through ONNX Runtime: parity with eager, the export cache, and every fallback."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
from torch import nn

from neu_defects.core.errors import UserError
from neu_defects.models.frozen import FrozenRunner, Method


class TwoOutputs(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def features(self, x):
        maps = self.conv(x)
        return maps, self.head(maps.mean((2, 3)))


def batch(n: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_onnxruntime_matches_eager_for_any_batch_size_and_exports_once(tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    net = TwoOutputs().eval()
    runner = FrozenRunner(Method(net, "features"), "tiny", cache_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="neu_defects"):
        maps, logits = runner(batch(5))
    assert runner.uses_onnxruntime and "through ONNX Runtime" in caplog.text
    reference = net.features(batch(5))
    assert torch.allclose(maps, reference[0], atol=1e-4) and torch.allclose(logits, reference[1], atol=1e-4)
    assert runner(batch(3))[1].shape == (3, 4)
    exports = list(tmp_path.glob("tiny-*.onnx"))
    assert len(exports) == 1
    stamp = exports[0].stat().st_mtime_ns
    FrozenRunner(Method(net, "features"), "tiny", cache_dir=tmp_path)(batch(2))
    assert [p.stat().st_mtime_ns for p in tmp_path.glob("tiny-*.onnx")] == [stamp]
    # Other weights, or another input size, are another export.
    FrozenRunner(Method(TwoOutputs(seed=1).eval(), "features"), "tiny", cache_dir=tmp_path)(batch(2))
    runner(torch.randn(2, 3, 24, 24))
    assert len(list(tmp_path.glob("tiny-*.onnx"))) == 3


def test_onnxruntime_runs_a_large_batch_in_chunks_of_max_batch(tmp_path):
    pytest.importorskip("onnxruntime")
    net = TwoOutputs().eval()
    runner = FrozenRunner(Method(net, "features"), "tiny", cache_dir=tmp_path, max_batch=2)
    runner(batch(5))
    session = next(iter(runner.sessions.values()))
    seen = []

    class Recording:
        def run(self, names, feeds):
            seen.append(len(feeds["input"]))
            return session.run(names, feeds)

    runner.sessions = {shape: Recording() for shape in runner.sessions}
    maps, logits = runner(batch(5))
    assert seen == [2, 2, 1]
    reference = net.features(batch(5))
    assert torch.allclose(maps, reference[0], atol=1e-4) and torch.allclose(logits, reference[1], atol=1e-4)


def test_a_parity_failure_falls_back_to_channels_last_eager(tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    net = TwoOutputs().eval()
    runner = FrozenRunner(Method(net, "features"), "tiny", tolerance=-1.0, cache_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="neu_defects"):
        maps, _ = runner(batch())
    assert not runner.uses_onnxruntime and "runs eager, channels-last" in caplog.text
    assert net.conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(maps, net.features(batch())[0], atol=1e-6)


def test_without_onnxruntime_auto_runs_eager_and_onnxruntime_is_refused(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    net = TwoOutputs().eval()
    with caplog.at_level(logging.INFO, logger="neu_defects"):
        maps, _ = FrozenRunner(Method(net, "features"), "tiny", cache_dir=tmp_path)(batch())
    assert "ONNX Runtime is not installed" in caplog.text
    assert torch.allclose(maps, net.features(batch())[0], atol=1e-6)
    with pytest.raises(UserError, match="embed_backend=onnxruntime needs ONNX Runtime"):
        FrozenRunner(Method(net, "features"), "tiny", "onnxruntime", cache_dir=tmp_path)(batch())
    assert list(tmp_path.iterdir()) == []


def test_eager_backend_never_exports_and_bad_backends_are_named(tmp_path):
    runner = FrozenRunner(Method(TwoOutputs().eval(), "features"), "tiny", "eager", cache_dir=tmp_path)
    runner(batch())
    assert not runner.uses_onnxruntime and list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="embed_backend=tensorrt is not a backend: use one of auto, onnxruntime"):
        FrozenRunner(nn.Identity(), "x", "tensorrt")


def test_the_runner_leaves_every_submodule_in_its_own_mode(tmp_path):
    net = TwoOutputs()
    net.train()
    net.conv.eval()  # a frozen part inside a module that trains, as a TransferModule's backbone and head
    for backend in ("eager", "auto"):
        FrozenRunner(Method(net, "features"), "tiny", backend, cache_dir=tmp_path)(batch())
        assert net.training and net.head.training and not net.conv.training
