"""Conversions between the canonical (PyTorch) layout and Keras' NHWC layout.

Keras ``Conv2D`` kernels are ``[kH, kW, I/groups, O]`` (grouped convs split the output
channels into consecutive groups, as PyTorch does), ``Dense`` kernels ``[in, out]``; biases
and BatchNormalization vectors (``gamma``, ``beta``, ``moving_mean``, ``moving_variance``)
are ``[C]`` in both layouts. Keras flattens a NHWC map in (H, W, C) order where the canonical
format numbers the features (C, H, W): the model does not transpose back before ``Flatten``;
the first ``Dense`` after a flatten has its kernel permuted on import and export, and flat
activations are reordered when they are reported.

Flax stores exactly the same layouts, so the numpy functions (each transpose with its layout
comment), which layers read a flattened map, and which conversion each tensor takes live once
in ``rosetta_cnn.core.layout``; this module names them for Keras (the names the seeded-fault
tests patch to break this port alone).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from rosetta_cnn.core import layout as core
from rosetta_cnn.core.spec import Layer

CHW = core.CHW

# Conv2D kernel: [O, I/groups, kH, kW] <-> [kH, kW, I/groups, O]
conv_kernel_to_framework = core.conv_kernel_to_hwio
conv_kernel_from_framework = core.conv_kernel_from_hwio
# Dense kernel:  [out, in (C,H,W)] <-> [in (H,W,C), out]
linear_kernel_to_framework = core.linear_kernel_to_io
linear_kernel_from_framework = core.linear_kernel_from_io
# activations:   [N, C, H, W] <-> [N, H, W, C]; flat maps reordered (H,W,C) -> (C,H,W)
nchw_to_framework = core.nchw_to_nhwc
framework_to_nchw = core.nhwc_to_canonical
framework_shape = core.nhwc_shape


def tensor_to_framework(layer: Layer, suffix: str, t: Any, flattened_chw: CHW | None) -> np.ndarray:
    """One canonical tensor -> the Keras variable's layout (``core.layout.convert_tensor``)."""
    return core.convert_tensor(layer, suffix, t, flattened_chw,
                               conv=conv_kernel_to_framework, linear=linear_kernel_to_framework)


def tensor_from_framework(layer: Layer, suffix: str, a: Any, flattened_chw: CHW | None) -> np.ndarray:
    """One Keras variable -> the canonical layout."""
    return core.convert_tensor(layer, suffix, a, flattened_chw,
                               conv=conv_kernel_from_framework, linear=linear_kernel_from_framework)
