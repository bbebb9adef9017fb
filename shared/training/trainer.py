"""What every framework's training step shares: optimizer settings, loss weighting and the
trainer contract, framework-free.

Each port has ``train.py`` with ``make_trainer(model, spec, opt) -> Trainer`` (the
:class:`Trainer` protocol below): one idiomatic training step per framework
(``loss.backward()`` + ``torch.optim``; a Keras 3 custom step with ``keras.optimizers``;
``nnx.value_and_grad`` + ``nnx.Optimizer`` with Optax). Everything that does not depend on
the framework lives here, so the three stay parallel:

* :class:`OptimizerConfig`: SGD with momentum 0.9 and weight decay 5e-4 (AlexNet paper
  https://papers.nips.cc/paper/4824 section 5, VGG paper https://arxiv.org/abs/1409.1556
  section 3.1), Adam and AdamW, with PyTorch's semantics as the definition every framework
  maps to (the mappings are documented in each ``train.py``);
* :func:`loss_weights`: mean cross-entropy of the logits plus 0.3 x each auxiliary head's
  (GoogLeNet paper https://arxiv.org/abs/1409.4842 section 5).

Nothing here imports a framework at import time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import numpy as np

from ..core import ports
from ..core.errors import RosettaError

#: weight of each auxiliary classifier's loss in the total (GoogLeNet paper, section 5)
AUX_LOSS_WEIGHT = 0.3

OPTIMIZERS = ("sgd", "adam", "adamw")
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3, "adamw": 1e-3}


@dataclass(frozen=True)
class OptimizerConfig:
    """One optimizer, in PyTorch's terms (the reference semantics of this project).

    ``sgd``: ``torch.optim.SGD`` with ``momentum`` and coupled L2 ``weight_decay`` (added to
    the gradient before the momentum buffer, as the AlexNet paper's update rule does);
    ``adam``: ``torch.optim.Adam`` (coupled L2 too, epsilon added to the bias-corrected
    ``sqrt(v_hat)``); ``adamw``: ``torch.optim.AdamW`` (decoupled decay
    ``p -= lr * weight_decay * p`` before the Adam update). Weight decay applies to every
    trainable parameter (biases and BatchNorm's too), as with ``model.parameters()``.
    """

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise RosettaError(f"unknown optimizer {self.name!r}; choose from {', '.join(OPTIMIZERS)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RosettaError(f"learning rate must be a positive number, got {self.lr!r}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0 or self.eps <= 0:
            raise RosettaError(f"invalid optimizer settings: momentum {self.momentum} (needs [0, 1)), "
                               f"weight_decay {self.weight_decay} (needs >= 0), eps {self.eps} (needs > 0)")
        if not all(0 <= b < 1 for b in self.betas):
            raise RosettaError(f"Adam betas must lie in [0, 1), got {self.betas}")

    @property
    def coupled_l2(self) -> float:
        """The L2 coefficient added to the gradients (sgd, adam); 0 for decoupled AdamW."""
        return 0.0 if self.name == "adamw" else self.weight_decay

    @property
    def decoupled_decay(self) -> float:
        """The decoupled decay rate (AdamW); 0 for sgd and adam."""
        return self.weight_decay if self.name == "adamw" else 0.0


def loss_weights(spec: Any) -> dict[str, float]:
    """Output key -> weight of its mean cross-entropy in the training loss."""
    return {"logits": 1.0, **{key: AUX_LOSS_WEIGHT for key in spec.aux_outputs}}


def is_parameter(name: str) -> bool:
    """Whether a canonical tensor is trained (not a BatchNorm running statistic)."""
    return not name.endswith((".running_mean", ".running_var"))


class Trainer(Protocol):
    """What every ``<fw>_impl.train.make_trainer`` returns. Arrays are canonical (NCHW)."""

    model: Any
    spec: Any
    opt: OptimizerConfig

    def step(self, x_nchw: np.ndarray, y: np.ndarray) -> float:
        """One forward (training mode) + backward + update; returns the loss before the update."""

    def gradients(self, x_nchw: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """d loss / d parameter by canonical name, without updating the parameters (the
        training-mode forward still moves the BatchNorm running statistics)."""

    def predict(self, x_nchw: np.ndarray) -> np.ndarray:
        """Eval-mode logits."""

    def export_weights(self) -> dict[str, np.ndarray]:
        """The model's canonical tensors."""

    def import_weights(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Load canonical tensors into the model."""

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The optimizer's state (framework-native order and names) as numpy arrays."""

    def load_optimizer_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what ``optimizer_state`` returned (same framework and optimizer)."""

    def reseed(self, seed: int) -> None:
        """Reset the dropout random streams, so an epoch's randomness depends on its seed only."""


class PackageTrainer:
    """The framework-independent methods of every trainer, through the package contract
    (``core/ports.py``): subclasses set ``framework`` and have ``model`` and ``spec``."""

    framework: str
    model: Any
    spec: Any

    def predict(self, x_nchw: np.ndarray) -> np.ndarray:
        """Eval-mode logits."""
        return ports.load(self.framework).forward(self.model, x_nchw, train=False)["logits"]

    def export_weights(self) -> dict[str, np.ndarray]:
        """The model's canonical tensors."""
        return ports.load(self.framework).export_weights(self.model, self.spec)

    def import_weights(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Load canonical tensors into the model (nothing changes if they do not fit)."""
        ports.load(self.framework).import_weights(self.model, self.spec, tensors)




def build_trainer(framework: str, spec: Any, opt: OptimizerConfig, tensors: Mapping[str, np.ndarray] | None = None,
                  *, seed: int = 0) -> Trainer:
    """Build ``spec`` in ``framework``, load ``tensors`` (canonical) if given, wrap it in a trainer."""
    package = ports.load(framework)
    model = package.build_model(spec, seed=seed, initialize=tensors is None)  # tensors set every weight
    if tensors is not None:
        package.import_weights(model, spec, tensors)
    return ports.module(framework, "train").make_trainer(model, spec, opt)
