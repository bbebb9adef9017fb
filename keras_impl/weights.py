"""Canonical weights <-> a Keras model from ``build_model``.

Canonical tensor ``<layer>.<suffix>`` lives in the Keras layer named ``<layer>``:

=============  ============  ===============================================
spec op        suffix        Keras variable (layout conversion in layout.py)
=============  ============  ===============================================
conv2d         weight, bias  ``kernel`` [kH, kW, I/g, O], ``bias``
linear         weight, bias  ``kernel`` [in, out] (rows permuted after a flatten), ``bias``
batch_norm     weight, bias  ``gamma``, ``beta``
batch_norm     running_*     ``moving_mean``, ``moving_variance``
=============  ============  ===============================================
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, Mapping

import keras
import numpy as np

from rosetta_cnn.core.canonical import check_tensors, expected_tensors, load_canonical, save_canonical
from rosetta_cnn.core.errors import WeightError
from rosetta_cnn.core.files import atomic_named_path, check_names_shapes
from rosetta_cnn.core.layout import channel_last_shape, flatten_inputs
from rosetta_cnn.core.spec import Layer, ModelSpec
from rosetta_cnn.formats.keras_applications import read_keras_h5

from . import layout

FRAMEWORK = "keras"

#: canonical tensor suffix -> Keras variable attribute, per op
VARIABLES: dict[str, dict[str, str]] = {
    "conv2d": {"weight": "kernel", "bias": "bias"},
    "linear": {"weight": "kernel", "bias": "bias"},
    "batch_norm": {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                   "running_var": "moving_variance"},
}


def variables(model: keras.Model, spec: ModelSpec) -> Iterator[tuple[str, Layer, str, keras.Variable]]:
    """(canonical name, spec layer, suffix, Keras variable) for every canonical tensor."""
    for name in expected_tensors(spec):
        layer_name, suffix = name.rsplit(".", 1)
        layer = spec.layer(layer_name)
        try:
            variable = getattr(model.get_layer(layer_name), VARIABLES[layer.op][suffix])
        except ValueError:
            raise WeightError(f"the Keras model {model.name!r} has no layer {layer_name!r}: "
                              f"it was not built from spec {spec.name!r}") from None
        yield name, layer, suffix, variable


def iter_weights(model: keras.Model, spec: ModelSpec) -> Iterator[tuple[str, np.ndarray]]:
    """The model's parameters and BatchNorm statistics as canonical float32 arrays, one at a
    time in ``expected_tensors`` order."""
    flat = flatten_inputs(spec)
    for name, layer, suffix, variable in variables(model, spec):
        yield name, layout.tensor_from_framework(layer, suffix, keras.ops.convert_to_numpy(variable),
                                                 flat.get(layer.name))


def export_weights(model: keras.Model, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The model's parameters and BatchNorm statistics as canonical float32 arrays."""
    return dict(iter_weights(model, spec))


def import_weights(model: keras.Model, spec: ModelSpec, tensors: Mapping[str, np.ndarray]) -> None:
    """Load canonical ``tensors`` into ``model``. Every name and shape is checked first (the
    canonical shapes, and the Keras shape each tensor converts to against the model's
    variable), so bad input leaves the model unchanged; then each tensor is converted and
    assigned in turn, so the import holds one converted tensor at a time (converting all of
    them before assigning any held 3.7x a VGG's weights on top of the model)."""
    check_tensors(spec, tensors)
    flat = flatten_inputs(spec)
    targets = list(variables(model, spec))
    for name, layer, suffix, variable in targets:
        shape = channel_last_shape(layer, suffix, np.shape(tensors[name]))
        if shape != tuple(variable.shape):
            raise WeightError(f"tensor {name!r} becomes shape {shape} in Keras but the model's variable "
                              f"{variable.path!r} has shape {tuple(variable.shape)}: the model was built "
                              "from another spec")
    for name, layer, suffix, variable in targets:
        value = layout.tensor_to_framework(layer, suffix, tensors[name], flat.get(layer.name))
        if value.shape != tuple(variable.shape):  # a conversion that changed its rule
            raise WeightError(f"tensor {name!r} converted to shape {value.shape} in Keras, not the shape "
                              f"{tuple(variable.shape)} of {variable.path!r}")
        variable.assign(value)
        del value


def save_weights(model: keras.Model, spec: ModelSpec, path: str | os.PathLike) -> None:
    """Write the model's weights as a canonical safetensors file."""
    save_canonical(path, spec, export_weights(model, spec), framework=FRAMEWORK)


def load_weights(model: keras.Model, spec: ModelSpec, path: str | os.PathLike) -> None:
    """Read a canonical safetensors file (checked against ``spec``) into the model."""
    _, tensors = load_canonical(path, spec)
    import_weights(model, spec, tensors)


#: file name endings of Keras' own formats: a whole model, or its weights only
NATIVE_SUFFIXES = (".keras", ".weights.h5")


def _native_suffix(path: str | os.PathLike) -> str:
    for suffix in NATIVE_SUFFIXES:
        if str(path).endswith(suffix):
            return suffix
    raise WeightError(f"{path}: Keras' own formats end in {' or '.join(NATIVE_SUFFIXES)}")


@contextlib.contextmanager
def _without_tensorflow_probe() -> Iterator[None]:
    """Keras' serializer asks ``module_utils.tensorflow.available`` (which imports TensorFlow
    when it is installed: seconds and hundreds of MB) for every object of a ``.keras`` file, to
    recognise ``tf.TensorShape`` and ``tf.DType`` values. While TensorFlow is not loaded no
    object can be one, so on the JAX and PyTorch backends the probe answers False for the
    duration of the save, without the import; elsewhere (or in a Keras without that probe)
    nothing changes."""
    from keras.src.utils import module_utils

    probe = getattr(module_utils, "tensorflow", None)
    if "tensorflow" in sys.modules or getattr(probe, "_available", True) is not None:
        yield
        return
    probe._available = False
    try:
        yield
    finally:
        if "tensorflow" not in sys.modules:
            probe._available = None


def save_native(model: keras.Model, spec: ModelSpec, path: str | os.PathLike) -> None:
    """Write Keras' own format, atomically: ``model.save`` for ``.keras`` (architecture and
    weights), ``model.save_weights`` for ``.weights.h5``. Either loads under every Keras
    backend, whichever wrote it (``parity_tests/ports/test_keras_backends.py``)."""
    suffix = _native_suffix(path)
    list(variables(model, spec))  # the model fits the spec
    with atomic_named_path(path) as tmp, _without_tensorflow_probe():
        (model.save if suffix == ".keras" else model.save_weights)(tmp)


def load_native(model: keras.Model, spec: ModelSpec, path: str | os.PathLike) -> None:
    """Read a :func:`save_native` file with ``model.load_weights``. The file's layer names and
    variable shapes are checked first (Keras itself only warns about layers it skips); on any
    failure every variable is restored, so a failed load leaves the model unchanged."""
    _native_suffix(path)
    list(variables(model, spec))
    expected = {f"{layer.name}.{i}": tuple(v.shape) for layer in model.layers for i, v in enumerate(layer.weights)}
    # a .keras zip may hold the weights, optimizer slots and some metadata: 4x the weights + 64 MiB bounds it
    max_bytes = 4 * sum(int(np.prod(v.shape)) * 4 for v in model.weights) + (64 << 20)
    got = {f"{name}.{i}": v.shape for name, values in read_keras_h5(path, max_bytes=max_bytes).items()
           for i, v in enumerate(values)}
    check_names_shapes(expected, got, source=str(path), target=f"the Keras model of {spec.name!r}")
    snapshot = [(v, keras.ops.convert_to_numpy(v)) for v in model.weights]
    try:
        model.load_weights(path)
    except Exception as e:  # Keras raises ValueError, OSError, zipfile and h5py errors alike
        for v, value in snapshot:
            v.assign(value)
        raise WeightError(f"{path}: Keras could not load it into {spec.name!r}: {type(e).__name__}: "
                          f"{str(e).strip()[:300]}") from None
