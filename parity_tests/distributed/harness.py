"""Set-up and comparisons of the data-parallel equivalence tests: canonical start weights and
batches made with numpy (no framework in the test process), the engine's worker process(es)
run with a join timeout, and the differences between runs."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from rosetta_cnn.core.canonical import expected_tensors
from rosetta_cnn.core.spec import load_spec
from rosetta_cnn.training import distributed
from rosetta_cnn.training.trainer import is_parameter

ROOT = Path(__file__).resolve().parents[2]
#: the issue's measured set-up: vgg11 widths / 8 at 32x32, 3 SGD steps, global batch 8, 2 devices
DEVICES, STEPS, BATCH, LR = 2, 3, 8, 0.01
KINDS = {"plain": ("vgg11", ("chunked",)), "bn": ("vgg11_bn", ("chunked", "sync"))}
#: what an engine's BatchNorm run must equal: one device (global statistics) or the chunked
#: one-process run (per-replica statistics)
BN_REFERENCE = {"torch": "chunked", "keras/tensorflow": "chunked", "flax": "reference", "keras/jax": "reference"}
OVERRIDES = {"width_divisor": 8, "input_size": 32, "num_classes": 10, "dropout": 0.0}
FAULTS = ("summed", "whole", "no_allreduce")
#: what a job trains: the model kinds and the seeded faults (run on the BatchNorm kind)
PARTS = ("plain", "bn", "faults")
#: the default run's share per engine, each a few seconds (measured on the shared 2-core CPU: torch
#: 6-9 s, flax 6-9 s, keras/jax 17-20 s, keras/tensorflow 7-11 s a worker); every engine x part is ``heavy``:
#: a 2-vs-1 equivalence per engine, and the seeded faults where they are cheap (no Keras compile each)
LIGHT = {"torch": PARTS, "flax": PARTS, "keras/jax": ("bn",), "keras/tensorflow": ("plain",)}
#: seconds one engine's worker(s) may take before the test fails (measured: 20-60 s on the shared 2-core CPU)
JOIN_TIMEOUT = 420.0


def canonical_start(spec: Any, seed: int) -> dict[str, np.ndarray]:
    """Random canonical tensors: LeCun-scaled weights (training at lr 0.01 stays stable), small biases, BatchNorm scales and shifts
    away from 1 and 0, running statistics away from mean 0 / variance 1."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_tensors(spec).items():
        if name.endswith(".running_var"):
            t = rng.uniform(0.5, 2.0, shape)
        elif name.endswith(".running_mean"):
            t = rng.normal(0.0, 0.3, shape)
        elif name.endswith(".num_batches_tracked"):
            t = np.zeros(shape)
        elif len(shape) == 1 and "bn" in name and name.endswith(".weight"):
            t = rng.uniform(0.7, 1.3, shape)
        elif len(shape) == 1:
            t = rng.normal(0.0, 0.05, shape)
        else:
            t = rng.normal(0.0, np.sqrt(1.0 / np.prod(shape[1:])), shape)
        out[name] = np.asarray(t, dtype=np.int64 if name.endswith("num_batches_tracked") else np.float32)
    return out


def make_job(tmp: Path, label: str, parts: tuple[str, ...] = PARTS) -> Path:
    """Weights and batches for the kinds in ``parts``, and the job file of ``label``'s worker."""
    kinds = {}
    for i, (kind, (model, scenarios)) in enumerate(KINDS.items()):
        if kind not in parts:
            continue
        spec = load_spec(model, OVERRIDES)
        weights = tmp / f"{kind}.safetensors"
        if not weights.exists():
            save_file(canonical_start(spec, seed=10 + i), str(weights))
            rng = np.random.default_rng(20 + i)
            x = rng.normal(0.0, 1.0, (STEPS, BATCH, *spec.input_shape)).astype(np.float32)
            y = rng.integers(0, 10, (STEPS, BATCH))
            np.savez(tmp / f"{kind}-batches.npz", x=x, y=y)
        wanted = [s for s in scenarios if s != "chunked" or label in ("torch", "keras/tensorflow")]
        wanted = [s for s in wanted if s != "sync" or label == "keras/tensorflow"]
        kinds[kind] = {"model": model, "overrides": OVERRIDES, "weights": str(weights),
                       "batches": str(tmp / f"{kind}-batches.npz"), "scenarios": wanted}
    name = label.replace("/", "-")
    faults = list(FAULTS) if "faults" in parts else []
    job = {"label": label, "devices": DEVICES, "batch": BATCH, "lr": LR, "kinds": kinds, "faults": faults,
           "fault_kinds": ["bn"], "out": str(tmp / f"{name}-results")}
    path = tmp / f"{name}-job.json"
    path.write_text(json.dumps(job))
    return path


def run_worker(job: Path, label: str, timeout: float = JOIN_TIMEOUT) -> distributed.Outcome:
    """The engine's worker: one process (JAX, TensorFlow: N devices in it) or N (DDP)."""
    argv = [sys.executable, "-m", "parity_tests.distributed.worker", str(job)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    if label == "torch":
        port = distributed.free_port()
        commands = [(argv, {**env, "OMP_NUM_THREADS": "1", **distributed.torch_worker_env(r, DEVICES, port)})
                    for r in range(DEVICES)]
    else:
        commands = [(argv, env)]
    return distributed.run_group(commands, timeout=timeout, capture=[True] * len(commands), cwd=str(ROOT))


@dataclass
class Results:
    tensors: dict[str, np.ndarray]
    meta: dict[str, Any]

    def weights(self, kind: str, scenario: str) -> dict[str, np.ndarray]:
        prefix = f"{kind}/{scenario}/"
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def run(self, kind: str, scenario: str) -> dict[str, Any]:
        return self.meta["runs"][f"{kind}/{scenario}"]


def load_results(job: Path) -> Results:
    out = json.loads(job.read_text())["out"]
    with np.load(out + ".npz") as data:
        tensors = {k: data[k] for k in data.files}
    return Results(tensors, json.loads(Path(out + ".json").read_text()))


def problems(results: Results, kind: str, scenario: str, label: str, tol: float) -> list[str]:
    """Why ``scenario`` is not the data-parallel equivalent of one device (empty if it is): a
    replica that trained on other than B/N rows, parameters or BatchNorm statistics further than
    ``tol`` from the reference (one device; for per-replica BatchNorm, the chunked run)."""
    found = []
    rows = results.run(kind, scenario)["rows"]
    if rows != BATCH // DEVICES:
        found.append(f"device 0 trained on {rows} rows, not {BATCH // DEVICES}")
    expected = BN_REFERENCE[label] if kind == "bn" and scenario != "sync" else "reference"
    for parameters in (True, False):
        d, where = difference(results.weights(kind, scenario), results.weights(kind, expected), parameters=parameters)
        if d > tol:
            found.append(f"{where} differs from the {expected} run by {d:.2e} (tolerance {tol:.0e})")
    return found


def difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray], *, parameters: bool) -> tuple[float, str]:
    """The largest ``max|a - b| / max|b|`` over the tensors (parameters, or BatchNorm running
    statistics), and which tensor it is: each difference relative to the reference tensor's scale."""
    worst, where = 0.0, ""
    for name, ref in b.items():
        if is_parameter(name) != parameters or name.endswith("num_batches_tracked"):
            continue
        scale = float(np.abs(ref).max()) or 1.0
        d = float(np.abs(a[name].astype(np.float64) - ref).max()) / scale
        if d > worst:
            worst, where = d, name
    return worst, where
