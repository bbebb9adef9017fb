"""The three framework ports, their contract, and which of them this machine has.

Each port (``rosetta_cnn.torch_impl``, ``rosetta_cnn.keras_impl``, ``rosetta_cnn.flax_impl``;
folders ``torch_impl/``, ``keras_impl/``, ``flax_impl/`` of the repository) has the same files
with the same public names, so a reader can open the same file in each and compare.
:data:`CONTRACT` lists them; ``parity_tests/ports/test_contract.py`` checks every port against it:

``layers.py``
    ``OPS``: the one dispatch table from spec op name (``core/ops.py``) to a layer factory,
    and the layers the framework lacks.
``model.py``
    ``build_model(spec, *, seed=0, initialize=True)``: the idiomatic model for a resolved
    spec (``initialize=False`` skips the initialisers' draws, for a model whose weights are
    imported right after).
``layout.py``
    conversions between the canonical layout (``core/canonical.py``) and the framework's
    own, each transpose with a layout comment (the NHWC ones live once in ``core/layout.py``).
``weights.py``
    ``export_weights(model, spec) -> dict[str, np.ndarray]`` (canonical; ``iter_weights``
    yields the same tensors one at a time, so that a large model's export can be written
    without a second copy of it in memory) and ``import_weights(model, spec, tensors)``
    (checks every name and shape first, so a failed import leaves the model unchanged);
    canonical files (``save_weights`` / ``load_weights``) and the framework's own
    (``save_native`` / ``load_native``).
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
``distributed.py``
    data-parallel training on the framework's own engine (``training/distributed.py``):
    ``setup(plan)`` starts it in this process and returns the engine (``build_trainer``);
    ``replica_batch`` (a replica's rows of a global batch) and ``replica_loss`` (what a
    replica differentiates) are where the engines differ.

Besides the three ports, :data:`TARGETS` lists runtimes that only run a model one port
exported (ONNX Runtime, fed by the PyTorch port's ONNX export): parity targets, never sources.

Implementations and their labels: an *implementation* is a port running in a process, and
the Keras port runs on any of Keras 3's backends (fixed when ``keras`` is first imported), so
:data:`IMPLEMENTATIONS` are ``torch``, ``flax``, ``keras/tensorflow``, ``keras/jax`` and
``keras/torch``. :data:`LABELS` adds ``keras``: Keras on the backend ``KERAS_BACKEND`` names
(TensorFlow when unset). :func:`resolve` turns a label into its :class:`Implementation`
(port, Keras backend, the environment its process needs), :func:`installed_implementations`
lists what this machine has, and :func:`activate` prepares the current process for a label
(or says it cannot: :class:`BackendMismatch`, when Keras is already loaded on another backend).

Importing this module imports no framework: :func:`installed` looks for packages without
importing them, :func:`load` imports a port on demand.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterator, Mapping

from .errors import RosettaError

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
    "weights": ("FRAMEWORK", "export_weights", "iter_weights", "import_weights", "save_weights", "load_weights",
                "save_native", "load_native"),
    "runtime": ("forward", "gpu_available", "strict_precision"),
    "train": ("make_trainer",),
    "bench": ("ENV_VARIANTS", "setup", "sgemm", "reset_device_memory", "device_memory_mb", "implementations",
              "configs", "default_config", "build", "inference", "training"),
    "distributed": ("setup", "replica_batch", "replica_loss"),
}
#: False while a port's ``build_model(..., initialize=False)`` builds (:func:`initializing`)
_INITIALIZE: contextvars.ContextVar[bool] = contextvars.ContextVar("rosetta_initialize", default=True)


@contextlib.contextmanager
def initializing(initialize: bool) -> Iterator[None]:
    """Layers built in this context draw their kernels (``initialize``) or start them as
    zeros: no draw and none of its temporaries, for a model whose weights are imported right
    away. The Keras and Flax layer factories ask :func:`kernels_drawn`."""
    token = _INITIALIZE.set(initialize)
    try:
        yield
    finally:
        _INITIALIZE.reset(token)


def kernels_drawn() -> bool:
    """Whether layers built now draw their kernels (see :func:`initializing`)."""
    return _INITIALIZE.get()


#: what each port's package itself exports (``from rosetta_cnn import torch_impl; torch_impl.build_model``)
PACKAGE_API: tuple[str, ...] = ("build_model", "export_weights", "iter_weights", "import_weights", "save_weights",
                                "load_weights", "forward", "gpu_available", "strict_precision")

#: Runtimes that run a model exported from one port: parity targets, never sources.
#: name -> (exporting framework, "module:function" exporter(spec, canonical tensors, path),
#: "module:function" runner(path, x_nchw) -> {"logits": ...}, the packages both need).
TARGETS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "onnx": ("torch", "rosetta_cnn.torch_impl.onnx:export_onnx_tensors", "rosetta_cnn.formats.onnx_runtime:forward",
             ("onnxscript", "onnxruntime")),
}


#: Keras 3 backends -> the package each needs besides ``keras``
KERAS_BACKENDS: dict[str, str] = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
#: the Keras backend of the label ``keras`` when ``KERAS_BACKEND`` is unset
DEFAULT_KERAS_BACKEND = "tensorflow"
#: every implementation: a port, and for Keras the backend, one process each
IMPLEMENTATIONS: tuple[str, ...] = ("torch", "flax", "keras/tensorflow", "keras/jax", "keras/torch")
#: what ``--framework`` / ``--frameworks`` accept: the implementations and ``keras`` ($KERAS_BACKEND)
LABELS: tuple[str, ...] = ("torch", "flax", "keras", "keras/tensorflow", "keras/jax", "keras/torch")
#: implementation -> the extra that installs it
IMPLEMENTATION_EXTRAS: dict[str, str] = {"torch": "torch", "flax": "flax", "keras/tensorflow": "keras",
                                         "keras/jax": "keras-jax", "keras/torch": "keras-torch"}


class BackendMismatch(RosettaError):
    """This process already runs Keras on another backend than the label asks for (the
    backend is fixed when ``keras`` is imported): run the label in a fresh process."""


@dataclass(frozen=True)
class Implementation:
    """What a label means: the port, the Keras backend, and the process it needs."""

    label: str  # as given: "keras", "keras/jax", "torch", ...
    framework: str  # the port: torch, keras, flax
    backend: str | None  # the Keras backend (None for torch and flax)

    @property
    def name(self) -> str:
        """The implementation (``keras`` resolved to ``keras/<backend>``)."""
        return f"keras/{self.backend}" if self.backend else self.framework

    @property
    def packages(self) -> tuple[str, ...]:
        """Top-level packages this implementation imports."""
        return ("keras", KERAS_BACKENDS[self.backend]) if self.backend else REQUIRES[self.framework]

    @property
    def extra(self) -> str:
        return IMPLEMENTATION_EXTRAS[self.name]

    def env(self) -> dict[str, str]:
        """Environment variables a process for this implementation must start with."""
        return {"KERAS_BACKEND": self.backend} if self.backend else {}

    def installed(self) -> bool:
        """Whether its packages are installed (found, not imported)."""
        return all(importlib.util.find_spec(p) is not None for p in self.packages)


def _valid_labels() -> str:
    extras = ", ".join(f"{name} [{extra}]" for name, extra in IMPLEMENTATION_EXTRAS.items())
    return f"valid labels: {', '.join(LABELS)} (each installs with pip install 'rosetta-cnn[EXTRA]': {extras})"


def resolve(label: str) -> Implementation:
    """The implementation a label names; ``keras`` is Keras on ``$KERAS_BACKEND`` (TensorFlow
    when unset). Raises :class:`RosettaError` naming the valid labels for anything else."""
    if label in FRAMEWORKS and label != "keras":
        return Implementation(label, label, None)
    if label == "keras":
        backend = os.environ.get("KERAS_BACKEND") or DEFAULT_KERAS_BACKEND
        if backend not in KERAS_BACKENDS:
            raise RosettaError(f"label 'keras' means Keras on KERAS_BACKEND={backend!r}, which this project does "
                               f"not support (Keras backends: {', '.join(KERAS_BACKENDS)}); {_valid_labels()}")
        return Implementation(label, "keras", backend)
    framework, _, backend = label.partition("/")
    if framework == "keras" and backend in KERAS_BACKENDS:
        return Implementation(label, "keras", backend)
    raise RosettaError(f"unknown implementation {label!r}; {_valid_labels()}")


def require(label: str) -> Implementation:
    """:func:`resolve`, and a clear error naming the extra to install if its packages are missing."""
    impl = resolve(label)
    missing = [p for p in impl.packages if importlib.util.find_spec(p) is None]
    if missing:
        raise RosettaError(f"implementation {impl.name} needs {', '.join(missing)}, which is not installed; "
                           f"install it with: pip install 'rosetta-cnn[{impl.extra}]'")
    return impl


def installed_implementations() -> list[str]:
    """The implementations (:data:`IMPLEMENTATIONS`) whose packages are installed, found without
    importing anything (``keras/jax`` needs keras and jax, ``keras/torch`` keras and torch)."""
    return [name for name in IMPLEMENTATIONS if resolve(name).installed()]


def keras_backend_loaded() -> str | None:
    """The backend of the Keras already imported in this process, or None if it is not."""
    keras = sys.modules.get("keras")
    if keras is None:
        return None
    try:
        return keras.backend.backend()
    except AttributeError:  # keras is being imported right now
        return os.environ.get("KERAS_BACKEND") or DEFAULT_KERAS_BACKEND


def activate(label: str) -> Implementation:
    """Prepare this process to run ``label``: for a Keras label, set ``KERAS_BACKEND`` before
    Keras is imported. Raises :class:`BackendMismatch` if Keras is already loaded on another
    backend (the caller then runs the label in a fresh process with ``resolve(label).env()``)."""
    impl = require(label)
    if impl.backend:
        loaded = keras_backend_loaded()
        if loaded is None:
            os.environ["KERAS_BACKEND"] = impl.backend
        elif loaded != impl.backend:
            raise BackendMismatch(f"{impl.name}: this process already runs Keras on {loaded}; the backend is fixed "
                                  f"when Keras is imported, so {impl.name} needs a process of its own")
    return impl


def install_hint(framework: str) -> str:
    extra = EXTRAS.get(framework) or IMPLEMENTATION_EXTRAS.get(framework, framework)
    return f"pip install 'rosetta-cnn[{extra}]'"


def installed() -> list[str]:
    """Frameworks whose packages are installed (found, not imported: cheap, and safe before
    a worker process sets its environment)."""
    return [fw for fw, pkgs in REQUIRES.items() if all(importlib.util.find_spec(p) for p in pkgs)]


def load(framework: str) -> ModuleType:
    """Import a port by its framework (torch, keras, flax) or implementation label
    (``keras/jax`` sets ``KERAS_BACKEND`` first; :class:`BackendMismatch` if Keras is already
    loaded on another backend)."""
    if framework not in FRAMEWORKS:
        try:
            impl = resolve(framework)
        except RosettaError:
            raise ValueError(f"unknown framework {framework!r}; choose from {', '.join(FRAMEWORKS)} "
                             f"(or an implementation label: {', '.join(LABELS)})") from None
        activate(framework)
        framework = impl.framework
    try:
        return importlib.import_module(FRAMEWORKS[framework])
    except ImportError as e:
        raise ImportError(f"framework {framework!r} is not installed ({e}); install it with: "
                          f"{install_hint(framework)}") from e


def module(framework: str, name: str) -> ModuleType:
    """One module of a port (``module("flax", "train")`` is ``rosetta_cnn.flax_impl.train``);
    ``framework`` may be an implementation label."""
    package = load(framework)
    return importlib.import_module(f"{package.__name__}.{name}")


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
    """Eval-mode outputs of ``target`` for canonical ``tensors``: the exporting port exports
    them to a temporary file (building its model, or in a process of its own) and the target's
    runtime runs it on the NCHW batch ``x``."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    framework, exporter, runner, _ = TARGETS[target]
    load(framework)
    with tempfile.TemporaryDirectory(prefix="rosetta-target-") as d:
        path = os.path.join(d, f"{spec.name}.{target}")
        _function(exporter)(spec, tensors, path)
        return _function(runner)(path, x)
