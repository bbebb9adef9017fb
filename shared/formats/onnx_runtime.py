"""Run an exported ONNX model with ONNX Runtime (https://onnxruntime.ai), framework-free.

ONNX Runtime is a parity *target*: a model exported from the PyTorch port
(``torch_impl.onnx.export_onnx``) runs here on the same NCHW batch as the three ports, and
its logits are compared against each of them. ``onnxruntime`` is imported lazily.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..core.errors import WeightError


def session(path: str | os.PathLike) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU for ``path`` (clear errors for bad files)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError(f"ONNX Runtime is not installed ({e}); install it with: pip install 'rosetta-cnn[onnx]'") from e
    if not os.path.isfile(path):
        raise WeightError(f"{path}: no such file")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped errors for bad files
        raise WeightError(f"{path}: ONNX Runtime cannot load the file: {str(e).strip()[:300]}") from None


def forward(model: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run a session (or a file path) on a NCHW float32 batch: ``{"logits": ...}``."""
    sess = session(model) if isinstance(model, (str, os.PathLike)) else model
    (inp,) = sess.get_inputs()
    (logits,) = sess.run(None, {inp.name: np.ascontiguousarray(x, dtype=np.float32)})
    return {"logits": np.asarray(logits, dtype=np.float32)}
