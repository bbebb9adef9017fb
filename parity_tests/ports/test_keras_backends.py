"""The Keras port on each of its backends (TensorFlow, JAX, PyTorch), one process per backend.

The backend is fixed when Keras is imported, so every check that needs another backend than
this session's runs in a subprocess with ``KERAS_BACKEND`` set (the children of one step run
two at a time):

* the port imports and runs (every public function) on JAX and PyTorch without importing
  TensorFlow (checked in the child that writes that backend's files);
* ``.keras`` and ``.weights.h5`` files written under each backend load under the other two:
  the weights bitwise, the outputs within the eval tolerance of the writer's and bitwise equal
  to the reading backend's own model given the same canonical weights;
* the forward-parity, seeded-fault and training-step parity tests that involve the Keras
  port pass on each backend (``parity_suite``, run by one pytest process per backend), with
  the same tolerances.

When the session itself runs on JAX or PyTorch (``KERAS_BACKEND``), the forward-parity test
below runs in it; on TensorFlow ``parity/test_parity.py`` already covers it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rosetta_cnn.verification.parity import format_matrix, model_parity, parity_spec
from rosetta_cnn.verification.tolerances import tolerance

from ..conftest import SMALL, needs
from ..parity import test_mutations
from ..training import test_train_mutations, test_train_parity
from .keras_files import FAMILIES, FORMATS

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "parity_tests" / "artifacts"
#: Keras backend -> the package it needs
BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
BACKENDS = [b for b, package in BACKEND_PACKAGES.items()
            if importlib.util.find_spec("keras") and importlib.util.find_spec(package)]
OTHER_BACKENDS = [b for b in BACKENDS if b != "tensorflow"]
#: seconds a backend's subprocess may take (a whole pytest run for the parity suite)
TIMEOUT = 1800


def this_backend() -> str:
    return os.environ.get("KERAS_BACKEND", "tensorflow")


# ---------------------------------------------------------------------------
# no TensorFlow outside the TensorFlow backend

#: every public function of the port, used once on a small VGG-BN (then ``PROBE``)
USE_EVERYTHING = """
import sys, tempfile, os
import numpy as np
from rosetta_cnn import keras_impl as k
from rosetta_cnn.keras_impl import bench, train, weights
from rosetta_cnn.core.canonical import random_canonical
from rosetta_cnn.core.spec import load_spec
from rosetta_cnn.training.trainer import OptimizerConfig
spec = load_spec("vgg11_bn", {"width_divisor": 16, "input_size": 32, "num_classes": 10})
m = k.build_model(spec, seed=3)
k.import_weights(m, spec, random_canonical(spec, 1))
x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
out = k.forward(m, x, train=True, activations=True)
assert out["logits"].shape == (2, 10)
k.gpu_available()
k.strict_precision()
with tempfile.TemporaryDirectory() as d:
    k.save_weights(m, spec, os.path.join(d, "w.safetensors"))
    k.load_weights(m, spec, os.path.join(d, "w.safetensors"))
    for ending in weights.NATIVE_SUFFIXES:
        weights.save_native(m, spec, os.path.join(d, "m" + ending))
        weights.load_native(m, spec, os.path.join(d, "m" + ending))
for name in ("sgd", "adamw"):
    t = train.make_trainer(m, spec, OptimizerConfig(name, lr=1e-3))
    t.reseed(1)
    t.step(x, np.array([1, 2]))
    t.load_optimizer_state(t.optimizer_state())
    t.gradients(x, np.array([1, 2]))
    t.predict(x)
bench.setup(1, "cpu")
bench.sgemm(64, "cpu")()
bench.training(bench.build("plain", bench.configs("plain", "train", "")[0], spec, "cpu"), "plain",
               bench.default_config("plain", "train"), spec, x, np.array([1, 2]), "cpu")()
"""
#: the last line a child prints: its Keras backend and the deep-learning frameworks it loaded
PROBE = """
import sys, keras
print(keras.backend.backend(), sorted(m for m in ("tensorflow", "jax", "torch") if m in sys.modules))
"""


def loaded_frameworks(stdout: str) -> tuple[str, str]:
    """(backend, loaded frameworks) from a child's ``PROBE`` line."""
    name, loaded = stdout.strip().splitlines()[-1].split(" ", 1)
    return name, loaded


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_port_runs_without_tensorflow(backend, files_across_backends):
    """The child that wrote this backend's files ran ``USE_EVERYTHING`` first (every public
    function of the port) and loaded no TensorFlow in either."""
    name, loaded = files_across_backends.probes[backend]
    assert name == backend, (name, loaded)
    assert "tensorflow" not in loaded, f"KERAS_BACKEND={backend}: the Keras port imported TensorFlow ({loaded})"
    assert backend in loaded


def test_the_import_check_would_see_tensorflow():
    """The control: the same probe reports TensorFlow when a module does import it."""
    needs("keras")
    backend = OTHER_BACKENDS[0] if OTHER_BACKENDS else "tensorflow"
    out = _children({backend: ["-c", "import tensorflow\n" + PROBE]}, timeout=600)[backend]
    assert "tensorflow" in loaded_frameworks(out)[1]


# ---------------------------------------------------------------------------
# native files across backends

#: writes (``write``) or reads (``read``) the native files of every family under this process's backend
FILES_CHILD = """
import json, sys
from parity_tests.ports.keras_files import files_child
files_child(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
"""


class FileResults(list):
    """The read results of every backend, and each non-TensorFlow write child's ``PROBE`` line."""

    probes: dict[str, tuple[str, str]]


def _children(commands: dict[str, list[str]], timeout: float = 900, ok: tuple[int, ...] = (0,),
              env: dict[str, str] | None = None, at_once: int = 2) -> dict[str, str]:
    """``python ARGS`` per backend (``KERAS_BACKEND`` set, and ``env``), ``at_once`` at a time;
    backend -> stdout (a child that exits with a status not in ``ok``, or runs past ``timeout``
    seconds, fails the test). Two side by side keep both cores busy; a third would add its
    framework's 1.4-1.8 GB to the process tree and nothing to the speed."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    gate = threading.Semaphore(at_once)
    results: dict[str, tuple[int | str, str, str]] = {}

    def one(b: str, args: list[str]) -> None:
        with gate:
            proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**env, "KERAS_BACKEND": b},
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                out, err = proc.communicate(timeout=timeout)
                results[b] = (proc.returncode, out, err)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                results[b] = (f"no answer within {timeout} s", out, err)

    threads = [threading.Thread(target=one, args=item, daemon=True) for item in commands.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout * len(commands) + 60)
    failed = [f"KERAS_BACKEND={b}: " + (f"exited {code}" if isinstance(code, int) else code) + f":\n{out[-4000:]}\n{err[-4000:]}"
              for b, (code, out, err) in results.items() if code not in ok]
    failed += [f"KERAS_BACKEND={b}: never finished" for b in commands if b not in results]
    assert not failed, "\n".join(failed)
    return {b: results[b][1] for b in commands}


@pytest.fixture(scope="module")
def files_across_backends(tmp_path_factory) -> FileResults:
    """Every backend writes its files, then every backend reads the others' (two rounds of one
    child per backend). The JAX and PyTorch write children first use every public function
    of the port (``USE_EVERYTHING``) and end with ``PROBE``."""
    if len(BACKENDS) < 2:
        pytest.skip(f"needs two Keras backends; installed: {', '.join(BACKENDS) or 'none'}")
    root = tmp_path_factory.mktemp("keras-files")
    results = FileResults()
    for action in ("write", "read"):
        outs = _children({b: ["-c", (USE_EVERYTHING if action == "write" and b != "tensorflow" else "")
                              + FILES_CHILD + PROBE, action, str(root), json.dumps(BACKENDS)] for b in BACKENDS})
        if action == "write":
            results.probes = {b: loaded_frameworks(out) for b, out in outs.items()}
    results += [r for b in BACKENDS for r in json.loads((root / b / "read.json").read_text())]
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "keras_files_across_backends.json").write_text(json.dumps(results, indent=1))
    return results


@pytest.mark.parametrize("ending", FORMATS)
@pytest.mark.parametrize("model", FAMILIES)
def test_native_files_load_across_backends(files_across_backends, model, ending):
    rows = [r for r in files_across_backends if r["model"] == model and r["file"] == ending]
    pairs = len(BACKENDS) * (len(BACKENDS) - 1)
    assert len(rows) == pairs * (2 if ending == ".keras" else 1), rows
    tol = tolerance("cpu", "eval").rel
    for r in rows:
        where = f"{model}{ending} written on {r['writer']}, read on {r['reader']} ({r['how']})"
        assert r["weights_bitwise"], f"{where}: the weights changed"
        assert r["bitwise_vs_reader"], f"{where}: outputs differ from the reader's own model with the same weights"
        assert r["max_rel_vs_writer"] <= tol, f"{where}: {r['max_rel_vs_writer']:.2e} > {tol:.0e} of the writer's"


# ---------------------------------------------------------------------------
# parity on each backend


@pytest.mark.skipif(this_backend() == "tensorflow", reason="on TensorFlow, parity/test_parity.py covers it")
@pytest.mark.parametrize("model", FAMILIES)
def test_forward_parity_on_this_backend(model):
    """torch <-> keras and keras <-> flax (eval and train) with the session's Keras backend."""
    needs("torch", "keras", "flax")
    records = model_parity(parity_spec(model, overrides=SMALL[model]), ["torch", "keras", "flax"])
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"keras_{this_backend()}_parity_{model}.json").write_text(
        json.dumps([r.to_json() for r in records], indent=1))
    assert all(r.passed for r in records), format_matrix([r for r in records if not r.passed])


def _ids(test: str, params: list[str]) -> list[str]:
    return [f"{test}[{p}]" for p in params]


#: the costliest part of the suite (XLA compiles GoogLeNet's training step for 40-90 s in the
#: JAX and Flax runs on 2 cores): run with the heavy tests
HEAVY = "googlenet"


def parity_suite(heavy: bool) -> list[str]:
    """Node ids of every forward, seeded-fault and training-parity test that involves the Keras
    port: those that train GoogLeNet (``heavy``) or the others."""
    here = "parity_tests/ports/test_keras_backends.py"
    mutations = "parity_tests/parity/test_mutations.py"
    train_parity = "parity_tests/training/test_train_parity.py"
    train_mutations = "parity_tests/training/test_train_mutations.py"
    keras_pairs = [f"{a}->{b}" for a, b in test_train_parity.PAIRS if "keras" in (a, b)]
    trained = [model for model in test_train_parity.FAMILIES if (model == HEAVY) == heavy]
    train_faults = [name for name, m in test_train_mutations.MUTATIONS.items()
                    if "keras" in (m[2], m[3]) and (m[1] == HEAVY) == heavy]
    ids = [*_ids(f"{train_parity}::test_training_step_parity", [f"{pair}-{model}" for model in trained
                                                                for pair in keras_pairs]),
           *_ids(f"{train_mutations}::test_training_checks_catch", train_faults)]
    if heavy:
        return ids
    return [
        *_ids(f"{here}::test_forward_parity_on_this_backend", FAMILIES),
        *_ids(f"{mutations}::test_seeded_fault_is_caught_and_localised",
              [f"{c[0].__name__}-{c[1]}-{c[3]}" for c in test_mutations.CASES if c[1] == "keras"]),
        *ids,
        *_ids(f"{train_parity}::test_adam_mappings", [f"{pair}-{name}" for name in ("adam", "adamw")
                                                      for pair in keras_pairs]),
        f"{train_parity}::test_steps_never_write_into_the_callers_arrays[keras]",
        f"{train_mutations}::test_decoupled_decay_check_passes_unmutated",
    ]


#: the two tests that run ``parity_suite`` in a backend's process: test name -> heavy
SUITE_TESTS = {"test_parity_suite_on_backend": False, "test_parity_suite_on_backend_googlenet_training": True}


@pytest.fixture(scope="module")
def suite_outcomes(request, tmp_path_factory) -> dict[str, dict[str, str]]:
    """One pytest process per backend runs the ``parity_suite`` ids of every selected test of
    ``SUITE_TESTS`` for that backend (the light and the heavy ones together, so the frameworks
    are imported once per backend): backend -> node id -> outcome (``-rA``'s PASSED, FAILED...).
    The PyTorch and Flax training runs that the Keras runs are compared with are computed once,
    by the first child, and read by the next and by this session's ``training/`` tests
    (``test_train_parity.share_runs``)."""
    needs("torch", "keras", "flax")
    selected = {item.name for item in request.session.items}
    runs = {}
    for backend in OTHER_BACKENDS:
        ids = [i for test, heavy in SUITE_TESTS.items() if f"{test}[{backend}]" in selected
               for i in parity_suite(heavy)]
        if ids:
            runs[backend] = ["-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--durations=5", *ids]
    shared = str(tmp_path_factory.mktemp("training-runs"))
    # one backend at a time: each child holds about 2.5 GB, and side by side they would take
    # the whole suite's process tree past 6 GB (45 s faster); exit status 1: some tests failed
    # (each test below names its own)
    outcomes: dict[str, dict[str, str]] = {}
    for backend, args in runs.items():
        out = _children({backend: args}, timeout=TIMEOUT, ok=(0, 1),
                        env={test_train_parity.RUNS_DIR: str(shared)})[backend]
        outcomes[backend] = {line.split(" ", 2)[1]: line.split(" ", 1)[0] for line in out.splitlines()
                             if line.split(" ", 1)[0] in ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS")
                             and len(line.split(" ")) > 1}
        outcomes[backend]["__tail__"] = out[-4000:]
    test_train_parity.share_runs(shared)
    return outcomes


def _assert_suite_passed(outcomes: dict[str, dict[str, str]], backend: str, ids: list[str]) -> None:
    got = outcomes[backend]
    bad = {i: got.get(i, "not run") for i in ids if got.get(i) != "PASSED"}
    assert not bad, f"KERAS_BACKEND={backend}: {bad}\n{got['__tail__']}"


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_parity_suite_on_backend(backend, suite_outcomes):
    """The Keras tests of ``parity_suite`` pass with ``KERAS_BACKEND=backend`` (same tolerances)."""
    _assert_suite_passed(suite_outcomes, backend, parity_suite(heavy=False))


@pytest.mark.heavy
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_parity_suite_on_backend_googlenet_training(backend, suite_outcomes):
    """GoogLeNet's training-step parity and its seeded fault, with ``KERAS_BACKEND=backend``."""
    _assert_suite_passed(suite_outcomes, backend, parity_suite(heavy=True))


def test_parity_suite_covers_every_keras_case():
    """Every seeded fault and training-parity case that involves Keras is in one of the two runs."""
    ids = parity_suite(heavy=False) + parity_suite(heavy=True)
    assert len(ids) == len(set(ids))
    assert sum("test_training_step_parity" in i for i in ids) == 4 * len(test_train_parity.FAMILIES)
    assert sum("test_training_checks_catch" in i for i in ids) == 3
    assert sum("test_seeded_fault" in i for i in ids) == sum(c[1] == "keras" for c in test_mutations.CASES)


def test_extras_install_each_backend():
    """``keras-jax`` and ``keras-torch`` install Keras without TensorFlow; CI's ``all-cpu`` has all three."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def packages(extra: str) -> set[str]:
        return {req.split(">")[0].split("=")[0].split("[")[0].strip() for req in extras[extra]}

    assert {"keras", "jax", "jaxlib"} <= packages("keras-jax") and {"keras", "torch"} <= packages("keras-torch")
    assert not {"tensorflow", "tensorflow-cpu"} & (packages("keras-jax") | packages("keras-torch"))
    for extra in ("keras-cpu", "keras-jax", "keras-torch"):
        assert extra in extras["all-cpu"][0], extra
    assert "keras," in extras["all"][0] and "keras-jax" in extras["all"][0] and "keras-torch" in extras["all"][0]
