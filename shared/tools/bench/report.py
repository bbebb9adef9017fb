"""The benchmark report: the sgemm roof, best configurations, goals as ratios measured in the
same run, a recommendation, and the Markdown tables (``bench.md``; also what the terminal
shows). Framework-free: it reads the records the workers emitted.
"""
from __future__ import annotations

import datetime
import os
import platform
import sys
from typing import Any, Iterable

IMPL_LABEL = {"spec": "spec-built", "plain": "hand-written", "torchvision": "torchvision",
              "keras.applications": "keras.applications"}


def mb(v: float | None) -> str:
    """A MiB figure for humans: GiB from 1024 MiB up, '-' for None."""
    return "-" if v is None else f"{v / 1024:.1f} GiB" if v >= 1024 else f"{v:.0f} MiB"


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpus_usable": len(os.sched_getaffinity(0)), "os": platform.platform(),
            "python": platform.python_version(), "load_average": list(os.getloadavg())}


def panel_key(r: dict[str, Any]) -> tuple:
    return r["model"], r["mode"], r["batch"]


def build_report(records: list[dict[str, Any]], settings: dict[str, Any], seconds: float) -> dict[str, Any]:
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
        "machine": _machine(), "seconds": seconds, "threads": settings["threads"], "device": settings["device"],
        "repeats": settings["repeats"], "warmup": settings["warmup"],
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


def find(results: Iterable[dict[str, Any]], **kw: Any) -> list[dict[str, Any]]:
    return [r for r in results if all(r.get(k) == v for k, v in kw.items())]


#: each framework's default configuration (what a user gets without asking), as a fraction of
#: the sgemm roof, on VGG (large convolutions: the roof is reachable); a training step counts 3x
#: the forward FLOPs
DEFAULT_GOALS = {"infer": 0.80, "train": 0.60}


def defaults(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The spec-built model's default-configuration results with a roof fraction, by framework."""
    return sorted((r for r in results if r["impl"] == "spec" and r["default"] and r.get("roof_fraction") is not None),
                  key=lambda r: (r["model"], r["mode"], r["batch"], r["framework"]))


def goals(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's performance goals as ratios measured in this run (one row per comparison)."""
    rows = []
    for (model, mode, batch) in sorted({panel_key(r) for r in results}):
        here = find(results, model=model, mode=mode, batch=batch)
        for fw in sorted({r["framework"] for r in here}):
            for spec_r in find(here, framework=fw, impl="spec"):
                plain = find(here, framework=fw, impl="plain", config=spec_r["config"])
                if plain:
                    rows.append({"goal": "spec >= 0.95x hand-written", "model": model, "mode": mode, "batch": batch,
                                 "framework": fw, "config": spec_r["config"], "target": 0.95,
                                 "ratio": spec_r["images_per_s"] / plain[0]["images_per_s"]})
        tv = find(here, framework="torch", impl="torchvision", config="nchw")
        spec_default = find(here, framework="torch", impl="spec", default=True)
        if tv and spec_default:
            target = {"vgg16": 1.4, "googlenet": 2.0}.get(model)
            rows.append({"goal": "torch default >= Nx torchvision NCHW", "model": model, "mode": mode,
                         "batch": batch, "framework": "torch", "config": spec_default[0]["config"], "target": target,
                         "ratio": spec_default[0]["images_per_s"] / tv[0]["images_per_s"]})
        for d in defaults(here):
            rows.append({"goal": f"default config >= {DEFAULT_GOALS[mode]:.2f} of sgemm roof", "model": model,
                         "mode": mode, "batch": batch, "framework": d["framework"], "config": d["config"],
                         "target": DEFAULT_GOALS[mode] if model.startswith("vgg") else None,
                         "ratio": d["roof_fraction"]})
        if mode == "infer":
            for fw in sorted({r["framework"] for r in here}):
                best = max(find(here, framework=fw, impl="spec"), key=lambda r: r["images_per_s"], default=None)
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
    for (model, mode, batch) in sorted({panel_key(r) for r in results}):
        by_fw = {}
        for r in find(results, model=model, mode=mode, batch=batch, impl="spec"):
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
            row["caveats"].append(f"peak RSS {mb(win['peak_rss_mb'])} vs {mb(low['peak_rss_mb'])} "
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
                     f"{r['first_s']:.1f}", f"{r['build_s']:.1f}", mb(r["peak_rss_mb"])]
                    + ([mb(r["peak_device_mb"])] if report["device"] == "gpu" else []))
    header = ["model", "mode", "batch", "framework", "implementation", "config", "img/s", "spread", "GFLOP/s",
              "of roof", "first call s", "build s", "peak RSS"] + (["peak GPU"] if report["device"] == "gpu" else [])
    lines += ["## Throughput", "", _table(header, rows), ""]
    rows = [[r["framework"], r["model"], r["mode"], str(r["batch"]), r["config"], f"{r['images_per_s']:.2f}",
             f"{100 * r['roof_fraction']:.0f}%",
             f"{100 * DEFAULT_GOALS[r['mode']]:.0f}%" if r["model"].startswith("vgg") else "-"]
            for r in defaults(report["results"])]
    if rows:
        lines += ["## Defaults (what a user gets without asking), as a fraction of the sgemm roof", "",
                  _table(["framework", "model", "mode", "batch", "config", "img/s", "of roof", "goal"], rows), ""]
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
