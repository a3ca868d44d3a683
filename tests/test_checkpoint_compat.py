"""Checkpoints written before the package was restructured still load and compute the same numbers.

``tests/data/legacy_ff76304_*.ckpt`` were trained at commit ff76304 (the flat package layout) on the
generated fixture, with tiny nets; ``legacy_ff76304_outputs.json`` holds what that commit's code
computed from them on a seeded input batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from neu_defects.core.checkpoint import load_module

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["cnn", "autoencoder_pixel"])
def test_a_checkpoint_from_before_the_restructuring_gives_the_same_outputs(name):
    module = load_module(DATA / f"legacy_ff76304_{name}.ckpt")
    expected = json.loads((DATA / "legacy_ff76304_outputs.json").read_text())[name]
    spec = module.input_spec
    x = torch.randn(3, spec["in_chans"], spec["image_size"], spec["image_size"],
                    generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = module(x)
    if module.task == "classifier":
        assert torch.allclose(out, torch.tensor(expected), atol=1e-5)
    else:
        score, amap = out
        assert torch.allclose(score, torch.tensor(expected[0]), atol=1e-5)
        assert torch.allclose(amap.flatten(1).sum(1), torch.tensor(expected[1]), rtol=1e-5)
