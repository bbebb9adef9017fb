"""The Keras 3 side of ``rosetta bench`` (run inside ``rosetta_cnn.tools.bench.worker``), on the
Keras backend of the worker process (``KERAS_BACKEND``: TensorFlow, JAX or PyTorch).

Implementations measured: ``spec`` (this package's ``build_model``; inference in the default
configuration through ``runtime.compiled``, the function ``forward`` runs, and training in
every configuration through ``keras_impl.train``), ``plain`` (VGG / GoogLeNet written by hand
below with the functional API, from the tables in ``shared/tools/bench/baselines.py``) and
``keras.applications`` (``VGG16`` / ``VGG19`` with ``weights=None``, for those two specs).

Configurations per backend (``CONFIGS``; the other implementations compile with
``model.compile(jit_compile=...)`` and step with ``predict_on_batch`` / ``train_on_batch``):

* TensorFlow: ``graph`` (a ``tf.function`` running TensorFlow's oneDNN kernels; Keras'
  ``jit_compile="auto"`` on a CPU-only machine) and ``xla`` (``jit_compile=True``);
* JAX: ``jit`` (Keras always jit-compiles its JAX steps; eager JAX dispatches op by op), with
  the project's fast XLA CPU configuration (YNNPACK fusions off, ``core/xla.py``, set by
  ``import rosetta_cnn.keras_impl`` on JAX, as for Flax), also in a ``ynn`` worker
  (``ENV_VARIANTS``: ``ROSETTA_XLA_FAST=0``, XLA's own default, what a plain Keras-on-JAX user gets);
* PyTorch: ``eager`` (Keras' default on this backend) and ``compile`` (``jit_compile=True``,
  which is ``torch.compile``).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable

import keras
import numpy as np
from keras import layers

from rosetta_cnn.core.spec import ModelSpec
from rosetta_cnn.tools.bench import baselines
from rosetta_cnn.training.trainer import AUX_LOSS_WEIGHT, OptimizerConfig

from . import layout
from .model import build_model
from .runtime import compiled, gpu_available
from .train import COMPILATIONS, make_trainer

BACKEND = keras.backend.backend()
#: extra environment per worker process variant (XLA reads its flags once per process): on JAX,
#: ``ynn`` is XLA's own CPU default (YNNPACK fusions on; see flax_impl/bench.py and
#: docs/benchmarks.md), the baseline of the fast configuration every Keras-on-JAX process gets
ENV_VARIANTS: dict[str, dict[str, str]] = {"": {}, **({"ynn": {"ROSETTA_XLA_FAST": "0"}} if BACKEND == "jax" else {})}
#: backend -> configurations, in order; the trainer's ``COMPILATIONS`` name the same steps
CONFIGS: dict[str, tuple[str, ...]] = {"tensorflow": ("graph", "xla"), "jax": ("jit",), "torch": ("eager", "compile")}
#: backend -> the configuration ``runtime.forward`` runs (inference)
FORWARD_CONFIG = {"tensorflow": "graph", "jax": "jit", "torch": "eager"}

APPLICATIONS = {"vgg16": "VGG16", "vgg19": "VGG19"}


def setup(threads: int, device: str) -> dict[str, str]:
    """Pin the backend's thread pools (JAX sizes its pool from the CPUs the parent pinned);
    return the versions that matter."""
    versions = {"keras": keras.__version__, "backend": BACKEND, "threads": str(threads)}
    if BACKEND == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        versions["tensorflow"] = tf.__version__
        if device == "gpu":
            versions["gpu"] = tf.config.experimental.get_device_details(
                tf.config.list_physical_devices("GPU")[0]).get("device_name", "GPU")
    elif BACKEND == "jax":
        import jax
        import jaxlib

        from rosetta_cnn.core import xla

        versions.update(jax=jax.__version__, jaxlib=jaxlib.__version__, fast_xla=str(xla.active()),
                        xla_flags=os.environ.get("XLA_FLAGS", ""))
        if device == "gpu":
            versions["gpu"] = jax.devices("gpu")[0].device_kind
    else:
        import torch

        torch.set_num_threads(threads)
        versions["torch"] = torch.__version__
        if device == "gpu":
            versions["gpu"] = torch.cuda.get_device_name(0)
    return versions


def _device(device: str) -> contextlib.AbstractContextManager:
    return keras.device(device)


def sgemm(n: int, device: str) -> Callable[[], None]:
    """One float32 n x n matrix product per call (the machine's roof), with the backend's matmul."""
    with _device(device):
        a = keras.random.normal((n, n), seed=0)
        b = keras.random.normal((n, n), seed=1)

    def run() -> None:
        with _device(device):
            keras.ops.convert_to_numpy(keras.ops.matmul(a, b)[0, 0])  # one element back: waits for the product
    return run


def reset_device_memory(device: str) -> None:
    if device != "gpu":
        return
    if BACKEND == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")
    elif BACKEND == "torch":
        import torch

        torch.cuda.reset_peak_memory_stats()
    # JAX keeps no resettable peak: the figure is the process's peak so far


def device_memory_mb(device: str) -> float | None:
    """Peak GPU memory the backend allocated since the last reset (None on the CPU)."""
    if device != "gpu":
        return None
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20
    if BACKEND == "jax":
        import jax

        return jax.devices("gpu")[0].memory_stats()["peak_bytes_in_use"] / 2 ** 20
    import torch

    return torch.cuda.max_memory_allocated() / 2 ** 20


def implementations(spec: ModelSpec) -> list[str]:
    impls = ["spec"]
    if baselines.plain_arch(spec):
        impls.append("plain")
    if spec.name in APPLICATIONS and baselines.is_stock(spec):
        impls.append("keras.applications")
    return impls


def configs(impl: str, mode: str, variant: str) -> list[str]:
    return list(CONFIGS[BACKEND])


def default_config(impl: str, mode: str) -> str:
    """What a user gets without asking: ``forward``'s compilation for inference, the
    trainer's default step (``train.COMPILATIONS``) for training. On TensorFlow, Keras' own
    ``jit_compile="auto"`` (XLA only with a GPU) for the other implementations."""
    if impl == "spec":
        return FORWARD_CONFIG[BACKEND] if mode == "infer" else COMPILATIONS[BACKEND][0]
    if BACKEND == "tensorflow":
        return "xla" if gpu_available() else "graph"
    return CONFIGS[BACKEND][0]


def _jit_compile(config: str) -> bool:
    return config in ("xla", "jit", "compile")


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
    """One forward per call: the spec model in ``forward``'s configuration through the function
    ``runtime.forward`` compiles (its logits-only sub-graph: no aux heads in eval mode),
    everything else with ``predict_on_batch`` after ``compile(jit_compile=...)``."""
    inputs = layout.nchw_to_framework(x)  # [N, C, H, W] -> [N, H, W, C]
    if impl == "spec" and config == FORWARD_CONFIG[BACKEND]:
        run = compiled(model, (model.spec.outputs["logits"],), False)

        def forward() -> None:
            with _device(device):
                keras.ops.convert_to_numpy(run(inputs)[model.spec.outputs["logits"]])
        return forward
    if impl == "spec":
        model = keras.Model(model.input, model.get_layer(model.spec.outputs["logits"]).output)
    elif isinstance(model.output, list):
        model = keras.Model(model.input, model.output[0])
    model.compile(jit_compile=_jit_compile(config))

    def run_predict() -> None:
        with _device(device):
            model.predict_on_batch(inputs)
    return run_predict


def training(model: keras.Model, impl: str, config: str, spec: ModelSpec, x: np.ndarray, y: np.ndarray,
             device: str) -> Callable[[], float]:
    """One SGD-momentum step per call: the project's trainer (``make_trainer``, its step compiled
    as ``config``) for ``spec``, else Keras' ``compile`` + ``train_on_batch`` (aux losses
    weighted 0.3)."""
    opt = OptimizerConfig()
    if impl == "spec":
        trainer = make_trainer(model, spec, opt, compilation=config)

        def spec_step() -> float:
            with _device(device):
                return trainer.step(x, y)
        return spec_step
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    labels = np.asarray(y, dtype=np.int64)
    n = len(model.outputs)
    weights = [1.0] + [AUX_LOSS_WEIGHT] * (n - 1)
    loss, targets = [ce] * n, [labels] * n if n > 1 else labels
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=opt.lr, momentum=opt.momentum,
                                                 weight_decay=opt.weight_decay),
                  loss=loss, loss_weights=weights, jit_compile=_jit_compile(config))
    inputs = layout.nchw_to_framework(x)  # [N, C, H, W] -> [N, H, W, C]

    def step() -> float:
        with _device(device):
            out = model.train_on_batch(inputs, targets)
        return float(np.ravel(out)[0])
    return step
