"""``rosetta bench``: inference and training throughput, compile time and memory per framework,
against hand-written and library baselines and the machine's sgemm roof, and a recommendation.

Each framework runs in its own subprocess (``tools/bench/worker.py``), one per model and
environment variant, pinned to ``threads`` CPUs, so that no thread pool, allocator state or
compilation cache carries over (a GoogLeNet measured in the process that had just run VGG16
ran up to 1.6x slower on a 2-core machine, in torch and Keras alike). Outputs in ``out``:
``bench.json`` (every record), ``bench.md`` (tables, goals, recommendation) and ``bench.png``
(throughput per framework and configuration, with the sgemm roof marked); progress goes to
stderr. Nothing here imports a framework.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ...core import ports
from ...core.files import atomic_path
from .. import plots
from .report import build_report, format_report, mb
from .worker import PREFIX

DEFAULT_MODELS = ("vgg16", "googlenet")
WORKER = "rosetta_cnn.tools.bench.worker"


def run_bench(models: Sequence[dict[str, Any]], frameworks: Sequence[str], out: str | Path, *,
              batches: Sequence[int] = (8,), device: str = "cpu", repeats: int = 5, warmup: int = 1,
              threads: int | None = None, configs: Sequence[str] | None = None,
              modes: Sequence[str] = ("infer", "train")) -> dict[str, Any]:
    """Measure ``models`` (``{"name": ..., "overrides": {...}}``) in ``frameworks``, write
    ``bench.json``, ``bench.md`` and ``bench.png`` into ``out`` and return the report (its
    ``failures`` and ``errors`` say what did not run)."""
    threads = threads or len(os.sched_getaffinity(0))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    job = {"models": list(models), "batches": list(batches), "device": device, "repeats": repeats,
           "warmup": warmup, "threads": threads, "configs": list(configs) if configs else None, "modes": list(modes)}
    records: list[dict[str, Any]] = []
    failures = []
    t0 = time.perf_counter()

    def run_models(fw: str, variant: str, env: dict[str, str]) -> None:
        for model in job["models"]:
            failures.append(_worker({**job, "models": [model], "framework": fw, "variant": variant}, env, records))

    for i, fw in enumerate(frameworks, 1):
        print(f"[{i}/{len(frameworks)}] {fw}", file=sys.stderr, flush=True)
        run_models(fw, "", {})
        info = next((r for r in records if r["kind"] == "info" and r["framework"] == fw), None)
        if info is None:
            continue
        for variant, env in info["variants"].items():
            if variant and (not configs or any(c.endswith("+" + variant) for c in configs)):
                run_models(fw, variant, env)
    report = build_report(records, job, time.perf_counter() - t0)
    report["failures"] = [f for f in failures if f]
    text = format_report(report)
    print(text)
    with atomic_path(out / "bench.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    with atomic_path(out / "bench.md") as tmp:
        tmp.write_text(text + "\n")
    plots.write_optional(plots.plot_bench, report, out / "bench.png")
    print(f"\nwrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'} "
          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return report


def _worker(job: dict[str, Any], env_extra: dict[str, str], records: list[dict[str, Any]]) -> str | None:
    """Run one worker process, streaming its records into ``records``; an error message or None.
    ``job["framework"]`` is an implementation label: its environment (``KERAS_BACKEND``) is set
    here. JAX's persistent compilation cache is off, so that first calls measure compilation."""
    env = {**os.environ, "ROSETTA_JAX_CACHE": "0", **ports.resolve(job["framework"]).env(), **env_extra,
           "OMP_NUM_THREADS": str(job["threads"]), "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    cpus = sorted(os.sched_getaffinity(0))[:job["threads"]]
    proc = subprocess.Popen([sys.executable, "-m", WORKER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    proc.stdin.write(json.dumps(job))
    proc.stdin.close()
    for line in proc.stdout:
        if not line.startswith(PREFIX):
            print(line, end="", file=sys.stderr)
            continue
        r = json.loads(line[len(PREFIX):])
        r.setdefault("variant", job["variant"])
        records.append(r)
        if r["kind"] in ("result", "error"):
            print("  " + _progress_line(r), file=sys.stderr, flush=True)
    rc = proc.wait()
    return None if rc == 0 else f"worker for {job['framework']} ({job['variant'] or 'default env'}) exited with {rc}"


def _progress_line(r: dict[str, Any]) -> str:
    where = f"[{r['framework']}] {r['model']} {r['impl']} {r['config']} {r['mode']} b{r['batch']}"
    if r["kind"] == "error":
        return f"{where}: FAILED {r['error']}"
    return (f"{where}: {r['images_per_s']:.1f} img/s (spread {100 * r['spread']:.0f}%), first call "
            f"{r['first_s']:.1f} s, peak RSS {mb(r['peak_rss_mb'])}")
