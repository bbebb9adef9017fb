"""Training-step parity: the same canonical start and batches in every framework, compared.

:func:`training_run` records what one framework does (gradients on the first batch, the
weights after given step counts, the losses); :func:`compare_runs` turns two runs into the
worst relative difference per check, which ``parity_tests/training`` holds against the
``train-*`` entries of :mod:`~rosetta_cnn.verification.tolerances`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..training.trainer import OptimizerConfig, build_trainer, is_parameter


@dataclass
class TrainingRun:
    """What one framework did from the canonical start (all canonical numpy arrays)."""

    framework: str
    start: dict[str, np.ndarray]
    gradients: dict[str, np.ndarray]
    weights: dict[int, dict[str, np.ndarray]]  # after k steps -> every canonical tensor
    losses: list[float]


def training_run(framework: str, spec: Any, start: Mapping[str, np.ndarray], batches: list[tuple[np.ndarray, np.ndarray]],
                 opt: OptimizerConfig, *, keep: tuple[int, ...] = (1, 5)) -> TrainingRun:
    """Gradients on the first batch, then one step per batch from ``start`` again; the weights
    after each step count in ``keep``."""
    trainer = build_trainer(framework, spec, opt, start)
    grads = trainer.gradients(*batches[0])
    trainer.import_weights(start)  # the gradient pass moved the BatchNorm running statistics
    weights, losses = {}, []
    for k, (x, y) in enumerate(batches, 1):
        losses.append(trainer.step(x, y))
        if k in keep:
            weights[k] = trainer.export_weights()
    return TrainingRun(framework, dict(start), grads, weights, losses)


#: changes of a weight smaller than this fraction of its layer's largest weight are at the
#: limit of what fp32 weights resolve (1e-5 = ~80 ulp): a 1% check of them would test rounding
FP32_RESOLUTION = 1e-5


def _by_layer_scale(tensors: Mapping[str, np.ndarray]) -> dict[str, float]:
    scale: dict[str, float] = {}
    for name, t in tensors.items():
        layer = name.rsplit(".", 1)[0]
        scale[layer] = max(scale.get(layer, 0.0), float(np.abs(t).max()))
    return scale


def layer_relative_diff(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
                        floor: Mapping[str, float] | None = None) -> tuple[float, str]:
    """(worst max|ref - got| / scale, its tensor name) where a tensor's scale is the largest
    |value| among its layer's tensors in ``ref`` (at least ``floor[layer]``): a conv bias right
    before a BatchNorm has a true gradient of exactly 0, so only fp32 noise, and is judged
    against its layer's weight."""
    scale = _by_layer_scale(ref)
    worst = (0.0, "")
    for name, r in ref.items():
        if name not in got or np.shape(got[name]) != np.shape(r):
            return math.inf, name
        layer = name.rsplit(".", 1)[0]
        s = max(scale[layer], (floor or {}).get(layer, 0.0))
        d = float(np.abs(np.asarray(r, np.float64) - got[name]).max()) / (s or 1.0)
        if not d <= worst[0]:
            worst = (d, name)
    return worst


def compare_runs(ref: TrainingRun, got: TrainingRun) -> dict[str, tuple[float, str]]:
    """Each training-parity check -> (worst relative difference, where):
    ``gradients``; ``weights@k`` (each parameter's change from the start after k steps,
    against its layer's largest change, or ``FP32_RESOLUTION`` of its layer's weights if that
    is larger); ``bn_stats@k`` (BatchNorm running statistics after k steps, each against its
    own scale); ``loss`` (the losses of every step, relative to their scale)."""
    out = {"gradients": layer_relative_diff(ref.gradients, got.gradients)}
    for k, w in ref.weights.items():
        params = [n for n in w if is_parameter(n)]
        floor = {layer: FP32_RESOLUTION * s for layer, s in _by_layer_scale({n: w[n] for n in params}).items()}
        out[f"weights@{k}"] = layer_relative_diff({n: w[n] - ref.start[n] for n in params},
                                                  {n: got.weights[k][n] - got.start[n] for n in params}, floor)
        stats = [n for n in w if not is_parameter(n)]
        if stats:
            out[f"bn_stats@{k}"] = max((float(np.abs(w[n] - got.weights[k][n]).max() / np.abs(w[n]).max()), n)
                                       for n in stats)
    r, g = np.asarray(ref.losses), np.asarray(got.losses)
    out["loss"] = (float(np.abs(r - g).max() / np.abs(r).max()), f"{len(r)} steps")
    return out


def first_steps_curves(model: str, frameworks: list[str], *, steps: int = 20, batch: int = 64,
                       opt: OptimizerConfig | None = None, overrides: Mapping[str, Any] | None = None,
                       seed: int = 0) -> dict[str, list[float]]:
    """The training loss of the first ``steps`` steps on digits in each framework, from the
    same canonical start (PyTorch's torchvision-style initialisation from ``seed``), with
    dropout and augmentation off and the same batches: framework -> losses."""
    from ..core.spec import load_spec
    from ..training import data as datasets
    from ..training.loop import epoch_order

    base = {"in_channels": 1, "dropout": 0.0, **(overrides or {})}
    if "input_size" not in base:
        base["input_size"] = datasets.min_input_size(model, base)
    data = datasets.load("digits", load_spec(model, base).input_shape)
    spec = load_spec(model, {**base, "num_classes": data.num_classes})
    start = build_trainer("torch", spec, opt or OptimizerConfig(), seed=seed).export_weights()
    order = epoch_order(len(data.x_train), seed, 1)
    curves = {}
    for fw in frameworks:
        trainer = build_trainer(fw, spec, opt or OptimizerConfig(), start)
        curves[fw] = [trainer.step(data.x_train[idx], data.y_train[idx])
                      for idx in (order[i * batch:(i + 1) * batch] for i in range(steps))]
    return curves
