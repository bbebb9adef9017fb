"""The three framework ports, their contract, and which of them this machine has.

Each port (``rosetta_cnn.torch_impl``, ``rosetta_cnn.keras_impl``, ``rosetta_cnn.flax_impl``;
folders ``torch_impl/``, ``keras_impl/``, ``flax_impl/`` of the repository) has the same files
with the same public names, so a reader can open the same file in each and compare.
:data:`CONTRACT` lists them; ``parity_tests/ports/test_contract.py`` checks every port against it:

``layers.py``
    ``OPS``: the one dispatch table from spec op name (``core/ops.py``) to a layer factory,
    and the layers the framework lacks.
``model.py``
    ``build_model(spec, *, seed=0)``: the idiomatic model for a resolved spec.
``layout.py``
    conversions between the canonical layout (``core/canonical.py``) and the framework's
    own, each transpose with a layout comment (the NHWC ones live once in ``core/layout.py``).
``weights.py``
    ``export_weights(model, spec) -> dict[str, np.ndarray]`` (canonical) and
    ``import_weights(model, spec, tensors)`` (checks every name and shape first, converts
    everything, then assigns, so a failed import leaves the model unchanged); canonical files
    (``save_weights`` / ``load_weights``) and the framework's own (``save_native`` / ``load_native``).
``runtime.py``
    ``forward(model, x, *, train=False, activations=False, device="cpu") -> dict``: run on
    a NCHW float32 numpy batch and return numpy arrays in the canonical layout (NCHW maps):
    the spec's outputs (``logits``; in training mode also the aux outputs) and, with
    ``activations=True``, every spec layer's output by layer name. ``gpu_available()`` and
    ``strict_precision()`` (TF32 / reduced-precision matmuls off) for GPU runs.
``train.py``
    ``make_trainer(model, spec, opt)``: one idiomatic training step (``training/trainer.py``).
``bench.py``
    the benchmark worker's side (``tools/bench/worker.py``): configurations and a
    hand-written baseline model.

Besides the three ports, :data:`TARGETS` lists runtimes that only run a model one port
exported (ONNX Runtime, fed by the PyTorch port's ONNX export): parity targets, never sources.

Importing this module imports no framework: :func:`installed` looks for packages without
importing them, :func:`load` imports a port on demand.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
from types import ModuleType
from typing import Any, Callable, Mapping

#: framework -> its port's package
FRAMEWORKS: dict[str, str] = {"torch": "rosetta_cnn.torch_impl", "keras": "rosetta_cnn.keras_impl",
                              "flax": "rosetta_cnn.flax_impl"}
#: the activation layout each framework computes in
LAYOUT: dict[str, str] = {"torch": "nchw", "keras": "nhwc", "flax": "nhwc"}
#: top-level packages a framework needs (checked without importing them) and the extra that installs them
REQUIRES: dict[str, tuple[str, ...]] = {"torch": ("torch",), "keras": ("keras", "tensorflow"),
                                        "flax": ("flax", "jax", "optax")}
EXTRAS: dict[str, str] = {"torch": "torch", "keras": "keras", "flax": "flax"}

#: the port contract: module -> public names every port's module defines
CONTRACT: dict[str, tuple[str, ...]] = {
    "layers": ("OPS",),
    "model": ("build_model",),
    "layout": ("nchw_to_framework", "framework_to_nchw"),
    "weights": ("FRAMEWORK", "export_weights", "import_weights", "save_weights", "load_weights",
                "save_native", "load_native"),
    "runtime": ("forward", "gpu_available", "strict_precision"),
    "train": ("make_trainer",),
    "bench": ("ENV_VARIANTS", "setup", "sgemm", "reset_device_memory", "device_memory_mb", "implementations",
              "configs", "default_config", "build", "inference", "training"),
}
#: what each port's package itself exports (``from rosetta_cnn import torch_impl; torch_impl.build_model``)
PACKAGE_API: tuple[str, ...] = ("build_model", "export_weights", "import_weights", "save_weights", "load_weights",
                                "forward", "gpu_available", "strict_precision")

#: Runtimes that run a model exported from one port: parity targets, never sources.
#: name -> (exporting framework, "module:function" exporter(model, spec, path),
#: "module:function" runner(path, x_nchw) -> {"logits": ...}, the packages both need).
TARGETS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "onnx": ("torch", "rosetta_cnn.torch_impl.onnx:export_onnx", "rosetta_cnn.formats.onnx_runtime:forward",
             ("onnxscript", "onnxruntime")),
}


def install_hint(framework: str) -> str:
    return f"pip install 'rosetta-cnn[{EXTRAS[framework]}]'"


def installed() -> list[str]:
    """Frameworks whose packages are installed (found, not imported: cheap, and safe before
    a worker process sets its environment)."""
    return [fw for fw, pkgs in REQUIRES.items() if all(importlib.util.find_spec(p) for p in pkgs)]


def load(framework: str) -> ModuleType:
    """Import a framework's port by its short name (torch, keras, flax)."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; choose from {', '.join(FRAMEWORKS)}")
    try:
        return importlib.import_module(FRAMEWORKS[framework])
    except ImportError as e:
        raise ImportError(f"framework {framework!r} is not installed ({e}); install it with: "
                          f"{install_hint(framework)}") from e


def module(framework: str, name: str) -> ModuleType:
    """One module of a port (``module("flax", "train")`` is ``rosetta_cnn.flax_impl.train``)."""
    load(framework)
    return importlib.import_module(f"{FRAMEWORKS[framework]}.{name}")


def available() -> list[str]:
    """Frameworks whose port imports on this machine."""
    out = []
    for name in installed():
        try:
            load(name)
        except ImportError:
            continue
        out.append(name)
    return out


def _function(ref: str) -> Callable[..., Any]:
    mod, name = ref.split(":")
    return getattr(importlib.import_module(mod), name)


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
