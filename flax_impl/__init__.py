"""Flax NNX port of the Rosetta CNN models (AlexNet, VGG, GoogLeNet), built from the shared
JSON spec: ``build_model(spec)`` gives an idiomatic ``nnx.Module`` (NHWC, ``model.train()`` /
``model.eval()``), ``import_weights`` / ``export_weights`` convert to and from the canonical
PyTorch-layout weights, and ``forward`` runs NCHW numpy input and returns canonical outputs
(logits, auxiliary outputs in training mode, and optionally every layer's activation).

Importing this package gives the process XLA's fast CPU configuration (YNNPACK fusions off,
``rosetta_cnn.core.xla``) when JAX's backend has not started yet and the installed jaxlib
supports it; ``ROSETTA_XLA_FAST=0`` keeps XLA's default.
"""
from rosetta_cnn.core import xla as _xla

_xla.configure()

from .model import SpecModel, build_model  # noqa: E402  (after the XLA flags)
from .runtime import forward, gpu_available, strict_precision  # noqa: E402
from .weights import export_weights, import_weights, iter_weights, load_weights, save_weights  # noqa: E402

__all__ = ["SpecModel", "build_model", "export_weights", "forward", "gpu_available", "import_weights", "iter_weights",
           "load_weights", "save_weights", "strict_precision"]
