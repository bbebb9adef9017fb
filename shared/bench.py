"""``rosetta bench``: inference and training throughput, compile time and memory per framework,
against hand-written and library baselines and the machine's sgemm roof, and a recommendation.

    rosetta bench [--models ...] [--frameworks ...] [--batch N ...] [--input HxW]
                  [--device cpu|gpu] [--repeats N] [--out DIR]

Each framework runs in its own subprocess (``shared.bench_worker``), pinned to ``--threads``
CPUs (default: all this process may use). Outputs in ``--out``: ``bench.json`` (every record),
``bench.md`` (tables, goals, recommendation) and ``bench.png`` (throughput per framework and
configuration, with the sgemm roof marked); the table and the recommendation also go to the
terminal, progress to stderr. Nothing here imports a framework.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from .errors import RosettaError, SpecError
from .frameworks import FRAMEWORKS

DEFAULT_MODELS = ("vgg16", "googlenet")
#: top-level packages a framework's worker needs (checked without importing them)
REQUIRES: dict[str, tuple[str, ...]] = {"torch": ("torch",), "keras": ("keras", "tensorflow"),
                                        "flax": ("flax", "jax", "optax")}
IMPL_LABEL = {"spec": "spec-built", "plain": "hand-written", "torchvision": "torchvision",
              "keras.applications": "keras.applications"}


def installed_frameworks() -> list[str]:
    """Frameworks whose packages are installed (found, not imported)."""
    return [fw for fw, pkgs in REQUIRES.items() if all(importlib.util.find_spec(p) for p in pkgs)]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bench`` sub-command."""
    s = sub.add_parser("bench", help="benchmark inference, training, compile time and memory per framework "
                                     "and recommend one")
    s.add_argument("--models", nargs="+", metavar="MODEL", default=list(DEFAULT_MODELS),
                   help=f"models to measure (default: {' '.join(DEFAULT_MODELS)})")
    s.add_argument("--frameworks", nargs="+", choices=list(FRAMEWORKS), help="default: every installed one")
    s.add_argument("--batch", nargs="+", type=int, default=[8], metavar="N", help="batch sizes (default: 8)")
    s.add_argument("--input", metavar="HxW", help="input size (default: each spec's, 224x224)")
    s.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    s.add_argument("--repeats", type=int, default=5, metavar="N", help="timed steps per measurement (default: 5)")
    s.add_argument("--out", default="bench", metavar="DIR", help="output folder (default: ./bench)")
    s.add_argument("--set", action="append", default=[], metavar="key=value",
                   help="override a spec parameter of every model, e.g. width_divisor=8")
    s.add_argument("--configs", nargs="+", metavar="NAME",
                   help="measure only these configurations, as labelled in the table (e.g. channels_last xla "
                        "jax_jit+onednn)")
    s.add_argument("--modes", nargs="+", choices=["infer", "train"], default=["infer", "train"])
    s.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), metavar="N",
                   help="CPU threads per framework (each worker is pinned to N CPUs; default: all usable)")
    s.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed steps after the first (default: 1)")
    s.set_defaults(func=cmd_bench)


def _worker(job: dict[str, Any], env_extra: dict[str, str], records: list[dict[str, Any]]) -> str | None:
    """Run one worker process, streaming its records into ``records``; an error message or None."""
    from .bench_worker import PREFIX

    env = {**os.environ, **env_extra, "OMP_NUM_THREADS": str(job["threads"]),
           "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    cpus = sorted(os.sched_getaffinity(0))[:job["threads"]]
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-m", "shared.bench_worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, cwd=root,
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
            f"{r['first_s']:.1f} s, peak RSS {_mb(r['peak_rss_mb'])}")


def _mb(v: float | None) -> str:
    return "-" if v is None else f"{v / 1024:.1f} GiB" if v >= 1024 else f"{v:.0f} MiB"


def cmd_bench(args: argparse.Namespace) -> int:
    from .cli import _parse_input
    from .spec import list_models, load_spec, parse_overrides
    from .weights import atomic_path

    unknown = [m for m in args.models if m not in list_models()]
    if unknown:
        raise SpecError(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(list_models())}")
    if args.repeats < 1 or args.warmup < 0 or any(b < 1 for b in args.batch):
        raise RosettaError("--repeats and --batch must be at least 1, --warmup at least 0")
    usable = len(os.sched_getaffinity(0))
    if not 1 <= args.threads <= usable:
        raise RosettaError(f"--threads must be between 1 and {usable} (the CPUs this process may use)")
    fws = args.frameworks or installed_frameworks()
    missing = [f for f in fws if f not in installed_frameworks()]
    if missing:
        raise RosettaError(f"framework(s) not installed: {', '.join(missing)} "
                           f"(install with pip install 'rosetta-cnn[{missing[0]}]')")
    overrides = parse_overrides(args.set)
    if args.input:
        overrides["input_size"] = list(_parse_input(args.input, 2))
    for m in args.models:
        load_spec(m, overrides)  # bad overrides fail here, before any worker starts
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    job = {"models": [{"name": m, "overrides": overrides} for m in args.models], "batches": args.batch,
           "device": args.device, "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads,
           "configs": args.configs, "modes": args.modes}
    records: list[dict[str, Any]] = []
    failures = []
    t0 = time.perf_counter()
    # one process per framework, environment variant and model: no thread pool, allocator state
    # or compilation cache carries over (a GoogLeNet measured in the process that had just run
    # VGG16 ran up to 1.6x slower on this 2-core machine, in torch and Keras alike)
    def run_models(fw: str, variant: str, env: dict[str, str]) -> None:
        for model in job["models"]:
            failures.append(_worker({**job, "models": [model], "framework": fw, "variant": variant}, env, records))

    for i, fw in enumerate(fws, 1):
        print(f"[{i}/{len(fws)}] {fw}", file=sys.stderr, flush=True)
        run_models(fw, "", {})
        info = next((r for r in records if r["kind"] == "info" and r["framework"] == fw), None)
        if info is None:
            continue
        for variant, env in info["variants"].items():
            if variant and (not args.configs or any(c.endswith("+" + variant) for c in args.configs)):
                run_models(fw, variant, env)
    report = build_report(records, args, time.perf_counter() - t0)
    report["failures"] = [f for f in failures if f]
    text = format_report(report)
    print(text)
    with atomic_path(out / "bench.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    with atomic_path(out / "bench.md") as tmp:
        tmp.write_text(text + "\n")
    plot(report, out / "bench.png")
    print(f"\nwrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'} "
          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return 1 if report["failures"] or any(r["kind"] == "error" for r in records) else 0


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpus_usable": len(os.sched_getaffinity(0)), "os": platform.platform(),
            "python": platform.python_version(), "load_average": list(os.getloadavg())}


def _key(r: dict[str, Any]) -> tuple:
    return r["model"], r["mode"], r["batch"]


def build_report(records: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """Everything measured, plus the derived views: roof, best configs, goals, recommendation."""
    results = [r for r in records if r["kind"] == "result"]
    roofs = [r for r in records if r["kind"] == "roof"]
    roof = max((r["gflops"] for r in roofs), default=None)
    for r in results:
        r["roof_fraction"] = r["gflops"] / roof if roof else None
    best = {}
    for r in results:
        k = (r["model"], r["framework"], r["impl"], r["mode"], r["batch"])
        if k not in best or r["images_per_s"] > best[k]["images_per_s"]:
            best[k] = r
    for r in results:
        r["best"] = best[(r["model"], r["framework"], r["impl"], r["mode"], r["batch"])] is r
    return {
        "command": "rosetta bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "rosetta bench",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(), "seconds": seconds, "threads": args.threads, "device": args.device,
        "repeats": args.repeats, "warmup": args.warmup,
        "versions": {_label(r): r["versions"] for r in records if r["kind"] == "info"},
        "roof": {"gflops": roof, "n": roofs[0]["n"] if roofs else None,
                 "per_framework": _best_roofs(roofs)},
        "results": results,
        "errors": [r for r in records if r["kind"] == "error"],
        "goals": goals(results),
        "recommendation": recommend(results),
    }


def _label(r: dict[str, Any]) -> str:
    """``framework`` or ``framework+variant``, the key of a worker's records."""
    return r["framework"] + (f"+{r['variant']}" if r["variant"] else "")


def _best_roofs(roofs: list[dict[str, Any]]) -> dict[str, float]:
    """The fastest sgemm per framework and variant (each worker process measures its own)."""
    best: dict[str, float] = {}
    for r in roofs:
        best[_label(r)] = max(best.get(_label(r), 0.0), r["gflops"])
    return best


def _find(results: Iterable[dict[str, Any]], **kw: Any) -> list[dict[str, Any]]:
    return [r for r in results if all(r.get(k) == v for k, v in kw.items())]


def goals(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's performance goals as ratios measured in this run (one row per comparison)."""
    rows = []
    for (model, mode, batch) in sorted({_key(r) for r in results}):
        here = _find(results, model=model, mode=mode, batch=batch)
        for fw in sorted({r["framework"] for r in here}):
            for spec_r in _find(here, framework=fw, impl="spec"):
                plain = _find(here, framework=fw, impl="plain", config=spec_r["config"])
                if plain:
                    rows.append({"goal": "spec >= 0.95x hand-written", "model": model, "mode": mode, "batch": batch,
                                 "framework": fw, "config": spec_r["config"], "target": 0.95,
                                 "ratio": spec_r["images_per_s"] / plain[0]["images_per_s"]})
        tv = _find(here, framework="torch", impl="torchvision", config="nchw")
        spec_default = _find(here, framework="torch", impl="spec", default=True)
        if tv and spec_default:
            target = {"vgg16": 1.4, "googlenet": 2.0}.get(model)
            rows.append({"goal": "torch default >= Nx torchvision NCHW", "model": model, "mode": mode,
                         "batch": batch, "framework": "torch", "config": spec_default[0]["config"], "target": target,
                         "ratio": spec_default[0]["images_per_s"] / tv[0]["images_per_s"]})
        if mode == "infer":
            for fw in sorted({r["framework"] for r in here}):
                best = max(_find(here, framework=fw, impl="spec"), key=lambda r: r["images_per_s"], default=None)
                if best and best["roof_fraction"] is not None:
                    rows.append({"goal": "best config >= 0.70 of sgemm roof", "model": model, "mode": mode,
                                 "batch": batch, "framework": fw, "config": best["config"],
                                 "target": 0.70 if model.startswith("vgg") else None,
                                 "ratio": best["roof_fraction"]})
    for row in rows:
        row["met"] = None if row["target"] is None else row["ratio"] >= row["target"]
    return rows


def recommend(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, mode and batch: the framework whose spec-built model (in its best measured
    configuration) is fastest, its margin over the runner-up, and the caveats."""
    out = []
    for (model, mode, batch) in sorted({_key(r) for r in results}):
        by_fw = {}
        for r in _find(results, model=model, mode=mode, batch=batch, impl="spec"):
            if r["framework"] not in by_fw or r["images_per_s"] > by_fw[r["framework"]]["images_per_s"]:
                by_fw[r["framework"]] = r
        ranked = sorted(by_fw.values(), key=lambda r: -r["images_per_s"])
        if not ranked:
            continue
        win = ranked[0]
        row = {"model": model, "mode": mode, "batch": batch, "framework": win["framework"], "config": win["config"],
               "images_per_s": win["images_per_s"], "spread": win["spread"],
               "ranking": [(r["framework"], r["config"], r["images_per_s"]) for r in ranked], "caveats": []}
        if len(ranked) > 1:
            row["margin"] = win["images_per_s"] / ranked[1]["images_per_s"]
            noise = max(win["spread"], ranked[1]["spread"])
            if row["margin"] - 1 < noise:
                row["caveats"].append(f"margin {100 * (row['margin'] - 1):.0f}% is within the timing spread "
                                      f"({100 * noise:.0f}%): a tie on this machine")
        first = min(ranked, key=lambda r: r["first_s"])
        if win["first_s"] > 2 * first["first_s"] and win["first_s"] > 5:
            row["caveats"].append(f"first call / compile {win['first_s']:.0f} s vs {first['first_s']:.0f} s "
                                  f"({first['framework']} {first['config']})")
        rss = [r for r in ranked if r["peak_rss_mb"]]
        low = min(rss, key=lambda r: r["peak_rss_mb"], default=None)
        if low and win["peak_rss_mb"] and win["peak_rss_mb"] > 1.3 * low["peak_rss_mb"]:
            row["caveats"].append(f"peak RSS {_mb(win['peak_rss_mb'])} vs {_mb(low['peak_rss_mb'])} "
                                  f"({low['framework']} {low['config']})")
        out.append(row)
    return out


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def format_report(report: dict[str, Any]) -> str:
    """The Markdown report (also what the terminal shows)."""
    m = report["machine"]
    roof = report["roof"]
    lines = [f"# rosetta bench, {report['date']}", "",
             f"Machine: {m['cpu']}, {report['threads']} thread(s) of {m['cpus_usable']} usable CPUs, "
             f"device {report['device']}; load average at the end {', '.join(f'{x:.1f}' for x in m['load_average'])}. "
             f"Median of {report['repeats']} timed steps after {report['warmup']} warm-up step(s); "
             f"spread = (max - min) / median. Command: `{report['command']}`.", ""]
    if roof["gflops"]:
        per = ", ".join(f"{k} {v:.0f}" for k, v in roof["per_framework"].items())
        lines += [f"sgemm {roof['n']}x{roof['n']} roof (fastest product): {roof['gflops']:.0f} GFLOP/s "
                  f"(best of: {per}).", ""]
    rows = []
    for r in sorted(report["results"], key=lambda r: (r["model"], r["mode"], r["batch"], r["framework"],
                                                      list(IMPL_LABEL).index(r["impl"]), -r["images_per_s"])):
        tag = "/".join(t for t, on in (("default", r["default"]), ("best", r["best"])) if on)
        rows.append([r["model"], r["mode"], str(r["batch"]), r["framework"], IMPL_LABEL[r["impl"]],
                     r["config"] + (f" ({tag})" if tag else ""), f"{r['images_per_s']:.2f}",
                     f"{100 * r['spread']:.0f}%", f"{r['gflops']:.1f}",
                     "-" if r["roof_fraction"] is None else f"{100 * r['roof_fraction']:.0f}%",
                     f"{r['first_s']:.1f}", f"{r['build_s']:.1f}", _mb(r["peak_rss_mb"])]
                    + ([_mb(r["peak_device_mb"])] if report["device"] == "gpu" else []))
    header = ["model", "mode", "batch", "framework", "implementation", "config", "img/s", "spread", "GFLOP/s",
              "of roof", "first call s", "build s", "peak RSS"] + (["peak GPU"] if report["device"] == "gpu" else [])
    lines += ["## Throughput", "", _table(header, rows), ""]
    if report["goals"]:
        lines += ["## Goals (ratios within this run)", "",
                  _table(["goal", "model", "mode", "batch", "framework", "config", "ratio", "target", "met"],
                         [[g["goal"], g["model"], g["mode"], str(g["batch"]), g["framework"], g["config"],
                           f"{g['ratio']:.2f}", "-" if g["target"] is None else f"{g['target']:.2f}",
                           {True: "yes", False: "NO", None: "-"}[g["met"]]] for g in report["goals"]]), ""]
    if report["errors"] or report.get("failures"):
        lines += ["## Failures", ""] + [f"- {e['framework']} {e['model']} {e['impl']} {e['config']} {e['mode']} "
                                        f"b{e['batch']}: {e['error']}" for e in report["errors"]]
        lines += [f"- {f}" for f in report.get("failures", [])] + [""]
    lines += ["## Recommendation", ""]
    for rec in report["recommendation"]:
        what = {"infer": "inference", "train": "training"}[rec["mode"]]
        margin = (f", {rec['margin']:.2f}x the runner-up ({rec['ranking'][1][0]} {rec['ranking'][1][1]})"
                  if "margin" in rec else "")
        lines.append(f"- {rec['model']} {what}, batch {rec['batch']}: **{rec['framework']}** ({rec['config']}), "
                     f"{rec['images_per_s']:.2f} img/s{margin}."
                     + ("".join(f" Caveat: {c}." for c in rec["caveats"])))
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Horizontal bars of images/s per framework, implementation and configuration, one panel per
    model, mode and batch, with the sgemm roof (in images/s for that model) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .weights import atomic_path

    results = report["results"]
    panels = sorted({_key(r) for r in results})
    colors = {"torch": "#ee4c2c", "keras": "#7b2cbf", "flax": "#4a7fc1"}
    heights = [max(2.0, 0.28 * len(_find(results, model=m, mode=mo, batch=b)) + 1.0) for m, mo, b in panels]
    fig, axes = plt.subplots(len(panels) or 1, 1, figsize=(9, sum(heights) or 2), squeeze=False,
                             gridspec_kw={"height_ratios": heights or [1]})
    for ax, (model, mode, batch) in zip(axes[:, 0], panels):
        rs = sorted(_find(results, model=model, mode=mode, batch=batch),
                    key=lambda r: (r["framework"], list(IMPL_LABEL).index(r["impl"]), r["images_per_s"]))
        labels = [f"{r['framework']} {IMPL_LABEL[r['impl']]} {r['config']}"
                  + (" *" if r["default"] else "") for r in rs]
        ax.barh(range(len(rs)), [r["images_per_s"] for r in rs],
                xerr=[[r["images_per_s"] - batch / r["max_s"] for r in rs],
                      [batch / r["min_s"] - r["images_per_s"] for r in rs]],
                color=[colors.get(r["framework"], "grey") for r in rs],
                alpha=0.9, capsize=2)
        ax.set_yticks(range(len(rs)), labels, fontsize=7)
        if rs and rs[0]["roof_fraction"]:
            roof_ips = rs[0]["images_per_s"] / rs[0]["roof_fraction"]
            ax.axvline(roof_ips, color="black", linestyle="--", linewidth=1)
            ax.text(roof_ips, len(rs) - 0.5, f" sgemm roof {report['roof']['gflops']:.0f} GFLOP/s", fontsize=7,
                    va="bottom", ha="right")
        ax.set_title(f"{model} {'inference' if mode == 'infer' else 'training step'}, batch {batch}", fontsize=9)
        ax.set_xlabel("images/s (median, whiskers min-max; * = default config)", fontsize=8)
    fig.suptitle(f"rosetta bench {report['date'][:10]}: {report['machine']['cpu']}, "
                 f"{report['threads']} threads", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
