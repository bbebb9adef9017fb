"""The PyTorch training step: ``loss.backward()`` and ``torch.optim``, the reference semantics.

Optimizer mapping (``rosetta_cnn.training.trainer.OptimizerConfig`` is defined by these three classes):

* ``sgd``: ``torch.optim.SGD(lr, momentum, weight_decay)``: coupled L2,
  ``buf = momentum * buf + (grad + wd * p)``, ``p -= lr * buf``;
* ``adam``: ``torch.optim.Adam(lr, betas, eps, weight_decay)``: coupled L2,
  ``p -= lr * m_hat / (sqrt(v_hat) + eps)``;
* ``adamw``: ``torch.optim.AdamW``: ``p -= lr * wd * p``, then the Adam update.

BatchNorm momentum needs no mapping here: PyTorch's ``running = (1 - m) * running + m * batch``
with m = 0.1 is the spec's convention (``layers.batch_norm`` passes it through).
Loss: ``F.cross_entropy`` with its default mean reduction, plus 0.3 x each auxiliary head's.
"""
from __future__ import annotations

import sys
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from rosetta_cnn.core.spec import ModelSpec
from rosetta_cnn.training.trainer import OptimizerConfig, PackageTrainer, loss_weights

from . import layout
from .model import SpecModel


def _import_dynamo() -> None:
    """Import ``torch._dynamo`` (every ``torch.optim`` constructor does) without crashing.

    ``torch._dynamo`` imports Triton when it is installed, and importing Triton after
    TensorFlow segfaults the process (their bundled LLVMs clash), as in a test session that
    runs all three frameworks. If TensorFlow is loaded and Triton is not, Triton is hidden
    for that one import, so PyTorch treats it as absent (it only serves GPU kernels of
    ``torch.compile``, which this project does not use).
    """
    if "torch._dynamo" in sys.modules or "triton" in sys.modules or "tensorflow" not in sys.modules:
        import torch._dynamo  # noqa: F401
        return
    sys.modules["triton"] = None  # type: ignore[assignment]  # `import triton` -> ImportError
    try:
        import torch._dynamo  # noqa: F401
    finally:
        del sys.modules["triton"]


_import_dynamo()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the batch."""
    return F.cross_entropy(logits, labels)


def build_optimizer(params: list[torch.nn.Parameter], opt: OptimizerConfig) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer for ``opt`` (see the module docstring)."""
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    return cls(params, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)


class TorchTrainer(PackageTrainer):
    """Trains a ``SpecModel`` in place on the CPU (see ``rosetta_cnn.training.trainer.Trainer``)."""

    framework = "torch"

    def __init__(self, model: SpecModel, spec: ModelSpec, opt: OptimizerConfig):
        self.model, self.spec, self.opt = model, spec, opt
        self._params = [p for _, p in model.named_parameters()]
        self.optimizer = build_optimizer(self._params, opt)
        # what the step calls, and where: distributed.py puts a DistributedDataParallel here
        self.network: torch.nn.Module = model
        self.device = torch.device("cpu")

    def _loss(self, x_nchw: np.ndarray, y: np.ndarray) -> torch.Tensor:
        self.network.train()
        out = self.network(layout.nchw_to_framework(np.asarray(x_nchw, dtype=np.float32)).to(self.device))
        outputs = out if isinstance(out, dict) else {"logits": out}
        labels = torch.as_tensor(np.asarray(y, dtype=np.int64)).to(self.device)
        return sum(w * cross_entropy(outputs[key], labels) for key, w in loss_weights(self.spec).items())

    def step(self, x_nchw: np.ndarray, y: np.ndarray) -> float:
        """One training step; returns the loss before the update."""
        loss = self._loss(x_nchw, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def gradients(self, x_nchw: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """Canonical gradients of the training loss; parameters are not updated."""
        self.model.zero_grad(set_to_none=True)
        self._loss(x_nchw, y).backward()
        # a parameter the loss does not reach has no .grad: its gradient is 0
        grads = {name: layout.from_framework(p.grad) if p.grad is not None else np.zeros(p.shape, np.float32)
                 for name, p in self.model.named_parameters()}
        self.model.zero_grad(set_to_none=True)
        return grads

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """``{f"{param index}.{slot}": array}``: momentum_buffer (SGD); step, exp_avg, exp_avg_sq (Adam)."""
        return {f"{i}.{slot}": value.detach().cpu().numpy().copy()
                for i, p in enumerate(self._params) for slot, value in self.optimizer.state[p].items()
                if value is not None}

    def load_optimizer_state(self, state: Mapping[str, np.ndarray]) -> None:
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            index, slot = key.split(".", 1)
            slots.setdefault(int(index), {})[slot] = torch.as_tensor(np.array(value))
        for i, p in enumerate(self._params):
            self.optimizer.state[p] = {
                slot: t if slot == "step" else t.to(p.device) for slot, t in slots.get(i, {}).items()}

    def reseed(self, seed: int) -> None:
        torch.manual_seed(seed)  # nn.Dropout draws from the global generator


def make_trainer(model: SpecModel, spec: ModelSpec, opt: OptimizerConfig) -> TorchTrainer:
    """A trainer that updates ``model`` in place with ``opt``."""
    return TorchTrainer(model, spec, opt)

