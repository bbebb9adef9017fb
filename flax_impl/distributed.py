"""Data-parallel training in Flax NNX: a device ``Mesh`` and ``NamedSharding``, computation
following the data.

One process drives all its devices (on a CPU, N host devices made by XLA's
``--xla_force_host_platform_device_count``, set before JAX starts: ``core/xla.py``);
``jax.distributed.initialize`` joins several processes into one global set of devices. The
mesh (``jax.make_mesh``, explicit axes, JAX's default) has one axis, ``data``: the model's and
the optimizer's state are replicated over it (``NamedSharding(mesh, P())``) and each batch is
sharded along it (``NamedSharding(mesh, P("data"))``, device r holding rows
``[r * B/N, (r + 1) * B/N)``). The step is the one-device step (``train.py``, ``nnx.jit``):
the program is written for the global batch, and XLA's partitioner splits it over the devices
and inserts the all-reduce of the gradients (and of every other reduction over the batch).

BatchNorm: its batch mean and variance are such reductions, so the statistics are global, as
on one device (``layers.batch_stats`` shifts by a mean, not by ``x[0, 0, 0]``, which explicit
axes refuse to index across devices). ``--sync-bn`` changes nothing here.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rosetta_cnn.core import xla
from rosetta_cnn.core.spec import ModelSpec
from rosetta_cnn.training.distributed import Plan, jax_join, jax_resolved, replica_rows
from rosetta_cnn.training.trainer import OptimizerConfig

from . import layout, weights
from .model import SpecModel, build_model
from .train import FlaxTrainer

#: the mesh axis the batch is sharded over
AXIS = "data"


def replica_batch(x: np.ndarray, process: int, processes: int) -> np.ndarray:
    """The rows of a global batch that process ``process`` of ``processes`` holds (its devices'
    shards; with one process, the whole batch)."""
    return x[replica_rows(len(x), process, processes)]


def replica_loss(loss: jax.Array, devices: int) -> jax.Array:
    """The loss of the global batch as the program computes it: already the mean over all
    devices' rows (XLA partitions the mean), so nothing to divide."""
    return loss


class ShardedTrainer(FlaxTrainer):
    """``FlaxTrainer`` whose state is replicated over the mesh and whose batches are sharded."""

    def __init__(self, model: SpecModel, spec: ModelSpec, opt: OptimizerConfig, engine: ShardedEngine):
        super().__init__(model, spec, opt)
        self.engine = engine
        self.replicated = NamedSharding(engine.mesh, P())
        self.batch_sharding = NamedSharding(engine.mesh, P(AXIS))
        self._eval = nnx.jit(lambda m, x: jax.sharding.reshard(m(x), P()))
        self.replica_shape: tuple[int, ...] | None = None  # the rows device 0 last trained on

    def loss(self, outputs: dict[str, jax.Array], y: jax.Array) -> jax.Array:
        return replica_loss(super().loss(outputs, y), self.engine.plan.devices)

    def shard(self, a: np.ndarray) -> jax.Array:
        """A global batch as one array sharded over the mesh's ``data`` axis (each process
        contributes its rows)."""
        plan = self.engine.plan
        local = replica_batch(a, plan.process_index, plan.processes)
        if plan.processes == 1:
            return jax.device_put(local, self.batch_sharding)
        return jax.make_array_from_process_local_data(self.batch_sharding, local, (len(a), *a.shape[1:]))

    def replicate(self) -> None:
        """Put the model's and the optimizer's state on every device of the mesh (a no-op for
        what is already there; ``predict`` and a resume leave state elsewhere)."""
        state = nnx.state((self.model, self.optimizer))
        several = self.engine.plan.processes > 1

        def put(a: Any) -> Any:
            if isinstance(a, jax.Array) and a.sharding == self.replicated:
                return a
            return _global(_host(a), self.replicated) if several else jax.device_put(a, self.replicated)

        nnx.update((self.model, self.optimizer), jax.tree.map(put, state))

    def step(self, x_nchw: np.ndarray, y: np.ndarray) -> float:
        """One step on a global batch; returns its mean loss."""
        x, y = self._inputs_host(x_nchw, y)
        self.model.train()
        with jax.set_mesh(self.engine.mesh):
            self.replicate()
            xs, ys = self.shard(x), self.shard(y)
            self.replica_shape = tuple(xs.addressable_shards[0].data.shape)
            return float(self._step(self.model, self.optimizer, xs, ys))

    @staticmethod
    def _inputs_host(x_nchw: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return layout.nchw_to_framework(np.asarray(x_nchw, dtype=np.float32)), np.asarray(y, dtype=np.int32)

    def predict(self, x_nchw: np.ndarray) -> np.ndarray:
        """Eval-mode logits, the batch sharded like a training batch (padded to a multiple of N)."""
        n, devices = len(x_nchw), self.engine.plan.devices
        x = layout.nchw_to_framework(np.asarray(x_nchw, dtype=np.float32))
        if n % devices:
            x = np.concatenate([x, np.repeat(x[-1:], devices - n % devices, axis=0)])
        self.model.eval()
        with jax.set_mesh(self.engine.mesh):
            self.replicate()
            logits = self._eval(self.model, self.shard(x))
        return np.asarray(logits)[:n]

    def export_weights(self) -> dict[str, np.ndarray]:
        """The canonical tensors, read from this process's copy of the replicated state."""
        copy = nnx.clone(self.model)
        nnx.update(copy, jax.tree.map(_host, nnx.state(self.model)))
        return weights.export_weights(copy, self.spec)

    def optimizer_state(self) -> dict[str, np.ndarray]:
        leaves = jax.tree_util.tree_leaves_with_path(nnx.state(self.optimizer))
        return {f"{i}.{jax.tree_util.keystr(path)}": _host(leaf) for i, (path, leaf) in enumerate(leaves)}


def _host(a: Any) -> Any:
    """A numpy copy of a replicated array (this process's copy; no transfer between processes)."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        a = a.addressable_data(0)
    if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        return a  # an RNG key: device_put copies it as it is
    return np.asarray(a)


def _global(a: Any, sharding: NamedSharding) -> jax.Array:
    """One array over every process's devices from the copy each process holds (``device_put``
    reaches this process's devices only)."""
    if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):  # RNG keys: their data
        return jax.random.wrap_key_data(_global(np.asarray(jax.random.key_data(a)), sharding),
                                        impl=jax.random.key_impl(a))
    return jax.make_array_from_callback(np.shape(a), sharding, lambda index: np.asarray(a)[index])


class ShardedEngine:
    """This process's view of the mesh: JAX started with enough devices (and joined to the
    other processes under ``jax.distributed``)."""

    def __init__(self, plan: Plan):
        def initialize(env: Mapping[str, str]) -> None:
            jax.distributed.initialize(coordinator_address=env.get("JAX_COORDINATOR_ADDRESS"),
                                       num_processes=plan.processes if "JAX_NUM_PROCESSES" in env else None,
                                       process_id=plan.process_index if "JAX_PROCESS_ID" in env else None)

        ready = jax_join(plan, initialize)
        platform, devices = jax.default_backend(), jax.devices()
        self.plan = jax_resolved(plan, devices, ready, "JAX")
        self.platform = platform
        self.mesh = jax.make_mesh((plan.devices,), (AXIS,), devices=devices[:plan.devices])

    @property
    def name(self) -> str:
        return (f"{self.plan.engine} ({self.plan.devices} {self.platform} devices, mesh axis {AXIS!r}, "
                f"{self.plan.processes} process(es))")

    def build_trainer(self, spec: ModelSpec, opt: OptimizerConfig, *, seed: int = 0,
                      tensors: Mapping[str, np.ndarray] | None = None) -> ShardedTrainer:
        model = build_model(spec, seed=seed, initialize=tensors is None)  # tensors set every weight
        if tensors is not None:
            weights.import_weights(model, spec, tensors)
        return ShardedTrainer(model, spec, opt, self)

    def gather(self, value: int) -> list[int]:
        """``value`` from every process, in process order."""
        return xla.gather_ints(value, self.plan.processes)

    def close(self) -> None:
        if self.plan.processes > 1:
            jax.distributed.shutdown()


def setup(plan: Plan) -> ShardedEngine:
    """Start JAX with the plan's devices and build the mesh (``training/distributed.py``)."""
    return ShardedEngine(plan)
