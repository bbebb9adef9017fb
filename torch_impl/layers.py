"""PyTorch layers for the spec's ops, and ``OPS``: the one dispatch table from op name to layer.

PyTorch is the reference framework of the spec (``shared/core/ops.py`` defines every op by
PyTorch's semantics), so almost every op maps to a native ``torch.nn`` layer with the spec's
attributes passed straight through. The two conventions that need care have named helpers:

* ``lrn_alpha``: the spec's LRN ``alpha`` is the AlexNet paper's (not divided by ``size``),
  while ``nn.LocalResponseNorm`` computes ``k + alpha / size * sum``, so it gets
  ``alpha * size``;
* ``TransformInput``: torchvision GoogLeNet's ``transform_input``, which torch.nn lacks.

Fused activations (``activation: "relu"``) are not layers: ``model.SpecModel`` applies them
after the layer, so that ``state_dict()`` keys stay exactly the canonical tensor names.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from rosetta_cnn.core.spec import Layer


def lrn_alpha(alpha: float, size: int) -> float:
    """The ``alpha`` to give ``nn.LocalResponseNorm`` for the paper's (undivided) ``alpha``."""
    return alpha * size


class TransformInput(nn.Module):
    """torchvision GoogLeNet's ``transform_input``: ``x_c * std_c / 0.5 + (mean_c - 0.5) / 0.5``.

    The per-channel scale and shift are non-persistent buffers: they follow ``.to(device)``
    but are not weights, so they stay out of ``state_dict()``.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        scale = torch.tensor([s / 0.5 for s in std], dtype=torch.float32).view(1, -1, 1, 1)
        shift = torch.tensor([(m - 0.5) / 0.5 for m in mean], dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class Concat(nn.Module):
    """Concatenate feature maps along the channel axis (dim 1 of NCHW)."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=1)


def conv2d(layer: Layer) -> nn.Module:
    a = layer.attrs
    return nn.Conv2d(layer.in_shape[0], a["out_channels"], a["kernel_size"], stride=a["stride"],
                     padding=a["padding"], groups=a["groups"], bias=a["bias"])


def linear(layer: Layer) -> nn.Module:
    a = layer.attrs
    return nn.Linear(layer.in_shape[0], a["out_features"], bias=a["bias"])


def batch_norm(layer: Layer) -> nn.Module:
    a = layer.attrs
    # the spec's momentum already uses PyTorch's convention
    cls = nn.BatchNorm2d if len(layer.in_shape) == 3 else nn.BatchNorm1d
    return cls(layer.in_shape[0], eps=a["eps"], momentum=a["momentum"])


def max_pool2d(layer: Layer) -> nn.Module:
    a = layer.attrs
    return nn.MaxPool2d(a["kernel_size"], stride=a["stride"], padding=a["padding"], ceil_mode=a["ceil_mode"])


def avg_pool2d(layer: Layer) -> nn.Module:
    a = layer.attrs
    return nn.AvgPool2d(a["kernel_size"], stride=a["stride"])


def adaptive_avg_pool2d(layer: Layer) -> nn.Module:
    return nn.AdaptiveAvgPool2d(layer.attrs["output_size"])


def lrn(layer: Layer) -> nn.Module:
    a = layer.attrs
    return nn.LocalResponseNorm(a["size"], alpha=lrn_alpha(a["alpha"], a["size"]), beta=a["beta"], k=a["k"])


def dropout(layer: Layer) -> nn.Module:
    return nn.Dropout(layer.attrs["rate"])


def flatten(layer: Layer) -> nn.Module:
    return nn.Flatten(1)  # NCHW -> (N, C*H*W) in channel-first order: the canonical order


def concat(layer: Layer) -> nn.Module:
    return Concat()


def transform_input(layer: Layer) -> nn.Module:
    return TransformInput(layer.attrs["mean"], layer.attrs["std"])


#: spec op name -> factory(layer) -> the torch.nn layer
OPS: dict[str, Callable[[Layer], nn.Module]] = {
    "conv2d": conv2d,
    "linear": linear,
    "batch_norm": batch_norm,
    "max_pool2d": max_pool2d,
    "avg_pool2d": avg_pool2d,
    "adaptive_avg_pool2d": adaptive_avg_pool2d,
    "lrn": lrn,
    "dropout": dropout,
    "flatten": flatten,
    "concat": concat,
    "transform_input": transform_input,
}
