"""Keras 3 layers for the spec's ops, and ``OPS``: the dispatch table from op name to factory.

Every factory takes ``(layer, rng)`` (the resolved spec layer and a numpy ``Generator`` that
hands out initializer / dropout seeds) and returns the Keras layers to apply in order. The
LAST one is named after the spec layer and outputs exactly that layer's output (fused ReLU
included); helpers before it are named ``f"{layer.name}_pad"``.

Most ops map to native Keras layers. Custom layers exist only where Keras differs from the
PyTorch semantics of ``shared/core/ops.py``:

* ``BatchNorm``: ``layers.BatchNormalization`` with a fused ReLU (so the weights stay under
  the spec name) and PyTorch's running-variance update (the unbiased batch variance);
* ``ConstantPadding2D``: the ``-inf`` padding of PyTorch's max pool where neither ``'valid'``
  nor ``'same'`` gives PyTorch's windows;
* ``LocalResponseNorm``: the AlexNet paper's local response normalisation (Keras has none);
* ``TransformInput``: torchvision GoogLeNet's input re-scaling;
* ``AdaptiveAvgPool2D``: PyTorch's adaptive windows where they are not evenly spaced (14 -> 4
  in GoogLeNet's aux heads: [0, 4), [3, 7), [7, 11), [10, 14)); evenly spaced windows (7 -> 7,
  13 -> 6, 7 -> 1) use ``AveragePooling2D``. ``keras.layers.AdaptiveAveragePooling2D`` has
  PyTorch's windows but is not used: it also pools with a window one larger than the widest,
  which fails inside ``tf.function`` (``predict``, ``fit``) when that exceeds the input, e.g.
  GoogLeNet's final 7 -> 1 pool (a window of 8 on 7 rows).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import keras
import numpy as np
from keras import ops as kops

from rosetta_cnn.core import ops
from rosetta_cnn.core.layout import lrn_window, pool_padding
from rosetta_cnn.core.ports import kernels_drawn
from rosetta_cnn.core.spec import Layer

Pads = tuple[tuple[int, int], tuple[int, int]]

#: every spatial layer is NHWC, whatever ``keras.config.image_data_format()`` says
DATA_FORMAT = "channels_last"

# ---------------------------------------------------------------------------
# conventions (module-level so that tests can monkeypatch them to simulate broken ports)


def bn_momentum(torch_momentum: float) -> float:
    """Keras momentum for PyTorch's: Keras keeps ``m * running + (1 - m) * batch``."""
    return 1.0 - torch_momentum


def running_var_correction(n: Any) -> Any:
    """Factor on the biased batch variance that goes into the running variance.

    PyTorch updates ``running_var`` with the unbiased variance, n / (n - 1) times the biased
    one (n = values per channel, a tensor); Keras' BatchNormalization uses the biased one.
    """
    return n / kops.maximum(n - 1.0, 1.0)


def replicas_in_sync() -> int:
    """Replicas a synchronized BatchNorm's statistics cover: ``tf.distribute``'s in a replica
    context (Keras synchronizes BatchNorm on TensorFlow only), else 1."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    return 1 if context is None else int(context.num_replicas_in_sync)


def lrn_alpha(alpha: float, size: int) -> float:
    """The coefficient of the sum of squares: the paper's alpha as is (PyTorch and Caffe
    divide it by ``size``; the spec does not)."""
    return alpha


def transform_input_affine(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) per channel of torchvision GoogLeNet's transform_input:
    ``x_c * std_c / 0.5 + (mean_c - 0.5) / 0.5``."""
    scale = np.array([s / 0.5 for s in std], dtype=np.float32)
    shift = np.array([(m - 0.5) / 0.5 for m in mean], dtype=np.float32)
    return scale, shift


def same_padding(size: int, k: int, s: int) -> tuple[int, int]:
    """(before, after) padding of Keras' (TensorFlow's) ``padding='same'`` on one axis.

    ``out = ceil(size / s)``; an odd total puts the extra pixel AFTER. Pitfall: for stride 2
    this is often not PyTorch's symmetric padding: 7x7/2 with padding 3 on 224 pads (3, 3) in
    PyTorch but (2, 3) with 'same', which shifts every window by one pixel. So 'same' is used
    only where ``native_padding`` finds the windows identical.
    """
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def native_padding(in_hw: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                   pads: Pads) -> str | None:
    """'valid' or 'same' where that Keras mode sweeps exactly the windows (first start and
    count, on both axes) of a 'valid' op on the input padded with ``pads``; else None."""
    native = {"valid": lambda n, k, s: (0, 0), "same": same_padding}
    for mode, padding in native.items():
        if all(_windows(n, k, s, pad) == _windows(n, k, s, padding(n, k, s))
               for n, k, s, pad in zip(in_hw, kernel, stride, pads)):
            return mode
    return None


def _windows(size: int, k: int, s: int, pad: tuple[int, int]) -> tuple[int, int]:
    """(first window start, number of windows) of a 'valid' sweep over the padded axis."""
    return -pad[0], (size + pad[0] + pad[1] - k) // s + 1


# ---------------------------------------------------------------------------
# initializer and custom layers


@keras.saving.register_keras_serializable(package="rosetta")
class GlorotUniform(keras.initializers.Initializer):
    """``keras.initializers.GlorotUniform`` (uniform in +-sqrt(6 / (fan_in + fan_out)), fans
    as Keras computes them) drawn by numpy from ``seed``.

    Keras' own initializer draws from the backend's generator, so one seed gives other
    weights on TensorFlow, JAX and PyTorch, and on JAX every new kernel shape compiles a
    sampler (35 s of GoogLeNet's 36 s build at 96x96 on 2 cores). Drawn here, a seed gives the
    same kernels on every backend and JAX compiles nothing while building.
    """

    #: values drawn per block
    BLOCK = 1 << 20

    def __init__(self, seed: int):
        self.seed = int(seed)

    def __call__(self, shape: Sequence[int], dtype: Any = None) -> np.ndarray:
        *window, fan_in, fan_out = shape  # Conv2D [kH, kW, I/groups, O], Dense [in, out]
        receptive = math.prod(window)
        limit = math.sqrt(6.0 / ((fan_in + fan_out) * receptive))
        rng = np.random.default_rng(self.seed)
        values = np.empty(tuple(shape), keras.backend.standardize_dtype(dtype or keras.config.floatx()))
        flat = values.reshape(-1)
        # the float64 draw in blocks, each cast into place: the same values as one
        # ``uniform(size=shape).astype(dtype)``, without a float64 copy of VGG's 400 MB fc6 kernel
        for start in range(0, flat.size, self.BLOCK):
            flat[start:start + self.BLOCK] = rng.uniform(-limit, limit, size=min(self.BLOCK, flat.size - start))
        return values

    def get_config(self) -> dict[str, Any]:
        return {"seed": self.seed}


@keras.saving.register_keras_serializable(package="rosetta")
class BatchNorm(keras.layers.BatchNormalization):
    """BatchNormalization over the last axis with PyTorch's semantics and a fused ReLU.

    Training mode normalises with the biased batch variance (as both frameworks do) and
    updates ``moving_variance`` with the unbiased one (as PyTorch does). Subclassing keeps
    gamma, beta and the moving statistics under the spec layer's name.
    """

    def __init__(self, *, activation: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.activation = activation

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if training and self.trainable:
            axes = tuple(range(len(inputs.shape) - 1))  # all but the channel axis
            # synchronized (TensorFlow, distributed.py --sync-bn): moments over every replica's rows
            mean, variance = kops.moments(inputs, axes=axes, synchronized=self.synchronized)
            shape = kops.shape(inputs)
            n = kops.cast(math.prod(shape[a] for a in axes), variance.dtype)  # values per channel
            if self.synchronized:
                n = n * replicas_in_sync()
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
            unbiased = variance * running_var_correction(n)
            self.moving_variance.assign(self.moving_variance * m + unbiased * (1.0 - m))
        else:
            mean, variance = self.moving_mean, self.moving_variance
        y = kops.batch_normalization(inputs, mean, variance, axis=self.axis, offset=self.beta,
                                     scale=self.gamma, epsilon=self.epsilon)
        return kops.relu(y) if self.activation == "relu" else y

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "activation": self.activation}


@keras.saving.register_keras_serializable(package="rosetta")
class ConstantPadding2D(keras.layers.Layer):
    """Pad H and W of a NHWC map with a constant (``-inf`` before PyTorch-style max pools)."""

    def __init__(self, padding: Pads, value: float, **kwargs: Any):
        super().__init__(**kwargs)
        self.padding = tuple(tuple(p) for p in padding)
        self.value = value

    def call(self, x: Any) -> Any:
        return kops.pad(x, ((0, 0), *self.padding, (0, 0)), constant_values=self.value)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "padding": self.padding, "value": self.value}


@keras.saving.register_keras_serializable(package="rosetta")
class AdaptiveAvgPool2D(keras.layers.Layer):
    """Average pool of a NHWC map over PyTorch's adaptive windows (``rosetta_cnn.core.ops.adaptive_windows``),
    one axis after the other: the mean over rows of each window, then over its columns."""

    def __init__(self, output_size: tuple[int, int], **kwargs: Any):
        super().__init__(**kwargs)
        self.output_size = tuple(output_size)

    def call(self, x: Any) -> Any:
        (oh, ow), (h, w) = self.output_size, x.shape[1:3]
        x = kops.stack([kops.mean(x[:, a:b], axis=1) for a, b in ops.adaptive_windows(h, oh)], axis=1)
        return kops.stack([kops.mean(x[:, :, a:b], axis=2) for a, b in ops.adaptive_windows(w, ow)], axis=2)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "output_size": self.output_size}


@keras.saving.register_keras_serializable(package="rosetta")
class LocalResponseNorm(keras.layers.Layer):
    """Local response normalisation across the channels of a NHWC map, the paper's formula
    ``b_i = a_i / (k + alpha * sum_j a_j^2) ** beta`` over the window of ``lrn_window``."""

    def __init__(self, size: int, alpha: float, beta: float, k: float, **kwargs: Any):
        super().__init__(**kwargs)
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def call(self, x: Any) -> Any:
        before, after = lrn_window(self.size)
        squares = kops.pad(kops.square(x), ((0, 0), (0, 0), (0, 0), (before, after)))
        channels = x.shape[-1]
        total = squares[..., :channels]
        for j in range(1, self.size):
            total = total + squares[..., j:j + channels]
        return x / kops.power(self.k + lrn_alpha(self.alpha, self.size) * total, self.beta)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k}


@keras.saving.register_keras_serializable(package="rosetta")
class TransformInput(keras.layers.Layer):
    """torchvision GoogLeNet's transform_input on a NHWC batch (see transform_input_affine)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], **kwargs: Any):
        super().__init__(**kwargs)
        self.mean, self.std = tuple(mean), tuple(std)

    def call(self, x: Any) -> Any:
        scale, shift = transform_input_affine(self.mean, self.std)
        return x * scale + shift

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mean": self.mean, "std": self.std}


# ---------------------------------------------------------------------------
# factories: (spec layer, seed source) -> Keras layers, the last one named after the layer


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31 - 1))


def _kernel_initializer(rng: np.random.Generator) -> keras.initializers.Initializer | str:
    seed = _seed(rng)  # drawn either way: the dropout seeds after it stay the same
    return GlorotUniform(seed) if kernels_drawn() else "zeros"  # zeros: build_model(initialize=False)


def conv2d(layer: Layer, rng: np.random.Generator) -> list[keras.layers.Layer]:
    a = layer.attrs
    pads = tuple((p, p) for p in a["padding"])  # PyTorch: symmetric zero padding
    mode = native_padding(layer.in_shape[1:], a["kernel_size"], a["stride"], pads)
    conv = keras.layers.Conv2D(
        a["out_channels"], a["kernel_size"], strides=a["stride"], padding=mode or "valid",
        groups=a["groups"], use_bias=a["bias"], activation=a["activation"], data_format=DATA_FORMAT,
        kernel_initializer=_kernel_initializer(rng), name=layer.name)
    if mode:
        return [conv]
    return [keras.layers.ZeroPadding2D(pads, data_format=DATA_FORMAT, name=f"{layer.name}_pad"), conv]


def linear(layer: Layer, rng: np.random.Generator) -> list[keras.layers.Layer]:
    a = layer.attrs
    return [keras.layers.Dense(a["out_features"], use_bias=a["bias"], activation=a["activation"],
                               kernel_initializer=_kernel_initializer(rng),
                               name=layer.name)]


def batch_norm(layer: Layer, rng: np.random.Generator) -> list[keras.layers.Layer]:
    a = layer.attrs
    return [BatchNorm(epsilon=a["eps"], momentum=bn_momentum(a["momentum"]), activation=a["activation"],
                      name=layer.name)]


def max_pool2d(layer: Layer, rng: np.random.Generator) -> list[keras.layers.Layer]:
    a = layer.attrs
    pads = tuple(pool_padding(n, k, s, p, a["ceil_mode"])
                 for n, k, s, p in zip(layer.in_shape[1:], a["kernel_size"], a["stride"], a["padding"]))
    mode = native_padding(layer.in_shape[1:], a["kernel_size"], a["stride"], pads)
    pool = keras.layers.MaxPooling2D(a["kernel_size"], strides=a["stride"], padding=mode or "valid",
                                     data_format=DATA_FORMAT, name=layer.name)
    return [pool] if mode else [ConstantPadding2D(pads, -math.inf, name=f"{layer.name}_pad"), pool]


def avg_pool2d(layer: Layer, rng: np.random.Generator) -> list[keras.layers.Layer]:
    a = layer.attrs
    return [keras.layers.AveragePooling2D(a["kernel_size"], strides=a["stride"], padding="valid",
                                          data_format=DATA_FORMAT, name=layer.name)]


def adaptive_avg_pool2d(layer: Layer, rng: np.random.Generator) -> list[keras.layers.Layer]:
    out = layer.attrs["output_size"]
    pools = [ops.uniform_windows(ops.adaptive_windows(n, o), n) for n, o in zip(layer.in_shape[1:], out)]
    if None in pools:
        return [AdaptiveAvgPool2D(out, name=layer.name)]
    (kh, sh), (kw, sw) = pools
    return [keras.layers.AveragePooling2D((kh, kw), strides=(sh, sw), padding="valid", data_format=DATA_FORMAT,
                                          name=layer.name)]


def lrn(layer: Layer, rng: np.random.Generator) -> list[keras.layers.Layer]:
    a = layer.attrs
    return [LocalResponseNorm(a["size"], a["alpha"], a["beta"], a["k"], name=layer.name)]


def dropout(layer: Layer, rng: np.random.Generator) -> list[keras.layers.Layer]:
    return [keras.layers.Dropout(layer.attrs["rate"], seed=_seed(rng), name=layer.name)]


def flatten(layer: Layer, rng: np.random.Generator) -> list[keras.layers.Layer]:
    # NHWC maps flatten in (H, W, C) order; the next linear layer's weight rows are permuted
    # in layout.py instead of transposing the activation back to NCHW here
    return [keras.layers.Flatten(data_format=DATA_FORMAT, name=layer.name)]


def concat(layer: Layer, rng: np.random.Generator) -> list[keras.layers.Layer]:
    return [keras.layers.Concatenate(axis=-1, name=layer.name)]


def transform_input(layer: Layer, rng: np.random.Generator) -> list[keras.layers.Layer]:
    return [TransformInput(layer.attrs["mean"], layer.attrs["std"], name=layer.name)]


OPS: dict[str, Callable[[Layer, np.random.Generator], list[keras.layers.Layer]]] = {
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
