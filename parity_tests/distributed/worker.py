"""The equivalence runs of ``test_equivalence.py``, in the process(es) of one engine.

    python -m parity_tests.distributed.worker JOB.json

JOB names the implementation, the device count, the canonical start weights and the batches
(an ``.npz``) for each model kind (``plain``: vgg11 widths / 8; ``bn``: vgg11_bn), and where to
write the results. For each kind the worker trains, from the same weights on the same global
batches: ``reference`` (the ordinary one-device trainer), ``dp`` (the engine on N devices) and,
for the kinds the job asks, ``chunked`` (one process splitting each batch into N chunks and
accumulating their gradients: what per-replica BatchNorm computes), ``sync`` (``--sync-bn``)
and the seeded faults, each applied to the engine and undone afterwards:

* ``fault:summed``: each replica's loss summed over the replicas instead of averaged;
* ``fault:whole``: every replica fed the whole global batch;
* ``fault:no_allreduce``: the gradient all-reduce skipped (each replica updates with its own).

DDP runs in N processes (torchrun's environment, started by the test): every rank runs every
engine scenario in the same order (their collectives must match) and rank 0 also runs the
one-process references and writes the results. Output: ``OUT.npz`` (``kind/scenario/tensor``)
and ``OUT.json`` (losses, the rows device 0 trained on, seconds).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from safetensors.numpy import load_file

from rosetta_cnn.core import ports
from rosetta_cnn.core.spec import load_spec
from rosetta_cnn.training import distributed
from rosetta_cnn.training.trainer import OptimizerConfig, build_trainer


def run_steps(trainer: Any, xs: np.ndarray, ys: np.ndarray) -> tuple[dict[str, np.ndarray], list[float], int | None]:
    losses = [trainer.step(x, y) for x, y in zip(xs, ys)]
    rows = getattr(trainer, "replica_shape", None)
    return trainer.export_weights(), losses, rows[0] if rows else None


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def one_device(label: str) -> Iterator[None]:
    """The ordinary trainer's world: Keras' distribution (global to the process) set aside."""
    if label != "keras/jax":
        yield
        return
    import keras

    saved = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(saved)


# ---------------------------------------------------------------------------
# one-process references with per-replica BatchNorm: N chunks, gradients accumulated, the
# running statistics of chunk 0 kept (DDP broadcasts rank 0's; MirroredStrategy reads replica 0's)


def torch_chunked(trainer: Any, xs: np.ndarray, ys: np.ndarray, n: int) -> list[float]:
    losses = []
    model = trainer.model
    for x, y in zip(xs, ys):
        trainer.optimizer.zero_grad(set_to_none=True)
        kept, total = None, 0.0
        for c in range(n):
            rows = distributed.replica_rows(len(x), c, n)
            loss = trainer._loss(x[rows], y[rows])
            (loss / n).backward()
            total += float(loss) / n
            if c == 0:
                kept = {k: b.detach().clone() for k, b in model.named_buffers()}
        with __import__("torch").no_grad():
            for k, b in model.named_buffers():
                b.copy_(kept[k])
        trainer.optimizer.step()
        losses.append(total)
    return losses


def tensorflow_chunked(trainer: Any, xs: np.ndarray, ys: np.ndarray, n: int) -> list[float]:
    import tensorflow as tf

    model, variables = trainer.model, trainer.model.trainable_variables

    def step(x: Any, y: Any) -> Any:
        size = x.shape[0] // n
        total, grads, kept = 0.0, None, None
        for c in range(n):
            with tf.GradientTape() as tape:
                loss = trainer.loss(model(x[c * size:(c + 1) * size], training=True), y[c * size:(c + 1) * size]) / n
            g = tape.gradient(loss, variables)
            grads = g if grads is None else [a + b for a, b in zip(grads, g)]
            total += loss
            if c == 0:
                kept = [tf.identity(v.value) for v in model.non_trainable_variables]
        for v, value in zip(model.non_trainable_variables, kept):
            v.assign(value)
        trainer.optimizer.apply_gradients(zip(trainer.with_l2(grads, variables), variables))
        return total

    compiled = tf.function(step)
    return [float(compiled(*trainer._inputs(x, y))) for x, y in zip(xs, ys)]


CHUNKED: dict[str, Callable[[Any, np.ndarray, np.ndarray, int], list[float]]] = {
    "torch": torch_chunked, "keras/tensorflow": tensorflow_chunked}


# ---------------------------------------------------------------------------
# the seeded faults, per engine


def _jax_no_allreduce(trainer: Any, label: str) -> None:
    """Each device runs the whole step on its own rows, with no collective: the hand-written
    data-parallel step that forgets its ``psum``."""
    import jax
    from jax.sharding import PartitionSpec as P

    if label == "flax":
        from flax import nnx

        from rosetta_cnn.flax_impl.distributed import AXIS

        def local_step(m: Any, optimizer: Any, x: Any, y: Any) -> Any:
            loss, grads = nnx.value_and_grad(lambda m: trainer.loss(m.outputs(x), y))(m)
            optimizer.update(m, grads)
            return loss

        trainer._step = nnx.jit(nnx.shard_map(local_step, mesh=trainer.engine.mesh,
                                              in_specs=(P(), P(), P(AXIS), P(AXIS)), out_specs=P(), check_vma=False))
        return
    step = trainer._step
    mesh = trainer.engine.distribution.device_mesh.backend_mesh
    axis = trainer.engine.distribution.batch_dim_name
    step._train_step = jax.jit(jax.shard_map(step._train_step.__wrapped__, mesh=mesh,
                                             in_specs=(P(), P(axis), P(axis)), out_specs=(P(), P()),
                                             check_vma=False), donate_argnums=0)


@contextlib.contextmanager
def fault(name: str, label: str, module: Any) -> Iterator[Callable[[Any], None]]:
    """Seed ``name`` into the engine; yields what to do to each new trainer."""
    nothing: Callable[[Any], None] = lambda trainer: None  # noqa: E731
    if name == "summed":
        with patched(module, "replica_loss", lambda loss, n, f=module.replica_loss: f(loss, n) * n):
            yield nothing
    elif name == "whole" and label in ("torch", "keras/tensorflow"):
        with patched(module, "replica_batch", lambda x, r, n: x):
            yield nothing
    elif name == "whole":  # JAX: every device's shard is the whole batch (N copies, sharded)
        def whole(trainer: Any) -> None:
            shard = trainer.shard
            trainer.shard = lambda a: shard(np.concatenate([a] * trainer.engine.plan.devices))
        yield whole
    elif name == "no_allreduce" and label == "torch":
        yield lambda trainer: setattr(trainer.network, "require_backward_grad_sync", False)
    elif name == "no_allreduce" and label == "keras/tensorflow":
        yield lambda trainer: setattr(trainer.optimizer, "_all_reduce_sum_gradients", lambda grads_and_vars: grads_and_vars)
    elif name == "no_allreduce":
        yield lambda trainer: _jax_no_allreduce(trainer, label)
    else:
        raise ValueError(f"unknown fault {name!r}")


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    label, n = job["label"], job["devices"]
    ports.activate(label)
    plan = distributed.plan(label, n, job["batch"], launcher="auto")
    engine = distributed.start(plan)
    primary = engine.plan.primary
    module = ports.module(label, "distributed")
    opt = OptimizerConfig("sgd", lr=job["lr"])
    results: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"engine": engine.name, "runs": {}}
    for kind, case in job["kinds"].items():
        spec = load_spec(case["model"], case["overrides"])
        tensors = load_file(case["weights"])
        data = np.load(case["batches"])
        xs, ys = data["x"], data["y"]

        def record(scenario: str, weights: dict[str, np.ndarray], losses: list[float], rows: int | None,
                   seconds: float) -> None:
            for name, t in weights.items():
                results[f"{kind}/{scenario}/{name}"] = np.asarray(t)
            meta["runs"][f"{kind}/{scenario}"] = {"losses": losses, "rows": rows, "seconds": seconds}

        def engine_run(scenario: str, eng: Any = engine, prepare: Callable[[Any], None] = lambda t: None) -> None:
            t0 = time.perf_counter()
            trainer = eng.build_trainer(spec, opt, tensors=tensors)
            prepare(trainer)
            record(scenario, *run_steps(trainer, xs, ys), time.perf_counter() - t0)

        if primary:
            t0 = time.perf_counter()
            with one_device(label):
                ref = build_trainer(label, spec, opt, tensors)
                if label == "keras/tensorflow":  # the engine's compilation (graph), for a like-for-like comparison
                    ref = ports.module(label, "train").make_trainer(ref.model, spec, opt, compilation="graph")
                record("reference", *run_steps(ref, xs, ys), time.perf_counter() - t0)
        engine_run("dp")
        if "chunked" in case["scenarios"] and primary:
            t0 = time.perf_counter()
            ref = build_trainer(label, spec, opt, tensors)
            if label == "keras/tensorflow":
                ref = ports.module(label, "train").make_trainer(ref.model, spec, opt, compilation="graph")
            losses = CHUNKED[label](ref, xs, ys, n)
            record("chunked", ref.export_weights(), losses, len(xs[0]) // n, time.perf_counter() - t0)
        if "sync" in case["scenarios"]:
            synced = copy.copy(engine)  # the same strategy: two in one process clash in their collectives
            synced.plan = dataclasses.replace(engine.plan, sync_bn=True)
            engine_run("sync", synced)
        for name in job["faults"] if kind in job["fault_kinds"] else []:
            with fault(name, label, module) as prepare:
                engine_run(f"fault:{name}", prepare=prepare)
    if primary:
        np.savez(job["out"] + ".npz", **results)
        Path(job["out"] + ".json").write_text(json.dumps(meta, indent=1))
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
