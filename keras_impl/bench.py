"""The Keras 3 (TensorFlow backend) side of ``rosetta bench`` (run inside ``rosetta_cnn.tools.bench.worker``).

Implementations measured: ``spec`` (this package's ``build_model``; training in the ``graph``
configuration through ``keras_impl.train``, a ``tf.function`` step), ``plain`` (VGG / GoogLeNet written by hand
below with the functional API, from the tables in ``shared/tools/bench/baselines.py``) and
``keras.applications`` (``VGG16`` / ``VGG19`` with ``weights=None``, for those two specs).

Configurations: ``graph`` (``model.compile(jit_compile=False)``: a ``tf.function`` running
TensorFlow's oneDNN kernels) and ``xla`` (``jit_compile=True``). Keras' own default
(``jit_compile="auto"``) is ``graph`` on a CPU-only machine and ``xla`` with a GPU. Steps are
Keras' ``predict_on_batch`` and ``train_on_batch``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from rosetta_cnn.core.spec import ModelSpec
from rosetta_cnn.tools.bench import baselines
from rosetta_cnn.training.trainer import AUX_LOSS_WEIGHT, OptimizerConfig

from . import layout
from .model import build_model
from .train import make_trainer

#: extra environment per worker process variant (TensorFlow needs none: oneDNN is on by default)
ENV_VARIANTS: dict[str, dict[str, str]] = {"": {}}

APPLICATIONS = {"vgg16": "VGG16", "vgg19": "VGG19"}


def setup(threads: int, device: str) -> dict[str, str]:
    """Pin TensorFlow's thread pools; return the versions that matter."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    versions = {"keras": keras.__version__, "tensorflow": tf.__version__, "backend": keras.backend.backend(),
                "threads": str(threads)}
    if device == "gpu":
        versions["gpu"] = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0]).get(
            "device_name", "GPU")
    return versions


def _device(device: str) -> contextlib.AbstractContextManager:
    return tf.device("/GPU:0" if device == "gpu" else "/CPU:0")


def sgemm(n: int, device: str) -> Callable[[], None]:
    """One float32 n x n matrix product per call (the machine's roof)."""
    with _device(device):
        a = tf.random.normal((n, n))
        b = tf.random.normal((n, n))

    def run() -> None:
        with _device(device):
            tf.linalg.matmul(a, b)[0, 0].numpy()  # one element back: waits for the product
    return run


def reset_device_memory(device: str) -> None:
    if device == "gpu":
        tf.config.experimental.reset_memory_stats("GPU:0")


def device_memory_mb(device: str) -> float | None:
    """Peak GPU memory TensorFlow allocated since the last reset (None on the CPU)."""
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20 if device == "gpu" else None


def implementations(spec: ModelSpec) -> list[str]:
    impls = ["spec"]
    if baselines.plain_arch(spec):
        impls.append("plain")
    if spec.name in APPLICATIONS and baselines.is_stock(spec):
        impls.append("keras.applications")
    return impls


def configs(impl: str, mode: str, variant: str) -> list[str]:
    return ["graph", "xla"]


def default_config(impl: str, mode: str) -> str:
    """Keras' ``jit_compile="auto"``: XLA only when TensorFlow sees a GPU."""
    return "xla" if tf.config.list_physical_devices("GPU") else "graph"


def _basic_conv(x: Any, width: int, kernel: int, stride: int = 1) -> Any:
    """conv (no bias) -> BatchNorm(eps 1e-3) -> ReLU."""
    x = layers.Conv2D(width, kernel, stride, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(epsilon=0.001)(x)
    return layers.ReLU()(x)


def _inception(x: Any, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int) -> Any:
    b1 = _basic_conv(x, c1, 1)
    b2 = _basic_conv(_basic_conv(x, c3r, 1), c3, 3)
    b3 = _basic_conv(_basic_conv(x, c5r, 1), c5, 3)
    b4 = _basic_conv(layers.MaxPooling2D(3, 1, padding="same")(x), cp, 1)
    return layers.Concatenate()([b1, b2, b3, b4])


def _aux_head(x: Any, a: baselines.PlainArch) -> Any:
    conv, hidden = (a.w(c) for c in baselines.GOOGLENET_AUX)
    pool = max(1, x.shape[1] // 4)  # the paper's 5x5/3 average pool: 14x14 -> 4x4
    x = _basic_conv(layers.AveragePooling2D(pool, pool)(x), conv, 1)
    x = layers.Dense(hidden, activation="relu")(layers.Flatten()(x))
    return layers.Dense(a.num_classes)(layers.Dropout(0.7)(x))


def plain_googlenet(a: baselines.PlainArch, input_shape: tuple[int, int, int]) -> keras.Model:
    """GoogLeNet with the functional API; outputs [logits, aux1, aux2] when it has aux heads."""
    inputs = keras.Input(input_shape)
    c1, c2, c3 = (a.w(c) for c in baselines.GOOGLENET_STEM)
    x = layers.MaxPooling2D(3, 2, padding="same")(_basic_conv(inputs, c1, 7, 2))
    x = layers.MaxPooling2D(3, 2, padding="same")(_basic_conv(_basic_conv(x, c2, 1), c3, 3))
    aux = []
    for name, widths in baselines.GOOGLENET_BODY:
        if name.startswith("pool"):
            x = layers.MaxPooling2D(3 if name == "pool" else 2, 2, padding="same")(x)
            continue
        x = _inception(x, *(a.w(c) for c in widths))
        if a.aux and name in baselines.GOOGLENET_AUX_FROM:
            aux.append(_aux_head(x, a))
    x = layers.Dropout(a.dropout)(layers.GlobalAveragePooling2D()(x))
    logits = layers.Dense(a.num_classes)(x)
    return keras.Model(inputs, [logits, *aux] if aux else logits, name="plain_googlenet")


def plain_vgg(a: baselines.PlainArch, input_shape: tuple[int, int, int]) -> keras.Model:
    """VGG with the functional API, as ``keras.applications`` writes it (logits out)."""
    inputs = x = keras.Input(input_shape)
    for convs, width in zip(baselines.VGG_STAGE_CONVS[a.depth], baselines.VGG_STAGE_WIDTHS):
        for _ in range(convs):
            if a.batch_norm:
                x = layers.ReLU()(layers.BatchNormalization(epsilon=1e-5)(layers.Conv2D(a.w(width), 3,
                                                                                       padding="same")(x)))
            else:
                x = layers.Conv2D(a.w(width), 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2, 2)(x)
    x = layers.Flatten()(x)
    for _ in range(2):
        x = layers.Dropout(a.dropout)(layers.Dense(a.w(baselines.VGG_HIDDEN), activation="relu")(x))
    return keras.Model(inputs, layers.Dense(a.num_classes)(x), name="plain_vgg")


def build(impl: str, config: str, spec: ModelSpec, device: str) -> keras.Model:
    """The model of ``impl`` (the configuration is applied when the step is compiled)."""
    c, h, w = spec.input_shape
    with _device(device):
        if impl == "spec":
            return build_model(spec)
        if impl == "plain":
            a = baselines.plain_arch(spec)
            return (plain_vgg if a.family == "vgg" else plain_googlenet)(a, (h, w, c))
        app = getattr(keras.applications, APPLICATIONS[spec.name])
        return app(weights=None, input_shape=(h, w, c), classes=spec.params["num_classes"],
                   classifier_activation=None)


def inference(model: keras.Model, impl: str, config: str, x: np.ndarray, device: str) -> Callable[[], None]:
    """One ``predict_on_batch`` per call (the spec model through its logits-only sub-graph, as
    ``runtime.forward`` runs it: no aux heads in eval mode)."""
    if impl == "spec":
        model = keras.Model(model.input, model.get_layer(model.spec.outputs["logits"]).output)
    elif isinstance(model.output, list):
        model = keras.Model(model.input, model.output[0])
    model.compile(jit_compile=config == "xla")
    inputs = layout.nchw_to_framework(x)  # [N, C, H, W] -> [N, H, W, C]

    def run() -> None:
        with _device(device):
            model.predict_on_batch(inputs)
    return run


def training(model: keras.Model, impl: str, config: str, spec: ModelSpec, x: np.ndarray, y: np.ndarray,
             device: str) -> Callable[[], float]:
    """One SGD-momentum step per call: the project's trainer (a ``tf.function``) for ``spec`` in
    the ``graph`` configuration, else Keras' ``compile`` + ``train_on_batch`` (aux losses
    weighted 0.3)."""
    opt = OptimizerConfig()
    if impl == "spec" and config == "graph":
        trainer = make_trainer(model, spec, opt)
        return lambda: trainer.step(x, y)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    labels = np.asarray(y, dtype=np.int64)
    if isinstance(model.output, dict):  # the spec model with aux heads: outputs by spec key
        weights = {key: 1.0 if key == "logits" else AUX_LOSS_WEIGHT for key in model.output}
        loss, targets = {key: ce for key in weights}, {key: labels for key in weights}
    else:
        n = len(model.outputs)
        weights = [1.0] + [AUX_LOSS_WEIGHT] * (n - 1)
        loss, targets = [ce] * n, [labels] * n if n > 1 else labels
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=opt.lr, momentum=opt.momentum,
                                                 weight_decay=opt.weight_decay),
                  loss=loss, loss_weights=weights, jit_compile=config == "xla")
    inputs = layout.nchw_to_framework(x)  # [N, C, H, W] -> [N, H, W, C]

    def step() -> float:
        with _device(device):
            out = model.train_on_batch(inputs, targets)
        return float(np.ravel(out)[0])
    return step
