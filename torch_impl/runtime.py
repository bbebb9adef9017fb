"""Run a ``SpecModel`` on a numpy batch: the framework-neutral ``forward`` of the contract."""
from __future__ import annotations

import numpy as np
import torch

from . import layout
from .model import SpecModel


def gpu_available() -> bool:
    """Whether PyTorch sees a CUDA GPU."""
    return torch.cuda.is_available()


def strict_precision() -> None:
    """Full fp32 matmuls and convolutions on the GPU (no TF32), for parity comparisons."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def _device(device: str) -> torch.device:
    if device == "cpu":
        return torch.device("cpu")
    if device == "gpu":
        if not gpu_available():
            raise RuntimeError("device='gpu' was requested but PyTorch sees no CUDA GPU "
                               f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
        strict_precision()
        return torch.device("cuda")
    raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")


def forward(model: SpecModel, x: np.ndarray, *, train: bool = False, activations: bool = False,
            device: str = "cpu") -> dict[str, np.ndarray]:
    """Run ``model`` on a NCHW float32 batch; return canonical (NCHW / (N, F)) float32 arrays.

    Keys: ``logits``; the auxiliary outputs too when ``train`` and the spec has them; with
    ``activations`` also every computed layer's output by layer name. ``train=True`` runs in
    training mode (batch-statistics BatchNorm, which also updates the running statistics, and
    active dropout); the model's previous mode is restored afterwards. The model is moved to
    ``device`` ("cpu" or "gpu") and stays there.
    """
    dev = _device(device)
    model.to(dev)
    inputs = layout.nchw_to_framework(x).to(dev)
    was_training = model.training
    model.train(train)
    try:
        with torch.inference_mode():
            if activations:
                values = model.activations(inputs)
                outputs = {key: values[name] for key, name in model.spec.outputs.items() if name in values}
            else:
                values = {}
                out = model(inputs)
                outputs = out if isinstance(out, dict) else {"logits": out}
    finally:
        model.train(was_training)
    return {key: layout.framework_to_nchw(t) for key, t in {**outputs, **values}.items()}
