"""Keras 3 port of the Rosetta CNN models (AlexNet, VGG, GoogLeNet) from the shared JSON spec.

``build_model(spec)`` returns a functional ``keras.Model`` in NHWC whose layer names are the
spec's layer names; ``export_weights`` / ``import_weights`` convert to and from the canonical
(PyTorch-layout) weights, permuting conv kernels and the rows of the first linear layer after
a flatten (``layout.py``); ``forward`` runs a NCHW numpy batch and returns canonical NCHW
outputs and activations. Written with ``keras.layers`` and ``keras.ops`` only, so it runs on
every Keras backend (``KERAS_BACKEND=tensorflow``, ``jax`` or ``torch``; importing it imports
only the backend's framework): ``runtime.py`` compiles the forward pass and ``train.py`` the
training step in each backend's idiom (docs/keras-backends.md). Ops whose Keras semantics
differ from PyTorch's (LRN, ceil-mode max pool padding, BatchNorm's running variance) are in
``layers.py``.

On the JAX backend, importing this package gives the process XLA's fast CPU configuration
(YNNPACK fusions off, ``rosetta_cnn.core.xla``), as ``rosetta_cnn.flax_impl`` does, when JAX's
backend has not started yet; ``ROSETTA_XLA_FAST=0`` keeps XLA's default.
"""
import os as _os

from rosetta_cnn.core import ports as _ports
from rosetta_cnn.core import xla as _xla

if (_ports.keras_backend_loaded() or _os.environ.get("KERAS_BACKEND") or _ports.DEFAULT_KERAS_BACKEND) == "jax":
    _xla.configure()

from .model import build_model  # noqa: E402  (after the XLA flags)
from .runtime import forward, gpu_available, strict_precision  # noqa: E402
from .weights import export_weights, import_weights, iter_weights, load_weights, save_weights  # noqa: E402

__all__ = ["build_model", "export_weights", "import_weights", "iter_weights", "load_weights", "save_weights", "forward",
           "gpu_available", "strict_precision"]
