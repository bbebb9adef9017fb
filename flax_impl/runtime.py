"""Run a Flax NNX :class:`~flax_impl.model.SpecModel` on canonical (NCHW numpy) input.

The outputs path is compiled with ``jax.jit`` over the split model (cached per model, mode and
input shape); the ``activations=True`` path runs eagerly, layer by layer.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable

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


#: per model, one compiled outputs function per mode (and input shape inside it), so that a
#: model built later, e.g. with a monkeypatched layer helper, is traced afresh
_COMPILED: weakref.WeakKeyDictionary[SpecModel, dict[bool, Callable[..., Any]]] = weakref.WeakKeyDictionary()


def _compiled_outputs(model: SpecModel, graphdef: nnx.GraphDef) -> Callable[..., Any]:
    """``jax.jit`` of the model in its current mode as a function of its parameters and the
    rest of its state (BatchNorm statistics, dropout RNG counters), returning the outputs and
    that rest, never the parameters (``graphdef``, the mode's static structure, is closed
    over). ``nnx.jit`` over the module returns the whole state, so XLA copied every parameter
    into new buffers on each call: VGG16 inference at batch 8 ran at 4.9 instead of 5.9
    images/s (``rosetta bench``'s ``nnx_jit`` and ``jax_jit``)."""
    by_mode = _COMPILED.setdefault(model, {})
    if model.deterministic not in by_mode:
        def run(params: nnx.State, rest: nnx.State, x: jax.Array) -> tuple[dict[str, jax.Array], nnx.State]:
            m = nnx.merge(graphdef, params, rest)
            return m.outputs(x), nnx.state(m, nnx.Not(nnx.Param))
        by_mode[model.deterministic] = jax.jit(run)
    return by_mode[model.deterministic]


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
            graphdef, params, rest = nnx.split(model, nnx.Param, ...)
            outs, rest = _compiled_outputs(model, graphdef)(params, rest, inputs)
            nnx.update(model, rest)  # training mode moved the BatchNorm statistics and RNG counters
            by_layer = {name: outs[key] for key, name in keys.items()}
    finally:
        model.train() if was_training else model.eval()
    flat = model.flattened_maps()
    canonical = {name: layout.framework_to_nchw(np.asarray(v), flat.get(name)) for name, v in by_layer.items()}
    result = {key: canonical[name] for key, name in keys.items()}
    return result | canonical if activations else result
