"""Flax NNX port of the Rosetta CNN models (AlexNet, VGG, GoogLeNet), built from the shared
JSON spec: ``build_model(spec)`` gives an idiomatic ``nnx.Module`` (NHWC, ``model.train()`` /
``model.eval()``), ``import_weights`` / ``export_weights`` convert to and from the canonical
PyTorch-layout weights, and ``forward`` runs NCHW numpy input and returns canonical outputs
(logits, auxiliary outputs in training mode, and optionally every layer's activation).
"""
from .model import SpecModel, build_model
from .runtime import forward, gpu_available, strict_precision
from .weights import export_weights, import_weights, load_weights, save_weights

__all__ = ["SpecModel", "build_model", "export_weights", "forward", "gpu_available", "import_weights",
           "load_weights", "save_weights", "strict_precision"]
