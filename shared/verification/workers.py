"""Long-lived worker processes for parity runs across frameworks and Keras backends.

Keras fixes its backend when it is first imported, and three frameworks in one process hold
every framework's runtime, thread pools and caches at once (the single-process
``rosetta parity`` peaked at 12.5 GB). So each framework *runtime* gets a
:class:`WorkerProcess`: ``python -m rosetta_cnn.verification.workers LABEL[,LABEL] FD_IN FD_OUT``,
started with that runtime's environment (:func:`runtime_env`: ``KERAS_BACKEND``; for JAX the fast
XLA flags, ``core/xla.py``). A process hosts the implementation labels (``core/ports.py``) of
its runtime: ``torch`` and ``keras/torch``, ``flax`` and ``keras/jax``, ``keras/tensorflow``
(:class:`WorkerPool` ``share_runtimes``; or one process per label), each label with its own port
and model (:class:`Worker`). The parent sends requests over a pipe and the process answers
them one at a time with :class:`~rosetta_cnn.verification.parity.LocalRunner`'s methods (build
a model once, export a random draw, import a canonical file and run eval and train, free the
model), so :func:`~rosetta_cnn.verification.parity.run_pairs` runs the same pairs in-process or
across workers. Weights travel as canonical safetensors files in a scratch folder
(:func:`write_tensors` / :func:`read_tensors`: no fsync, no extra copy, read by memory map);
outputs come back pickled over the pipe (between this project's own processes only).

Workers fail loudly: a process that dies fails the request at once with the tail of its
output; every wait has a timeout; :class:`WorkerPool` shuts them down (and kills what does not
stop) on exit. :class:`MemoryMonitor` samples the resident memory of the whole process tree.
:meth:`Worker.training_run` runs ``verification.training.training_run`` in the worker and
returns its ``TrainingRun``, so training-step parity can span Keras backends too;
:meth:`Worker.patch` / :meth:`Worker.unpatch` apply and undo seeded faults in a live worker.
"""
from __future__ import annotations

import gc
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..core import ports, xla
from ..core.canonical import check_tensors, expected_tensors, metadata_for
from ..core.errors import RosettaError
from ..core.spec import ModelSpec

MODULE = "rosetta_cnn.verification.workers"
#: seconds a worker may take to import its framework, and to answer one request
START_TIMEOUT = 600.0
REQUEST_TIMEOUT = 1800.0
#: ROSETTA_WORKER_TRACE=1 prints every request's duration to stderr
TRACE = os.environ.get("ROSETTA_WORKER_TRACE", "") not in ("", "0")
#: seconds a worker gets to exit after ``shutdown`` before it is killed
STOP_TIMEOUT = 30.0


class WorkerError(RosettaError):
    """A worker failed a request, died, or did not answer in time."""


# ---------------------------------------------------------------------------
# weights between processes: canonical safetensors files in the scratch folder


def _header(spec: ModelSpec, framework: str) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """A canonical safetensors header for ``spec`` (8-byte length, JSON padded to 8 bytes) and
    each tensor's byte range after it."""
    header: dict[str, Any] = {"__metadata__": metadata_for(spec, framework)}
    ranges, offset = {}, 0
    for name, shape in expected_tensors(spec).items():
        nbytes = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        ranges[name] = (offset, offset + nbytes)
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # tensors start 8-byte aligned
    return len(blob).to_bytes(8, "little") + blob, ranges


def write_tensors(path: str, spec: ModelSpec, tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
                  *, framework: str) -> None:
    """Write canonical tensors of ``spec`` as a canonical safetensors file, each straight from
    its array's memory (no serialised copy, no fsync: a scratch file, renamed into place when
    complete). ``tensors`` is a mapping (checked first), or ``(name, array)`` pairs in
    ``expected_tensors`` order, each checked as it comes and dropped once written."""
    expected = expected_tensors(spec)
    if isinstance(tensors, Mapping):
        check_tensors(spec, tensors, source="tensors to write")
        items: Iterable[tuple[str, np.ndarray]] = ((n, tensors[n]) for n in expected)
    else:
        items = tensors
    head, _ = _header(spec, framework)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(head)
            names = iter(expected)
            for name, a in items:
                want = next(names, None)
                a = np.ascontiguousarray(a, dtype=np.float32)
                if name != want or a.shape != expected[name]:
                    raise RosettaError(f"{path}: got tensor {name!r} {a.shape}, expected {want!r} "
                                       f"{expected.get(want) if want else '(no more tensors)'}")
                f.write(memoryview(a.reshape(-1)).cast("B"))
            missing = next(names, None)
            if missing is not None:
                raise RosettaError(f"{path}: tensor {missing!r} is missing")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_random(path: str, spec: ModelSpec, seed: int) -> None:
    """``random_canonical(spec, seed)`` as a canonical file, each tensor drawn straight into its
    memory-mapped place in the file (no copy of the draw in memory)."""
    from ..core.canonical import random_tensors

    head, ranges = _header(spec, "random")
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(head)
            f.truncate(len(head) + max((end for _, end in ranges.values()), default=0))

        def alloc(name: str, shape: tuple[int, ...]) -> np.ndarray:
            start, end = ranges[name]
            if end == start:
                return np.empty(shape, np.float32)
            return np.memmap(tmp, dtype=np.float32, mode="r+", offset=len(head) + start, shape=shape)

        for _, t in random_tensors(spec, seed, alloc):
            if isinstance(t, np.memmap):
                t.flush()
            del t
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class MappedTensors(Mapping[str, np.ndarray]):
    """The tensors of a :func:`write_tensors` file, each mapped from the file when it is looked
    up (a copy-on-write ``np.memmap`` of its own): checking names and shapes reads nothing, and
    a tensor's pages leave the process once the import has converted it and dropped it."""

    def __init__(self, path: str):
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        self.path, self._base = path, 8 + n
        self._entries = {k: v for k, v in header.items() if k != "__metadata__"}
        for name, entry in self._entries.items():
            if entry["dtype"] != "F32":
                raise RosettaError(f"{path}: tensor {name!r} is {entry['dtype']}, scratch files hold F32 only")

    def __getitem__(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        start, end = entry["data_offsets"]
        if end == start:
            return np.zeros(entry["shape"], np.float32)
        return np.memmap(self.path, dtype=np.float32, mode="c", offset=self._base + start, shape=tuple(entry["shape"]))

    def matches(self, name: str, a: np.ndarray, chunk: int = 1 << 23) -> bool:
        """Whether tensor ``name`` holds ``a`` bit for bit (shape and bytes), read from the file
        in ``chunk``-byte pieces: nothing is mapped, so the comparison does not hold the
        tensor's pages resident beside ``a``."""
        entry = self._entries.get(name)
        a = np.ascontiguousarray(a)
        if entry is None or a.dtype != np.float32 or list(a.shape) != list(entry["shape"]):
            return False
        start, end = entry["data_offsets"]
        flat = memoryview(a.reshape(-1)).cast("B")
        with open(self.path, "rb") as f:
            f.seek(self._base + start)
            for at in range(0, end - start, chunk):
                n = min(chunk, end - start - at)
                if f.read(n) != flat[at:at + n]:
                    return False
        return True

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def same_tensors(a: str, b: str, chunk: int = 1 << 23) -> bool:
    """Whether two :func:`write_tensors` files hold the same tensors bit for bit (names, shapes,
    data; the metadata may differ), read in ``chunk``-byte pieces (nothing is mapped, so the
    comparing process's resident memory does not grow with the model)."""
    ta, tb = MappedTensors(a), MappedTensors(b)
    if ta._entries != tb._entries:
        return False
    left = max((e["data_offsets"][1] for e in ta._entries.values()), default=0)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        fa.seek(ta._base)
        fb.seek(tb._base)
        while left > 0:
            n = min(chunk, left)
            if fa.read(n) != fb.read(n):
                return False
            left -= n
    return True


def read_tensors(path: str) -> MappedTensors:
    """The tensors of a :func:`write_tensors` file (:class:`MappedTensors`: nothing is read up front)."""
    return MappedTensors(path)


# ---------------------------------------------------------------------------
# memory of a process tree


def _status(pid: int, keys: Sequence[str]) -> dict[str, float]:
    """``/proc/<pid>/status`` fields in MiB (missing process: empty)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in keys:
                    out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def _pss(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class MemoryMonitor:
    """Samples the resident memory of a set of processes (``pids()``, this one and its workers)
    every ``interval`` seconds in a thread, and keeps the peaks of the sums:

    ``peak_rss_mb``: resident set (``VmRSS``) summed over the processes, sampled every
    ``interval``: pages of a shared library count once per process that maps it, so this
    overstates physical memory; ``peak_pss_mb``: proportional set size (shared pages split among
    the processes sharing them), sampled near the resident peak (at least 95% of it) and at
    most every ``pss_every`` intervals (the kernel walks every page table of every process for
    it: sampled each second, 5% of a parity run's CPU time); ``hwm_max_mb`` (set
    by :meth:`record_high_water_marks`): the largest process's own peak (``VmHWM``), which no
    sampling can miss (processes that take turns are not alive at once, so their peaks are
    not summed).
    """

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.1, pss_every: int = 10):
        self.pids, self.interval, self.pss_every = pids, interval, pss_every
        self.peak_rss_mb = self.peak_pss_mb = self.since_mark_mb = 0.0
        self.peak_processes = 0
        self._pss_at = -math.inf  # when PSS was last sampled
        self.hwm: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self.at_peak: dict[int, float] = {}  # each process's resident memory at the peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rosetta-memory", daemon=True)

    def start(self) -> "MemoryMonitor":
        self._thread.start()
        return self

    def sample(self, pss: bool = False) -> None:
        pids = self.pids()
        each = {p: _status(p, ("VmRSS",)).get("VmRSS", 0.0) for p in pids}
        rss = sum(each.values())
        self.since_mark_mb = max(self.since_mark_mb, rss)
        if rss > self.peak_rss_mb:
            self.peak_rss_mb, self.peak_processes, self.at_peak = rss, len(pids), each
        now = time.monotonic()
        if pss or (rss >= 0.95 * self.peak_rss_mb and now - self._pss_at >= self.pss_every * self.interval):
            self._pss_at = now
            self.peak_pss_mb = max(self.peak_pss_mb, sum(_pss(p) for p in pids))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def mark(self) -> float:
        """The peak resident memory (MiB, summed) since the previous mark, and a new mark."""
        self.sample()
        peak, self.since_mark_mb = self.since_mark_mb, 0.0
        return peak

    def record_high_water_marks(self, names: Mapping[int, str] | None = None) -> None:
        """Remember every live process's ``VmHWM`` (call before workers exit); ``names`` label them."""
        for p in self.pids():
            hwm = _status(p, ("VmHWM",)).get("VmHWM")
            if hwm is not None:
                self.hwm[p] = max(self.hwm.get(p, 0.0), hwm)
                self.names[p] = (names or {}).get(p, self.names.get(p, str(p)))

    def stop(self) -> dict[str, Any]:
        self.sample(pss=True)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        return self.summary()

    def summary(self) -> dict[str, Any]:
        hwm: dict[str, int] = {}  # by name: a runtime's successive processes share one
        for p, v in self.hwm.items():
            name = self.names.get(p, str(p))
            hwm[name] = max(hwm.get(name, 0), round(v))
        return {"peak_rss_mb": round(self.peak_rss_mb), "peak_pss_mb": round(self.peak_pss_mb),
                "hwm_max_mb": round(max(self.hwm.values(), default=0.0)), "processes": self.peak_processes,
                "interval_s": self.interval,
                "hwm_mb": hwm,
                "at_peak_mb": {self.names.get(p, str(p)): round(v) for p, v in self.at_peak.items()}}


def format_memory(m: Mapping[str, Any]) -> str:
    """One line for a :meth:`MemoryMonitor.summary`."""
    gib = lambda v: f"{v / 1024:.2f} GiB"  # noqa: E731
    return (f"peak memory of the process tree: {gib(m['peak_rss_mb'])} resident (VmRSS summed over "
            f"{m['processes']} processes, sampled every {m['interval_s']:g} s), {gib(m['peak_pss_mb'])} proportional "
            f"(PSS: shared library pages split); largest process {gib(m['hwm_max_mb'])} (its own peak, VmHWM)")


# ---------------------------------------------------------------------------
# the parent's side


def runtime(label: str) -> str:
    """The framework runtime a label's process loads: ``torch`` (the PyTorch port and Keras on
    PyTorch), ``jax`` (Flax and Keras on JAX) or ``tensorflow`` (Keras on TensorFlow). Labels of
    one runtime can share a process (:class:`WorkerPool` ``share_runtimes``)."""
    impl = ports.resolve(label)
    return impl.backend or {"flax": "jax"}.get(impl.framework, impl.framework)


def runtime_env(name: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker process for runtime ``name``: ``KERAS_BACKEND`` (so that the
    process can host Keras on that runtime), for JAX the fast XLA flags and the persistent
    compilation cache (``core/xla.py``), for TensorFlow its system allocator."""
    env = {**(os.environ if base is None else base), "KERAS_BACKEND": name,
           "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    if name == "jax":
        env.update(xla.fast_env(env))
        env.update(xla.cache_env(env))
    if name == "tensorflow":
        # TensorFlow's oneDNN build pools freed CPU memory and never returns it (a worker that
        # had run VGG19 would hold its 1.5 GB for the rest of the run); the system allocator does
        env.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
    return env


class WorkerProcess:
    """One worker process: ``python -m rosetta_cnn.verification.workers LABEL[,LABEL...] FD_IN
    FD_OUT``, hosting one or more implementation labels of one runtime (each label's port
    imported once, each with its own model). Requests go one at a time over a pipe, each
    naming its label; every wait has a deadline, and a process that dies fails the request at
    once with the tail of its output."""

    def __init__(self, name: str, labels: Sequence[str], *, log_dir: str, start_timeout: float = START_TIMEOUT):
        self.name, self.labels = name, list(labels)
        self.log_path = os.path.join(log_dir, f"{name}-{'+'.join(labels).replace('/', '-')}.log")
        self._log = open(self.log_path, "wb")
        child_in, parent_out = os.pipe()
        parent_in, child_out = os.pipe()
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", MODULE, ",".join(labels), str(child_in), str(child_out)],
                                         pass_fds=(child_in, child_out), stdin=subprocess.DEVNULL,
                                         stdout=self._log, stderr=subprocess.STDOUT, env=runtime_env(name))
        finally:
            os.close(child_in)
            os.close(child_out)
        self._send_conn = Connection(parent_out, readable=False)
        self._recv_conn = Connection(parent_in, writable=False)
        self._deadline_start = time.monotonic() + start_timeout
        self.infos: dict[str, dict[str, Any]] | None = None
        self.start_seconds = 0.0
        self._stopping = False
        self.models: set[str] = set()  # the labels that hold a model here
        self.parked = False  # stopped by WorkerPool.focus: its workers start a fresh process

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        """Alive and not parked (a parked process may still be exiting)."""
        return self.proc.poll() is None and not self.parked

    @property
    def title(self) -> str:
        """The labels it hosts, for reports (``torch+keras/torch``)."""
        return "+".join(self.labels)

    def _stderr_tail(self, chars: int = 4000) -> str:
        try:
            self._log.flush()
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - chars))
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""

    def _died(self, doing: str) -> WorkerError:
        try:
            rc = self.proc.wait(timeout=5)  # a closed pipe: the exit follows
        except subprocess.TimeoutExpired:
            rc = None
        tail = self._stderr_tail()
        how = f"exited with code {rc}" if rc is not None else "closed its pipe"
        return WorkerError(f"the {self.title} worker (pid {self.pid}) {how} while {doing}"
                           + (f"; its output ends:\n{tail}" if tail else "; it wrote nothing"))

    def _receive(self, doing: str, deadline: float) -> Any:
        while True:
            try:
                if self._recv_conn.poll(0.2):
                    return self._recv_conn.recv()
            except (EOFError, OSError):
                raise self._died(doing) from None
            if self.proc.poll() is not None:
                raise self._died(doing)
            if time.monotonic() > deadline:
                self.kill()
                raise WorkerError(f"the {self.title} worker (pid {self.pid}) did not finish {doing} in time; "
                                  f"killed it. Its output ends:\n{self._stderr_tail()}")

    def ready(self) -> dict[str, dict[str, Any]]:
        """Wait until the process has imported the ports of its first labels; label -> versions and pid."""
        if self.infos is None:
            t0 = time.perf_counter()
            status, payload = self._receive("starting", self._deadline_start)
            self.start_seconds = time.perf_counter() - t0
            if status != "ready":
                raise WorkerError(f"the {self.title} worker could not start: {payload}")
            self.infos = payload
        return self.infos

    def request(self, label: str, method: str, kwargs: Mapping[str, Any], doing: str, timeout: float) -> Any:
        """Send one request for ``label`` and wait for its answer (an error answer as WorkerError)."""
        self.ready()
        try:
            self._send_conn.send((label, method, dict(kwargs)))
        except OSError:
            raise self._died(doing) from None
        status, payload = self._receive(doing, time.monotonic() + timeout)
        if status == "error":
            raise WorkerError(f"{label}: {method} failed: {payload}")
        return payload

    def request_stop(self) -> None:
        """Ask the process to exit (without waiting)."""
        if self.proc.poll() is None and not self._stopping:
            try:
                self._send_conn.send((None, "shutdown", {}))
            except OSError:
                pass
            self._stopping = True

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the process to exit; kill it if it does not within ``timeout`` seconds."""
        if self.proc.poll() is None:
            try:
                self.request_stop()
                self.proc.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        self._close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass

    def _close(self) -> None:
        for c in (self._send_conn, self._recv_conn):
            try:
                c.close()
            except OSError:
                pass
        self._log.close()


class Worker:
    """One implementation label, run in a :class:`WorkerProcess` (its own, or one it shares with
    another label of the same runtime); the methods of
    :class:`~rosetta_cnn.verification.parity.LocalRunner`, run there."""

    def __init__(self, label: str, process: WorkerProcess, *, request_timeout: float = REQUEST_TIMEOUT,
                 patches: Sequence[str] = (), home: Callable[[str], WorkerProcess] | None = None):
        self.label, self.implementation = label, ports.resolve(label).name
        self.process, self.request_timeout = process, request_timeout
        self.info: dict[str, Any] | None = None
        self.timings: dict[str, float] = {}  # request -> seconds spent waiting for it
        self.built = False  # whether the worker holds a model
        self._patches = list(patches)  # applied whenever a process starts for this label
        self._home = home  # a process for this label once its own was parked

    def wake(self) -> None:
        """If :meth:`WorkerPool.focus` parked this label's process, start a fresh one (without
        waiting for it: its start-up overlaps whatever runs meanwhile)."""
        if self.process.parked and self._home is not None:
            self.process = self._home(self.label)

    @property
    def proc(self) -> subprocess.Popen:
        return self.process.proc

    @property
    def pid(self) -> int:
        return self.process.pid

    def ready(self) -> dict[str, Any]:
        """Wait until the process has imported this label's port; its versions and pid."""
        self.wake()
        if self.info is None or self.info.get("pid") != self.process.pid:
            t0 = time.perf_counter()
            infos = self.process.ready()
            self.info = infos.get(self.label) or self.process.request(self.label, "info", {}, "starting",
                                                                      self.request_timeout)
            self.timings["start"] = self.timings.get("start", 0.0) + time.perf_counter() - t0
            if self._patches:
                self.call("patch", refs=list(self._patches))
        return self.info

    def call(self, method: str, **kwargs: Any) -> Any:
        """Run ``method(**kwargs)`` for this label in the worker and return its result (its
        exception as a WorkerError)."""
        self.ready()
        doing = f"{method} ({kwargs['spec'].name})" if isinstance(kwargs.get("spec"), ModelSpec) else method
        t0 = time.perf_counter()
        try:
            where = doing if self.process.labels == [self.label] else f"{doing} for {self.label}"
            return self.process.request(self.label, method, kwargs, where, self.request_timeout)
        finally:
            seconds = time.perf_counter() - t0
            self.timings[method] = self.timings.get(method, 0.0) + seconds
            if TRACE:
                print(f"    [{self.label}] {doing}: {seconds:.2f} s", file=sys.stderr, flush=True)

    # LocalRunner's methods
    def build(self, spec: ModelSpec, seed: int = 0) -> None:
        self.call("build", spec=spec, seed=seed)
        self.built = True
        self.process.models.add(self.label)

    def export_random(self, draw: ModelSpec, seed: int, path: str | None = None, drawn: str | None = None) -> str:
        if path is None:
            raise ValueError("a worker exports to a file: give path")
        return self.call("export_random", draw=draw, seed=seed, path=path, drawn=drawn)

    def run(self, weights: str, x: np.ndarray, modes: Sequence[str], device: str = "cpu",
            activations: bool = False) -> dict[str, dict[str, np.ndarray]]:
        return self.call("run", weights=weights, x=x, modes=list(modes), device=device, activations=activations)

    def target(self, target: str, spec: ModelSpec, weights: str, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.call("target", target=target, spec=spec, weights=weights, x=x)

    def gpu_available(self) -> bool:
        return self.call("gpu_available")

    def free(self) -> None:
        """Drop the worker's model (nothing to do, and no request, if it holds none)."""
        if self.built and self.proc.poll() is None:
            self.call("free")
        self.built = False
        self.process.models.discard(self.label)

    def training_run(self, spec: ModelSpec, start: Mapping[str, np.ndarray] | str,
                     batches: list[tuple[np.ndarray, np.ndarray]], opt: Any, *, keep: tuple[int, ...] = (1, 5)) -> Any:
        """``verification.training.training_run`` of this worker's implementation; ``start`` is
        canonical tensors or a canonical file (this worker's label names the run)."""
        return self.call("training_run", spec=spec, start=start, batches=batches, opt=opt, keep=tuple(keep))

    def patch(self, refs: Sequence[str]) -> None:
        """Apply seeded faults to this label's port in the worker (each ``"module:function"``,
        called as ``function(patcher, port)``) until :meth:`unpatch` (in a fresh process too)."""
        self.call("patch", refs=list(refs))
        self._patches += refs

    def unpatch(self) -> None:
        """Undo every fault applied to this label's port (:meth:`patch`, and the pool's)."""
        self.call("unpatch")
        self._patches = []

    # the process's
    def request_stop(self) -> None:
        self.process.request_stop()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        self.process.stop(timeout)

    def kill(self) -> None:
        self.process.kill()


class WorkerPool:
    """Workers by label (started on first use, or all at once from ``labels`` so that their
    start-ups overlap), a scratch folder for the weight files, and a :class:`MemoryMonitor`
    over this process and the worker processes. A context manager: on exit every process is
    stopped (killed after a timeout) and the scratch folder removed.

    With ``share_runtimes`` (the default) labels of one runtime (:func:`runtime`) share a
    process: ``torch`` with ``keras/torch``, ``flax`` with ``keras/jax``. Each keeps its own port
    and model; the process loads the runtime once (PyTorch's libraries alone are 0.5 GB
    resident). A process never hosts two labels of the same port (``keras`` beside
    ``keras/tensorflow``: two processes)."""

    def __init__(self, labels: Sequence[str] = (), *, monitor: bool = True, start_timeout: float = START_TIMEOUT,
                 request_timeout: float = REQUEST_TIMEOUT, patches: Mapping[str, Sequence[str]] | None = None,
                 share_runtimes: bool = True):
        for label in labels:
            ports.require(label)  # a clear error before anything starts
        self.scratch = tempfile.mkdtemp(prefix="rosetta-workers-")
        self._workers: dict[str, Worker] = {}
        self._processes: list[WorkerProcess] = []
        self._start_timeout, self._request_timeout = start_timeout, request_timeout
        self._patches = dict(patches or {})
        self.share_runtimes = share_runtimes
        self._closed, self._summary = False, None
        self.monitor = MemoryMonitor(self.pids).start() if monitor else None
        try:
            for group in self._groups(labels):
                self._start(group)
            for label in labels:
                self.runner(label)
        except BaseException:
            self.close()
            raise

    def _groups(self, labels: Sequence[str]) -> list[list[str]]:
        """``labels`` split into the processes that will host them."""
        groups: list[list[str]] = []
        for label in dict.fromkeys(labels):
            fw = ports.resolve(label).framework
            home = next((g for g in groups if self.share_runtimes and runtime(g[0]) == runtime(label)
                         and fw not in {ports.resolve(other).framework for other in g}), None)
            if home is None:
                groups.append([label])
            else:
                home.append(label)
        return groups

    def _start(self, labels: list[str]) -> WorkerProcess:
        process = WorkerProcess(runtime(labels[0]), labels, log_dir=self.scratch, start_timeout=self._start_timeout)
        self._processes.append(process)
        return process

    def _process_for(self, label: str) -> WorkerProcess:
        """A live process that hosts ``label``, or can take it (same runtime, not the same port)."""
        live = [p for p in self._processes if p.proc.poll() is None and not p._stopping]
        home = next((p for p in live if label in p.labels), None)
        if home is None and self.share_runtimes:
            fw = ports.resolve(label).framework
            home = next((p for p in live if p.name == runtime(label)
                         and fw not in {ports.resolve(other).framework for other in p.labels}), None)
            if home is not None:
                home.labels.append(label)
        if home is None:  # a fresh process, which also loads the ports of its runtime's parked labels
            hosted, frameworks = [label], {ports.resolve(label).framework}
            for other, w in self._workers.items():
                fw = ports.resolve(other).framework
                if self.share_runtimes and w.process.parked and runtime(other) == runtime(label) and fw not in frameworks:
                    hosted.append(other)
                    frameworks.add(fw)
            home = self._start(hosted)
        return home

    def pids(self) -> list[int]:
        return [os.getpid()] + [p.pid for p in list(self._processes) if p.proc.poll() is None]

    def runner(self, label: str) -> Worker:
        """The worker of ``label`` (its process started now if none can host it)."""
        w = self._workers.get(label)
        if w is not None and not w.process.parked and w.proc.poll() is not None:
            # its process died: the next use starts a fresh one
            del self._workers[label]
            w = None
        if w is None:
            ports.require(label)
            w = self._workers[label] = Worker(label, self._process_for(label), request_timeout=self._request_timeout,
                                              patches=self._patches.get(label, ()), home=self._process_for)
        return w

    def focus(self, now: str, soon: str | None = None) -> None:
        """Let only the processes of labels ``now`` and ``soon`` run: every other worker process
        that holds no model is stopped (parked; its labels' next request starts a fresh one,
        with their patches), then ``now``'s and ``soon``'s processes are started if they are
        not running, without waiting for them, so that ``soon``'s start-up overlaps ``now``'s
        work. For a model too large to keep in every runtime at once: an idle runtime holds
        0.7-1.2 GB, and the working one a full-size model and its conversions besides."""
        wanted = [label for label in (now, soon) if label]
        runtimes = {runtime(label) for label in wanted}
        for p in list(self._processes):
            if p.parked and p.proc.poll() is not None:  # exited: close its pipes and log
                p.stop()
                self._processes.remove(p)
            elif p.running and p.name not in runtimes and not p.models:
                if self.monitor is not None:
                    self.monitor.record_high_water_marks(self._names())
                p.parked = True
                p.request_stop()
        for label in wanted:
            self.runner(label).wake()

    def running_runtimes(self) -> list[str]:
        """The runtimes of the worker processes that run now (not parked)."""
        return list(dict.fromkeys(p.name for p in self._processes if p.running))

    def target_runner(self, target: str) -> Worker:
        """A worker of the framework that exports for ``target`` (``core.ports.TARGETS``)."""
        framework = ports.TARGETS[target][0]
        for label, w in self._workers.items():
            if ports.resolve(label).framework == framework:
                return w
        return self.runner(framework)

    def timings(self) -> dict[str, dict[str, float]]:
        """Seconds each label's requests took, by request (waiting included)."""
        return {label: dict(w.timings) for label, w in self._workers.items()}

    def versions(self) -> dict[str, dict[str, str]]:
        return {label: (w.info or w.ready())["versions"] for label, w in self._workers.items()}

    def processes(self) -> dict[str, list[str]]:
        """Each live worker process (its runtime and pid) -> the labels it hosts (parked ones not)."""
        return {f"{p.name} (pid {p.pid})": list(p.labels) for p in self._processes if p.running}

    def free_all(self) -> None:
        for w in self._workers.values():
            w.free()

    def _names(self) -> dict[int, str]:
        return {os.getpid(): "parent", **{p.pid: p.title for p in self._processes}}

    def memory(self) -> dict[str, Any] | None:
        """The monitor's figures so far (with every live process's high-water mark)."""
        if self.monitor is None:
            return None
        self.monitor.record_high_water_marks(self._names())
        return self.monitor.summary()

    def close(self) -> dict[str, Any] | None:
        """Stop every worker process and the monitor; the memory figures."""
        if self._closed:
            return self._summary
        self._closed = True
        summary = None
        if self.monitor is not None:
            self.monitor.record_high_water_marks(self._names())
        for p in self._processes:  # all at once: each takes a while to exit
            p.request_stop()
        for p in self._processes:
            p.stop()
        if self.monitor is not None:
            summary = self.monitor.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)
        self._summary = summary
        return summary

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------
# the worker's side


class _Patcher:
    """The two ``pytest.MonkeyPatch`` methods the seeded-fault functions use, with undo."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def setattr(self, obj: Any, name: str, value: Any) -> None:
        old = getattr(obj, name)
        self._undo.append(lambda: setattr(obj, name, old))
        setattr(obj, name, value)

    def setitem(self, mapping: Any, key: Any, value: Any) -> None:
        missing = key not in mapping
        old = mapping.get(key)
        self._undo.append(lambda: mapping.pop(key) if missing else mapping.__setitem__(key, old))
        mapping[key] = value

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()


class _Server:
    """What a worker answers: LocalRunner's methods, and training runs, patches, memory."""

    def __init__(self, label: str):
        from .parity import LocalRunner

        self.label = label
        self.runner = LocalRunner(label)
        self.patcher = _Patcher()

    def info(self) -> dict[str, Any]:
        impl = ports.resolve(self.label)
        jax_based = impl.framework == "flax" or impl.backend == "jax"
        versions = {}
        for package in (*impl.packages, "jaxlib") if jax_based else impl.packages:
            module = sys.modules.get(package)
            version = getattr(module, "__version__", None) if module else None
            if version is None:
                from importlib import metadata

                try:
                    version = metadata.version(package)
                except metadata.PackageNotFoundError:
                    continue
            versions[package] = str(version)
        if jax_based:
            versions["fast_xla"] = str(xla.active())
        return {"label": self.label, "implementation": impl.name, "pid": os.getpid(), "versions": versions}

    def build(self, spec: ModelSpec, seed: int) -> None:
        self.runner.build(spec, seed)

    def export_random(self, draw: ModelSpec, seed: int, path: str, drawn: str | None = None) -> str:
        return self.runner.export_random(draw, seed, path, drawn)

    def run(self, **kwargs: Any) -> Any:
        return self.runner.run(**kwargs)

    def target(self, **kwargs: Any) -> Any:
        return self.runner.target(**kwargs)

    def gpu_available(self) -> bool:
        return self.runner.gpu_available()

    def free(self) -> None:
        self.runner.free()
        impl = ports.resolve(self.label)
        if impl.framework == "keras" and "keras" in sys.modules:
            # Keras keeps the last model's layers reachable from its global state until cleared
            sys.modules["keras"].backend.clear_session()
        if (impl.framework == "flax" or impl.backend == "jax") and "jax" in sys.modules:
            # JAX's in-memory caches of traced and compiled functions (initialisers, forward
            # passes) grow by ~100 MB a model; the persistent cache on disk keeps the compiled code
            sys.modules["jax"].clear_caches()

    def training_run(self, spec: ModelSpec, start: Any, batches: Any, opt: Any, keep: tuple[int, ...]) -> Any:
        from .training import training_run

        tensors = read_tensors(start) if isinstance(start, str) else start
        return training_run(self.label, spec, tensors, batches, opt, keep=keep)

    def patch(self, refs: Sequence[str]) -> None:
        """Apply seeded faults: each ``"module:function"`` is called as ``function(patcher, port)``."""
        import importlib

        for ref in refs:
            module_name, name = ref.split(":")
            getattr(importlib.import_module(module_name), name)(self.patcher, self.runner.mod)

    def unpatch(self) -> None:
        self.patcher.undo()

    def memory(self) -> dict[str, float]:
        return _status(os.getpid(), ("VmRSS", "VmHWM"))


#: requests after which the worker gives freed heap pages back (temporaries of a whole model),
#: and those after which it also collects reference cycles (0.1-0.5 s in a TensorFlow process)
_RETURNS_MEMORY = {"build", "export_random", "run", "target", "free", "training_run"}
_COLLECTS = {"free", "training_run"}


def main(argv: Sequence[str] | None = None) -> int:
    from .parity import _trim_heap

    labels, fd_in, fd_out = (argv if argv is not None else sys.argv[1:])[:3]
    receive = Connection(int(fd_in), writable=False)
    send = Connection(int(fd_out), readable=False)
    servers: dict[str, _Server] = {}
    try:
        for label in labels.split(","):
            servers[label] = _Server(label)
        send.send(("ready", {label: server.info() for label, server in servers.items()}))
    except Exception as e:
        send.send(("error", f"{type(e).__name__}: {e}"))
        return 1
    # the frameworks' modules are there for good: full garbage collections (each free, and
    # Python's own as models are built) then skip their ~0.5 M objects (0.3 s -> 1 ms each)
    gc.freeze()
    while True:
        try:
            label, method, kwargs = receive.recv()
        except (EOFError, OSError):
            return 0  # the parent is gone
        if method == "shutdown":
            return 0
        try:
            if label not in servers:  # a label this process takes on later (same runtime)
                servers[label] = _Server(label)
                gc.freeze()
            server = servers[label]
            handler = getattr(server, method, None)
            if handler is None or method.startswith("_"):
                raise ValueError(f"unknown request {method!r}")
            result = handler(**kwargs)
            if method in _COLLECTS:
                gc.collect()
            if method in _RETURNS_MEMORY:
                _trim_heap()
            send.send(("ok", result))
            del result
        except Exception as e:
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            send.send(("error", f"{type(e).__name__}: {e}"))


if __name__ == "__main__":
    sys.exit(main())
