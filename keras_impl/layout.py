"""Conversions between the canonical (PyTorch) layout and Keras' NHWC layout.

Keras ``Conv2D`` kernels are ``[kH, kW, I/groups, O]`` (grouped convs split the output
channels into consecutive groups, as PyTorch does), ``Dense`` kernels ``[in, out]``; biases
and BatchNormalization vectors (``gamma``, ``beta``, ``moving_mean``, ``moving_variance``)
are ``[C]`` in both layouts. Keras flattens a NHWC map in (H, W, C) order where the canonical
format numbers the features (C, H, W): the model does not transpose back before ``Flatten``;
the first ``Dense`` after a flatten has its kernel permuted on import and export, and flat
activations are reordered when they are reported. Which layers read or produce such
flattened maps is framework-free: ``shared.weights.flatten_inputs`` / ``flattened_maps``.

Flax stores exactly the same layouts, so the numpy functions (each transpose with its layout
comment) live once in :mod:`shared.nhwc`; this module names them for Keras.
"""
from __future__ import annotations

from shared import nhwc

# Conv2D kernel: [O, I/groups, kH, kW] <-> [kH, kW, I/groups, O]
conv_kernel_to_framework = nhwc.conv_kernel_to_hwio
conv_kernel_from_framework = nhwc.conv_kernel_from_hwio
# Dense kernel:  [out, in (C,H,W)] <-> [in (H,W,C), out]
linear_kernel_to_framework = nhwc.linear_kernel_to_io
linear_kernel_from_framework = nhwc.linear_kernel_from_io
flatten_permutation = nhwc.flatten_permutation
# activations:   [N, C, H, W] <-> [N, H, W, C]; flat maps reordered (H,W,C) -> (C,H,W)
nchw_to_framework = nhwc.nchw_to_nhwc
framework_to_nchw = nhwc.nhwc_to_canonical
framework_shape = nhwc.nhwc_shape
