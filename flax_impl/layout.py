"""Conversions between the canonical (PyTorch) layout and Flax's.

Flax is channels-last: feature maps are NHWC, ``nnx.Conv`` kernels ``[kH, kW, I/groups, O]``,
``nnx.Linear`` kernels ``[in, out]``; biases and BatchNorm vectors (``scale``, ``bias``,
``mean``, ``var``) are ``[C]`` in both layouts. A linear layer after a flatten of an NHWC map
sees its inputs in (H, W, C) order, so its kernel is permuted on the way in and out; the
activations themselves are never transposed back to NCHW before a flatten.

Keras stores exactly the same layouts, so the numpy functions (each transpose with its layout
comment) live once in :mod:`shared.nhwc`; this module names them for Flax.
"""
from __future__ import annotations

from shared import nhwc

# nnx.Conv kernel:   [O, I/groups, kH, kW] <-> [kH, kW, I/groups, O]
conv_kernel_to_framework = nhwc.conv_kernel_to_hwio
conv_kernel_from_framework = nhwc.conv_kernel_from_hwio
# nnx.Linear kernel: [out, in (C,H,W)] <-> [in (H,W,C), out]
linear_kernel_to_framework = nhwc.linear_kernel_to_io
linear_kernel_from_framework = nhwc.linear_kernel_from_io
flatten_permutation = nhwc.flatten_permutation
# activations:       [N, C, H, W] <-> [N, H, W, C]; flat maps reordered (H,W,C) -> (C,H,W)
nchw_to_framework = nhwc.nchw_to_nhwc
framework_to_nchw = nhwc.nhwc_to_canonical
