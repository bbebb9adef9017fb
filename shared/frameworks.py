"""The three framework ports, loaded lazily so that ``import shared`` imports no framework.

Each package (``torch_impl``, ``keras_impl``, ``flax_impl``) has the same files and the same
public functions, so a reader can open the same file in each and compare:

``layers.py``
    framework layers for the ops the spec uses that the framework lacks (or that need care),
    and ``OPS``: the one dispatch table from spec op name to a layer factory.
``model.py``
    ``build_model(spec, *, seed=0)``: the idiomatic model for a resolved spec.
``layout.py``
    every conversion between the canonical layout (``shared/weights.py``) and the
    framework's own, each transpose with a layout comment.
``weights.py``
    ``export_weights(model, spec) -> dict[str, np.ndarray]`` (canonical) and
    ``import_weights(model, spec, tensors)``: checks every name and shape first, converts
    everything, then assigns, so a failed import leaves the model unchanged.
``runtime.py``
    ``forward(model, x, *, train=False, activations=False, device="cpu") -> dict``: run on
    a NCHW float32 numpy batch and return numpy arrays in the canonical layout (NCHW maps):
    the spec's outputs (``logits``; in training mode also the aux outputs) and, with
    ``activations=True``, every spec layer's output by layer name. ``gpu_available()`` and
    ``strict_precision()`` (TF32 / reduced-precision matmuls off) for GPU runs.
"""
from __future__ import annotations

import importlib
from types import ModuleType

FRAMEWORKS: dict[str, str] = {"torch": "torch_impl", "keras": "keras_impl", "flax": "flax_impl"}
LAYOUT: dict[str, str] = {"torch": "nchw", "keras": "nhwc", "flax": "nhwc"}


def load(framework: str) -> ModuleType:
    """Import a framework package by its short name (torch, keras, flax)."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; choose from {', '.join(FRAMEWORKS)}")
    try:
        return importlib.import_module(FRAMEWORKS[framework])
    except ImportError as e:
        extra = {"torch": "torch", "keras": "keras", "flax": "flax"}[framework]
        raise ImportError(f"framework {framework!r} is not installed ({e}); "
                          f"install it with: pip install 'rosetta-cnn[{extra}]'") from e


def available() -> list[str]:
    """Frameworks whose package imports on this machine."""
    out = []
    for name in FRAMEWORKS:
        try:
            load(name)
        except ImportError:
            continue
        out.append(name)
    return out
