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

Besides the three ports, ``TARGETS`` lists runtimes that only run a model one port exported
(ONNX Runtime, fed by the PyTorch port's ONNX export): parity targets, never sources
(``available_targets()``, ``target_forward()``).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
from types import ModuleType
from typing import Any, Callable, Mapping

FRAMEWORKS: dict[str, str] = {"torch": "torch_impl", "keras": "keras_impl", "flax": "flax_impl"}
LAYOUT: dict[str, str] = {"torch": "nchw", "keras": "nhwc", "flax": "nhwc"}

#: Runtimes that run a model exported from one port: parity targets, never sources.
#: name -> (exporting framework, "module:function" exporter(model, spec, path),
#: "module:function" runner(path, x_nchw) -> {"logits": ...}, the packages both need).
TARGETS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "onnx": ("torch", "torch_impl.onnx:export_onnx", "shared.onnx_runtime:forward", ("onnxscript", "onnxruntime")),
}


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


def _function(ref: str) -> Callable[..., Any]:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def available_targets() -> list[str]:
    """Target runtimes (``TARGETS``) whose exporter and runner import on this machine."""
    out = []
    for name, (framework, exporter, runner, packages) in TARGETS.items():
        if any(importlib.util.find_spec(package) is None for package in packages):
            continue
        try:
            load(framework)
            _function(exporter)
            importlib.import_module(runner.split(":")[0])
        except ImportError:
            continue
        out.append(name)
    return out


def target_forward(target: str, spec: Any, tensors: Mapping[str, Any], x: Any) -> dict[str, Any]:
    """Eval-mode outputs of ``target`` for canonical ``tensors``: build the exporting port,
    import the tensors, export to a temporary file and run it on the NCHW batch ``x``."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    framework, exporter, runner, _ = TARGETS[target]
    mod = load(framework)
    model = mod.build_model(spec)
    mod.import_weights(model, spec, tensors)
    with tempfile.TemporaryDirectory(prefix="rosetta-target-") as d:
        path = os.path.join(d, f"{spec.name}.{target}")
        _function(exporter)(model, spec, path)
        return _function(runner)(path, x)


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
