"""Run a Flax NNX :class:`~flax_impl.model.SpecModel` on canonical (NCHW numpy) input.

The outputs path is compiled with ``nnx.jit`` (cached per model, mode and input shape); the
``activations=True`` path runs eagerly, layer by layer.
"""
from __future__ import annotations

import weakref
from typing import Callable

import jax
import numpy as np
from flax import nnx

from . import layout
from .model import SpecModel


def gpu_available() -> bool:
    """Whether JAX sees a GPU (a CUDA or ROCm jaxlib plugin and a device)."""
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def strict_precision() -> None:
    """Full fp32 matmuls and convolutions (no TF32 / bf16 passes) for computations traced from now on."""
    jax.config.update("jax_default_matmul_precision", "highest")


def _device(device: str) -> jax.Device:
    if device == "cpu":
        return jax.devices("cpu")[0]
    if device == "gpu":
        if not gpu_available():
            raise RuntimeError("device='gpu' was requested but JAX sees no GPU "
                               "(install a CUDA jaxlib, e.g. pip install 'jax[cuda12]', or use device='cpu')")
        strict_precision()
        return jax.devices("gpu")[0]
    raise ValueError(f"unknown device {device!r}; choose 'cpu' or 'gpu'")


#: one compiled outputs function per model (per mode and input shape inside it), so that a
#: model built later, e.g. with a monkeypatched layer helper, is traced afresh
_COMPILED: weakref.WeakKeyDictionary[SpecModel, Callable[[SpecModel, jax.Array], dict[str, jax.Array]]] = \
    weakref.WeakKeyDictionary()


def _compiled_outputs(model: SpecModel) -> Callable[[SpecModel, jax.Array], dict[str, jax.Array]]:
    if model not in _COMPILED:
        _COMPILED[model] = nnx.jit(lambda m, x: m.outputs(x))
    return _COMPILED[model]


def forward(model: SpecModel, x: np.ndarray, *, train: bool = False, activations: bool = False,
            device: str = "cpu") -> dict[str, np.ndarray]:
    """Run ``x`` (NCHW float32) and return canonical numpy outputs.

    Keys: ``logits``; with ``train=True`` also the spec's auxiliary outputs; with
    ``activations=True`` also every layer that ran, by layer name (NCHW maps). ``train=True``
    runs the model in training mode (batch-statistics BatchNorm, which updates the running
    statistics; active dropout) and then restores the model's previous mode. The model's
    variables are moved to ``device`` ("cpu" or "gpu").
    """
    dev = _device(device)
    nnx.update(model, jax.device_put(nnx.state(model), dev))
    inputs = jax.device_put(layout.nchw_to_framework(np.asarray(x, dtype=np.float32)), dev)
    was_training = not model.deterministic
    model.train() if train else model.eval()
    try:
        keys = model.output_layers()
        if activations:
            by_layer = model.activations(inputs)
        else:
            outs = _compiled_outputs(model)(model, inputs)
            by_layer = {name: outs[key] for key, name in keys.items()}
    finally:
        model.train() if was_training else model.eval()
    flat = model.flattened_maps()
    canonical = {name: layout.framework_to_nchw(np.asarray(v), flat.get(name)) for name, v in by_layer.items()}
    result = {key: canonical[name] for key, name in keys.items()}
    return result | canonical if activations else result
