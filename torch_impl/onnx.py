"""ONNX export of the PyTorch port (https://onnx.ai), run by ``rosetta_cnn.formats.onnx_runtime``.

Only the PyTorch port exports ONNX: ``torch.onnx.export`` (the ``torch.export``-based
exporter, opset 18) traces the eval-mode graph. The file holds the weights inline (every
bundled model is far below ONNX's 2 GiB protobuf limit), takes a NCHW float32 batch named
``input`` with a dynamic batch axis, and returns ``logits``; it is written atomically.

The exporter imports ``torch._dynamo`` and with it Triton, which crashes the process
(segmentation fault) when TensorFlow was imported first (both bundle LLVM). So when
TensorFlow is loaded, ``export_onnx`` writes the weights to a temporary canonical file and
exports in a fresh interpreter (``python -m rosetta_cnn.torch_impl.onnx WEIGHTS.safetensors OUT.onnx``);
``export_onnx_tensors`` (the ``onnx`` parity target's exporter) writes canonical tensors to
that file as they are, without building a model here.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from rosetta_cnn.core.canonical import load_canonical, save_canonical
from rosetta_cnn.core.errors import RosettaError
from rosetta_cnn.core.files import atomic_path
from rosetta_cnn.core.spec import ModelSpec

from .model import SpecModel, build_model
from .weights import FRAMEWORK, export_weights, import_weights

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 18


def export_onnx(model: SpecModel, spec: ModelSpec, path: str | os.PathLike) -> None:
    """Write ``model`` (eval mode: no dropout, BatchNorm running statistics, no aux heads) as ONNX."""
    if "tensorflow" in sys.modules:
        _export_in_subprocess(spec, export_weights(model, spec), path)
        return
    was_training = model.training
    model.eval()
    x = torch.zeros((2, *spec.input_shape), dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1)
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (x,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},),
                                        opset_version=OPSET, verbose=False)
            if program is None:
                raise RosettaError("torch.onnx.export returned no program")
            program.save(str(tmp), external_data=False)
    finally:
        model.train(was_training)


def export_onnx_tensors(spec: ModelSpec, tensors: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write canonical ``tensors`` of ``spec`` as ONNX: with TensorFlow loaded, straight to the
    fresh interpreter's weight file (no PyTorch model is built in this process); otherwise
    built, imported and exported here (:func:`export_onnx`)."""
    if "tensorflow" in sys.modules:
        _export_in_subprocess(spec, tensors, path)
        return
    model = build_model(spec, initialize=False)
    import_weights(model, spec, tensors)
    export_onnx(model, spec, path)


def _export_in_subprocess(spec: ModelSpec, tensors: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Canonical ``tensors`` to a temporary canonical file, exported by :func:`main` in a fresh interpreter."""
    with tempfile.TemporaryDirectory(prefix="rosetta-onnx-") as d:
        weights = os.path.join(d, "weights.safetensors")
        save_canonical(weights, spec, tensors, framework=FRAMEWORK)
        done = subprocess.run([sys.executable, "-m", __name__, weights, os.fspath(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RosettaError(f"ONNX export of {spec.name} failed in a subprocess: {done.stderr.strip()[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    """Export a canonical weight file to ONNX (used by ``export_onnx`` in a fresh interpreter)."""
    p = argparse.ArgumentParser(prog="python -m rosetta_cnn.torch_impl.onnx", description=main.__doc__)
    p.add_argument("weights", help="canonical .safetensors file")
    p.add_argument("out", help="output .onnx file")
    args = p.parse_args(argv)
    spec, tensors = load_canonical(args.weights)
    model = build_model(spec, initialize=False)
    import_weights(model, spec, tensors)
    del tensors
    export_onnx(model, spec, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
