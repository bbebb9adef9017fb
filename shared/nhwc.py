"""Canonical (PyTorch, channel-first) <-> channel-last layouts, as pure numpy functions.

Keras (``Conv2D``/``Dense``) and Flax (``nnx.Conv``/``nnx.Linear``) store the same
channel-last layouts, so both packages' ``layout.py`` bind these functions under their
framework-facing names rather than keep two copies:

* conv kernels: canonical ``[O, I/groups, kH, kW]``, channel-last ``[kH, kW, I/groups, O]``
  (grouped convs split the output channels into consecutive groups in both);
* linear kernels: canonical ``[out, in]``, channel-last ``[in, out]``; a linear layer that
  reads a flattened ``(C, H, W)`` map numbers its inputs ``c*H*W + h*W + w`` canonically but
  ``h*W*C + w*C + c`` after an NHWC flatten, so its input axis is permuted;
* feature maps: ``[N, C, H, W]`` and ``[N, H, W, C]``.
"""
from __future__ import annotations

import numpy as np

CHW = tuple[int, int, int]


def conv_kernel_to_hwio(w: np.ndarray) -> np.ndarray:
    """Canonical conv weight -> channel-last kernel."""
    # [O, I/groups, kH, kW] -> [kH, kW, I/groups, O]
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)), dtype=np.float32)


def conv_kernel_from_hwio(w: np.ndarray) -> np.ndarray:
    """Channel-last kernel -> canonical conv weight."""
    # [kH, kW, I/groups, O] -> [O, I/groups, kH, kW]
    return np.ascontiguousarray(np.transpose(w, (3, 2, 0, 1)), dtype=np.float32)


def flatten_permutation(chw: CHW) -> np.ndarray:
    """``perm[j]`` = canonical (C, H, W) flat index of the j-th feature of an (H, W, C) flatten."""
    c, h, w = chw
    # channel-first indices arranged [C, H, W] -> [H, W, C], then read in order
    return np.transpose(np.arange(c * h * w).reshape(c, h, w), (1, 2, 0)).ravel()


def linear_kernel_to_io(w: np.ndarray, flattened_chw: CHW | None) -> np.ndarray:
    """Canonical ``[out, in]`` -> ``[in, out]``; the inputs reordered (C,H,W) -> (H,W,C) when the
    layer reads a flattened ``flattened_chw`` map (``shared.weights.flatten_inputs``)."""
    if flattened_chw is not None:
        # [out, in (C,H,W order)] -> [out, in (H,W,C order)]
        w = w[:, flatten_permutation(flattened_chw)]
    # [out, in] -> [in, out]
    return np.ascontiguousarray(np.transpose(w), dtype=np.float32)


def linear_kernel_from_io(w: np.ndarray, flattened_chw: CHW | None) -> np.ndarray:
    """``[in, out]`` -> canonical ``[out, in]`` (the inverse of :func:`linear_kernel_to_io`)."""
    # [in, out] -> [out, in]
    w = np.transpose(w)
    if flattened_chw is not None:
        # [out, in (H,W,C order)] -> [out, in (C,H,W order)]
        w = w[:, np.argsort(flatten_permutation(flattened_chw))]
    return np.ascontiguousarray(w, dtype=np.float32)


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    """A canonical batch of maps -> channel-last."""
    # [N, C, H, W] -> [N, H, W, C]
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)), dtype=np.float32)


def nhwc_to_canonical(x: np.ndarray, flattened_chw: CHW | None = None) -> np.ndarray:
    """A channel-last activation -> canonical: 4-D maps are transposed; a flat ``(N, F)``
    activation that holds a ``flattened_chw`` map in (H, W, C) order is reordered."""
    if x.ndim == 4:
        # [N, H, W, C] -> [N, C, H, W]
        return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)), dtype=np.float32)
    if flattened_chw is not None:
        # [N, in (H,W,C order)] -> [N, in (C,H,W order)]
        x = x[:, np.argsort(flatten_permutation(flattened_chw))]
    return np.ascontiguousarray(x, dtype=np.float32)


def nhwc_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A spec (per-example, channel-first) shape in channel-last order: (C, H, W) -> (H, W, C)."""
    return (*shape[1:], shape[0]) if len(shape) == 3 else shape
