"""Implementation labels and the per-implementation worker processes of ``rosetta parity``.

Workers run the same pairs as the in-process engine (same records), carry seeded faults,
return training runs, fail at once when they die, and report the process tree's memory.
Small models only: each worker start costs a framework import.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rosetta_cnn.core import ports
from rosetta_cnn.core.errors import RosettaError
from rosetta_cnn.verification.parity import model_parity, parity_spec
from rosetta_cnn.verification.workers import (
    MemoryMonitor,
    WorkerError,
    WorkerPool,
    read_tensors,
    write_random,
    write_tensors,
)

from ..conftest import SMALL, needs

ALEXNET = parity_spec("alexnet", overrides=SMALL["alexnet"])


# -- labels ------------------------------------------------------------------------------


def test_every_label_resolves_to_a_port_backend_and_environment(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    got = {label: (i.framework, i.backend, i.name, i.env()) for label in ports.LABELS for i in [ports.resolve(label)]}
    assert got == {
        "torch": ("torch", None, "torch", {}),
        "flax": ("flax", None, "flax", {}),
        "keras": ("keras", "tensorflow", "keras/tensorflow", {"KERAS_BACKEND": "tensorflow"}),
        "keras/tensorflow": ("keras", "tensorflow", "keras/tensorflow", {"KERAS_BACKEND": "tensorflow"}),
        "keras/jax": ("keras", "jax", "keras/jax", {"KERAS_BACKEND": "jax"}),
        "keras/torch": ("keras", "torch", "keras/torch", {"KERAS_BACKEND": "torch"}),
    }
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert ports.resolve("keras").name == "keras/jax"
    assert [ports.resolve(i).extra for i in ports.IMPLEMENTATIONS] == ["torch", "flax", "keras", "keras-jax",
                                                                        "keras-torch"]


@pytest.mark.parametrize("label", ["mxnet", "keras/mxnet", "keras/", "torch/jax", ""])
def test_unknown_label_names_the_valid_labels_and_extras(label):
    with pytest.raises(RosettaError) as e:
        ports.resolve(label)
    msg = str(e.value)
    assert repr(label) in msg and all(lbl in msg for lbl in ports.LABELS) and "keras-jax" in msg


def test_missing_backend_names_the_extra_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jax" else real(name, *a))
    with pytest.raises(RosettaError, match=r"keras/jax needs jax.*rosetta-cnn\[keras-jax\]"):
        ports.require("keras/jax")
    assert "keras/jax" not in ports.installed_implementations() and "flax" not in ports.installed_implementations()


def test_installed_implementations_import_no_framework():
    code = ("import sys; from rosetta_cnn.core import ports; print(ports.installed_implementations());"
            "bad = [m for m in ('torch', 'tensorflow', 'keras', 'jax', 'flax') if m in sys.modules];"
            "sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "torch" in out.stdout or "flax" in out.stdout


def test_activate_refuses_a_second_keras_backend():
    needs("keras")
    import keras

    other = "jax" if keras.backend.backend() != "jax" else "torch"
    with pytest.raises(ports.BackendMismatch, match=f"keras/{other}.*own"):
        ports.activate(f"keras/{other}")
    assert ports.activate(f"keras/{keras.backend.backend()}").backend == keras.backend.backend()


# -- weights between processes --------------------------------------------------------------


def test_scratch_files_are_canonical_and_mapped_lazily(tmp_path):
    from rosetta_cnn.core.canonical import load_canonical, random_canonical, random_tensors

    w = random_canonical(ALEXNET, 3)
    assert all(np.array_equal(w[k], v) for k, v in random_tensors(ALEXNET, 3))  # the stream is the same draw
    path = str(tmp_path / "w.safetensors")
    write_random(path, ALEXNET, 3)  # drawn into the file
    assert all(np.array_equal(read_tensors(path)[k], w[k]) for k in w)
    write_tensors(path, ALEXNET, random_tensors(ALEXNET, 3), framework="torch")
    _, loaded = load_canonical(path, ALEXNET)  # a canonical file any reader takes
    mapped = read_tensors(path)
    assert set(mapped) == set(w) and all(np.array_equal(mapped[k], w[k]) for k in w)
    name = next(iter(w))
    mapped[name][...] = 0  # copy-on-write: the file keeps its values
    assert np.array_equal(read_tensors(path)[name], w[name]) and np.array_equal(loaded[name], w[name])
    with pytest.raises(RosettaError, match="expected"):
        write_tensors(str(tmp_path / "bad.safetensors"), ALEXNET, iter([("nope", w[name])]), framework="torch")
    assert not (tmp_path / "bad.safetensors").exists() and os.listdir(tmp_path) == ["w.safetensors"]


def test_same_tensors_compares_the_data_bit_for_bit_not_the_metadata(tmp_path):
    from rosetta_cnn.core.canonical import random_canonical
    from rosetta_cnn.verification.parity import same_weights
    from rosetta_cnn.verification.workers import same_tensors

    w = random_canonical(ALEXNET, 5)
    a, b, c = (str(tmp_path / f"{n}.safetensors") for n in "abc")
    write_tensors(a, ALEXNET, w, framework="torch")
    write_tensors(b, ALEXNET, w, framework="flax")  # another header
    name = sorted(w)[-1]
    changed = {**w, name: np.nextafter(w[name], np.inf).astype(np.float32)}  # one ulp, in the last tensor
    write_tensors(c, ALEXNET, changed, framework="torch")
    assert same_tensors(a, b) and same_weights(a, b) and same_weights(w, dict(w))
    assert not same_tensors(a, c) and not same_weights(a, c) and not same_weights(w, changed)
    assert not same_tensors(a, c, chunk=4096)  # the difference found past the first chunks too
    assert not same_weights({**w, name: -np.zeros_like(w[name])}, {**w, name: np.zeros_like(w[name])})  # -0.0


class _Counting:
    """A runner that counts its forward runs (and can perturb its export by one ulp)."""

    def __init__(self, runner, perturb=False):
        self.runner, self.perturb, self.runs = runner, perturb, 0
        self.label = runner.label

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.runner.run(*args, **kwargs)

    def export_random(self, *args, **kwargs):
        out = self.runner.export_random(*args, **kwargs)
        if self.perturb:
            name = sorted(out)[0]
            out = {**out, name: np.nextafter(out[name], np.inf).astype(np.float32)}
        return out


@pytest.mark.parametrize("draw_per_source, perturb, runs", [(False, False, 1), (True, False, 2), (False, True, 2)])
def test_exports_that_agree_bit_for_bit_are_run_once(draw_per_source, perturb, runs):
    """One draw for every source: the exports agree bit for bit, so each runner runs once (n
    runs, not n * n) with the same ordered-pair records; a draw per source, or an export that
    differs by one ulp, and every runner runs every distinct export."""
    needs("torch", "flax")
    from rosetta_cnn.verification.parity import LocalRunner, run_pairs

    runners = [_Counting(LocalRunner("torch")), _Counting(LocalRunner("flax"), perturb=perturb)]
    records = run_pairs(ALEXNET, runners, draw_per_source=draw_per_source)
    assert [(r.source, r.target, r.mode) for r in records] == [
        ("torch", "flax", "eval"), ("flax", "torch", "eval"), ("torch", "flax", "train"), ("flax", "torch", "train")]
    assert all(r.passed for r in records), records
    assert [r.runs for r in runners] == [runs, runs]


# -- workers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool():
    needs("torch", "flax")
    with WorkerPool(["torch", "flax"]) as p:
        yield p


def test_workers_give_the_records_of_the_in_process_engine(pool):
    local = model_parity(ALEXNET, ["torch", "flax"])
    remote = model_parity(ALEXNET, ["torch", "flax"], pool=pool)
    key = lambda r: (r.source, r.target, r.mode, r.device)  # noqa: E731
    assert [key(r) for r in remote] == [key(r) for r in local] and len(remote) == 4
    assert all(r.passed for r in remote)
    for a, b in zip(local, remote):
        assert set(a.outputs) == set(b.outputs)
        # the same weights and input: the torch side is bit-identical, flax within fp32 noise
        assert abs(a.max_rel - b.max_rel) <= a.tolerance / 10
    assert pool.versions()["flax"]["fast_xla"] in ("True", "False")


def test_a_worker_carries_a_seeded_fault_to_the_right_layer():
    needs("torch", "flax")
    spec = parity_spec("vgg11", overrides=SMALL["vgg11"])
    with WorkerPool(["torch", "flax"], monitor=False,
                    patches={"flax": ["parity_tests.parity.faults:kernel_transpose_swaps_kh_kw"]}) as p:
        records = model_parity(spec, ["torch", "flax"], modes=["eval"], pool=p)
    assert len(records) == 2
    for r in records:
        assert not r.passed and r.max_rel > 10 * r.tolerance and r.first_divergence == "block1_conv1"


def test_labels_of_one_runtime_share_a_process_and_keep_their_own_ports_and_faults():
    """``torch`` and ``keras/torch`` in one process (PyTorch loaded once), each with its own
    port and model: a seeded fault applied to the Keras port in the live process breaks that
    label only (the pair fails at the faulty layer), and undone, the pair passes again."""
    if "keras/torch" not in ports.installed_implementations():
        pytest.skip("keras/torch not installed")
    from rosetta_cnn.verification.workers import runtime

    assert [runtime(label) for label in ports.IMPLEMENTATIONS] == ["torch", "jax", "tensorflow", "jax", "torch"]
    spec = parity_spec("vgg11", overrides=SMALL["vgg11"])
    with WorkerPool(["torch", "keras/torch"], monitor=False) as p:
        assert list(p.processes().values()) == [["torch", "keras/torch"]]
        assert p.runner("torch").pid == p.runner("keras/torch").pid
        p.runner("keras/torch").patch(["parity_tests.parity.faults:kernel_transpose_swaps_kh_kw"])
        broken = model_parity(spec, ["torch", "keras/torch"], modes=["eval"], pool=p)
        p.runner("keras/torch").unpatch()
        fixed = model_parity(spec, ["torch", "keras/torch"], modes=["eval"], pool=p)
    assert len(broken) == 2 and all(not r.passed and r.first_divergence == "block1_conv1" for r in broken)
    assert all(r.passed for r in fixed), fixed
    with WorkerPool(["torch", "keras/torch"], monitor=False, share_runtimes=False) as p:
        assert sorted(p.processes().values()) == [["keras/torch"], ["torch"]]


def test_runtimes_take_turns_on_a_model_too_large_to_keep_and_a_fresh_process_keeps_its_faults(pool, monkeypatch):
    """Past ``KEEP_MODELS_BYTES`` one runtime works at a time (``WorkerPool.focus``): once its
    turn is over, a process that holds no model stops, and the next request starts a fresh
    one, with the faults applied to its label (so a parked worker cannot hide a fault)."""
    from rosetta_cnn.verification import parity

    spec = parity_spec("googlenet", overrides=SMALL["googlenet"])
    monkeypatch.setattr(parity, "KEEP_MODELS_BYTES", 0)
    torch_worker = pool.runner("torch")
    torch_worker.patch(["parity_tests.parity.faults:drop_ceil_mode"])
    try:
        pid = torch_worker.pid
        broken = model_parity(spec, ["torch", "flax"], modes=["eval"], pool=pool)
        # flax's turn stopped torch's process; the first-divergence report started a fresh one
        assert pool.runner("torch") is torch_worker and torch_worker.pid != pid
    finally:
        torch_worker.unpatch()
    for r in broken:  # a fresh process without the fault would find no diverging layer
        assert not r.passed and "pool" in str(r.first_divergence), r
    fixed = model_parity(spec, ["torch", "flax"], modes=["eval"], pool=pool)
    assert all(r.passed for r in fixed), fixed
    assert list(pool.processes().values()) == [["flax"]]  # torch's turn came first, and ended


def test_a_dead_worker_fails_the_next_request_at_once_with_its_output(pool):
    w = pool.runner("torch")
    w.ready()
    os.kill(w.pid, signal.SIGKILL)
    t0 = time.perf_counter()
    with pytest.raises(WorkerError, match=r"torch worker \(pid \d+\) exited with code -9 while build"):
        w.build(ALEXNET)
    assert time.perf_counter() - t0 < 10
    del pool._workers["torch"]  # the next use starts a fresh one


def test_a_failing_request_raises_with_the_workers_error(pool):
    with pytest.raises(WorkerError, match="flax: run failed: .*Error"):
        pool.runner("flax").run("/nonexistent.safetensors", np.zeros((1, 3, 8, 8), np.float32), ["eval"])


def test_training_run_in_a_worker_equals_the_in_process_one(pool):
    """The training-parity runs can move into workers (and so span Keras backends)."""
    from rosetta_cnn.core.canonical import random_canonical
    from rosetta_cnn.core.spec import load_spec
    from rosetta_cnn.training.trainer import OptimizerConfig
    from rosetta_cnn.verification.training import compare_runs, training_run

    spec = load_spec("vgg11_bn", {"width_divisor": 8, "input_size": 32, "num_classes": 10, "dropout": 0.0})
    rng = np.random.default_rng(1)
    batches = [(rng.normal(size=(4, *spec.input_shape)).astype(np.float32), rng.integers(0, 10, 4)) for _ in range(2)]
    start, opt = random_canonical(spec, 1), OptimizerConfig(lr=1e-4)
    for label in [f for f in ("torch", "flax", "keras/tensorflow") if ports.resolve(f).installed()]:
        remote = pool.runner(label).training_run(spec, start, batches, opt, keep=(2,))
        local = training_run(label, spec, start, batches, opt, keep=(2,))
        assert remote.framework == label and sorted(remote.weights) == [2] and len(remote.losses) == 2
        worst = max(d for d, _ in compare_runs(local, remote).values())
        assert worst < 1e-3, (label, compare_runs(local, remote))


def test_memory_monitor_sees_a_child_process():
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(300 << 20); time.sleep(2)"])
    try:
        m = MemoryMonitor(lambda: [os.getpid(), child.pid], interval=0.05).start()
        time.sleep(1.5)
        m.record_high_water_marks()
        s = m.stop()
    finally:
        child.kill()
        child.wait(timeout=10)
    assert s["peak_rss_mb"] > 300 and s["hwm_max_mb"] > 300 and s["processes"] == 2
