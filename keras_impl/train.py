"""The Keras 3 training step, one idiomatic step per backend, with ``keras.optimizers`` mapped to
PyTorch's update rules (``rosetta_cnn.training.trainer.OptimizerConfig``).

The model, the loss, the optimizer and its mapping are the same Keras objects on every
backend; only how the gradients are taken and the update is compiled differs (``STEPS``):

* TensorFlow (:class:`TensorFlowStep`): ``tf.GradientTape`` inside a ``tf.function``, by
  default compiled by XLA (``jit_compile=True``; ``graph`` runs TensorFlow's own kernels);
* JAX (:class:`JaxStep`): a pure function of the variables' values,
  ``model.stateless_call`` + ``jax.value_and_grad`` + ``optimizer.stateless_apply``, under
  ``jax.jit`` with the model's and the optimizer's buffers donated (XLA updates them in
  place); the new values are put back into the ``keras.Variable``\\ s after each step;
* PyTorch (:class:`TorchStep`): ``loss.backward()`` and ``optimizer.apply`` under
  ``torch.no_grad()``, eagerly (``compile`` wraps the step in ``torch.compile``, as Keras'
  ``jit_compile=True`` does on this backend).

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
builds the layers with 1 - 0.1 = 0.9 (and ``layers.BatchNorm`` moves the running variance
with the unbiased batch variance), on every backend. Loss:
``SparseCategoricalCrossentropy(from_logits=True)`` with its default ``sum_over_batch_size``
(mean) reduction, plus 0.3 x each auxiliary head's.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import keras
import numpy as np
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


#: backend -> the compilations its step offers, the default first. Measured with
#: ``rosetta bench --models vgg16 --batch 8`` (docs/keras-backends.md): TensorFlow's XLA step
#: trains VGG16 1.5x faster than its graph step; PyTorch's eager step is faster than
#: torch.compile's after a compile of minutes.
COMPILATIONS: dict[str, tuple[str, ...]] = {"tensorflow": ("xla", "graph"), "jax": ("jit",),
                                            "torch": ("eager", "compile")}


class KerasTrainer(PackageTrainer):
    """Trains a functional Keras model in place (see ``rosetta_cnn.training.trainer.Trainer``)
    with the step of the process's Keras backend (``STEPS``)."""

    framework = "keras"

    def __init__(self, model: keras.Model, spec: ModelSpec, opt: OptimizerConfig, *,
                 compilation: str | None = None):
        backend = keras.backend.backend()
        if backend not in STEPS:
            raise RuntimeError(f"the Keras trainer does not know the backend {backend!r}; "
                               f"it trains on {', '.join(STEPS)}")
        compilation = compilation or COMPILATIONS[backend][0]
        if compilation not in COMPILATIONS[backend]:
            raise ValueError(f"the {backend} step compiles as {' or '.join(COMPILATIONS[backend])}, "
                             f"not {compilation!r}")
        self.model, self.spec, self.opt = model, spec, opt
        self.backend, self.compilation = backend, compilation
        self.optimizer = build_optimizer(opt)
        self.optimizer.build(model.trainable_variables)
        self.l2 = coupled_l2(opt)
        self.loss_weights = loss_weights(spec)
        self._step = STEPS[backend](self)

    def loss(self, outputs: Any, y: Any) -> Any:
        """The training loss of the model's outputs (a dict with aux heads, else the logits)."""
        outputs = outputs if isinstance(outputs, dict) else {"logits": outputs}
        return sum(w * cross_entropy(outputs[key], y) for key, w in self.loss_weights.items())

    def with_l2(self, grads: list[Any], values: list[Any]) -> list[Any]:
        """PyTorch's coupled weight decay: ``g + wd * p`` for every trainable parameter."""
        return [g + self.l2 * v for g, v in zip(grads, values)] if self.l2 else grads

    @staticmethod
    def _inputs(x_nchw: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (layout.nchw_to_framework(np.asarray(x_nchw, dtype=np.float32)),  # [N, C, H, W] -> [N, H, W, C]
                np.asarray(y, dtype=np.int32))

    def step(self, x_nchw: np.ndarray, y: np.ndarray) -> float:
        """One training step; returns the loss before the update."""
        return self._step.step(*self._inputs(x_nchw, y))

    def gradients(self, x_nchw: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """Canonical gradients of the training loss (without the L2 term); the parameters are
        not updated (the training-mode forward moves the BatchNorm statistics, as everywhere)."""
        grads = self._step.gradients(*self._inputs(x_nchw, y))
        by_variable = {id(v): g for v, g in zip(self.model.trainable_variables, grads)}
        flat = flatten_inputs(self.spec)
        return {name: layout.tensor_from_framework(layer, suffix, keras.ops.convert_to_numpy(by_variable[id(variable)]),
                                                   flat.get(layer.name))
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


class TensorFlowStep:
    """``tf.GradientTape`` inside a ``tf.function``; XLA-compiled unless ``compilation`` is ``graph``."""

    def __init__(self, trainer: KerasTrainer):
        import tensorflow as tf

        self.t = trainer
        jit = trainer.compilation == "xla"
        self._train_step = tf.function(self._step, jit_compile=jit, reduce_retracing=True)
        self._grad_step = tf.function(self._grads, jit_compile=jit, reduce_retracing=True)

    def _grads(self, x: Any, y: Any) -> tuple[Any, list[Any]]:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = self.t.loss(self.t.model(x, training=True), y)
        return loss, tape.gradient(loss, self.t.model.trainable_variables)

    def _step(self, x: Any, y: Any) -> Any:
        loss, grads = self._grads(x, y)
        variables = self.t.model.trainable_variables
        self.t.optimizer.apply_gradients(zip(self.t.with_l2(grads, variables), variables))
        return loss

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(self._train_step(x, y))

    def gradients(self, x: np.ndarray, y: np.ndarray) -> list[Any]:
        return self._grad_step(x, y)[1]


class JaxStep:
    """A pure step over the variables' values under ``jax.jit``, the state buffers donated.

    The ``keras.Variable``\\ s hold the values between steps (so export, predict and resume
    see them); a step takes them, donates them to XLA and puts the new values back. Values
    that did not come out of a step (imported weights, a loaded optimizer state, a reseed)
    may share memory with the caller's numpy arrays and are copied before they are donated.
    """

    def __init__(self, trainer: KerasTrainer):
        import jax

        self.t = trainer
        model, optimizer = trainer.model, trainer.optimizer
        self.variables = (model.trainable_variables, model.non_trainable_variables, optimizer.variables)
        self._owned: list[Any] = []  # the values the last step put into the variables

        def loss_fn(trainable: list, non_trainable: list, x: Any, y: Any) -> tuple[Any, list]:
            outputs, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
            return trainer.loss(outputs, y), non_trainable

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def train_step(state: tuple[list, list, list], x: Any, y: Any) -> tuple[Any, tuple[list, list, list]]:
            trainable, non_trainable, optimizer_vars = state
            (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
            trainable, optimizer_vars = optimizer.stateless_apply(optimizer_vars, trainer.with_l2(grads, trainable),
                                                                  trainable)
            return loss, (trainable, non_trainable, optimizer_vars)

        self._train_step = jax.jit(train_step, donate_argnums=0)
        self._grad_step = jax.jit(grad_fn)

    def _state(self) -> tuple[list, list, list]:
        import jax.numpy as jnp

        values = [[v.value for v in group] for group in self.variables]
        flat = [a for group in values for a in group]
        if len(flat) != len(self._owned) or any(a is not b for a, b in zip(flat, self._owned)):
            values = [[jnp.array(a, copy=True) for a in group] for group in values]
        return values[0], values[1], values[2]

    def _put(self, state: tuple[list, ...]) -> None:
        for group, values in zip(self.variables, state):
            for variable, value in zip(group, values):
                variable.assign(value)
        self._owned = [v.value for group in self.variables for v in group]

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        loss, state = self._train_step(self._state(), x, y)
        self._put(state)
        return float(loss)

    def gradients(self, x: np.ndarray, y: np.ndarray) -> list[Any]:
        trainable, non_trainable, _ = (list(v.value for v in group) for group in self.variables)
        (_, non_trainable), grads = self._grad_step(trainable, non_trainable, x, y)
        for variable, value in zip(self.variables[1], non_trainable):
            variable.assign(value)
        return grads


class TorchStep:
    """``loss.backward()`` and ``optimizer.apply`` without autograd; ``compile`` wraps the
    whole step in ``torch.compile`` (what Keras' ``jit_compile=True`` does on PyTorch)."""

    def __init__(self, trainer: KerasTrainer):
        import torch

        self.t = trainer
        self._train_step: Callable[[Any, Any], Any] = self._step
        if trainer.compilation == "compile":
            self._train_step = torch.compile(self._step)

    def _grads(self, x: Any, y: Any) -> tuple[Any, list[Any]]:
        import torch

        variables = self.t.model.trainable_variables
        for v in variables:
            v.value.grad = None  # gradients accumulate in PyTorch
        x, y = torch.as_tensor(x), torch.as_tensor(y, dtype=torch.int64)
        loss = self.t.loss(self.t.model(x, training=True), y)
        loss.backward()
        return loss.detach(), [v.value.grad for v in variables]

    def _step(self, x: Any, y: Any) -> Any:
        import torch

        loss, grads = self._grads(x, y)
        variables = self.t.model.trainable_variables
        with torch.no_grad():
            self.t.optimizer.apply(self.t.with_l2(grads, [v.value for v in variables]), variables)
        return loss

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(self._train_step(x, y))

    def gradients(self, x: np.ndarray, y: np.ndarray) -> list[Any]:
        return self._grads(x, y)[1]


#: Keras backend -> its training step
STEPS: dict[str, Callable[[KerasTrainer], Any]] = {"tensorflow": TensorFlowStep, "jax": JaxStep, "torch": TorchStep}


def make_trainer(model: keras.Model, spec: ModelSpec, opt: OptimizerConfig, *,
                 compilation: str | None = None) -> KerasTrainer:
    """A trainer that updates ``model`` in place with ``opt``, with the step of the process's
    Keras backend compiled as ``compilation`` (``COMPILATIONS``; the backend's default if None)."""
    return KerasTrainer(model, spec, opt, compilation=compilation)
