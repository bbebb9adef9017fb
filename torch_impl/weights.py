"""Canonical weights <-> a ``SpecModel``: the ``state_dict`` keys are the canonical names.

``export_weights`` returns every canonical tensor (parameters and BatchNorm running
statistics; BatchNorm's ``num_batches_tracked`` counter is not part of the format).
``import_weights`` checks every name and shape against the spec, and that every tensor can be
read, before it copies any into the model (under ``torch.no_grad()``), so that a bad input
leaves the model exactly as it was; it then copies one tensor at a time, straight from the
caller's float32 array (a memory-mapped file's pages are read as they are copied and leave
the process with that tensor), so an import holds no second copy of the weights.
"""
from __future__ import annotations

import os
from typing import Iterator, Mapping

import numpy as np
import torch
from torch import nn

from rosetta_cnn.core.canonical import check_tensors, expected_tensors, load_canonical, save_canonical
from rosetta_cnn.core.errors import WeightError
from rosetta_cnn.core.files import atomic_path, check_names_shapes
from rosetta_cnn.core.spec import ModelSpec
from rosetta_cnn.formats.torchvision import read_state_dict

from . import layout

FRAMEWORK = "torch"


def _model_tensors(model: nn.Module, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers under their canonical names, checked against the spec."""
    own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    expected = expected_tensors(spec)
    for name, shape in expected.items():
        if name not in own:
            raise WeightError(f"the model has no tensor {name!r}: was it built from spec {spec.name!r}?")
        if tuple(own[name].shape) != shape:
            raise WeightError(f"model tensor {name!r} has shape {tuple(own[name].shape)}, "
                              f"spec {spec.name!r} expects {shape}: was the model built from this spec?")
    return {name: own[name] for name in expected}


def iter_weights(model: nn.Module, spec: ModelSpec) -> Iterator[tuple[str, np.ndarray]]:
    """The model's weights as canonical float32 arrays (copies), one at a time in
    ``expected_tensors`` order."""
    for name, t in _model_tensors(model, spec).items():
        yield name, layout.from_framework(t)


def export_weights(model: nn.Module, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The model's weights as canonical float32 arrays (copies), one per expected tensor."""
    return dict(iter_weights(model, spec))


def import_weights(model: nn.Module, spec: ModelSpec, tensors: Mapping[str, np.ndarray]) -> None:
    """Load canonical tensors into the model; on any error the model is left unchanged."""
    check_tensors(spec, tensors)
    targets = _model_tensors(model, spec)
    # every tensor readable before the model changes (a file-backed mapping maps, reads nothing)
    arrays = {name: np.asarray(tensors[name]) for name in targets}
    with torch.no_grad():
        for name, target in targets.items():
            # keeps the target's device and memory format; each array is dropped once copied
            target.copy_(layout.to_framework(arrays.pop(name)))


def save_weights(model: nn.Module, spec: ModelSpec, path: str | os.PathLike) -> None:
    """Write the model's weights as a canonical safetensors file (atomically)."""
    save_canonical(path, spec, export_weights(model, spec), framework=FRAMEWORK)


def load_weights(model: nn.Module, spec: ModelSpec, path: str | os.PathLike) -> None:
    """Read a canonical safetensors file written for ``spec`` into the model."""
    _, tensors = load_canonical(path, spec)
    import_weights(model, spec, tensors)


def save_native(model: nn.Module, spec: ModelSpec, path: str | os.PathLike) -> None:
    """Write PyTorch's own format: ``torch.save(model.state_dict())`` (canonical names, plus
    BatchNorm's ``num_batches_tracked``), atomically."""
    _model_tensors(model, spec)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)


def load_native(model: nn.Module, spec: ModelSpec, path: str | os.PathLike) -> None:
    """Read a :func:`save_native` file (``torch.load(weights_only=True)``); every name and shape
    is checked before anything is copied, so a failed load leaves the model unchanged."""
    _model_tensors(model, spec)
    state = read_state_dict(path)
    own = model.state_dict()
    check_names_shapes({k: tuple(v.shape) for k, v in own.items()}, {k: v.shape for k, v in state.items()},
                       source=str(path), target=f"the PyTorch model of {spec.name!r}")
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)).to(own[k].dtype) for k, v in state.items()}, strict=True)
