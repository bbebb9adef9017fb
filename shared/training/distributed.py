"""Data-parallel training on each framework's own engine: the plan, the launchers, the
processes, framework-free.

``rosetta train ... --devices N`` trains one model on N devices, each with 1/N of every
global batch (``--batch``), with the engine of the implementation (``ENGINES``):

* ``torch``: ``torch.distributed`` with ``DistributedDataParallel`` (gloo on CPUs, NCCL on
  GPUs), one process per device: on one machine the command starts N worker processes itself
  (``launch_local``); on several, ``torchrun`` starts them;
* ``flax``: JAX's sharding, one ``Mesh`` over N devices, the batch a ``NamedSharding`` over its
  ``data`` axis and the model replicated; on a CPU the N devices are host devices
  (``--xla_force_host_platform_device_count``, set before JAX starts: ``core/xla.py``);
  ``jax.distributed.initialize`` joins several processes;
* ``keras/jax``: ``keras.distribution.DataParallel`` (the same JAX machinery under Keras'
  distribution API), ``keras.distribution.initialize`` for several processes;
* ``keras/tensorflow``: ``tf.distribute.MirroredStrategy`` over N logical CPU devices (or GPUs),
  ``MultiWorkerMirroredStrategy`` from ``TF_CONFIG`` for several processes.

``keras/torch`` has none: Keras' distribution API is implemented for the JAX backend only
(``keras/src/backend/torch`` has no ``distribution_lib``), so the label is refused with the
supported ones named. No engine here exchanges gradients by hand: each step is the framework's.

Every process of a run sees the same global batches (the epoch order is a function of the
seed, ``loop.epoch_order``), so N devices train on exactly the examples one device would; each
replica takes rows ``[r * B/N, (r + 1) * B/N)`` of the global batch (:func:`replica_rows`), an
epoch's last, partial batch trimmed to a multiple of N (:meth:`Plan.trim`). Process 0 (the
*primary*) prints progress and writes the checkpoint, the weights and the log, which are the
ordinary ones: a run resumes on any device count, and the weights load in every framework.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from typing import IO, Any, Callable, Mapping, Sequence

import numpy as np

from ..core import ports
from ..core.errors import RosettaError

#: implementation -> its data-parallel engine
ENGINES: dict[str, str] = {
    "torch": "torch.distributed DistributedDataParallel",
    "flax": "jax.sharding (Mesh + NamedSharding)",
    "keras/jax": "keras.distribution.DataParallel",
    "keras/tensorflow": "tf.distribute.MirroredStrategy",
}
#: how several processes are joined: ``auto`` finds the engine's launcher in the environment,
#: else ``local`` (one machine: this command arranges the devices and, for torch, the processes)
LAUNCHERS: tuple[str, ...] = ("auto", "local", "torchrun", "jax", "tf-config")
#: launcher -> the implementations it serves
LAUNCHER_ENGINES: dict[str, tuple[str, ...]] = {"torchrun": ("torch",), "jax": ("flax", "keras/jax"),
                                                "tf-config": ("keras/tensorflow",)}
#: set by :func:`launch_local` in the torch workers it starts (the log then says ``local``)
LOCAL_WORKER_ENV = "ROSETTA_DP_LOCAL_WORKER"
#: set in the one new process a command starts when this one cannot have the devices (:class:`FreshProcess`)
FRESH_ENV = "ROSETTA_DP_FRESH"
#: BatchNorm statistics per engine, as the log and the docs state them
BATCHNORM: dict[str, str] = {
    "torch": "per-replica (each process normalises with its own B/N examples; running statistics: "
             "process 0's, broadcast by DDP before every forward)",
    "torch+sync": "global (torch.nn.SyncBatchNorm)",
    "flax": "global (the batch mean and variance are reductions over the sharded batch axis)",
    "keras/jax": "global (the batch mean and variance are reductions over the sharded batch axis)",
    "keras/tensorflow": "per-replica (each replica normalises with its own B/N examples; running "
                        "statistics: replica 0's)",
    "keras/tensorflow+sync": "global (Keras' synchronized BatchNormalization: cross-replica all-reduce)",
}


class FreshProcess(RosettaError):
    """This process cannot provide the devices any more (JAX's backend or TensorFlow's runtime
    already started with fewer): the command must run again in a new process with ``env``."""

    def __init__(self, message: str, env: Mapping[str, str]):
        super().__init__(message)
        self.env = dict(env)


@dataclass(frozen=True)
class Plan:
    """One data-parallel run: the implementation, the devices, the batch split and the processes."""

    label: str  # the implementation (``keras`` resolved): torch, flax, keras/jax, keras/tensorflow
    devices: int  # N: replicas in all processes together
    global_batch: int  # --batch
    launcher: str = "local"  # local, torchrun, jax, tf-config
    processes: int = 1
    process_index: int = 0
    sync_bn: bool = False

    @property
    def engine(self) -> str:
        if self.launcher == "tf-config":
            return "tf.distribute.MultiWorkerMirroredStrategy"
        return ENGINES[self.label]

    @property
    def per_device_batch(self) -> int:
        return self.global_batch // self.devices

    @property
    def primary(self) -> bool:
        """Process 0: prints progress and writes the files."""
        return self.process_index == 0

    @property
    def starts_workers(self) -> bool:
        """Whether this command starts the run's processes itself (torch on one machine)."""
        return self.label == "torch" and self.launcher == "local" and self.processes == 1

    @property
    def local_devices(self) -> int:
        """Devices each process drives (N / processes)."""
        return self.devices // self.processes

    @property
    def batchnorm(self) -> str:
        key = f"{self.label}+sync" if self.sync_bn and f"{self.label}+sync" in BATCHNORM else self.label
        return BATCHNORM[key]

    def trim(self, idx: np.ndarray) -> np.ndarray:
        """A batch of example indices cut to a multiple of N (only an epoch's last batch is
        shorter than ``global_batch``; at most N - 1 of its examples are left out)."""
        return idx[:len(idx) - len(idx) % self.devices]

    def steps(self, n: int) -> int:
        """Steps per epoch over ``n`` examples (a last batch of fewer than N examples is left out)."""
        return n // self.global_batch + (1 if (n % self.global_batch) >= self.devices else 0)

    def record(self, **extra: Any) -> dict[str, Any]:
        """What the log (``log.json``: ``parallel``) records about the run."""
        return {"devices": self.devices, "engine": self.engine, "global_batch": self.global_batch,
                "per_device_batch": self.per_device_batch, "processes": self.processes, "launcher": self.launcher,
                "batchnorm": self.batchnorm, "sync_bn": self.sync_bn, **extra}


def single_device_record(batch: int) -> dict[str, Any]:
    """``log.json``'s ``parallel`` entry for an ordinary one-device run."""
    return {"devices": 1, "engine": "one device (no data parallelism)", "global_batch": batch,
            "per_device_batch": batch, "processes": 1, "launcher": None, "batchnorm": "the whole batch",
            "sync_bn": False}


def replica_rows(n_rows: int, replica: int, replicas: int) -> slice:
    """The rows of a global batch of ``n_rows`` that replica ``replica`` of ``replicas`` trains
    on: a contiguous block of ``n_rows / replicas``, as a ``NamedSharding`` over the batch
    axis places them."""
    if n_rows % replicas:
        raise RosettaError(f"a batch of {n_rows} does not split evenly over {replicas} replicas")
    size = n_rows // replicas
    return slice(replica * size, (replica + 1) * size)


def supported_labels() -> str:
    return ", ".join(ENGINES)


def _int_env(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise RosettaError(f"environment variable {name}={value!r} is not an integer") from None
    return None


def tf_config(env: Mapping[str, str]) -> tuple[int, int]:
    """(workers, this task's index) from ``TF_CONFIG`` (``{"cluster": {"worker": [...]}, "task":
    {"type": "worker", "index": i}}``; a ``chief`` counts as worker 0)."""
    try:
        config = json.loads(env["TF_CONFIG"])
        cluster, task = config["cluster"], config["task"]
        workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
        index = int(task["index"]) + (len(cluster.get("chief", [])) if task["type"] == "worker" else 0)
    except (KeyError, TypeError, ValueError) as e:
        raise RosettaError(f"TF_CONFIG is not a tf.distribute cluster description ({type(e).__name__}: {e}); "
                           'expected {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
                           '"index": i}}') from None
    if workers < 1 or not 0 <= index < workers:
        raise RosettaError(f"TF_CONFIG names task {index} of a cluster of {workers} workers")
    return workers, index


def detect_launcher(label: str, env: Mapping[str, str]) -> str:
    """The launcher whose environment this process was started with, for ``label``'s engine:
    ``torchrun`` (its RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT), ``jax``
    (JAX_COORDINATOR_ADDRESS or KERAS_DISTRIBUTION_JOB_ADDRESSES), ``tf-config`` (TF_CONFIG),
    else ``local``."""
    if label == "torch" and ("TORCHELASTIC_RUN_ID" in env or all(
            k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))):
        return "torchrun"
    if label in LAUNCHER_ENGINES["jax"] and ("JAX_COORDINATOR_ADDRESS" in env
                                             or "KERAS_DISTRIBUTION_JOB_ADDRESSES" in env):
        return "jax"
    if label == "keras/tensorflow" and env.get("TF_CONFIG"):
        return "tf-config"
    return "local"


def plan(label: str, devices: int | None, batch: int, *, launcher: str = "auto", sync_bn: bool = False,
         env: Mapping[str, str] | None = None) -> Plan | None:
    """The data-parallel plan for ``rosetta train --devices N``, checked before any framework is
    imported; None for an ordinary one-device run (``devices`` 1 or None, no launcher).

    ``devices`` is the number of replicas in all processes together (None: 1, or what the
    launcher's environment says: torchrun's WORLD_SIZE, TF_CONFIG's workers). Errors name what
    was wrong: a batch that does not split evenly, an implementation without an engine, a
    launcher for another engine, a device count that disagrees with the launcher's."""
    env = os.environ if env is None else env
    if launcher not in LAUNCHERS:
        raise RosettaError(f"unknown --launcher {launcher!r}; choose from {', '.join(LAUNCHERS)}")
    if devices is not None and devices < 1:
        raise RosettaError(f"--devices must be at least 1, got {devices}")
    impl = ports.resolve(label).name
    found = detect_launcher(impl, env) if impl in ENGINES else "local"
    chosen = found if launcher == "auto" else launcher
    if (devices or 1) == 1 and chosen == "local":
        if sync_bn:
            raise RosettaError("--sync-bn synchronises BatchNorm statistics across devices; it needs --devices 2 "
                               "or more")
        return None
    if impl not in ENGINES:
        why = (" (Keras' distribution API, keras.distribution, is implemented for the JAX backend only, and "
               "tf.distribute serves the TensorFlow backend)" if impl == "keras/torch" else "")
        raise RosettaError(f"{impl} has no data-parallel engine{why}; --devices and --launcher work with "
                           f"{supported_labels()} (for the label 'keras': KERAS_BACKEND=jax or tensorflow)")
    if chosen != "local" and impl not in LAUNCHER_ENGINES[chosen]:
        raise RosettaError(f"--launcher {chosen} starts {' or '.join(LAUNCHER_ENGINES[chosen])} processes, not "
                           f"{impl}; use {'/'.join(k for k, v in LAUNCHER_ENGINES.items() if impl in v)} or local")
    processes, index, shown = 1, 0, chosen
    if chosen == "torchrun":
        processes, index = _int_env(env, "WORLD_SIZE"), _int_env(env, "RANK")
        if processes is None or index is None:
            raise RosettaError("--launcher torchrun: RANK and WORLD_SIZE are not set; start the command with "
                               "torchrun (docs/data-parallel.md)")
        if devices is not None and devices != processes:
            raise RosettaError(f"--devices {devices} but torchrun started {processes} processes (WORLD_SIZE): "
                               f"DDP runs one device per process; give --devices {processes} or leave it out")
        devices = processes
        if env.get(LOCAL_WORKER_ENV):  # a worker launch_local started: the run's launcher is local
            shown = "local"
    elif chosen == "jax":
        processes = _int_env(env, "JAX_NUM_PROCESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES") or 0
        index = _int_env(env, "JAX_PROCESS_ID", "KERAS_DISTRIBUTION_PROCESS_ID") or 0
        devices = devices or max(processes, 1)  # one device per process unless told
    elif chosen == "tf-config":
        processes, index = tf_config(env)
        devices = devices or processes
    if batch < 1:
        raise RosettaError(f"--batch must be at least 1, got {batch}")
    if batch % devices:
        lower, upper = batch - batch % devices, batch + devices - batch % devices
        raise RosettaError(f"--batch {batch} does not split evenly over {devices} devices ({batch} = {devices} x "
                           f"{batch // devices} + {batch % devices}): --batch is the global batch; use a multiple "
                           f"of {devices}, e.g. {lower or upper} or {upper}")
    if processes and devices % processes:
        raise RosettaError(f"--devices {devices} does not split evenly over {processes} processes")
    return Plan(impl, devices, batch, shown, processes or 1, index, sync_bn)


def resolved(plan_: Plan, *, processes: int, process_index: int, devices: int) -> Plan:
    """``plan_`` with what the engine found once started (JAX's process count from a cluster
    environment, TensorFlow's replicas); an error if the devices disagree with ``--devices``."""
    if devices != plan_.devices:
        raise RosettaError(f"--devices {plan_.devices}, but the {plan_.engine} found {devices} device(s) in "
                           f"{processes} process(es)")
    return replace(plan_, processes=processes, process_index=process_index)


def jax_join(plan_: Plan, initialize: Callable[[Mapping[str, str]], None]) -> bool:
    """Before JAX's backend starts (Flax, Keras on JAX): ask for the plan's host devices and,
    under the ``jax`` launcher, join the other processes (``initialize(os.environ)``: the
    engine's own call). Returns whether the host-device flag could still be set."""
    from ..core import xla

    ready = xla.configure_host_devices(plan_.local_devices)
    if plan_.launcher == "jax":
        if not ready:
            raise FreshProcess("JAX is already running in this process", xla.host_devices_env(plan_.local_devices))
        initialize(os.environ)
    return ready


def jax_resolved(plan_: Plan, devices: Sequence[Any], ready: bool, what: str) -> Plan:
    """``plan_`` resolved against the JAX ``devices`` the engine (``what``) sees: a fresh process
    when JAX already started on the CPU with fewer, an error naming both counts otherwise."""
    import jax

    from ..core import xla

    platform = jax.default_backend()
    if platform == "cpu" and len(devices) < plan_.devices and not ready:
        raise FreshProcess(f"JAX started in this process with {len(devices)} CPU device(s)",
                           xla.host_devices_env(plan_.local_devices))
    if len(devices) < plan_.devices:
        raise RosettaError(f"--devices {plan_.devices}: {what} sees {len(devices)} {platform} device(s) in "
                           f"{jax.process_count()} process(es)")
    return resolved(plan_, processes=jax.process_count(), process_index=jax.process_index(),
                    devices=plan_.devices if jax.process_count() == 1 else len(devices))


def start(plan_: Plan) -> Any:
    """Start ``plan_``'s engine in this process: the port's ``distributed.setup(plan)``."""
    return ports.module(plan_.label, "distributed").setup(plan_)


# ---------------------------------------------------------------------------
# processes: torch's local workers, and a join with a timeout for everything that starts several


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for a rendezvous address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def torch_worker_env(rank: int, world: int, port: int, host: str = "127.0.0.1") -> dict[str, str]:
    """The variables torchrun gives each worker (``env://`` rendezvous), for ``world`` workers on this host."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": host, "MASTER_PORT": str(port), LOCAL_WORKER_ENV: "1"}


def _stop(procs: Sequence[subprocess.Popen]) -> None:
    """End every process still running, and its children: SIGTERM, then SIGKILL after 5 s."""
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 5
    for p in alive:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            p.wait()


@dataclass
class Outcome:
    """How a group of processes ended: exit codes (None: stopped by the group), the first
    failure, and each process's captured stderr (None where it went to the terminal)."""

    returncodes: list[int | None]
    failed: int | None  # index of the first process that failed, None if all succeeded
    stderr: list[str | None]
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.failed is None and not self.timed_out

    def describe(self, what: str = "process") -> str:
        if self.timed_out:
            return f"the {len(self.returncodes)} {what}es did not finish in time and were stopped"
        if self.failed is None:
            return f"{len(self.returncodes)} {what}es succeeded"
        tail = (self.stderr[self.failed] or "").strip().splitlines()
        last = tail[-1] if tail else ""
        return (f"{what} {self.failed} of {len(self.returncodes)} exited with status {self.returncodes[self.failed]}"
                + (f": {last}" if last else "") + "; the others were stopped")


def run_group(commands: Sequence[tuple[Sequence[str], Mapping[str, str]]], *, timeout: float | None = None,
              capture: Sequence[bool] | None = None, cwd: str | None = None, poll: float = 0.1) -> Outcome:
    """Run processes together (``(argv, env)`` each) and join them: the first that fails stops
    the others at once (a failing worker never leaves its peers waiting in a collective), and
    ``timeout`` seconds stop all of them. ``capture[i]`` sends process i's stderr to a buffer
    (returned) instead of the terminal; stdout is always the terminal's."""
    capture = list(capture) if capture is not None else [False] * len(commands)
    files: list[IO[str] | None] = [tempfile.TemporaryFile("w+") if c else None for c in capture]
    procs: list[subprocess.Popen] = []
    failed, timed_out = None, False
    try:
        for (argv, env), f in zip(commands, files):
            procs.append(subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stderr=f, start_new_session=True))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            codes = [p.poll() for p in procs]
            bad = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                failed = bad[0]
                break
            if all(c == 0 for c in codes):
                break
            if deadline is not None and time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(poll)
    finally:
        _stop(procs)
    texts: list[str | None] = []
    for f in files:
        if f is None:
            texts.append(None)
            continue
        f.seek(0)
        texts.append(f.read())
        f.close()
    return Outcome([p.returncode if p.returncode is not None else None for p in procs], failed, texts, timed_out)


def rosetta_command(argv: Sequence[str]) -> list[str]:
    """The command line of ``rosetta ARGV`` in a new process of this Python."""
    return [sys.executable, "-c", "import sys; from rosetta_cnn.cli import main; sys.exit(main())", *argv]


def launch_local(argv: Sequence[str], plan_: Plan) -> int:
    """``rosetta train --devices N --framework torch`` on one machine: start N workers of the same
    command with torchrun's environment (rank r of N, a free rendezvous port on 127.0.0.1), the
    primary's output on the terminal, and join them; returns the exit status (the first failing
    worker's, after the others were stopped, with its last line of output)."""
    port = free_port()
    # the workers share this machine's CPUs (torchrun's default is 1 thread each)
    threads = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")
               or str(max(1, len(os.sched_getaffinity(0)) // plan_.devices))}
    commands = [(rosetta_command(argv),
                 {**os.environ, **threads, **torch_worker_env(r, plan_.devices, port)}) for r in range(plan_.devices)]
    outcome = run_group(commands, capture=[r != 0 for r in range(plan_.devices)])
    if not outcome.ok and outcome.failed not in (None, 0):
        print(f"rosetta train: error: {outcome.describe('worker')}", file=sys.stderr)
    return 0 if outcome.ok else (outcome.returncodes[outcome.failed or 0] or 2)
