"""Canonical weights <-> a Flax NNX :class:`~flax_impl.model.SpecModel`.

Each canonical tensor ``<layer>.<suffix>`` is one NNX variable of the submodule stored under
the layer's name: conv2d / linear ``weight`` -> ``kernel`` and ``bias`` -> ``bias``;
batch_norm ``weight`` -> ``scale``, ``bias`` -> ``bias``, ``running_mean`` -> ``mean``,
``running_var`` -> ``var``. Layout conversions are in :mod:`rosetta_cnn.flax_impl.layout`.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Mapping

import jax
import numpy as np
from flax import nnx

from rosetta_cnn.core.canonical import check_tensors, expected_tensors, load_canonical, save_canonical
from rosetta_cnn.core.errors import WeightError
from rosetta_cnn.core.files import atomic_named_path, check_names_shapes
from rosetta_cnn.core.layout import channel_last_shape, flatten_inputs
from rosetta_cnn.core.spec import Layer, ModelSpec

from . import layout
from .model import SpecModel

FRAMEWORK = "flax"

#: canonical tensor suffix -> NNX variable attribute, per op
VARIABLES: dict[str, dict[str, str]] = {
    "conv2d": {"weight": "kernel", "bias": "bias"},
    "linear": {"weight": "kernel", "bias": "bias"},
    "batch_norm": {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"},
}


def variables(model: SpecModel, spec: ModelSpec) -> Iterator[tuple[str, Layer, str, nnx.Variable]]:
    """(canonical name, layer, suffix, variable) for every canonical tensor of ``spec``."""
    for name in expected_tensors(spec):
        layer_name, suffix = name.rsplit(".", 1)
        layer = spec.layer(layer_name)
        var = getattr(getattr(model, layer_name, None), VARIABLES[layer.op][suffix], None)
        if not isinstance(var, nnx.Variable):
            raise WeightError(f"the model has no variable for tensor {name!r}: was it built from another spec?")
        yield name, layer, suffix, var


def iter_weights(model: SpecModel, spec: ModelSpec) -> Iterator[tuple[str, np.ndarray]]:
    """The model's parameters and BatchNorm statistics as canonical float32 arrays, one at a
    time in ``expected_tensors`` order."""
    flat = flatten_inputs(spec)
    for name, layer, suffix, var in variables(model, spec):
        yield name, layout.tensor_from_framework(layer, suffix, var[...], flat.get(layer.name))


def export_weights(model: SpecModel, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The model's parameters and BatchNorm statistics as canonical float32 arrays."""
    return dict(iter_weights(model, spec))


def import_weights(model: SpecModel, spec: ModelSpec, tensors: Mapping[str, np.ndarray]) -> None:
    """Load canonical tensors into the model; on any error the model is left unchanged.

    Checks every name and shape first (``core.canonical.check_tensors``, and the shape each
    tensor converts to against the model's variable), then converts and assigns one tensor at
    a time, so the import holds one converted tensor beside the model, not a second model.
    """
    check_tensors(spec, tensors)
    flat = flatten_inputs(spec)
    targets = list(variables(model, spec))
    for name, layer, suffix, var in targets:
        shape, have = channel_last_shape(layer, suffix, np.shape(tensors[name])), tuple(var[...].shape)
        if shape != have:
            raise WeightError(f"tensor {name!r} converts to shape {shape} but the model's variable has "
                              f"shape {have}: was the model built from another spec?")
    for name, layer, suffix, var in targets:
        value = layout.tensor_to_framework(layer, suffix, tensors[name], flat.get(layer.name))
        current = var[...]
        if value.shape != current.shape:  # a conversion that changed its rule
            raise WeightError(f"tensor {name!r} converted to shape {value.shape}, not the shape "
                              f"{current.shape} of the model's variable")
        var[...] = jax.device_put(value, current.sharding)
        del current
        del value


def save_weights(model: SpecModel, spec: ModelSpec, path: str | os.PathLike) -> None:
    """Write the model's weights as a canonical safetensors file."""
    save_canonical(path, spec, export_weights(model, spec), framework=FRAMEWORK)


def load_weights(model: SpecModel, spec: ModelSpec, path: str | os.PathLike) -> None:
    """Read a canonical safetensors file (checked against ``spec``) into the model."""
    _, tensors = load_canonical(path, spec)
    import_weights(model, spec, tensors)


#: the NNX variable types Flax's own format stores (any of them)
_NATIVE = (nnx.Param, nnx.BatchStat)


def _native_state(model: SpecModel) -> dict[str, Any]:
    """The model's parameters and BatchNorm statistics (not its dropout RNG state) as a flat
    ``"layer.variable"`` -> array mapping."""
    pure = nnx.to_pure_dict(nnx.state(model, _NATIVE))
    return {".".join(str(k.key) for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(pure)[0]}


def save_native(model: SpecModel, spec: ModelSpec, path: str | os.PathLike) -> None:
    """Write Flax's own serialisation of the NNX state (``flax.serialization`` msgpack of the
    ``nnx.Param`` and ``nnx.BatchStat`` variables), atomically."""
    from flax import serialization

    list(variables(model, spec))
    blob = serialization.msgpack_serialize({k: np.asarray(v) for k, v in _native_state(model).items()})
    with atomic_named_path(path) as tmp:
        tmp.write_bytes(blob)


def load_native(model: SpecModel, spec: ModelSpec, path: str | os.PathLike) -> None:
    """Read a :func:`save_native` file; every name and shape is checked first, so a failed
    load leaves the model unchanged. msgpack holds plain arrays: nothing is unpickled."""
    from flax import serialization

    from rosetta_cnn.core.files import existing_file

    list(variables(model, spec))
    own = _native_state(model)
    size = existing_file(path).stat().st_size  # a directory, a pipe or a device is never read
    expected = sum(int(np.prod(v.shape)) * 8 for v in own.values()) + (1 << 20)  # float64 at most, plus keys
    if size > expected:
        raise WeightError(f"{path}: {size:,} bytes, more than a msgpack state of {spec.name!r} can take "
                          f"({expected:,} bytes at most)")
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise WeightError(f"{path}: cannot read: {e.strerror}") from None
    if not blob:
        raise WeightError(f"{path}: empty file")
    try:
        restored = serialization.msgpack_restore(blob)
    except Exception as e:  # msgpack raises its own ExtraData / unpack errors
        raise WeightError(f"{path}: not a Flax msgpack state file (truncated or corrupted?): {type(e).__name__}") from None
    if not isinstance(restored, dict) or not all(isinstance(v, np.ndarray) for v in restored.values()):
        raise WeightError(f"{path}: not a flat mapping of names to arrays")
    bad = next((k for k, v in restored.items() if v.dtype.kind != "f"), None)
    if bad is not None:
        raise WeightError(f"{path}: array {bad!r} has dtype {restored[bad].dtype}, expected a floating type")
    check_names_shapes({k: tuple(v.shape) for k, v in own.items()}, {k: v.shape for k, v in restored.items()},
                       source=str(path), target=f"the Flax model of {spec.name!r}")
    state = nnx.state(model, _NATIVE)
    nested: dict[str, Any] = {}
    for key, value in restored.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = jax.device_put(value.astype(own[key].dtype), own[key].sharding)
    nnx.replace_by_pure_dict(state, nested)
    nnx.update(model, state)
