"""The Keras 3 training step: a custom step under ``tf.GradientTape`` with ``keras.optimizers``
(TensorFlow backend), mapped to PyTorch's update rules (``rosetta_cnn.training.trainer.OptimizerConfig``).

Optimizer mapping, and why each differs from the obvious Keras call:

* ``sgd``: ``keras.optimizers.SGD(lr, momentum)`` keeps ``v = momentum * v - lr * g`` and
  adds ``v``: with a constant lr that is PyTorch's ``buf = momentum * buf + g; p -= lr * buf``
  (``v = -lr * buf``). Keras' ``weight_decay=`` argument is DECOUPLED (``p -= lr * wd * p``
  outside the momentum), not PyTorch's coupled L2, so the step adds ``wd * p`` to every
  gradient itself and the optimizer gets no ``weight_decay``;
* ``adam``: Keras' Adam puts epsilon outside ``sqrt(v)`` with the bias correction folded into
  the step size (Kingma & Ba's "epsilon hat"), which equals PyTorch's
  ``m_hat / (sqrt(v_hat) + eps)`` only with a step-dependent ``eps * sqrt(1 - beta2^t)``.
  :class:`TorchAdam` overrides ``update_step`` with PyTorch's placement; L2 is coupled as for
  SGD;
* ``adamw``: :class:`TorchAdam` with Keras' own (decoupled) ``weight_decay``, applied before
  the update as ``torch.optim.AdamW`` does.

BatchNorm momentum: Keras keeps ``m * moving + (1 - m) * batch``, so ``layers.bn_momentum``
builds the layers with 1 - 0.1 = 0.9. Loss: ``SparseCategoricalCrossentropy(from_logits=True)``
with its default ``sum_over_batch_size`` (mean) reduction, plus 0.3 x each auxiliary head's.
"""
from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf
from keras import ops as kops

from rosetta_cnn.core.layout import flatten_inputs
from rosetta_cnn.core.spec import ModelSpec
from rosetta_cnn.training.trainer import OptimizerConfig, PackageTrainer, is_parameter, loss_weights

from . import layout, weights


def cross_entropy(logits: Any, labels: Any) -> Any:
    """Mean cross-entropy over the batch."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)


@keras.saving.register_keras_serializable(package="rosetta")
class TorchAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with PyTorch's epsilon placement (outside the bias-corrected root)."""

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        lr = kops.cast(learning_rate, variable.dtype)
        gradient = kops.cast(gradient, variable.dtype)
        t = kops.cast(self.iterations + 1, variable.dtype)
        b1, b2 = kops.cast(self.beta_1, variable.dtype), kops.cast(self.beta_2, variable.dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, (gradient - m) * (1 - b1))
        self.assign_add(v, (kops.square(gradient) - v) * (1 - b2))
        m_hat = m / (1 - kops.power(b1, t))
        v_hat = v / (1 - kops.power(b2, t))
        self.assign_sub(variable, lr * m_hat / (kops.sqrt(v_hat) + self.epsilon))


def build_optimizer(opt: OptimizerConfig) -> keras.optimizers.Optimizer:
    """The Keras optimizer for ``opt``; coupled L2 is added to the gradients by the step."""
    if opt.name == "sgd":
        return keras.optimizers.SGD(learning_rate=opt.lr, momentum=opt.momentum)
    return TorchAdam(learning_rate=opt.lr, beta_1=opt.betas[0], beta_2=opt.betas[1], epsilon=opt.eps,
                     weight_decay=opt.decoupled_decay or None)


def coupled_l2(opt: OptimizerConfig) -> float:
    """The L2 coefficient the step adds to each gradient (PyTorch's coupled weight decay)."""
    return opt.coupled_l2


class KerasTrainer(PackageTrainer):
    """Trains a functional Keras model in place (see ``rosetta_cnn.training.trainer.Trainer``)."""

    framework = "keras"

    def __init__(self, model: keras.Model, spec: ModelSpec, opt: OptimizerConfig):
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(f"the Keras trainer uses tf.GradientTape: set KERAS_BACKEND=tensorflow "
                               f"(the backend is {keras.backend.backend()!r})")
        self.model, self.spec, self.opt = model, spec, opt
        self.optimizer = build_optimizer(opt)
        self.optimizer.build(model.trainable_variables)
        self._l2 = coupled_l2(opt)
        self._weights = loss_weights(spec)
        self._train_step = tf.function(self._step, reduce_retracing=True)
        self._grad_step = tf.function(self._grads, reduce_retracing=True)

    def _loss(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        out = self.model(x, training=True)
        outputs = out if isinstance(out, dict) else {"logits": out}
        return sum(w * cross_entropy(outputs[key], y) for key, w in self._weights.items())

    def _grads(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
        with tf.GradientTape() as tape:
            loss = self._loss(x, y)
        return loss, tape.gradient(loss, self.model.trainable_variables)

    def _step(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        loss, grads = self._grads(x, y)
        variables = self.model.trainable_variables
        if self._l2:
            grads = [g + self._l2 * v for g, v in zip(grads, variables)]
        self.optimizer.apply_gradients(zip(grads, variables))
        return loss

    @staticmethod
    def _inputs(x_nchw: np.ndarray, y: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
        return (tf.constant(layout.nchw_to_framework(np.asarray(x_nchw, dtype=np.float32))),
                tf.constant(np.asarray(y, dtype=np.int64)))

    def step(self, x_nchw: np.ndarray, y: np.ndarray) -> float:
        """One training step; returns the loss before the update."""
        return float(self._train_step(*self._inputs(x_nchw, y)))

    def gradients(self, x_nchw: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """Canonical gradients of the training loss (without the L2 term); nothing is updated."""
        _, grads = self._grad_step(*self._inputs(x_nchw, y))
        by_variable = {id(v): g for v, g in zip(self.model.trainable_variables, grads)}
        flat = flatten_inputs(self.spec)
        return {name: layout.tensor_from_framework(layer, suffix, by_variable[id(variable)].numpy(), flat.get(layer.name))
                for name, layer, suffix, variable in weights.variables(self.model, self.spec) if is_parameter(name)}

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """``{f"{index}.{variable name}": array}`` over ``optimizer.variables`` (iterations, slots)."""
        return {f"{i}.{v.name}": keras.ops.convert_to_numpy(v).copy() for i, v in enumerate(self.optimizer.variables)}

    def load_optimizer_state(self, state: Mapping[str, np.ndarray]) -> None:
        variables = self.optimizer.variables
        if len(state) != len(variables):
            raise ValueError(f"optimizer state has {len(state)} arrays, this {self.opt.name} optimizer "
                             f"has {len(variables)} variables")
        by_index = {int(key.split(".", 1)[0]): value for key, value in state.items()}
        for i, v in enumerate(variables):
            v.assign(np.asarray(by_index[i]).reshape(v.shape))

    def reseed(self, seed: int) -> None:
        for i, layer in enumerate(self.model.layers):
            generator = getattr(layer, "seed_generator", None)
            if generator is not None:  # Dropout: its stream restarts from (seed, layer index)
                generator.state.assign(np.array([seed, i], dtype=generator.state.dtype))


def make_trainer(model: keras.Model, spec: ModelSpec, opt: OptimizerConfig) -> KerasTrainer:
    """A trainer that updates ``model`` in place with ``opt``."""
    return KerasTrainer(model, spec, opt)
