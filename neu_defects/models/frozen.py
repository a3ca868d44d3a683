"""Frozen backbones through the fastest runtime this machine has: ONNX Runtime, else channels-last eager.

A frozen backbone only embeds: no gradient, fixed weights, BatchNorm in eval mode. On a CPU, eager
PyTorch leaves most of the speed unused there (a Lite0 embedding: 35 images/s eager, 152 through
ONNX Runtime on 2 threads, ``python -m neu_defects.benchmark``). ``FrozenRunner`` wraps such a
module and runs it through ONNX Runtime when it is installed:

- the module is exported once per (name, weights, input shape) and the export kept on disk under
  ``cache_dir`` (``$NEU_DEFECTS_CACHE``, else ``~/.cache/neu_defects``), keyed by a hash of those;
- the first batch of each input shape is checked against eager; beyond ``tolerance`` (max abs), or
  when the export fails, it falls back to eager channels-last with one log line;
- ``backend="eager"`` skips ONNX Runtime; ``backend="onnxruntime"`` refuses to run without it;
- ONNX Runtime sees at most ``max_batch`` images a call: its memory arena keeps the activations of
  the largest batch it has run, and an evaluation batch is 128 images (a feature-Gaussian job's peak
  fell from 6.1 to 3.9 GB with the same metrics: experiments/README.md, "Memory").

Outputs are tensors like the module's own (one, or a tuple for several outputs).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from neu_defects.core.errors import UserError
from neu_defects.core.io import atomic_write_bytes

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "eager")
# Exports whose outputs matched eager in this process: later runners of the same export (the jobs of
# a multirun) skip the check.
_VERIFIED: set[Path] = set()


def default_cache_dir() -> Path:
    return Path(os.environ.get("NEU_DEFECTS_CACHE") or Path.home() / ".cache" / "neu_defects") / "frozen_onnx"


def weights_digest(module: nn.Module) -> str:
    """A hash of every parameter and buffer, in order: the same weights give the same export."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Method(nn.Module):
    """One method of a module as a module's forward, to run or export it alone (``net.embed``)."""

    def __init__(self, owner: nn.Module, method: str):
        super().__init__()
        self.owner, self.method = owner, method

    def forward(self, x: torch.Tensor):
        return getattr(self.owner, self.method)(x)


@contextlib.contextmanager
def evaluating(module: nn.Module):
    """The module in eval mode for the block, every submodule's own mode back after it: a runner
    wraps part of a module that may be training (a TransferModule's head, with its dropout)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


class FrozenRunner:
    """``module`` maps an image batch to one tensor or a tuple. ``name`` says what it computes and,
    with the hash of ``weights`` (the part of the module whose parameters decide the output, when it
    holds more) and the input shape, keys the export on disk. The weights are read at the first
    call of each input shape: a runner serves a module whose weights stay as they are."""

    def __init__(self, module: nn.Module, name: str, backend: str = "auto", weights: nn.Module | None = None,
                 tolerance: float = 1e-4, cache_dir: str | Path | None = None, max_batch: int = 32):
        if backend not in BACKENDS:
            raise UserError(f"embed_backend={backend} is not a backend: use one of {', '.join(BACKENDS)}")
        self.module, self.name, self.backend, self.tolerance, self.max_batch = module, name, backend, tolerance, max_batch
        self.weights = weights if weights is not None else module
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._digest: str | None = None
        # Per input shape (C, H, W): an ONNX Runtime session, or None for eager; and the export it runs.
        self.sessions: dict[tuple[int, ...], object | None] = {}
        self.exports: dict[tuple[int, ...], Path] = {}

    @property
    def uses_onnxruntime(self) -> bool:
        return any(s is not None for s in self.sessions.values())

    @torch.no_grad()
    def eager(self, x: torch.Tensor):
        with evaluating(self.module):
            return self.module(to_channels_last(x))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor):
        shape = tuple(x.shape[1:])
        if shape not in self.sessions:
            self.sessions[shape] = self._open(x)
        session = self.sessions[shape]
        if session is None:
            return self.eager(x)
        tensors = tuple(o.to(x.device) for o in self._run(session, x))
        return tensors[0] if len(tensors) == 1 else tensors

    def _run(self, session, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        images = x.detach().cpu().float().contiguous().numpy()
        chunks = [session.run(None, {"input": images[i:i + self.max_batch]})
                  for i in range(0, len(images), self.max_batch)]
        return tuple(torch.from_numpy(np.concatenate(parts)) for parts in zip(*chunks, strict=True))

    def _open(self, x: torch.Tensor):
        """The session for this input shape, checked against eager on ``x``; None for eager."""
        if self.backend == "eager":
            return self._fallback()
        try:
            import onnxruntime as ort
        except ImportError as err:
            if self.backend == "onnxruntime":
                raise UserError("embed_backend=onnxruntime needs ONNX Runtime: pip install 'neu-defects[export]', "
                                "or use embed_backend=auto") from err
            log.info("%s: ONNX Runtime is not installed; the frozen backbone runs eager, channels-last", self.name)
            return self._fallback()
        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.log_severity_level = 3
            path = self._export(x)
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # the exporter and ONNX Runtime raise many types
            log.info("%s: export to ONNX Runtime failed (%s); the frozen backbone runs eager, channels-last",
                     self.name, str(err).splitlines()[0] if str(err) else type(err).__name__)
            return self._fallback()
        if path in _VERIFIED:
            self.exports[tuple(x.shape[1:])] = path
            return session
        reference = self.eager(x)
        reference = tuple(reference) if isinstance(reference, tuple | list) else (reference,)
        difference = max(float((o - r.cpu()).abs().max()) for o, r in zip(self._run(session, x), reference, strict=True))
        if not difference <= self.tolerance:
            log.info("%s: ONNX Runtime differs from eager by %.2g > %g on the first batch; the frozen backbone "
                     "runs eager, channels-last", self.name, difference, self.tolerance)
            return self._fallback()
        log.info("%s: frozen backbone through ONNX Runtime (max |difference| to eager %.1g on the first batch)",
                 self.name, difference)
        _VERIFIED.add(path)
        self.exports[tuple(x.shape[1:])] = path
        return session

    def _fallback(self) -> None:
        self.module.to(memory_format=torch.channels_last)
        return None

    def _export(self, x: torch.Tensor) -> Path:
        if self._digest is None:
            self._digest = weights_digest(self.weights)
        key = hashlib.sha256(f"{self.name}|{tuple(x.shape[1:])}|{torch.__version__}|{self._digest}".encode())
        path = self.cache_dir / f"{self.name}-{key.hexdigest()[:16]}.onnx"
        if path.is_file():
            return path
        buffer = io.BytesIO()
        example = x[:2].detach().cpu().float().contiguous()
        example_out = self.eager(example)
        outputs = len(example_out) if isinstance(example_out, tuple | list) else 1
        # The TorchScript exporter: 3 s for Lite0 where the dynamo exporter took 30 s (same graph and
        # parity), which a run that embeds for 20 s would not win back.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), evaluating(self.module):
            warnings.simplefilter("ignore")
            names = [f"output{i}" for i in range(outputs)]
            torch.onnx.export(self.module, (example,), buffer, input_names=["input"], output_names=names,
                              dynamic_axes={name: {0: "batch"} for name in ["input", *names]}, dynamo=False,
                              opset_version=17)
        return atomic_write_bytes(path, buffer.getvalue())
