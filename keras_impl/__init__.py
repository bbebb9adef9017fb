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
"""
from .model import build_model
from .runtime import forward, gpu_available, strict_precision
from .weights import export_weights, import_weights, load_weights, save_weights

__all__ = ["build_model", "export_weights", "import_weights", "load_weights", "save_weights", "forward",
           "gpu_available", "strict_precision"]
