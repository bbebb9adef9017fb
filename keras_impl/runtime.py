"""Run a Keras model built by ``build_model`` on a numpy batch: the contract's ``forward``.

``forward`` never runs the model eagerly: each backend compiles the sub-graph it needs
(``COMPILERS``: a ``tf.function`` on TensorFlow, ``jax.jit`` of ``stateless_call`` on JAX,
PyTorch's kernels under ``torch.no_grad``), once per model, set of outputs and mode. Eager
JAX dispatches every op on its own and ran GoogLeNet parity about 9x slower than PyTorch.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable

import keras
import numpy as np

from rosetta_cnn.core.layout import flattened_maps

from . import layout

#: model -> {output layer names -> functional sub-graph over the model's own layers}
_GRAPHS: weakref.WeakKeyDictionary[keras.Model, dict[tuple[str, ...], keras.Model]] = weakref.WeakKeyDictionary()
#: model -> {(output layer names, training mode) -> compiled forward (``compiled``)}
_COMPILED: weakref.WeakKeyDictionary[keras.Model, dict[tuple[tuple[str, ...], bool], Callable[[np.ndarray], Any]]] = \
    weakref.WeakKeyDictionary()


def gpu_available() -> bool:
    """Whether the Keras backend (TensorFlow, JAX or PyTorch) sees a GPU."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    raise RuntimeError(f"gpu_available does not know the Keras backend {backend!r}")


def strict_precision() -> None:
    """Full fp32 matmuls and convolutions on the GPU (no TF32), for parity comparisons."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)
    elif backend == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
    elif backend == "torch":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    else:
        raise RuntimeError(f"strict_precision does not know the Keras backend {backend!r}")


def _device(device: str) -> contextlib.AbstractContextManager:
    if device == "cpu":
        return keras.device("cpu")
    if device == "gpu":
        if not gpu_available():
            raise RuntimeError(f"device='gpu' was requested but the Keras backend ({keras.backend.backend()}) "
                               "sees no GPU")
        strict_precision()
        return keras.device("gpu")
    raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")


def _graph(model: keras.Model, names: tuple[str, ...]) -> keras.Model:
    """A functional model over ``model``'s own layers (shared weights) whose dict outputs are
    the outputs of the layers ``names``; built once per model and set of names."""
    graphs = _GRAPHS.setdefault(model, {})
    if names not in graphs:
        graphs[names] = keras.Model(model.input, {n: model.get_layer(n).output for n in names})
    return graphs[names]


def _compile_tensorflow(graph: keras.Model, train: bool) -> Callable[[np.ndarray], dict[str, Any]]:
    """A ``tf.function`` (TensorFlow's graph executor with its oneDNN kernels, Keras'
    ``jit_compile="auto"`` on a CPU); it traces once per input shape. BatchNorm's
    ``assign`` of the moving statistics runs inside the graph."""
    import tensorflow as tf

    return tf.function(lambda x: graph(x, training=train))


def _compile_jax(graph: keras.Model, train: bool) -> Callable[[np.ndarray], dict[str, Any]]:
    """``jax.jit`` of ``graph.stateless_call`` (compiled once per input shape). The variables'
    values are arguments, not constants; in training mode the new values of the
    non-trainable variables (BatchNorm's moving statistics, dropout's seed state), which
    ``stateless_call`` returns instead of assigning, are assigned after the call."""
    import jax

    trainable, non_trainable = graph.trainable_variables, graph.non_trainable_variables
    if not train:  # outputs only: returning the unchanged state would copy it
        run = jax.jit(lambda tv, ntv, x: graph.stateless_call(tv, ntv, x, training=False)[0])
        return lambda x: run([v.value for v in trainable], [v.value for v in non_trainable], x)
    run = jax.jit(lambda tv, ntv, x: graph.stateless_call(tv, ntv, x, training=True))

    def call(x: np.ndarray) -> dict[str, Any]:
        outputs, updated = run([v.value for v in trainable], [v.value for v in non_trainable], x)
        for variable, value in zip(non_trainable, updated):
            variable.assign(value)
        return outputs
    return call


def _compile_torch(graph: keras.Model, train: bool) -> Callable[[np.ndarray], dict[str, Any]]:
    """PyTorch's eager kernels without autograd (``torch.no_grad``): Keras on PyTorch runs
    eagerly by default, and its eager forward is as fast as native PyTorch NHWC
    (docs/keras-backends.md); ``torch.compile`` is a benchmark configuration (``bench.py``)."""
    import torch

    def call(x: np.ndarray) -> dict[str, Any]:
        with torch.no_grad():
            return graph(x, training=train)
    return call


#: Keras backend -> how ``forward`` compiles a sub-graph for one mode
COMPILERS: dict[str, Callable[[keras.Model, bool], Callable[[np.ndarray], dict[str, Any]]]] = {
    "tensorflow": _compile_tensorflow,
    "jax": _compile_jax,
    "torch": _compile_torch,
}


def compiled(model: keras.Model, names: tuple[str, ...], train: bool) -> Callable[[np.ndarray], dict[str, Any]]:
    """The compiled forward of ``model``'s sub-graph with outputs ``names`` in one mode, made
    once per model, set of names and mode on the process's Keras backend (each backend's
    compiler caches one executable per input shape)."""
    functions = _COMPILED.setdefault(model, {})
    key = (names, train)
    if key not in functions:
        backend = keras.backend.backend()
        if backend not in COMPILERS:
            raise RuntimeError(f"forward does not know the Keras backend {backend!r}; "
                               f"it runs on {', '.join(COMPILERS)}")
        functions[key] = COMPILERS[backend](_graph(model, names), train)
    return functions[key]


def forward(model: keras.Model, x: np.ndarray, *, train: bool = False, activations: bool = False,
            device: str = "cpu") -> dict[str, np.ndarray]:
    """Run ``model`` on a NCHW float32 batch; return canonical (NCHW / (N, F)) float32 arrays.

    Keys: ``logits``; the auxiliary outputs too when ``train`` and the spec has them; with
    ``activations`` also every computed layer's output by spec layer name. ``train=True``
    calls the layers with ``training=True`` (batch-statistics BatchNorm, which also updates
    the moving statistics, and active dropout). In eval mode the auxiliary heads are not
    computed (a sub-graph without them runs), as in torchvision.
    """
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError(f"model {model.name!r} has no .spec: build it with build_model(spec) (or set model.spec)")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1:] != spec.input_shape:
        raise ValueError(f"expected a NCHW batch of shape (N, {', '.join(map(str, spec.input_shape))}), "
                         f"got {x.shape}")
    outputs = {key: name for key, name in spec.outputs.items() if train or key == "logits"}
    if activations:
        names = tuple(layer.name for layer in spec.layers if train or not layer.training_only)
    else:
        names = tuple(outputs.values())
    with _device(device):
        values = compiled(model, names, train)(layout.nchw_to_framework(x))
    flats = flattened_maps(spec)
    arrays = {}
    for name, value in values.items():
        a = keras.ops.convert_to_numpy(value)
        a = layout.framework_to_nchw(a, flats.get(name))
        arrays[name] = np.asarray(a, dtype=np.float32)
    result = {key: arrays[name] for key, name in outputs.items()}
    if activations:
        result.update(arrays)
    return result
