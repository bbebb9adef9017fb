"""Conversions between the canonical (PyTorch) layout and Flax's.

Flax is channels-last: feature maps are NHWC, ``nnx.Conv`` kernels ``[kH, kW, I/groups, O]``,
``nnx.Linear`` kernels ``[in, out]``; biases and BatchNorm vectors (``scale``, ``bias``,
``mean``, ``var``) are ``[C]`` in both layouts. A linear layer after a flatten of an NHWC map
sees its inputs in (H, W, C) order, so its kernel is permuted on the way in and out; the
activations themselves are never transposed back to NCHW before a flatten.

Keras stores exactly the same layouts, so the numpy functions (each transpose with its layout
comment), which layers read a flattened map, and which conversion each tensor takes live once
in ``rosetta_cnn.core.layout``; this module names them for Flax (the names the seeded-fault
tests patch to break this port alone).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from rosetta_cnn.core import layout as core
from rosetta_cnn.core.spec import Layer

CHW = core.CHW

# nnx.Conv kernel:   [O, I/groups, kH, kW] <-> [kH, kW, I/groups, O]
conv_kernel_to_framework = core.conv_kernel_to_hwio
conv_kernel_from_framework = core.conv_kernel_from_hwio
# nnx.Linear kernel: [out, in (C,H,W)] <-> [in (H,W,C), out]
linear_kernel_to_framework = core.linear_kernel_to_io
linear_kernel_from_framework = core.linear_kernel_from_io
# activations:       [N, C, H, W] <-> [N, H, W, C]; flat maps reordered (H,W,C) -> (C,H,W)
nchw_to_framework = core.nchw_to_nhwc
framework_to_nchw = core.nhwc_to_canonical
framework_shape = core.nhwc_shape


def tensor_to_framework(layer: Layer, suffix: str, t: Any, flattened_chw: CHW | None) -> np.ndarray:
    """One canonical tensor -> the NNX variable's layout (``core.layout.convert_tensor``)."""
    return core.convert_tensor(layer, suffix, t, flattened_chw,
                               conv=conv_kernel_to_framework, linear=linear_kernel_to_framework)


def tensor_from_framework(layer: Layer, suffix: str, a: Any, flattened_chw: CHW | None) -> np.ndarray:
    """One NNX variable -> the canonical layout."""
    return core.convert_tensor(layer, suffix, a, flattened_chw,
                               conv=conv_kernel_from_framework, linear=linear_kernel_from_framework)
