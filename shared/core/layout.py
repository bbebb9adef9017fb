"""Every piece of layout knowledge, in one place, as pure numpy functions: the canonical
(PyTorch, channel-first) layout against the channel-last one, which layers take the flatten
permutation, how each canonical tensor converts, and the two windowing rules the NHWC ports
need (LRN's channel window, the padding that gives PyTorch's pooling windows).

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

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import ops

if TYPE_CHECKING:
    from .spec import Layer, ModelSpec

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


#: rows per block of the blocked 2-D transposes below: a block of 64 rows of a 25088-wide
#: matrix fits the CPU caches, so the transposed writes stay cached (VGG's fc6 kernel:
#: 0.27 s instead of 0.96 s for numpy's one-pass transpose copy)
_BLOCK = 64


def _transposed(w: np.ndarray) -> np.ndarray:
    """``w.T`` as a new C-contiguous float32 array, copied in row blocks."""
    rows, cols = w.shape
    out = np.empty((cols, rows), np.float32)
    for r in range(0, rows, _BLOCK):
        out[:, r:r + _BLOCK] = w[r:r + _BLOCK].T
    return out


def linear_kernel_to_io(w: np.ndarray, flattened_chw: CHW | None) -> np.ndarray:
    """Canonical ``[out, in]`` -> ``[in, out]``; the inputs reordered (C,H,W) -> (H,W,C) when the
    layer reads a flattened ``flattened_chw`` map (:func:`flatten_inputs`). The same result as
    ``w[:, flatten_permutation(chw)].T``, computed in blocks of output rows."""
    w = np.asarray(w, dtype=np.float32)
    n_out, n_in = w.shape
    out = np.empty((n_in, n_out), np.float32)
    for r in range(0, n_out, _BLOCK):
        block = w[r:r + _BLOCK]
        if flattened_chw is not None:
            c, h, wd = flattened_chw
            # [b, in (C,H,W order)] -> [b, in (H,W,C order)]
            block = block.reshape(-1, c, h, wd).transpose(0, 2, 3, 1).reshape(block.shape[0], n_in)
        # [out, in] -> [in, out]
        out[:, r:r + _BLOCK] = block.T
    return out


def linear_kernel_from_io(w: np.ndarray, flattened_chw: CHW | None) -> np.ndarray:
    """``[in, out]`` -> canonical ``[out, in]`` (the inverse of :func:`linear_kernel_to_io`)."""
    # [in, out] -> [out, in]
    out = _transposed(np.asarray(w, dtype=np.float32))
    if flattened_chw is not None:
        c, h, wd = flattened_chw
        for r in range(0, out.shape[0], 16):
            # [b, in (H,W,C order)] -> [b, in (C,H,W order)], 16 rows at a time, in place
            out[r:r + 16] = out[r:r + 16].reshape(-1, h, wd, c).transpose(0, 3, 1, 2).reshape(-1, c * h * wd).copy()
    return out


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


# ---------------------------------------------------------------------------
# which layers hold flattened maps, and how each canonical tensor converts


def flattened_maps(spec: ModelSpec) -> dict[str, CHW]:
    """Layers whose flat output is a ``(C, H, W)`` map's features -> that ``(C, H, W)``.

    Each flatten of a feature map, and the dropout layers that pass its output on in the same
    order (torchvision AlexNet: flatten, dropout6, fc6). An NHWC framework holds these
    activations in (H, W, C) order; the canonical order is (C, H, W).
    """
    out: dict[str, CHW] = {}
    for layer in spec.layers:
        if layer.op == "flatten" and len(layer.in_shape) == 3:
            out[layer.name] = tuple(layer.in_shape)  # type: ignore[assignment]
        elif layer.op == "dropout" and layer.inputs[0] in out:
            out[layer.name] = out[layer.inputs[0]]
    return out


def flatten_inputs(spec: ModelSpec) -> dict[str, CHW]:
    """Linear layers that read a flattened feature map -> the ``(C, H, W)`` that was flattened.

    These are the layers whose weight columns must be permuted between channel-first
    (canonical) and channel-last (Keras, Flax) flatten order.
    """
    flats = flattened_maps(spec)
    return {layer.name: flats[layer.inputs[0]] for layer in spec.layers
            if layer.op == "linear" and layer.inputs[0] in flats}


def convert_tensor(layer: Layer, suffix: str, t: Any, flattened_chw: CHW | None, *,
                   conv: Callable[[np.ndarray], np.ndarray],
                   linear: Callable[[np.ndarray, CHW | None], np.ndarray]) -> np.ndarray:
    """One canonical tensor of ``layer`` to or from the channel-last layout.

    Which conversion a tensor takes is decided here once: conv weights go through ``conv``
    (a kernel transpose), linear weights through ``linear`` (a transpose, plus the flatten
    permutation when the layer reads ``flattened_chw``), and biases and BatchNorm vectors are
    ``[C]`` in both layouts (copied). The NHWC ports pass their own ``layout`` functions, so a
    test can break one port's conversion alone.
    """
    t = np.asarray(t, dtype=np.float32)
    if suffix != "weight" or layer.op == "batch_norm":
        return t.copy()  # [C] in both layouts
    if layer.op == "conv2d":
        return conv(t)
    return linear(t, flattened_chw)


def channel_last_shape(layer: Layer, suffix: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape :func:`convert_tensor` gives a canonical tensor of ``shape`` in the channel-last
    layout, without converting anything (so an import can check every tensor against the
    model's variables before it converts and assigns them one at a time)."""
    shape = tuple(shape)
    if suffix != "weight" or layer.op == "batch_norm":
        return shape  # [C] in both layouts
    if layer.op == "conv2d":
        o, i, kh, kw = shape
        return (kh, kw, i, o)  # [O, I/groups, kH, kW] -> [kH, kW, I/groups, O]
    return shape[::-1]  # [out, in] -> [in, out]


# ---------------------------------------------------------------------------
# windows of the ops the NHWC frameworks lack


def pool_padding(size: int, k: int, s: int, p: int, ceil_mode: bool) -> tuple[int, int]:
    """(before, after) padding of one axis for which a 'valid' pool gives PyTorch's windows.

    PyTorch pads ``p`` before; after, it needs what the last of ``ops.pool_out``'s windows
    reaches past the input (more than ``p`` with ``ceil_mode``: 3x3/2 on 112 -> (0, 1), 56
    windows; less where the last window stops short of the padding, which changes nothing).
    """
    out = ops.pool_out(size, k, s, p, ceil_mode)
    return p, max((out - 1) * s + k - size - p, 0)


def lrn_window(size: int) -> tuple[int, int]:
    """How many channels before and after channel i its LRN sum covers (clipped at the edges),
    as ``torch.nn.LocalResponseNorm``: the window [i - size // 2, i + (size - 1) // 2]."""
    return size // 2, (size - 1) // 2
