"""``rosetta train`` on several processes and devices, end to end, per engine.

For each engine: one device for one epoch (the reference) and, at the same time, the same epoch
as 2 processes on 127.0.0.1 under the engine's own multi-process launch (``torchrun``; JAX's and
Keras' coordinator variables; ``TF_CONFIG``), which must end with the reference's weights within
the ``data-parallel`` tolerance. ``heavy``: ``--devices 2`` on this machine resuming the
one-device checkpoint for a second epoch (another device count), whose weights every installed
framework loads and runs to the same logits. Every group of processes is joined with a timeout, and a
failing process stops the others at once (``training.distributed.run_group``).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from safetensors.numpy import load_file

from rosetta_cnn.core import ports
from rosetta_cnn.core.canonical import load_canonical
from rosetta_cnn.training import distributed
from rosetta_cnn.verification.tolerances import tolerance

from ..conftest import AVAILABLE
from ..training.test_datasets import write_mnist_like
from . import harness

ENGINES = ("torch", "flax", "keras/jax", "keras/tensorflow")
ROSETTA = [sys.executable, "-c", "import sys; from rosetta_cnn.cli import main; sys.exit(main())"]
#: vgg11 widths / 16, no dropout, 32 images in batches of 8: 4 steps an epoch
TRAIN = ["train", "vgg11", "--set", "width_divisor=16", "--set", "dropout=0", "--batch", "8"]
TIMEOUT = 300.0


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("idx")
    write_mnist_like(d, n_train=32, n_test=8)
    return d


def launch(label: str, argv: list[str]) -> list[tuple[list[str], dict[str, str]]]:
    """2 processes of ``rosetta ARGV`` on 127.0.0.1 as the engine's launcher starts them."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1"}
    port = distributed.free_port()
    if label == "torch":  # torchrun itself, running the rosetta command in each of its 2 workers
        rosetta = shutil.which("rosetta") or str(Path(sys.executable).parent / "rosetta")
        return [([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                  "127.0.0.1", "--master-port", str(port), rosetta, *argv], env)]
    if label == "flax":
        return [([*ROSETTA, *argv], {**env, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                                     "JAX_PROCESS_ID": str(i)}) for i in range(2)]
    if label == "keras/jax":
        return [([*ROSETTA, *argv], {**env, "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{port}",
                                     "KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": str(i)})
                for i in range(2)]
    cluster = {"worker": [f"127.0.0.1:{port}", f"127.0.0.1:{distributed.free_port()}"]}
    return [([*ROSETTA, *argv], {**env, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                                               "index": i}})})
            for i in range(2)]


def run(commands: list[tuple[list[str], dict[str, str]]]) -> None:
    outcome = distributed.run_group(commands, timeout=TIMEOUT, capture=[True] * len(commands))
    assert outcome.ok, outcome.describe() + "\n" + "\n".join((e or "")[-2500:] for e in outcome.stderr)


def common(label: str, data: Path) -> list[str]:
    return [*TRAIN, "--framework", label, "--data", str(data), "--epochs", "1"]


@pytest.fixture(scope="module")
def launched(data, tmp_path_factory) -> Callable[[str], Path]:
    """An engine's two runs of one epoch, side by side in one group of processes: one device
    (``one/``) and 2 processes under the engine's launcher (``two/``)."""
    done: dict[str, Path] = {}

    def get(label: str) -> Path:
        if not ports.resolve(label).installed():
            pytest.skip(f"{label} is not installed")
        if label not in done:
            tmp = tmp_path_factory.mktemp(label.replace("/", "-"))
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
            run([([*ROSETTA, *common(label, data), "--out", str(tmp / "one")], env),
                 *launch(label, [*common(label, data), "--devices", "2", "--out", str(tmp / "two")])])
            done[label] = tmp
        return done[label]

    return get


@pytest.mark.parametrize("label", ENGINES)
def test_two_processes_under_the_engines_launcher_equal_one_device(launched, label):
    tmp = launched(label)
    log = json.loads((tmp / "two" / "log.json").read_text())["parallel"]
    launcher = {"torch": "torchrun", "keras/tensorflow": "tf-config"}.get(label, "jax")
    assert (log["devices"], log["processes"], log["launcher"], log["global_batch"], log["per_device_batch"],
            log["per_device_rows_seen"]) == (2, 2, launcher, 8, 4, 4), log
    one, two = (load_file(str(tmp / d / "model.safetensors")) for d in ("one", "two"))
    d, where = harness.difference(two, one, parameters=True)
    assert d <= tolerance("cpu", "data-parallel").rel, (where, d)


@pytest.mark.heavy
@pytest.mark.parametrize("label", ENGINES)
def test_resume_on_another_device_count_loads_everywhere(launched, data, label, tmp_path):
    """The one-device checkpoint, resumed on 2 devices of this machine for a second epoch."""
    shutil.copytree(launched(label) / "one", tmp_path / "resumed")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    run([([*ROSETTA, *TRAIN, "--framework", label, "--data", str(data), "--epochs", "2", "--devices", "2",
           "--out", str(tmp_path / "resumed")], env)])
    log = json.loads((tmp_path / "resumed" / "log.json").read_text())
    assert log["epochs_done"] == 2 and len(log["step_loss"]) == 8 and log["parallel"]["devices"] == 2
    assert log["parallel"]["launcher"] == "local" and log["parallel"]["processes"] == (2 if label == "torch" else 1)

    spec, tensors = load_canonical(tmp_path / "resumed" / "model.safetensors")
    x = np.random.default_rng(0).normal(size=(2, *spec.input_shape)).astype(np.float32)
    logits = {}
    for fw in AVAILABLE:
        port = ports.load(fw)
        model = port.build_model(spec)
        port.import_weights(model, spec, tensors)
        logits[fw] = port.forward(model, x)["logits"]
    ref = next(iter(logits.values()))
    for fw, out in logits.items():
        assert np.abs(out - ref).max() <= tolerance("cpu", "eval").rel * np.abs(ref).max(), fw
