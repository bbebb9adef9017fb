"""The PyTorch port of the Rosetta CNN models (AlexNet, VGG, GoogLeNet) built from the shared
JSON spec. PyTorch is the reference framework: the spec's op semantics and the canonical weight
layout are PyTorch's, so ``build_model`` maps each spec layer to a native ``torch.nn`` layer
registered under the spec layer's name (``state_dict()`` keys are the canonical tensor names),
weights move between the model and the canonical format without any transpose, and
``forward`` runs a numpy NCHW batch and returns numpy outputs and per-layer activations.
Conv stacks run in channels_last memory order by default (faster on CPU, same results).
"""
from .model import SpecModel, build_model
from .runtime import forward, gpu_available, strict_precision
from .weights import export_weights, import_weights, iter_weights, load_weights, save_weights

__all__ = [
    "SpecModel",
    "build_model",
    "export_weights",
    "forward",
    "gpu_available",
    "import_weights",
    "iter_weights",
    "load_weights",
    "save_weights",
    "strict_precision",
]
