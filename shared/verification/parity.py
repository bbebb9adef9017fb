"""Cross-implementation forward parity: the matrix and the first-divergence report.

For one model and every ordered pair (source, target) of implementations (labels of
``core/ports.py``: torch, flax, keras/tensorflow, keras/jax, keras/torch):

1. draw non-trivial random weights in the canonical layout (``random_canonical``; one draw
   for every source, or one per source), load them into the source and export them back out
   of it: what is ported is the source's own export;
2. import the export into the target (and into the source, to get its own output);
3. feed the same NCHW input (each framework transposes it to its layout) and compare the
   logits, in eval mode, and in training mode with dropout 0 (BatchNorm on batch statistics,
   auxiliary heads compared too);
4. for a pair past tolerance, run again returning every layer's activation, walk the spec's
   layers in order and name the first layer past tolerance.

:func:`run_pairs` does this over *runners*: :class:`LocalRunner` runs an implementation in
this process, ``verification/workers.py`` runs each in a long-lived process of its own (Keras
fixes its backend at import; ``rosetta parity`` uses those). Each runner builds its model once
per model (or, when the weights of all implementations together would not fit
:data:`KEEP_MODELS_BYTES`, one model is alive at a time), imports each distinct export once
(sources whose exports are the same bit for bit share one run) and runs eval then train on it.

The frameworks are imported lazily through ``core/ports.py``.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..core import ports
from ..core.canonical import expected_tensors, random_canonical
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


class LocalRunner:
    """One implementation run in this process: the model of the current spec is built once and
    reused for every pair (weights change by import), and freed before the next model.

    :class:`rosetta_cnn.verification.workers.Worker` has the same methods and runs them in a
    process of the implementation's own; :func:`run_pairs` works with either.
    """

    def __init__(self, label: str):
        self.label = label
        self.mod = ports.load(label)
        self.spec: ModelSpec | None = None
        self.model: Any = None
        self._dirty = False  # a training-mode forward moved the BatchNorm statistics
        self._holds: str | None = None  # the canonical file whose tensors the model holds exactly

    def build(self, spec: ModelSpec, seed: int = 0) -> None:
        """Build ``spec`` (the previous model is freed first)."""
        self.free()
        # no initialisation: every run imports its weights first (export_random, run)
        self.spec, self.model = spec, self.mod.build_model(spec, seed=seed, initialize=False)
        self._dirty, self._holds = False, None

    def export_random(self, draw: ModelSpec, seed: int, path: str | None = None, drawn: str | None = None) -> Any:
        """Import ``random_canonical(draw, seed)`` and export it back out: the tensors this
        implementation ports. With ``path`` the draw and the export go through canonical files,
        one tensor at a time, so that neither sits in memory whole: the draw is read from the
        file ``drawn`` (:func:`~rosetta_cnn.verification.workers.write_random`, written once
        and shared by every runner); an export that gives back the draw bit for bit returns
        the draw's file itself (nothing is written), any other is written to ``path``.
        Returns the export (a mapping, or the file that holds it)."""
        if path is None:
            self.mod.import_weights(self.model, self.spec, random_canonical(draw, seed))
            return self.mod.export_weights(self.model, self.spec)
        if drawn is None:
            raise ValueError("an export to a file reads its draw from a file: give drawn")
        from .workers import read_tensors, write_tensors

        tensors = read_tensors(drawn)
        self.mod.import_weights(self.model, self.spec, tensors)
        self._dirty, self._holds = False, None
        # first pass: compare (nothing written; stops at the first difference)
        if all(tensors.matches(name, a) for name, a in self.mod.iter_weights(self.model, self.spec)):
            self._holds = drawn  # what importing the draw gives: the first run need not import
            return drawn
        # one tensor at a time: exported, checked, written and dropped
        write_tensors(path, self.spec, self.mod.iter_weights(self.model, self.spec), framework=self.label)
        return path

    def _load(self, weights: Any) -> None:
        from .workers import read_tensors

        self._holds = None
        self.mod.import_weights(self.model, self.spec, read_tensors(weights) if isinstance(weights, str) else weights)
        self._holds = weights if isinstance(weights, str) else None
        self._dirty = False

    def run(self, weights: Any, x: np.ndarray, modes: Sequence[str], device: str = "cpu",
            activations: bool = False) -> dict[str, dict[str, np.ndarray]]:
        """Import ``weights`` once and run ``x`` in each mode: mode -> outputs (``forward``'s
        dict). The weights are imported again before a mode that follows a training-mode run
        (which moved the BatchNorm running statistics)."""
        out: dict[str, dict[str, np.ndarray]] = {}
        if self._dirty or not (isinstance(weights, str) and weights == self._holds):
            self._load(weights)
        for mode in modes:
            if self._dirty:
                self._load(weights)
            out[mode] = self.mod.forward(self.model, x, train=(mode == "train"), activations=activations,
                                         device=device)
            self._dirty = mode == "train"
        return out

    def target(self, target: str, spec: ModelSpec, weights: Any, x: np.ndarray) -> dict[str, np.ndarray]:
        """Eval-mode outputs of a target runtime (``core.ports.TARGETS``) for ``weights`` of ``spec``."""
        if isinstance(weights, str):
            from .workers import read_tensors

            weights = read_tensors(weights)
        return ports.target_forward(target, spec, weights, x)

    def gpu_available(self) -> bool:
        return bool(self.mod.gpu_available())

    def free(self) -> None:
        """Drop the model and give its memory back to the system."""
        if self.model is None:
            return
        self.model = self.spec = None
        import gc

        gc.collect()
        _trim_heap()


def _trim_heap() -> None:
    """Return freed heap pages to the system (glibc keeps them otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def same_weights(a: Any, b: Any) -> bool:
    """Whether two exports hold the same tensors bit for bit: canonical files (compared in
    chunks, nothing mapped) or mappings of arrays."""
    if isinstance(a, str) and isinstance(b, str):
        from .workers import same_tensors

        return a == b or same_tensors(a, b)
    if isinstance(a, str) or isinstance(b, str):
        return False
    def raw(t: Any) -> np.ndarray:
        return np.ascontiguousarray(t).reshape(-1).view(np.uint8)
    return a.keys() == b.keys() and all(np.asarray(a[n]).dtype == np.asarray(b[n]).dtype
                                        and np.shape(a[n]) == np.shape(b[n]) and np.array_equal(raw(a[n]), raw(b[n]))
                                        for n in a)


#: the order of the runtimes in :func:`build_order`: JAX (the slowest to compile) last
RUNTIME_ORDER = ("torch", "tensorflow", "jax")


def build_order(labels: Sequence[str], first: str | None = None) -> list[int]:
    """The order in which :func:`run_pairs` visits the runners: the implementations of one
    runtime (``torch`` and ``keras/torch``, ``keras/jax`` and ``flax``) one after the other, so
    that worker processes can take turns (``focus``), in :data:`RUNTIME_ORDER`; the last one is
    never rebuilt, so the JAX-based implementations (the slowest to compile on a CPU), Flax
    last of all, go last. With ``first`` the runtime whose process is running now (the last
    of the previous model's turns), the runtimes go in the opposite order when ``first`` would
    otherwise be last, so that it need not be started again."""
    from .workers import runtime

    present = sorted({runtime(label) for label in labels},
                     key=lambda rt: RUNTIME_ORDER.index(rt) if rt in RUNTIME_ORDER else len(RUNTIME_ORDER))
    if first is not None and len(present) > 1 and present[-1] == first:
        present.reverse()

    def key(i: int) -> tuple[int, int, int]:
        return present.index(runtime(labels[i])), int(ports.resolve(labels[i]).framework == "flax"), i
    return sorted(range(len(labels)), key=key)


def run_pairs(
    spec: ModelSpec,
    runners: Sequence[Any],
    *,
    specs: Sequence[ModelSpec] | None = None,
    modes: Sequence[str] = ("eval", "train"),
    devices: Sequence[str] = ("cpu",),
    seed: int = 0,
    batch: int = 2,
    per_layer: bool = False,
    targets: Sequence[str] = (),
    target_runner: Callable[[str], Any] | None = None,
    scratch: str | None = None,
    keep_models: bool = True,
    draw_per_source: bool = False,
    focus: Callable[[str, str | None], None] | None = None,
    order: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> list[Record]:
    """Parity records of one model for every ordered pair of ``runners`` (each a
    :class:`LocalRunner` or a worker process with the same methods; ``specs`` their own specs).

    Each source imports a random draw (``seed + 101``; with ``draw_per_source``, source k's
    own ``seed + 101 * (k + 1)``) and exports it back out. With ``scratch`` (workers) weights
    travel as canonical files there: each draw is written once and read by every source, and
    an export that gives the draw back bit for bit is the draw's file (nothing is written).
    Sources whose exports hold the same tensors bit for
    bit (:func:`same_weights`: every port that round-trips the draw exactly) form one group:
    every runner imports each group's weights once and runs eval then train on them, and the
    record of pair (source k, target j) compares j's outputs on k's group's weights with k's.
    So five implementations whose exports agree take 5 runs per mode instead of 25, with the
    same 20 ordered-pair records; an export that differs (a port that changes what it
    exports) is a group of its own, run by every runner as before. With ``keep_models``
    every runner builds its model once and keeps it; without, only one model is alive at a
    time: runner k (in :func:`build_order`) builds, exports, runs the groups that exist and
    frees its model, then each runner that has not run a later group builds once more for
    it (``order``: the runners' indices in that order, :func:`build_order` by default).
    ``focus(now, next)`` (:meth:`~rosetta_cnn.verification.workers.WorkerPool.focus`) is
    called before each turn of that loop with the label that works now and the first later
    one of another runtime (whose process can start meanwhile). A pair past tolerance is re-run layer by layer for the first-divergence report
    (``per_layer``: every pair, from the first runs). Records come in the order device, mode,
    source, target (indices of ``runners``); then the ``targets`` (``target_runner(name)``
    runs each group's export once: a record per source) and the cpu-vs-gpu records.
    """
    say = progress or (lambda msg: None)
    specs = list(specs or [spec] * len(runners))
    labels = [r.label for r in runners]
    if len(set(labels)) != len(labels):
        raise ValueError(f"each implementation may appear once, got {labels}")
    modes, devices = list(modes), list(devices)
    n = len(runners)
    x = make_input(spec, batch, seed)
    t0 = time.perf_counter()
    built: set[int] = set()

    def ready(i: int) -> Any:
        if i not in built:
            runners[i].build(specs[i], seed)
            built.add(i)
        return runners[i]

    def release(i: int) -> None:
        if i in built:
            runners[i].free()
            built.discard(i)

    exports: dict[int, Any] = {}
    group: dict[int, int] = {}  # source -> the first source whose export holds the same tensors
    #: (runner, group) -> device -> mode -> outputs
    outs: dict[tuple[int, int], dict[str, dict[str, dict[str, np.ndarray]]]] = {}

    def run_on(i: int, g: int) -> None:
        # a runner in the group runs its own export (its model may hold it already)
        k = i if group.get(i) == g else g
        say(f"{spec.name}: {labels[i]} runs {labels[k]}'s export" if i != k else f"{spec.name}: {labels[i]} runs its own export")
        outs[i, g] = {device: ready(i).run(exports[k], x, modes, device, per_layer) for device in devices}

    def out(i: int, k: int) -> dict[str, dict[str, dict[str, np.ndarray]]]:
        """Runner i's outputs on source k's export."""
        return outs[i, group[k]]

    draws: dict[int, str] = {}  # seed -> its draw as a canonical file in scratch, written once

    def drawn(draw_seed: int) -> str | None:
        if scratch and draw_seed not in draws:
            from .workers import write_random

            draws[draw_seed] = os.path.join(scratch, f"{spec.name}-draw-{draw_seed}.safetensors")
            write_random(draws[draw_seed], spec, draw_seed)
        return draws.get(draw_seed)

    order = list(order) if order is not None else build_order(labels)
    from .workers import runtime

    try:
        for pos, k in enumerate(order):
            if focus is not None:
                later = [labels[i] for i in order[pos + 1:] if runtime(labels[i]) != runtime(labels[k])]
                focus(labels[k], later[0] if later else None)
            say(f"{spec.name}: {labels[k]} exports its random draw")
            path = os.path.join(scratch, f"{spec.name}-{k}.safetensors") if scratch else None
            draw_seed = seed + 101 * ((k + 1) if draw_per_source else 1)
            exports[k] = ready(k).export_random(spec, draw_seed, path, drawn(draw_seed))
            groups = list(dict.fromkeys(group.values()))
            group[k] = next((g for g in groups if not draw_per_source and same_weights(exports[g], exports[k])), k)
            if group[k] != k:
                say(f"{spec.name}: {labels[k]}'s export is {labels[group[k]]}'s, bit for bit")
            for g in dict.fromkeys(group.values()):
                if (k, g) not in outs:
                    run_on(k, g)
            if not keep_models:
                release(k)  # the last one too: phase B needs only the others
        for k in order[:-1]:
            for g in dict.fromkeys(group.values()):
                if (k, g) not in outs:
                    if focus is not None:
                        focus(labels[k], None)
                    run_on(k, g)
            if not keep_models:
                release(k)

        records: list[tuple[tuple, Record]] = []
        for d, device in enumerate(devices):
            for m, mode in enumerate(modes):
                tol = tolerance(device, mode).rel
                for k in range(n):
                    ref_out = out(k, k)[device][mode]
                    for j in range(n):
                        if j == k:
                            continue
                        got_out = out(j, k)[device][mode]
                        rec = _record(spec, labels[k], labels[j], mode, device, tol, ref_out, got_out)
                        if per_layer or not rec.passed:
                            ref = ref_out if per_layer else ready(k).run(exports[k], x, [mode], device, True)[mode]
                            got = got_out if per_layer else ready(j).run(exports[k], x, [mode], device, True)[mode]
                            rec.layers, rec.first_divergence = layer_report(spec, ref, got, tol)
                        records.append(((0, d, m, k, j), rec))
                        say(f"{spec.name}: {labels[k]:>5} -> {labels[j]:<5} {mode:<5} {device}: max_rel "
                            f"{rec.max_rel:.2e} {'ok' if rec.passed else 'FAIL at ' + str(rec.first_divergence)}")
        if targets and "cpu" in devices and "eval" in modes:
            tol = tolerance("cpu", "eval").rel
            target_outs: dict[tuple[int, str], dict[str, np.ndarray]] = {}  # (group, target) -> outputs
            for k in range(n):
                for t, tgt in enumerate(targets):
                    if (group[k], tgt) not in target_outs:  # exports that agree bit for bit: one export
                        runner = target_runner(tgt) if target_runner else runners[k]
                        target_outs[group[k], tgt] = runner.target(tgt, spec, exports[k], x)
                    got = target_outs[group[k], tgt]
                    rec = _record(spec, labels[k], tgt, "eval", "cpu", tol, out(k, k)["cpu"]["eval"], got)
                    records.append(((1, k, t), rec))
                    say(f"{spec.name}: {labels[k]:>5} -> {tgt:<5} eval  cpu: max_rel {rec.max_rel:.2e} "
                        f"{'ok' if rec.passed else 'FAIL'}")
        if "cpu" in devices and "gpu" in devices:
            for m, mode in enumerate(modes):
                tol = tolerance("cpu-vs-gpu", mode).rel
                for k in range(n):
                    records.append(((2, m, k), _record(spec, labels[k], labels[k], mode, "cpu-vs-gpu", tol,
                                                       out(k, k)["cpu"][mode], out(k, k)["gpu"][mode])))
    finally:
        for i in list(built):
            release(i)
        for w in [*exports.values(), *draws.values()]:
            if isinstance(w, str) and os.path.exists(w):
                os.remove(w)
    out = [rec for _, rec in sorted(records, key=lambda kr: kr[0])]
    elapsed = time.perf_counter() - t0
    for r in out:
        r.seconds = elapsed / max(len(out), 1)
    return out


#: :func:`model_parity` with workers keeps every implementation's model alive while all of
#: them together hold at most this many bytes of weights, else one model at a time
KEEP_MODELS_BYTES = 1 << 30


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
    pool: Any = None,
    draw_per_source: bool = False,
) -> list[Record]:
    """Parity records for every ordered pair of ``frameworks`` (implementation labels) on one model.

    ``targets`` (``core.ports.TARGETS``, e.g. ``onnx``) add, in eval mode on the CPU,
    one record per framework: that framework's export, exported again to the target's format
    by the target's exporting port and run by the target's runtime.

    ``specs`` may give a framework its own spec (the mutation tests use it to build a port
    with a deliberate fault); by default every framework builds the same spec.

    Without ``pool`` every implementation runs in this process (so a Keras label must match
    the backend Keras runs on here); with a :class:`~rosetta_cnn.verification.workers.WorkerPool`
    each runs in its worker process, and the models are freed when the model is done. A model
    whose weights in every implementation together exceed :data:`KEEP_MODELS_BYTES` is built
    one implementation at a time, and its worker processes take turns (``WorkerPool.focus``):
    only the working one and the next one run, instead of every runtime staying resident.

    ``draw_per_source`` gives each source a random draw of its own (every runner then runs
    every source's export: n * n runs instead of n when the exports agree; :func:`run_pairs`).
    """
    spec = model if isinstance(model, ModelSpec) else parity_spec(model, input_size)
    say = progress or (lambda msg: None)
    say(f"{spec.name}: building {', '.join(frameworks)}")
    if pool is None:
        runners = [LocalRunner(f) for f in frameworks]
        local: dict[str, LocalRunner] = {}

        def target_runner(name: str) -> LocalRunner:
            framework = ports.TARGETS[name][0]
            same = next((r for r in runners if ports.resolve(r.label).framework == framework), None)
            return same or local.setdefault(framework, LocalRunner(framework))
        scratch = None
    else:
        runners = [pool.runner(f) for f in frameworks]
        target_runner, scratch = pool.target_runner, pool.scratch
    weight_bytes = 4 * sum(math.prod(shape) for shape in expected_tensors(spec).values())
    keep = pool is None or len(frameworks) * weight_bytes <= KEEP_MODELS_BYTES
    running = [] if keep else pool.running_runtimes()
    order = build_order(frameworks, running[0] if len(running) == 1 else None)
    try:
        return run_pairs(spec, runners, specs=[(specs or {}).get(f, spec) for f in frameworks], modes=list(modes),
                         devices=list(devices), seed=seed, batch=batch, per_layer=per_layer, targets=targets,
                         target_runner=target_runner, scratch=scratch, keep_models=keep, draw_per_source=draw_per_source,
                         focus=None if keep else pool.focus, order=order, progress=progress)
    finally:
        for r in runners:
            r.free()


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


def gpu_frameworks(frameworks: Sequence[str], pool: Any = None) -> list[str]:
    """The frameworks among ``frameworks`` that see a CUDA GPU (asked in their workers with ``pool``)."""
    if pool is not None:
        return [f for f in frameworks if pool.runner(f).gpu_available()]
    return [f for f in frameworks if ports.load(f).gpu_available()]


def format_matrix(records: Sequence[Record]) -> str:
    """Model x (pair, mode, device) table of max relative differences with pass/fail."""
    w = max([6] + [len(r.source) for r in records] + [len(r.target) for r in records])
    lines = [f"{'model':<16} {'source':>{w}} -> {'target':<{w}} {'mode':<5} {'device':<10} "
             f"{'max_abs':>9} {'max_rel':>9} {'tol':>7}  result"]
    for r in records:
        res = "pass" if r.passed else f"FAIL (first divergence: {r.first_divergence})"
        lines.append(f"{r.model:<16} {r.source:>{w}} -> {r.target:<{w}} {r.mode:<5} {r.device:<10} "
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
