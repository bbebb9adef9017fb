"""The per-framework process of ``rosetta bench``: ``python -m rosetta_cnn.tools.bench.worker < job.json``.

``rosetta bench`` (``tools/bench/runner.py``) starts one of these per framework (and per process
variant the framework asks for, e.g. other XLA flags), so that thread pools, allocators and
compilation caches of one framework never share a process with another's. The job (JSON on
stdin) names the framework, models, batches, repeats and thread count; the worker loads the
port's ``bench.py`` (same public names in all three) and writes one JSON
record per line on stdout, each prefixed with :data:`PREFIX` (other output goes to stderr),
progress on stderr.

Each measurement: build the model (timed, ``build_s``), make the step function, time its first
call (``first_s``: tracing, compilation, allocation), run ``warmup`` more calls, then time
``repeats`` calls (median and spread). Peak resident memory (``peak_rss_mb``) is the process's
high-water mark over build and run, reset before each measurement (``/proc/self/clear_refs``).
"""
from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
import traceback
from typing import Any, Callable

import numpy as np

from ...core import ports
from ...core.analysis import analyze
from ...core.errors import RosettaError
from ...core.spec import load_spec

PREFIX = "@@bench "
SGEMM_N = 2048


def emit(record: dict[str, Any]) -> None:
    """Write one record for the parent process."""
    sys.stdout.write(PREFIX + json.dumps(record) + "\n")
    sys.stdout.flush()


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def reset_peak_rss() -> bool:
    """Reset this process's resident-memory high-water mark (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """The process's peak resident memory in MiB since the last reset (or since start)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], Any], repeats: int, warmup: int) -> tuple[float, list[float]]:
    """(first call seconds, list of ``repeats`` timed calls after ``warmup`` untimed ones)."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return first, times


def summarize(times: list[float]) -> dict[str, float]:
    """Median, min, max and relative spread ((max - min) / median) of step times."""
    med = statistics.median(times)
    return {"median_s": med, "min_s": min(times), "max_s": max(times),
            "spread": (max(times) - min(times)) / med if med else 0.0}


def measure(mod: Any, job: dict[str, Any], spec: Any, impl: str, config: str, mode: str, batch: int,
            macs: int) -> dict[str, Any]:
    """One record: build, first call, warm-up and timed calls of one (impl, config, mode, batch)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *spec.input_shape), dtype=np.float32)
    y = rng.integers(0, spec.params["num_classes"], size=batch)
    gc.collect()
    rss_reset = reset_peak_rss()
    mod.reset_device_memory(job["device"])
    t = time.perf_counter()
    model = mod.build(impl, config, spec, job["device"])
    build_s = time.perf_counter() - t
    if mode == "infer":
        fn = mod.inference(model, impl, config, x, job["device"])
    else:
        fn = mod.training(model, impl, config, spec, x, y, job["device"])
    first, times = timed(fn, job["repeats"], job["warmup"])
    stats = summarize(times)
    flops = 2 * macs * batch * (1 if mode == "infer" else 3)  # backward ~ 2x forward
    record = {
        "kind": "result", "model": spec.name, "framework": job["framework"], "impl": impl,
        "config": config + (f"+{job['variant']}" if job["variant"] else ""), "mode": mode, "batch": batch,
        "default": job["variant"] == "" and config == mod.default_config(impl, mode),
        "build_s": build_s, "first_s": first, "times_s": times, **stats,
        "images_per_s": batch / stats["median_s"], "gflops": flops / stats["median_s"] / 1e9,
        "peak_rss_mb": peak_rss_mb() if rss_reset else None,
        "peak_device_mb": mod.device_memory_mb(job["device"]),
    }
    del fn, model
    gc.collect()
    return record


def run(job: dict[str, Any]) -> None:
    """Run a whole job, emitting records (errors of one measurement are records too)."""
    fw = job["framework"]  # an implementation label; the runner set its environment
    if job["device"] == "gpu" and not ports.load(fw).gpu_available():
        raise RosettaError(f"--device gpu: {fw} sees no GPU on this machine")
    mod = ports.module(fw, "bench")
    info = mod.setup(job["threads"], job["device"])
    emit({"kind": "info", "framework": fw, "variant": job["variant"], "threads": job["threads"],
          "versions": info, "variants": mod.ENV_VARIANTS, "pid": os.getpid()})
    # the roof is what the machine can do: the fastest of the timed products, not their median
    first, times = timed(mod.sgemm(SGEMM_N, job["device"]), max(job["repeats"], 5), 2)
    gflops = 2 * SGEMM_N ** 3 / min(times) / 1e9
    emit({"kind": "roof", "framework": fw, "variant": job["variant"], "n": SGEMM_N, "first_s": first,
          **summarize(times), "gflops": gflops})
    progress(f"  [{fw}{'+' + job['variant'] if job['variant'] else ''}] sgemm {SGEMM_N}: {gflops:.0f} GFLOP/s")
    for m in job["models"]:
        spec = load_spec(m["name"], m["overrides"])
        summary = analyze(spec)
        macs = {"infer": summary.total_macs, "train": sum(l.macs for l in summary.layers)}
        for impl in mod.implementations(spec):
            for mode in job["modes"]:
                for config in mod.configs(impl, mode, job["variant"]):
                    label = config + (f"+{job['variant']}" if job["variant"] else "")
                    if job["configs"] and label not in job["configs"]:
                        continue
                    for batch in job["batches"]:
                        where = dict(model=spec.name, framework=fw, impl=impl, config=label, mode=mode, batch=batch)
                        try:
                            emit(measure(mod, job, spec, impl, config, mode, batch, macs[mode]))
                        except Exception as e:  # one failed configuration must not end the run
                            emit({"kind": "error", **where, "error": f"{type(e).__name__}: {e}",
                                  "traceback": traceback.format_exc(limit=4)})
                            gc.collect()


def main() -> int:
    job = json.load(sys.stdin)
    try:
        run(job)
    except RosettaError as e:
        print(f"rosetta bench: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
