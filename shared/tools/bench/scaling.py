"""``rosetta bench --devices 1 2``: data-parallel training throughput per engine at each device
count, and the scaling efficiency ``throughput_N / (N * throughput_1)``.

One measurement per implementation and device count, in its own process(es) (``python -m
rosetta_cnn.tools.bench.scaling JOB.json``): on 1 device the ordinary trainer (Keras on
TensorFlow with graph compilation, as its ``MirroredStrategy`` step runs), on N the engine of
``training/distributed.py`` (torch: N gloo worker processes, each with ``threads / N`` threads;
JAX and TensorFlow: N host or logical devices in one process), the same global batch of random
images on every count, the median of ``repeats`` timed steps after ``warmup`` untimed ones.
On a CPU the N devices share the machine's cores: the figure then measures the engines'
overhead, not a speed-up. Outputs in ``out``: ``scaling.json``, ``scaling.md``, ``scaling.png``.
Nothing here imports a framework; the workers do.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...core import ports
from ...core.errors import RosettaError
from ...core.files import atomic_path
from ...training import distributed
from .. import plots
from .report import _machine, _table

WORKER = "rosetta_cnn.tools.bench.scaling"
#: seconds one measurement's process(es) may take before they are stopped
TIMEOUT = 900.0
CPU_NOTE = ("On a CPU the N devices share the same {cpus} core(s), so the efficiency measures each engine's "
            "overhead (gradient all-reduce, sharding, replica steps), not a speed-up: with no overhead it is 1/N "
            "here (0.50 on 2 devices), on N GPUs 1, where it is the real scaling figure.")


def check(frameworks: Sequence[str], devices: Sequence[int], batch: int) -> list[str]:
    """The implementations to measure (``keras`` resolved), after the plan's own checks for every
    device count: an engine for each, a batch that splits evenly (errors before any process starts)."""
    if not devices or any(n < 1 for n in devices):
        raise RosettaError("--devices needs device counts of at least 1, e.g. --devices 1 2")
    labels = list(dict.fromkeys(ports.resolve(fw).name for fw in frameworks))
    for label in labels:
        for n in devices:
            distributed.plan(label, n, batch, launcher="local", env={})
    return labels


def run_scaling(model: dict[str, Any], frameworks: Sequence[str], devices: Sequence[int], out: str | Path, *,
                batch: int = 8, repeats: int = 5, warmup: int = 1, threads: int | None = None,
                device: str = "cpu") -> dict[str, Any]:
    """Measure training throughput of ``model`` (``{"name", "overrides"}``) per implementation at
    each device count (1 always included as the baseline), write the outputs and return the report."""
    threads = threads or len(os.sched_getaffinity(0))
    counts = sorted({1, *devices})
    labels = check(frameworks, counts, batch)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results, failures = [], []
    todo = [(label, n) for label in labels for n in counts]
    for i, (label, n) in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {label} on {n} device(s)", file=sys.stderr, flush=True)
        job = {"label": label, "devices": n, "batch": batch, "model": model, "repeats": repeats, "warmup": warmup}
        record, error = _measure(job, threads)
        if error:
            failures.append(f"{label} on {n} device(s): {error}")
            print(f"  FAILED {error}", file=sys.stderr, flush=True)
            continue
        results.append(record)
        print(f"  {record['images_per_s']:.1f} img/s ({record['engine']})", file=sys.stderr, flush=True)
    report = {"kind": "data-parallel scaling", "model": model, "batch": batch, "devices": counts, "device": device,
              "repeats": repeats, "warmup": warmup, "threads": threads, "machine": _machine(),
              "results": efficiency(results), "failures": failures,
              "note": CPU_NOTE.format(cpus=threads) if device == "cpu" else "",
              "seconds": round(time.perf_counter() - t0, 1)}
    text = format_scaling(report)
    print(text)
    files = {out / "scaling.json": json.dumps(report, indent=2), out / "scaling.md": text + "\n"}
    for path, content in files.items():
        with atomic_path(path) as tmp:
            tmp.write_text(content)
    plots.write_optional(plot_scaling, report, out / "scaling.png")
    print(f"\nwrote {', '.join(str(p) for p in files)}, {out / 'scaling.png'} ({time.perf_counter() - t0:.0f} s)",
          file=sys.stderr)
    return report


def efficiency(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each record with ``efficiency``: its throughput over N times its implementation's on one
    device (None where the one-device run failed)."""
    one = {r["label"]: r["images_per_s"] for r in results if r["devices"] == 1}
    return [{**r, "efficiency": r["images_per_s"] / (r["devices"] * one[r["label"]]) if r["label"] in one else None}
            for r in results]


def _measure(job: dict[str, Any], threads: int) -> tuple[dict[str, Any] | None, str | None]:
    """Run one measurement's process(es), joined with a timeout; (record, None) or (None, why)."""
    label, n = job["label"], job["devices"]
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    env = {**os.environ, **ports.resolve(label).env(), "ROSETTA_JAX_CACHE": "0",
           "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    with tempfile.TemporaryDirectory() as tmp:
        job = {**job, "out": str(Path(tmp) / "record.json")}
        path = Path(tmp) / "job.json"
        path.write_text(json.dumps(job))
        argv = [sys.executable, "-c", f"import os, sys; os.sched_setaffinity(0, {cpus}); "
                                      f"from {WORKER} import main; sys.exit(main(sys.argv[1]))", str(path)]
        if label == "torch" and n > 1:  # DDP: one process per device, the threads shared out
            port = distributed.free_port()
            each = {"OMP_NUM_THREADS": str(max(1, threads // n))}
            commands = [(argv, {**env, **each, **distributed.torch_worker_env(r, n, port)}) for r in range(n)]
        else:
            commands = [(argv, {**env, "OMP_NUM_THREADS": str(threads)})]
        outcome = distributed.run_group(commands, timeout=TIMEOUT, capture=[True] * len(commands))
        if not outcome.ok:
            return None, outcome.describe("worker")
        return json.loads(Path(job["out"]).read_text()), None


def main(job_path: str) -> int:
    """The worker: train ``job["label"]`` on ``job["devices"]`` devices and time its steps."""
    from ...core.spec import load_spec
    from ...training.trainer import OptimizerConfig, build_trainer

    job = json.loads(Path(job_path).read_text())
    label, n, batch = job["label"], job["devices"], job["batch"]
    ports.activate(label)
    spec = load_spec(job["model"]["name"], job["model"]["overrides"])
    opt = OptimizerConfig("sgd", lr=0.01)
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, (batch, *spec.input_shape)).astype(np.float32)
    y = rng.integers(0, int(spec.params["num_classes"]), batch)
    engine, primary = None, True
    if n == 1:
        trainer = build_trainer(label, spec, opt)
        name = "one device (the ordinary trainer)"
        if label == "keras/tensorflow":  # like for like: MirroredStrategy's step is a tf.function graph
            trainer = ports.module(label, "train").make_trainer(trainer.model, spec, opt, compilation="graph")
    else:
        launcher = "auto" if label == "torch" else "local"  # torch: the worker variables _measure set
        engine = distributed.start(distributed.plan(label, n, batch, launcher=launcher))
        trainer, name, primary = engine.build_trainer(spec, opt), engine.name, engine.plan.primary
    t0 = time.perf_counter()
    trainer.step(x, y)
    first = time.perf_counter() - t0
    for _ in range(job["warmup"]):
        trainer.step(x, y)
    times = []
    for _ in range(job["repeats"]):
        t0 = time.perf_counter()
        trainer.step(x, y)  # returns the loss as a float: the step has finished
        times.append(time.perf_counter() - t0)
    if primary:
        median = statistics.median(times)
        record = {"label": label, "devices": n, "engine": name, "global_batch": batch, "per_device_batch": batch // n,
                  "first_s": first, "times_s": times, "median_s": median, "images_per_s": batch / median}
        Path(job["out"]).write_text(json.dumps(record))
    if engine is not None:
        engine.close()
    return 0


def format_scaling(report: dict[str, Any]) -> str:
    rows = [[r["label"], str(r["devices"]), r["engine"], str(r["global_batch"]), str(r["per_device_batch"]),
             f"{r['images_per_s']:.1f}", f"{r['median_s'] * 1000:.1f}",
             "-" if r["efficiency"] is None else f"{r['efficiency']:.2f}"] for r in report["results"]]
    model = report["model"]
    sets = " ".join(f"{k}={v}" for k, v in model["overrides"].items())
    lines = ["## Data-parallel scaling", "",
             f"{model['name']}{' (' + sets + ')' if sets else ''}, SGD training steps, global batch {report['batch']} "
             f"split over the devices; median of {report['repeats']} steps after {report['warmup']} warm-up; "
             f"efficiency = throughput_N / (N x throughput_1).", "",
             _table(["implementation", "devices", "engine", "global batch", "per device", "images/s", "step ms",
                     "efficiency"], rows)]
    if report["note"]:
        lines += ["", report["note"]]
    if report["failures"]:
        lines += ["", "Failed: " + "; ".join(report["failures"])]
    return "\n".join(lines)


def plot_scaling(report: dict[str, Any], path: str | Path) -> None:
    """Throughput per implementation, one bar per device count, the efficiency written above."""
    plt = plots.pyplot()
    labels = list(dict.fromkeys(r["label"] for r in report["results"]))
    counts = report["devices"]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(labels), 3.6))
    width = 0.8 / len(counts)
    for j, n in enumerate(counts):
        for i, label in enumerate(labels):
            r = next((r for r in report["results"] if r["label"] == label and r["devices"] == n), None)
            if r is None:
                continue
            bar = ax.bar(i + (j - (len(counts) - 1) / 2) * width, r["images_per_s"], width, color=f"C{j}",
                         label=f"{n} device(s)" if i == 0 else None)
            if r["efficiency"] is not None and n > 1:
                ax.bar_label(bar, [f"{r['efficiency']:.2f}"], fontsize=8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("training images/s")
    ax.set_title(f"{report['model']['name']}: data-parallel throughput (label: scaling efficiency)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots.save_png(fig, path)
