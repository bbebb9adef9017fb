"""Flax NNX layers for the spec's ops, and ``OPS``: the one table from spec op to layer factory.

Convolutions, fully connected layers, batch normalisation and dropout are Flax's own
(``nnx.Conv``, ``nnx.Linear``, ``nnx.BatchNorm`` with PyTorch's running-variance update,
``nnx.Dropout``). The rest are small stateless modules written here because Flax has no
layer with PyTorch's semantics for them:
max pooling with PyTorch's ``ceil_mode`` rule, adaptive average pooling with PyTorch's
(possibly overlapping) windows, local response normalisation as the AlexNet paper writes it,
and torchvision GoogLeNet's ``transform_input``.

Feature maps are NHWC (channels last). Fused activations (``activation: "relu"``) are applied
by the model, not by these layers. The conventions that a port can get wrong are small
module-level functions (``pool_padding`` and ``lrn_window`` from ``core/layout.py``,
``adaptive_windows``, ``batch_stats``), looked up at call time so that tests can monkeypatch
them to simulate a broken port.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from rosetta_cnn.core import ops
from rosetta_cnn.core.layout import lrn_window, pool_padding
from rosetta_cnn.core.ports import kernels_drawn
from rosetta_cnn.core.spec import Layer

#: PyTorch's adaptive-pool window rule, ``[floor(i*n/o), ceil((i+1)*n/o))`` per output index.
adaptive_windows = ops.adaptive_windows


class MaxPool2d(nnx.Module):
    """Max pooling with PyTorch semantics: padding counts as -inf, PyTorch's ``ceil_mode``."""

    def __init__(self, kernel_size: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int], ceil_mode: bool):
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.ceil_mode = ceil_mode

    def __call__(self, x: jax.Array) -> jax.Array:
        pads = [pool_padding(n, k, s, p, self.ceil_mode)
                for n, k, s, p in zip(x.shape[1:3], self.kernel_size, self.stride, self.padding)]
        # nnx.max_pool pads with its reduction's init value, -inf
        return nnx.max_pool(x, self.kernel_size, self.stride, pads)


class AvgPool2d(nnx.Module):
    """Average pooling over valid windows (no padding, floor mode)."""

    def __init__(self, kernel_size: tuple[int, int], stride: tuple[int, int]):
        self.kernel_size = kernel_size
        self.stride = stride

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.avg_pool(x, self.kernel_size, self.stride, "VALID")


class AdaptiveAvgPool2d(nnx.Module):
    """Adaptive average pooling with PyTorch's window rule (exact, overlapping windows included).

    When the windows are evenly spaced and equally sized (the input size is a multiple of the
    output size) this is one plain average pool, and the identity when they are single pixels;
    otherwise each output row and column averages its own slice.
    """

    def __init__(self, output_size: tuple[int, int]):
        self.output_size = output_size

    def __call__(self, x: jax.Array) -> jax.Array:
        wins = [adaptive_windows(n, o) for n, o in zip(x.shape[1:3], self.output_size)]
        plain = [ops.uniform_windows(w, n) for w, n in zip(wins, x.shape[1:3])]
        if all(plain):
            (kh, sh), (kw, sw) = plain
            if (kh, kw, sh, sw) == (1, 1, 1, 1):
                return x
            return nnx.avg_pool(x, (kh, kw), (sh, sw), "VALID")
        for axis, w in zip((1, 2), wins):
            x = jnp.stack([lax.slice_in_dim(x, a, b, axis=axis).mean(axis=axis) for a, b in w], axis=axis)
        return x


class LocalResponseNorm(nnx.Module):
    """b_i = a_i / (k + alpha * sum_j a_j^2)^beta over channels j in ``lrn_window(size)``
    around i (the paper's formula: alpha is not divided by size)."""

    def __init__(self, size: int, alpha: float, beta: float, k: float):
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k

    def __call__(self, x: jax.Array) -> jax.Array:
        before, after = lrn_window(self.size)
        sums = lax.reduce_window(x * x, jnp.zeros((), x.dtype), lax.add, (1, 1, 1, self.size), (1, 1, 1, 1),
                                 ((0, 0), (0, 0), (0, 0), (before, after)))
        return x / (self.k + self.alpha * sums) ** self.beta


class TransformInput(nnx.Module):
    """torchvision GoogLeNet's transform_input: x_c * std_c / 0.5 + (mean_c - 0.5) / 0.5."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        self.scale = tuple(s / 0.5 for s in std)
        self.shift = tuple((m - 0.5) / 0.5 for m in mean)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * jnp.asarray(self.scale, x.dtype) + jnp.asarray(self.shift, x.dtype)


class Flatten(nnx.Module):
    """Flatten each example; NHWC maps flatten in (H, W, C) order (``layout.flatten_permutation``
    reorders the next linear layer's weights to match)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], -1)


class Concat(nnx.Module):
    """Concatenate feature maps along channels (the last axis in NHWC)."""

    def __call__(self, *xs: jax.Array) -> jax.Array:
        return jnp.concatenate(xs, axis=-1)


def _kernel_init() -> dict:
    """Flax's default kernel initialiser, or zeros under ``build_model(initialize=False)``: no
    draw and none of its temporaries (a VGG's 25088 x 4096 kernel drawn eagerly takes 2.7x its
    size on top)."""
    return {} if kernels_drawn() else {"kernel_init": nnx.initializers.zeros_init()}


def conv2d(layer: Layer, rngs: nnx.Rngs) -> nnx.Conv:
    a = layer.attrs
    (ph, pw) = a["padding"]
    return nnx.Conv(layer.in_shape[0], a["out_channels"], a["kernel_size"], strides=a["stride"],
                    padding=[(ph, ph), (pw, pw)], feature_group_count=a["groups"], use_bias=a["bias"],
                    rngs=rngs, **_kernel_init())


def linear(layer: Layer, rngs: nnx.Rngs) -> nnx.Linear:
    a = layer.attrs
    return nnx.Linear(layer.in_shape[0], a["out_features"], use_bias=a["bias"], rngs=rngs, **_kernel_init())


def batch_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and biased variance of an NHWC batch, two-pass and shifted.

    Sums run around a first estimate of each channel's mean (the plain float32 mean), so the
    rounding error of the mean scales with the channel's spread rather than its magnitude
    (PyTorch's CPU kernel accumulates in float64; plain float32 sums of large-mean channels
    lose ~1e-6, which deep BatchNorm stacks in training mode amplify past the parity
    tolerance). The shift is a reduction, not one sample (``x[0, 0, 0]``): under a mesh with
    explicit axes (``jax.make_mesh``'s default) indexing one row of a batch sharded over
    devices is a ``ShardingTypeError``, while a mean over the sharded axis is a collective
    (data-parallel training, ``distributed.py``). As accurate as the one-sample shift or more:
    mean error / spread 3.05e-4 for both at mean 1e3, spread 0.1; 1.8e-8 against 1.8e-7 at mean 0.
    """
    axes = tuple(range(x.ndim - 1))
    shift = lax.stop_gradient(x.mean(axis=axes))
    d = x - shift
    mean_d = d.mean(axis=axes)
    return shift + mean_d, jnp.square(d - mean_d).mean(axis=axes)


class BatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` (parameters, state and eval path) with PyTorch's training-mode statistics.

    In training mode it normalises with :func:`batch_stats` and updates the running variance
    with the unbiased batch variance (times n / (n - 1), n values per channel), as PyTorch
    does; ``nnx.BatchNorm`` blends in the biased one.
    """

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.use_running_average:
            return super().__call__(x)
        mean, var = batch_stats(x)
        n = x.size // x.shape[-1]
        m = self.momentum
        self.mean[...] = m * self.mean[...] + (1.0 - m) * lax.stop_gradient(mean)
        self.var[...] = m * self.var[...] + (1.0 - m) * lax.stop_gradient(var) * (n / max(n - 1, 1))
        return (x - mean) * (lax.rsqrt(var + self.epsilon) * self.scale[...]) + self.bias[...]


def batch_norm(layer: Layer, rngs: nnx.Rngs) -> BatchNorm:
    a = layer.attrs
    # Flax's momentum weighs the old statistics, PyTorch's the new batch
    return BatchNorm(layer.in_shape[0], momentum=1.0 - a["momentum"], epsilon=a["eps"], rngs=rngs)


def max_pool2d(layer: Layer, rngs: nnx.Rngs) -> MaxPool2d:
    a = layer.attrs
    return MaxPool2d(a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"])


def avg_pool2d(layer: Layer, rngs: nnx.Rngs) -> AvgPool2d:
    return AvgPool2d(layer.attrs["kernel_size"], layer.attrs["stride"])


def adaptive_avg_pool2d(layer: Layer, rngs: nnx.Rngs) -> AdaptiveAvgPool2d:
    return AdaptiveAvgPool2d(layer.attrs["output_size"])


def lrn(layer: Layer, rngs: nnx.Rngs) -> LocalResponseNorm:
    a = layer.attrs
    return LocalResponseNorm(a["size"], a["alpha"], a["beta"], a["k"])


def dropout(layer: Layer, rngs: nnx.Rngs) -> nnx.Dropout:
    return nnx.Dropout(layer.attrs["rate"], rngs=rngs)


def flatten(layer: Layer, rngs: nnx.Rngs) -> Flatten:
    return Flatten()


def concat(layer: Layer, rngs: nnx.Rngs) -> Concat:
    return Concat()


def transform_input(layer: Layer, rngs: nnx.Rngs) -> TransformInput:
    return TransformInput(layer.attrs["mean"], layer.attrs["std"])


#: spec op name -> factory(layer, rngs) -> the NNX module
OPS: dict[str, Callable[[Layer, nnx.Rngs], nnx.Module]] = {
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
