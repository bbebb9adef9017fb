"""The short way in: a model in a framework, with canonical or foreign weights, run on numpy.

    import rosetta_cnn as rc
    net = rc.build_model("vgg16", "torch", weights="vgg16-397923af.pth")     # torch.nn.Module
    km = rc.build_model("vgg16", "keras", weights="vgg16-397923af.pth")      # keras.Model, NHWC
    fm = rc.build_model("googlenet", "flax", weights="googlenet.safetensors")  # nnx.Module, NHWC
    logits = rc.forward(fm, x_nchw)["logits"]                                # numpy in, numpy out

Weights come from any file ``rosetta convert`` reads (canonical ``.safetensors``, torchvision
``.pth``, keras.applications ``.weights.h5`` / ``.h5``, the ports' own ``.pt`` / ``.keras`` /
``.msgpack``), checked name by name and shape by shape against the spec before the model is
touched. The ports' own functions (``rosetta_cnn.torch_impl.build_model`` and friends) are the
longer way, with every option.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from .core import ports
from .core.canonical import check_tensors
from .core.spec import ModelSpec, load_spec


def build_model(model: str | ModelSpec, framework: str = "torch", *, weights: str | os.PathLike | None = None,
                weights_format: str | None = None, seed: int = 0, **overrides: Any) -> Any:
    """``model`` (a bundled name, ``file.json:name`` or a resolved spec) built in ``framework``.

    Without ``weights`` the model has the framework's own initialisation from ``seed``. With
    ``weights``, the file decides what it can (the class count of a torchvision file, GoogLeNet's
    aux heads) and ``overrides`` set the rest (``transform_input=True`` for torchvision's
    pretrained GoogLeNet); ``weights_format`` names the format when the file name does not.
    """
    from .formats.convert import infer_format, read

    if weights is None:
        spec = model if isinstance(model, ModelSpec) else load_spec(model, overrides)
        tensors = None
    elif isinstance(model, ModelSpec):
        spec = model
        tensors = read(os.fspath(weights), infer_format(os.fspath(weights), weights_format, "weights"), spec.name)[1]
        check_tensors(spec, tensors, source=os.fspath(weights))
    else:
        fmt = infer_format(os.fspath(weights), weights_format, "weights")
        spec, tensors = read(os.fspath(weights), fmt, model, overrides if fmt != "canonical" else None)
    port = ports.load(framework)
    net = port.build_model(spec, seed=seed)
    if tensors is not None:
        port.import_weights(net, spec, tensors)
    return net


def framework_of(model: Any) -> str:
    """Which port built ``model`` (torch, keras or flax)."""
    where = type(model).__module__
    for framework, package in ports.FRAMEWORKS.items():
        if where.startswith(package + "."):
            return framework
    keras = sys.modules.get("keras")
    if keras is not None and isinstance(model, keras.Model) and hasattr(model, "spec"):
        return "keras"
    raise TypeError(f"{type(model).__name__} was not built by rosetta_cnn.build_model or a port's build_model")


def forward(model: Any, x_nchw: np.ndarray, *, train: bool = False, activations: bool = False,
            device: str = "cpu") -> dict[str, np.ndarray]:
    """Run any port's model on a NCHW float32 batch; canonical numpy outputs (``logits``, the
    aux outputs in training mode, every layer's output with ``activations``)."""
    return ports.load(framework_of(model)).forward(model, x_nchw, train=train, activations=activations,
                                                   device=device)
