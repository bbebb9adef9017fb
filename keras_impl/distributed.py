"""Data-parallel training in Keras 3: a distribution scope, per backend.

* JAX (:class:`DataParallelEngine`): Keras' distribution API,
  ``keras.distribution.set_distribution(keras.distribution.DataParallel(devices))``, set before
  the model is built, so every variable is created replicated over the device mesh; each batch
  is laid out with ``distribution.get_data_layout`` (sharded along its first axis) and the
  one-device step (``train.JaxStep``: ``stateless_call`` + ``jax.value_and_grad`` under
  ``jax.jit``) runs as one program partitioned by XLA, the gradient all-reduce included.
  ``keras.distribution.initialize`` joins several processes (``KERAS_DISTRIBUTION_*`` or JAX's
  variables). BatchNorm's moments are reductions over the sharded batch: global statistics.
* TensorFlow (:class:`MirroredEngine`): ``tf.distribute.MirroredStrategy`` over N logical CPU
  devices (or GPUs), ``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``; the model and the
  optimizer are built in ``strategy.scope()`` (mirrored variables) and the one-device step
  (``train.TensorFlowStep``) runs on every replica through ``strategy.run``. Keras' optimizer
  sums the replicas' gradients (``apply_gradients`` all-reduces in the replica context), so
  each replica contributes its mean loss / N (tf.distribute's convention, which Keras' losses
  apply themselves: ``replica_loss``) and the coupled L2 term / N (``with_l2``). The step runs as a TensorFlow graph: XLA (``jit_compile``)
  cannot compile a step whose variables live on other devices. BatchNorm: per-replica
  statistics (each replica's B/N rows; the moving statistics read back are replica 0's);
  ``--sync-bn`` turns on Keras' synchronized BatchNormalization (cross-replica moments).
* PyTorch: none. Keras' distribution API has no PyTorch implementation (``keras/src/backend/
  torch`` has no ``distribution_lib``); ``training/distributed.plan`` refuses ``keras/torch``.
"""
from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np

from rosetta_cnn.core import xla
from rosetta_cnn.core.errors import RosettaError
from rosetta_cnn.core.spec import ModelSpec
from rosetta_cnn.training.distributed import FreshProcess, Plan, jax_join, jax_resolved, replica_rows, resolved
from rosetta_cnn.training.trainer import OptimizerConfig

from . import layers, runtime, weights
from .model import build_model
from .train import KerasTrainer


def replica_batch(x: np.ndarray, replica: int, replicas: int) -> np.ndarray:
    """The rows of a global batch that replica (TensorFlow) or process (JAX) ``replica`` of
    ``replicas`` holds."""
    return x[replica_rows(len(x), replica, replicas)]


def replica_loss(loss: Any, replicas: int) -> Any:
    """What a replica differentiates, as Keras already computes it. TensorFlow: the replica's
    mean loss / N, since the optimizer sums the N replicas' gradients; Keras' losses divide by
    ``num_replicas_in_sync`` themselves inside a ``tf.distribute`` replica
    (``keras.losses.Loss``: ``scale_loss_for_distribution``). JAX: the loss of the global
    program, already the mean over every device's rows."""
    return loss


class DataParallelTrainer(KerasTrainer):
    """``KerasTrainer`` on the JAX backend under ``keras.distribution.DataParallel``."""

    def __init__(self, model: keras.Model, spec: ModelSpec, opt: OptimizerConfig, engine: DataParallelEngine):
        super().__init__(model, spec, opt)
        self.engine = engine
        self.replica_shape: tuple[int, ...] | None = None  # the rows device 0 last trained on

    def loss(self, outputs: Any, y: Any) -> Any:
        return replica_loss(super().loss(outputs, y), self.engine.plan.devices)

    def shard(self, a: np.ndarray) -> Any:
        """A global batch laid out as the distribution says (``get_data_layout``: first axis
        sharded over the mesh), each process contributing its rows."""
        import jax

        plan, distribution = self.engine.plan, self.engine.distribution
        layout = distribution.get_data_layout(a.shape)
        local = replica_batch(a, plan.process_index, plan.processes)
        if plan.processes == 1:
            return keras.distribution.distribute_tensor(local, layout)
        return jax.make_array_from_process_local_data(layout.backend_layout, local, a.shape)

    def step(self, x_nchw: np.ndarray, y: np.ndarray) -> float:
        x, y = self._inputs(x_nchw, y)
        xs, ys = self.shard(x), self.shard(y)
        self.replica_shape = tuple(xs.addressable_shards[0].data.shape)
        return self._step.step(xs, ys)

    def predict(self, x_nchw: np.ndarray) -> np.ndarray:
        """Eval-mode logits, the batch sharded like a training batch (padded to a multiple of N)."""
        from jax.experimental import multihost_utils

        n, devices = len(x_nchw), self.engine.plan.devices
        x = self._inputs(x_nchw, np.zeros(n))[0]
        if n % devices:
            x = np.concatenate([x, np.repeat(x[-1:], devices - n % devices, axis=0)])
        name = self.spec.outputs["logits"]
        out = runtime.compiled(self.model, (name,), False)(self.shard(x))[name]
        if self.engine.plan.processes > 1:
            out = multihost_utils.process_allgather(out, tiled=True)
        return np.asarray(out)[:n]


class DataParallelEngine:
    """Keras' ``DataParallel`` distribution over N JAX devices (host devices on a CPU)."""

    def __init__(self, plan: Plan):
        import jax

        def initialize(env: Mapping[str, str]) -> None:
            keras.distribution.initialize(
                job_addresses=env.get("KERAS_DISTRIBUTION_JOB_ADDRESSES") or env.get("JAX_COORDINATOR_ADDRESS"),
                num_processes=plan.processes or None, process_id=plan.process_index)

        ready = jax_join(plan, initialize)
        devices, platform = keras.distribution.list_devices(), jax.default_backend()
        self.plan = jax_resolved(plan, devices, ready, "Keras on JAX")
        self.platform = platform
        self.distribution = keras.distribution.DataParallel(devices=devices[:plan.devices])
        keras.distribution.set_distribution(self.distribution)

    @property
    def name(self) -> str:
        return f"{self.plan.engine} ({self.plan.devices} {self.platform} devices, {self.plan.processes} process(es))"

    def build_trainer(self, spec: ModelSpec, opt: OptimizerConfig, *, seed: int = 0,
                      tensors: Mapping[str, np.ndarray] | None = None) -> DataParallelTrainer:
        model = build_model(spec, seed=seed, initialize=tensors is None)  # under the distribution: variables replicated
        if tensors is not None:
            weights.import_weights(model, spec, tensors)
        return DataParallelTrainer(model, spec, opt, self)

    def gather(self, value: int) -> list[int]:
        """``value`` from every process, in process order."""
        return xla.gather_ints(value, self.plan.processes)

    def close(self) -> None:
        keras.distribution.set_distribution(None)


class MirroredTrainer(KerasTrainer):
    """``KerasTrainer`` on TensorFlow whose step runs on every replica of a ``tf.distribute`` strategy."""

    def __init__(self, model: keras.Model, spec: ModelSpec, opt: OptimizerConfig, engine: MirroredEngine):
        import tensorflow as tf

        super().__init__(model, spec, opt, compilation="graph")
        self.engine = engine
        self.replica_shape: tuple[int, ...] | None = None  # the rows replica 0 last trained on
        strategy = engine.strategy

        def step(x: Any, y: Any) -> Any:
            per_replica = strategy.run(self._step._step, args=(x, y))  # loss, gradients, apply_gradients
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        self._distributed_step = tf.function(step, reduce_retracing=True)

    def loss(self, outputs: Any, y: Any) -> Any:
        return replica_loss(super().loss(outputs, y), self.engine.plan.devices)

    def with_l2(self, grads: list[Any], values: list[Any]) -> list[Any]:
        """PyTorch's coupled L2, ``wd * p`` in the summed gradient: ``wd / N * p`` from each replica."""
        n = self.engine.plan.devices
        return [g + (self.l2 / n) * v for g, v in zip(grads, values)] if self.l2 else grads

    def shard(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
        """Each replica's rows of a global batch (``experimental_distribute_values_from_function``)."""
        n = self.engine.plan.devices

        def rows(ctx: Any) -> tuple[np.ndarray, np.ndarray]:
            r = ctx.replica_id_in_sync_group
            return replica_batch(x, r, n), replica_batch(y, r, n)

        return self.engine.strategy.experimental_distribute_values_from_function(rows)

    def step(self, x_nchw: np.ndarray, y: np.ndarray) -> float:
        xs, ys = self.shard(*self._inputs(x_nchw, y))
        self.replica_shape = tuple(self.engine.strategy.experimental_local_results(xs)[0].shape)
        return float(self._distributed_step(xs, ys))


class MirroredEngine:
    """``tf.distribute.MirroredStrategy`` over N logical CPU devices or GPUs, or
    ``MultiWorkerMirroredStrategy`` for the cluster ``TF_CONFIG`` describes."""

    def __init__(self, plan: Plan):
        import tensorflow as tf

        if plan.launcher == "tf-config":
            self.strategy = tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG
            resolver = self.strategy.cluster_resolver
            processes = plan.processes
            index = plan.process_index if resolver is None else (
                int(resolver.task_id) + (0 if resolver.task_type == "chief" else
                                         len(resolver.cluster_spec().as_dict().get("chief", []))))
        else:
            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                if len(gpus) < plan.devices:
                    raise RosettaError(f"--devices {plan.devices}: TensorFlow sees {len(gpus)} GPU(s)")
                devices = [f"/gpu:{i}" for i in range(plan.devices)]
            else:
                cpu = tf.config.list_physical_devices("CPU")[0]
                try:
                    tf.config.set_logical_device_configuration(
                        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(plan.devices)])
                except RuntimeError:  # TensorFlow's runtime already started in this process
                    if len(tf.config.list_logical_devices("CPU")) < plan.devices:
                        raise FreshProcess("TensorFlow's runtime already started in this process with "
                                           f"{len(tf.config.list_logical_devices('CPU'))} CPU device(s)", {}) from None
                devices = [f"/cpu:{i}" for i in range(plan.devices)]
            self.strategy = tf.distribute.MirroredStrategy(devices)
            processes, index = 1, 0
        self.plan = resolved(plan, processes=processes, process_index=index,
                             devices=self.strategy.num_replicas_in_sync)

    @property
    def name(self) -> str:
        return f"{self.plan.engine} ({self.plan.devices} replicas, {self.plan.processes} process(es))"

    def build_trainer(self, spec: ModelSpec, opt: OptimizerConfig, *, seed: int = 0,
                      tensors: Mapping[str, np.ndarray] | None = None) -> MirroredTrainer:
        with self.strategy.scope():  # mirrored variables: the model's and the optimizer's
            model = build_model(spec, seed=seed, initialize=tensors is None)  # tensors set every weight
            if tensors is not None:
                weights.import_weights(model, spec, tensors)
            if self.plan.sync_bn:
                for layer in model.layers:
                    if isinstance(layer, layers.BatchNorm):
                        layer.synchronized = True  # Keras' cross-replica moments
            return MirroredTrainer(model, spec, opt, self)

    def gather(self, value: int) -> list[int]:
        """``value`` from every replica, in replica order."""
        import tensorflow as tf

        if self.plan.processes == 1:
            return [int(value)]
        per_replica = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant([int(value)]))
        return [int(v) for v in np.asarray(self.strategy.gather(per_replica, axis=0))]

    def close(self) -> None:
        pass


def setup(plan: Plan) -> DataParallelEngine | MirroredEngine:
    """The engine of this process's Keras backend (``training/distributed.py``)."""
    backend = keras.backend.backend()
    if backend == "jax":
        return DataParallelEngine(plan)
    if backend == "tensorflow":
        return MirroredEngine(plan)
    raise RosettaError(f"Keras on {backend} has no data-parallel engine (keras.distribution runs on JAX, "
                       "tf.distribute on TensorFlow); use keras/jax or keras/tensorflow")
