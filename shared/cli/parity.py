"""``rosetta parity``: the cross-implementation parity matrix, with the first-divergence report."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..core import ports
from ..core.errors import RosettaError, SpecError
from .main import label_arg, parse_input


def run_parity(args: argparse.Namespace) -> int:
    from ..core.files import atomic_path
    from ..core.spec import is_file_reference, list_models
    from ..tools import plots
    from ..verification.parity import format_layers, format_markdown, format_matrix, gpu_frameworks, model_parity
    from ..verification.workers import WorkerPool, format_memory

    models = args.models or list_models()
    unknown = [m for m in models if m not in list_models() and not is_file_reference(m)]
    if unknown:
        raise SpecError(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(list_models())}")
    labels = list(dict.fromkeys(args.frameworks or ports.installed_implementations()))
    for label in labels:
        ports.require(label)
    if len(labels) < 2:
        print(f"parity needs at least two implementations; installed here: {', '.join(labels) or 'none'}",
              file=sys.stderr)
        return 2
    size = parse_input(args.input, 2) if args.input else None
    devices = {"cpu": ["cpu"], "gpu": ["gpu"], "all": ["cpu", "gpu"]}[args.device]
    t0 = time.perf_counter()
    records = []
    with WorkerPool(labels) as pool:
        processes = list(pool.processes().values())  # as started: later, large models park idle ones
        hosts = [" + ".join(group) for group in processes]
        print(f"implementations: {', '.join(labels)} ({len(hosts)} worker processes, labels of one runtime "
              f"share one: {'; '.join(hosts)})", file=sys.stderr, flush=True)
        if "gpu" in devices:
            gpu_fws = gpu_frameworks(labels, pool)
            if len(gpu_fws) < len(labels):
                missing = [f for f in labels if f not in gpu_fws]
                msg = f"no GPU visible to: {', '.join(missing)}"
                if args.device == "gpu":
                    print(f"rosetta parity: {msg}", file=sys.stderr)
                    return 2
                print(f"{msg}; running on the CPU only", file=sys.stderr)
                devices = ["cpu"]
        for i, model in enumerate(models, 1):
            print(f"[{i}/{len(models)}] {model}", file=sys.stderr, flush=True)
            t1 = time.perf_counter()
            records += model_parity(model, labels, input_size=size, devices=devices, per_layer=args.per_layer,
                                    targets=args.targets, pool=pool, draw_per_source=args.draw_per_source,
                                    progress=lambda m: print("  " + m, file=sys.stderr, flush=True))
            if pool.monitor is not None:
                print(f"  {model}: {time.perf_counter() - t1:.0f} s, peak {pool.monitor.mark() / 1024:.2f} GiB resident",
                      file=sys.stderr, flush=True)
        versions = pool.versions()
        memory = pool.close()
        timings = {label: {k: round(v, 1) for k, v in t.items()} for label, t in pool.timings().items()}
    seconds = time.perf_counter() - t0
    print(format_matrix(records))
    for r in records:
        if r.layers is not None and (args.per_layer or not r.passed):
            print()
            print(format_layers(r))
    run = {"models": len(models), "implementations": labels, "seconds": round(seconds, 1), "memory": memory,
           "versions": versions, "worker_seconds": timings, "worker_processes": processes}
    summary = f"{len(models)} model(s), {len(labels)} implementations ({', '.join(labels)}), {seconds:.0f} s"
    print(f"\n{summary}\n{format_memory(memory)}")
    as_json = json.dumps([r.to_json() for r in records], indent=2)
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(as_json)
    if args.png:
        plots.plot_parity(records, args.png)
    if args.out:
        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RosettaError(f"--out {out}: cannot create the directory: {e}") from None
        with atomic_path(out / "parity.json") as tmp:
            tmp.write_text(as_json)
        with atomic_path(out / "parity.md") as tmp:
            tmp.write_text(format_markdown(records) + f"\n{summary}; {format_memory(memory)}.\n")
        with atomic_path(out / "run.json") as tmp:
            tmp.write_text(json.dumps(run, indent=2))
        plots.write_optional(plots.plot_parity, records, out / "parity.png")
        print(f"wrote {out / 'parity.json'}, parity.md, run.json and parity.png (rosetta docs --parity {out})")
    return 0 if all(r.passed for r in records) else 1


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("parity", help="cross-implementation parity matrix (one worker process per framework runtime)")
    s.add_argument("--models", nargs="+", metavar="MODEL", help="bundled models or path/to/spec.json:model")
    s.add_argument("--frameworks", nargs="+", type=label_arg, metavar="LABEL",
                   help=f"implementations to compare ({', '.join(ports.LABELS)}; 'keras' is Keras on $KERAS_BACKEND, "
                        f"tensorflow when unset); default: every installed one "
                        f"({', '.join(ports.IMPLEMENTATIONS)})")
    s.add_argument("--input", metavar="HxW", help="input size (default: each spec's, 224x224)")
    s.add_argument("--device", choices=["cpu", "gpu", "all"], default="cpu")
    s.add_argument("--per-layer", action="store_true", help="print every layer's difference for every pair")
    s.add_argument("--targets", nargs="+", default=[], choices=list(ports.TARGETS), metavar="TARGET",
                   help=f"also run each implementation's export in these runtimes, eval mode, CPU "
                        f"({', '.join(ports.TARGETS)}: exported by the torch port, so torch must be installed)")
    s.add_argument("--draw-per-source", action="store_true",
                   help="a random draw of its own for each source implementation (every implementation then runs "
                        "every source's export: n*n runs per model instead of n; by default all sources export "
                        "one draw, and exports that agree bit for bit are run once)")
    s.add_argument("--json", metavar="FILE", help="write the records as JSON")
    s.add_argument("--png", metavar="FILE", help="write a heat map")
    s.add_argument("--out", metavar="DIR",
                   help="write parity.json, parity.md, run.json (time, peak memory, versions) and parity.png into DIR")
    s.set_defaults(func=run_parity)
