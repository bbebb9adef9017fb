"""Cross-framework forward parity: the matrix and the first-divergence report.

For one model and every ordered pair (source, target) of frameworks:

1. draw non-trivial random weights in the canonical layout (``random_canonical``; a
   different draw per source), load them into the source framework and export them back
   out of it: what is ported is the source framework's own export;
2. import the export into the target framework (and into the source, to get its own output);
3. feed the same NCHW input (each framework transposes it to its layout) and compare the
   logits, in eval mode, and in training mode with dropout 0 (BatchNorm on batch statistics,
   auxiliary heads compared too);
4. for a pair past tolerance, run again returning every layer's activation, walk the spec's
   layers in order and name the first layer past tolerance.

The frameworks are imported lazily through ``core/ports.py``.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..core import ports
from ..core.canonical import random_canonical
from ..core.spec import ModelSpec, load_spec
from .tolerances import tolerance

Progress = Callable[[str], None]


@dataclass
class Diff:
    max_abs: float
    max_rel: float
    scale: float
    ref_shape: tuple[int, ...]
    got_shape: tuple[int, ...]

    @property
    def shape_mismatch(self) -> bool:
        return self.ref_shape != self.got_shape


@dataclass
class LayerDiff:
    layer: str
    op: str
    max_abs: float
    max_rel: float
    passed: bool
    note: str = ""


@dataclass
class Record:
    model: str
    source: str
    target: str
    mode: str
    device: str
    max_abs: float
    max_rel: float
    tolerance: float
    passed: bool
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)
    first_divergence: str | None = None
    layers: list[LayerDiff] | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("max_abs", "max_rel"):
            d[k] = _finite(d[k])
        if self.layers is not None:
            d["layers"] = [{**asdict(l), "max_abs": _finite(l.max_abs), "max_rel": _finite(l.max_rel)}
                           for l in self.layers]
        return d


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def diff(ref: np.ndarray, got: np.ndarray) -> Diff:
    """Largest absolute difference, and relative to the reference's largest magnitude."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    if ref.shape != got.shape:
        return Diff(math.inf, math.inf, scale, ref.shape, got.shape)
    d = float(np.max(np.abs(ref - got))) if ref.size else 0.0
    if not math.isfinite(d):
        d = math.inf
    return Diff(d, d / scale if scale > 0 else (0.0 if d == 0 else math.inf), scale, ref.shape, got.shape)


def layer_report(spec: ModelSpec, ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
                 rel_tol: float) -> tuple[list[LayerDiff], str | None]:
    """Every layer's difference in spec order, and the first layer past ``rel_tol``."""
    rows, first = [], None
    for layer in spec.layers:
        if layer.name not in ref or layer.name not in got:
            continue  # e.g. training-only layers in eval mode
        d = diff(ref[layer.name], got[layer.name])
        note = f"shape {d.got_shape} != {d.ref_shape}" if d.shape_mismatch else ""
        ok = d.max_rel <= rel_tol
        rows.append(LayerDiff(layer.name, layer.op, d.max_abs, d.max_rel, ok, note))
        if not ok and first is None:
            first = layer.name
    return rows, first


def parity_spec(model: str, input_size: tuple[int, int] | None = None,
                overrides: Mapping[str, Any] | None = None) -> ModelSpec:
    """The spec parity runs use: dropout 0 (so training mode is deterministic) and aux heads on."""
    base = load_spec(model)
    o: dict[str, Any] = {k: 0.0 for k in ("dropout", "dropout_aux") if k in base.params}
    if "aux_logits" in base.params:
        o["aux_logits"] = True
    if input_size is not None:
        o["input_size"] = list(input_size)
    o.update(overrides or {})
    return load_spec(model, o)


def make_input(spec: ModelSpec, batch: int, seed: int) -> np.ndarray:
    """A NCHW float32 batch: standard normal, like mean/std-normalised images."""
    rng = np.random.default_rng(10_000 + seed)
    return rng.standard_normal((batch, *spec.input_shape)).astype(np.float32)


def model_parity(
    model: str | ModelSpec,
    frameworks: Sequence[str],
    *,
    input_size: tuple[int, int] | None = None,
    modes: Iterable[str] = ("eval", "train"),
    devices: Iterable[str] = ("cpu",),
    seed: int = 0,
    batch: int = 2,
    per_layer: bool = False,
    specs: Mapping[str, ModelSpec] | None = None,
    targets: Sequence[str] = (),
    progress: Progress | None = None,
) -> list[Record]:
    """Parity records for every ordered pair of ``frameworks`` on one model.

    ``targets`` (``core.ports.TARGETS``, e.g. ``onnx``) add, in eval mode on the CPU,
    one record per framework: that framework's export, exported again to the target's format
    by the target's exporting port and run by the target's runtime.

    ``specs`` may give a framework its own spec (the mutation tests use it to build a port
    with a deliberate fault); by default every framework builds the same spec.
    """
    spec = model if isinstance(model, ModelSpec) else parity_spec(model, input_size)
    say = progress or (lambda msg: None)
    modules = {f: ports.load(f) for f in frameworks}
    fw_specs = {f: (specs or {}).get(f, spec) for f in frameworks}
    devices = list(devices)
    modes = list(modes)

    t0 = time.perf_counter()
    say(f"{spec.name}: building {', '.join(frameworks)}")
    models = {f: modules[f].build_model(fw_specs[f], seed=seed) for f in frameworks}
    x = make_input(spec, batch, seed)

    # each source exports its own copy of a different random draw
    exported: dict[str, dict[str, np.ndarray]] = {}
    for k, src in enumerate(frameworks):
        modules[src].import_weights(models[src], fw_specs[src], random_canonical(spec, seed + 101 * (k + 1)))
        exported[src] = modules[src].export_weights(models[src], fw_specs[src])

    def run(f: str, weights: Mapping[str, np.ndarray], mode: str, device: str, acts: bool) -> dict[str, np.ndarray]:
        # re-import before every run: a training-mode forward updates BatchNorm statistics
        modules[f].import_weights(models[f], fw_specs[f], weights)
        return modules[f].forward(models[f], x, train=(mode == "train"), activations=acts, device=device)

    records: list[Record] = []
    for device in devices:
        for mode in modes:
            tol = tolerance(device, mode).rel
            for src in frameworks:
                outs = {f: run(f, exported[src], mode, device, per_layer) for f in frameworks}
                for dst in frameworks:
                    if dst == src:
                        continue
                    rec = _record(spec, src, dst, mode, device, tol, outs[src], outs[dst])
                    if per_layer or not rec.passed:
                        ref = outs[src] if per_layer else run(src, exported[src], mode, device, True)
                        got = outs[dst] if per_layer else run(dst, exported[src], mode, device, True)
                        rec.layers, rec.first_divergence = layer_report(spec, ref, got, tol)
                    records.append(rec)
                    say(f"{spec.name}: {src:>5} -> {dst:<5} {mode:<5} {device}: max_rel {rec.max_rel:.2e} "
                        f"{'ok' if rec.passed else 'FAIL at ' + str(rec.first_divergence)}")
    if targets and "cpu" in devices and "eval" in modes:
        tol = tolerance("cpu", "eval").rel
        for src in frameworks:
            ref = run(src, exported[src], "eval", "cpu", False)
            for tgt in targets:
                got = ports.target_forward(tgt, spec, exported[src], x)
                rec = _record(spec, src, tgt, "eval", "cpu", tol, ref, got)
                records.append(rec)
                say(f"{spec.name}: {src:>5} -> {tgt:<5} eval  cpu: max_rel {rec.max_rel:.2e} "
                    f"{'ok' if rec.passed else 'FAIL'}")
    if "cpu" in devices and "gpu" in devices:
        for mode in modes:
            tol = tolerance("cpu-vs-gpu", mode).rel
            for f in frameworks:
                cpu = run(f, exported[f], mode, "cpu", False)
                gpu = run(f, exported[f], mode, "gpu", False)
                records.append(_record(spec, f, f, mode, "cpu-vs-gpu", tol, cpu, gpu))
    elapsed = time.perf_counter() - t0
    for r in records:
        r.seconds = elapsed / max(len(records), 1)
    return records


def _record(spec: ModelSpec, src: str, dst: str, mode: str, device: str, tol: float,
            ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> Record:
    names = ["logits"] + (list(spec.aux_outputs) if mode == "train" else [])
    per = {}
    worst_abs = worst_rel = 0.0
    for n in names:
        if n not in ref or n not in got:
            d = Diff(math.inf, math.inf, 0.0, (), ())
        else:
            d = diff(ref[n], got[n])
        per[n] = {"max_abs": _finite(d.max_abs), "max_rel": _finite(d.max_rel), "scale": d.scale}
        worst_abs, worst_rel = max(worst_abs, d.max_abs), max(worst_rel, d.max_rel)
    return Record(spec.name, src, dst, mode, device, worst_abs, worst_rel, tol, worst_rel <= tol, per)


def gpu_frameworks(frameworks: Sequence[str]) -> list[str]:
    """The frameworks among ``frameworks`` that see a CUDA GPU."""
    return [f for f in frameworks if ports.load(f).gpu_available()]


def format_matrix(records: Sequence[Record]) -> str:
    """Model x (pair, mode, device) table of max relative differences with pass/fail."""
    lines = [f"{'model':<16} {'source':>6} -> {'target':<6} {'mode':<5} {'device':<10} "
             f"{'max_abs':>9} {'max_rel':>9} {'tol':>7}  result"]
    for r in records:
        res = "pass" if r.passed else f"FAIL (first divergence: {r.first_divergence})"
        lines.append(f"{r.model:<16} {r.source:>6} -> {r.target:<6} {r.mode:<5} {r.device:<10} "
                     f"{r.max_abs:9.2e} {r.max_rel:9.2e} {r.tolerance:7.0e}  {res}")
    n_fail = sum(not r.passed for r in records)
    lines.append(f"{len(records) - n_fail} passed, {n_fail} failed")
    return "\n".join(lines)


def format_layers(record: Record) -> str:
    """The per-layer report of one record."""
    out = [f"{record.model} {record.source} -> {record.target} ({record.mode}, {record.device}): per layer"]
    for l in record.layers or []:
        flag = "" if l.passed else "  <-- first past tolerance" if l.layer == record.first_divergence else "  past tolerance"
        out.append(f"  {l.layer:<34} {l.op:<20} max_abs {l.max_abs:9.2e}  max_rel {l.max_rel:9.2e}"
                   f"{'  ' + l.note if l.note else ''}{flag}")
    return "\n".join(out)


def format_markdown(records: Sequence[Record]) -> str:
    """The records as a Markdown table (``parity.md`` of ``rosetta parity --out``)."""
    lines = ["| model | source -> target | mode | device | max_abs | max_rel | tolerance | result |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        res = "pass" if r.passed else f"FAIL (first divergence: {r.first_divergence})"
        lines.append(f"| {r.model} | {r.source} -> {r.target} | {r.mode} | {r.device} | {r.max_abs:.2e} | "
                     f"{r.max_rel:.2e} | {r.tolerance:.0e} | {res} |")
    n_fail = sum(not r.passed for r in records)
    return "\n".join(lines) + f"\n\n{len(records) - n_fail} passed, {n_fail} failed\n"
