"""Where a class activation map can be taken: the modules of a net with a spatial output.

Target layers are module paths under the net (``features.2``, ``backbone.blocks.4``); several
joined by ``+`` are fused by the CAM maths (``saliency.cam``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from neu_defects.core.errors import UserError


def split_layers(layer: str) -> list[str]:
    return [part for part in layer.split("+") if part]


@contextmanager
def preserved_state(net: nn.Module) -> Iterator[None]:
    """Put back every submodule's train/eval mode and every parameter's requires_grad and grad."""
    modes = [(m, m.training) for m in net.modules()]
    params = [(p, p.requires_grad, p.grad) for p in net.parameters()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad, grad in params:
            param.requires_grad_(requires_grad)
            param.grad = grad


def trace_feature_maps(net: nn.Module, in_chans: int, image_size: int) -> list[tuple[str, tuple[int, int]]]:
    """(module path, (h, w)) of every module with parameters that outputs a 4-D map wider than 1 x 1,
    in the order the modules finish during a forward pass. Parameter-free modules (activations,
    pooling shared between stages) are left out: they add no features of their own to explain."""
    events: list[tuple[str, tuple[int, int]]] = []

    def hook(name):
        def record(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-2:].numel() > 1:
                events.append((name, tuple(output.shape[-2:])))
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in net.named_modules()
               if name and next(m.parameters(), None) is not None]
    device = next(net.parameters()).device
    with preserved_state(net), torch.no_grad():
        net.eval()
        net(torch.zeros(1, in_chans, image_size, image_size, device=device))
    for handle in handles:
        handle.remove()
    return events


def candidate_layers(net: nn.Module, in_chans: int, image_size: int, count: int = 3) -> list[str]:
    """The module that ends each of the ``count`` coarsest resolutions, coarsest first: the last
    block and the blocks that end the earlier, finer stages.

    A stage's end is the last of the shallowest modules at its resolution: deeper ones may belong
    to the next stage, as the expansion of an inverted-residual block runs before its stride.
    """
    ends: dict[tuple[int, int], tuple[int, str]] = {}
    for name, hw in trace_feature_maps(net, in_chans, image_size):
        depth = name.count(".")
        if hw not in ends or depth <= ends[hw][0]:
            ends[hw] = (depth, name)
    by_size = sorted(ends.items(), key=lambda item: item[0][0] * item[0][1])
    return [name for _, (_, name) in by_size[:count]]


def has_modules(net: nn.Module, path: str) -> bool:
    try:
        for part in split_layers(path):
            net.get_submodule(part)
    except AttributeError:
        return False
    return True


def resolve_layer(net: nn.Module, path: str, in_chans: int, image_size: int) -> str:
    """A module path under the net (a leading ``net.`` is accepted), or several joined by ``+``, as a
    checked path; fused layers come back once each, in module order."""
    parts = [part.removeprefix("net.") for part in split_layers(str(path))]
    for part in parts:
        try:
            net.get_submodule(part)
        except AttributeError as err:
            options = ", ".join(candidate_layers(net, in_chans, image_size, count=4))
            raise UserError(f"target_layer={part!r} is not a module of {type(net).__name__}: use auto, a module "
                            f"path such as {options}, or several joined by +") from err
    if len(parts) > 1:
        order = {name: k for k, name in enumerate(n for n, _ in net.named_modules())}
        parts = sorted(dict.fromkeys(parts), key=order.__getitem__)
    return "+".join(parts)


def last_spatial_layer(net: nn.Module, images: torch.Tensor) -> str:
    """The net's last module with a spatial output, for images of this shape."""
    return trace_feature_maps(net, images.shape[1], images.shape[-1])[-1][0]
