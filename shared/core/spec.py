"""Load a JSON layer spec, apply overrides, expand blocks and loops, and check it.

A spec file (``shared/core/specs/*.json``, format in ``shared/core/schema/spec.schema.json``) holds one
family of models: shared ``params`` (the keys users may override), parameterised ``blocks``,
a ``layers`` list that may use blocks and ``for`` loops, named ``outputs`` and the ``models``
(variants as data). Loading one model yields a :class:`ModelSpec`: a flat, topologically
ordered list of :class:`Layer` with normalised attributes and inferred shapes, which is all a
framework builder, the analysis and the weight format need.

Every problem is a :class:`~rosetta_cnn.core.errors.SpecError` naming the file and the JSON path;
what a spec may ask for (file size, nesting, expanded layers, parameters, activation sizes) is
bounded by ``core/limits.py`` and checked before anything grows.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import heapq
import json
import math
import re
from collections import ChainMap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import jsonschema

from . import limits, ops
from .errors import SpecError
from .files import file_problem

SPEC_DIR = Path(__file__).parent / "specs"
SCHEMA_PATH = Path(__file__).parent / "schema" / "spec.schema.json"
INPUT = "@input"

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_REF = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")


def _check_input_size(v: Any) -> tuple[int, int]:
    return ops.pair(1)(v)


#: override keys users may set (``--set key=value``), with their checks. A spec declares the
#: subset it uses in its ``params`` section, with defaults.
OVERRIDE_KEYS: dict[str, Any] = {
    "num_classes": ops.integer(1),
    "in_channels": ops.integer(1),
    "dropout": ops.number(0.0, 1.0, hi_open=True),
    "dropout_aux": ops.number(0.0, 1.0, hi_open=True),
    "aux_logits": ops.boolean,
    "transform_input": ops.boolean,
    "width_divisor": ops.integer(1),
    "input_size": _check_input_size,
}


@dataclass(frozen=True)
class Layer:
    """One resolved layer: a single op with normalised attributes and known shapes."""

    name: str
    op: str
    inputs: tuple[str, ...]  # producer layer names; INPUT for the model input
    attrs: Mapping[str, Any]
    in_shapes: tuple[tuple[int, ...], ...]
    out_shape: tuple[int, ...]
    path: str  # where the layer is written in the spec file
    training_only: bool = False  # only feeds auxiliary outputs

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.in_shapes[0]


@dataclass(frozen=True)
class ModelSpec:
    """A fully resolved model: what every builder, the analysis and the weight format use."""

    name: str
    family: str
    file: str
    params: Mapping[str, Any]  # resolved override keys (defaults + user overrides)
    overrides: Mapping[str, Any]  # what the user set, to rebuild the same spec later
    input_shape: tuple[int, int, int]  # (C, H, W)
    layers: tuple[Layer, ...]
    outputs: Mapping[str, str]  # "logits" first, then auxiliary outputs (training only)
    references: tuple[str, ...] = ()
    _index: dict[str, Layer] = field(default_factory=dict, compare=False, repr=False)
    #: the spec document it was resolved from, as compact JSON with sorted keys (weight files of
    #: users' own specs embed it: ``core/canonical.py``)
    document: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({layer.name: layer for layer in self.layers})

    def layer(self, name: str) -> Layer:
        return self._index[name]

    @property
    def aux_outputs(self) -> dict[str, str]:
        return {k: v for k, v in self.outputs.items() if k != "logits"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "input_shape": list(self.input_shape),
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()},
            "layers": [
                {"name": l.name, "op": l.op, "inputs": list(l.inputs), "attrs": _jsonable(l.attrs),
                 "out_shape": list(l.out_shape), "training_only": l.training_only}
                for l in self.layers
            ],
            "outputs": dict(self.outputs),
        }

    def hash(self) -> str:
        """sha256 of the resolved architecture (stored in weight files for provenance)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


# ---------------------------------------------------------------------------
# registry


@functools.lru_cache(maxsize=None)
def _registry() -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in sorted(SPEC_DIR.glob("*.json")):
        doc = _read_json(path)
        for model in doc.get("models", {}):
            index[model] = path
    return index


def list_models() -> list[str]:
    """Names of every model the bundled specs define, in a stable order."""
    return list(_registry())


def describe(model: str) -> str:
    """The one-line description a bundled model's spec gives (or its family's title)."""
    doc = _read_json(_registry()[model])
    return doc["models"][model].get("description", doc.get("title", ""))


@functools.lru_cache(maxsize=None)
def _schema_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _read_json(path: Path) -> Any:
    problem = file_problem(path)
    if problem:
        raise SpecError(f"cannot read the spec file: {problem}", file=str(path))
    try:
        size = Path(path).stat().st_size
        limits.get().check("max_json_bytes", size, "the spec file's size")
        raw = Path(path).read_bytes()
    except OSError as e:
        raise SpecError(f"cannot read the spec file: {e.strerror}", file=str(path)) from None
    except limits.LimitError as e:
        raise SpecError(str(e), file=str(path)) from None
    return parse_json(raw, str(path))


def parse_json(raw: bytes | str, file: str) -> Any:
    """A spec document from JSON text: SpecError for text that is not UTF-8 JSON or that nests
    too deeply for the parser (:func:`validate_document` checks the depth against the limits)."""
    try:
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError as e:
        raise SpecError(f"not UTF-8 text (byte {e.start}): is this a spec file?", file=file) from None
    except json.JSONDecodeError as e:
        raise SpecError(f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}", file=file) from None
    except RecursionError:
        raise SpecError("the JSON nests too deeply to be a spec", file=file) from None


def max_json_depth() -> int:
    """How deep a spec document may nest: each block or loop level takes two (an item and its
    ``layers`` list), plus the document's own levels."""
    return 2 * limits.get().max_depth + 12


def json_depth(doc: Any, stop: int) -> int:
    """The nesting depth of a parsed JSON value (counted without recursion, up to ``stop``)."""
    deepest, todo = 0, [(doc, 1)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if deepest >= stop:
                return deepest
            todo.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def json_path(parts: Iterable[Any]) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if _NAME.match(str(p)) else f"[{json.dumps(p)}]")
    return out


def validate_document(doc: Any, file: str = "<spec>") -> None:
    """Check a spec document against the JSON Schema; raise SpecError at the deepest path."""
    depth_limit = max_json_depth()
    if json_depth(doc, depth_limit + 1) > depth_limit:
        raise SpecError(f"the document nests more than {depth_limit} levels deep (max_depth "
                        f"{limits.get().max_depth} blocks or loops; raise it with --limit max_depth=N)", file=file)
    try:
        errors = list(_schema_validator().iter_errors(doc))
    except RecursionError:
        raise SpecError("the document nests too deeply to check", file=file) from None
    if not errors:
        return
    err = jsonschema.exceptions.best_match(errors)
    # descend into anyOf/oneOf contexts to the most specific message
    while err.context:
        err = jsonschema.exceptions.best_match(err.context)
    msg = err.message
    if len(msg) > 300:
        msg = msg[:300] + "..."
    raise SpecError(f"{msg} (schema rule: {err.validator})", file=file, path=json_path(err.absolute_path))


# ---------------------------------------------------------------------------
# loading


def load_spec(model: str, overrides: Mapping[str, Any] | None = None) -> ModelSpec:
    """Resolve a bundled model (``list_models()``) or ``path/to/file.json:model``."""
    if is_file_reference(model):
        file, name = model.rsplit(":", 1)
        return load_spec_file(Path(file), name, overrides)
    reg = _registry()
    if model not in reg:
        close = difflib.get_close_matches(model, list(reg), n=1)
        raise SpecError(f"unknown model {model!r}; known models: {', '.join(reg)}"
                        + (f" (did you mean {close[0]!r}?)" if close else ""))
    return load_spec_file(reg[model], model, overrides)


def load_spec_file(path: Path, model: str | None = None, overrides: Mapping[str, Any] | None = None) -> ModelSpec:
    """Resolve ``model`` (or the file's only model) from a spec file."""
    doc = _read_json(path)
    return load_spec_dict(doc, model, overrides, file=str(path))


def load_spec_dict(doc: Any, model: str | None = None, overrides: Mapping[str, Any] | None = None,
                   *, file: str = "<spec>") -> ModelSpec:
    """Resolve a model from an already parsed spec document (any bad input -> SpecError)."""
    validate_document(doc, file)
    models = doc["models"]
    if model is None:
        if len(models) != 1:
            raise SpecError(f"the file defines {len(models)} models ({', '.join(models)}); name one",
                            file=file, path="$.models")
        model = next(iter(models))
    if model not in models:
        raise SpecError(f"no model {model!r}; this file defines: {', '.join(models)}", file=file, path="$.models")
    spec = _Resolver(doc, file, model, dict(overrides or {})).resolve()
    return dataclasses.replace(spec, _index={}, document=json.dumps(doc, sort_keys=True, separators=(",", ":")))


def is_bundled(spec: ModelSpec) -> bool:
    """Whether ``spec`` comes from a bundled spec file (so its name alone finds it again)."""
    path = _registry().get(spec.name)
    return path is not None and Path(spec.file) == path


def is_file_reference(model: str) -> bool:
    """Whether ``model`` names a spec file (``path/to/spec.json:model``) rather than a bundled model."""
    return ":" in model and model.rsplit(":", 1)[0].endswith(".json")


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse CLI ``key=value`` strings; values are JSON (``true``, ``10``, ``[227,227]``) or text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set expects key=value, got {item!r}; valid keys: {', '.join(OVERRIDE_KEYS)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = {"True": True, "False": False}.get(text, text)
        out[key.strip()] = value
    return out


@dataclass
class _Raw:
    name: str
    op: str
    attrs: dict[str, Any]
    refs: list[tuple[str, str, str]]  # (scope prefix, reference as written, JSON path)
    path: str
    context: str = ""  # " (in block instance 'x' at $.layers[3])" for layers written in a block


class _Resolver:
    def __init__(self, doc: dict, file: str, model: str, overrides: dict[str, Any]):
        self.doc, self.file, self.model, self.overrides = doc, file, model, overrides
        self.names: dict[str, _Raw] = {}
        self.aliases: dict[str, str] = {}  # block instance name -> its last layer
        self.excluded: set[str] = set()
        self.limits = limits.get()
        self.expanded = 0  # items expanded so far (layers, block instances, loop bodies, skipped items)
        self.copied = 0  # list elements copied by "$name" substitutions

    def error(self, msg: str, path: str) -> SpecError:
        return SpecError(msg, file=self.file, path=path)

    # -- parameters ---------------------------------------------------------
    def model_params(self) -> tuple[dict[str, Any], dict[str, Any]]:
        models = self.doc["models"]
        chain, name = [], self.model
        while name is not None:
            if name in chain:
                raise self.error(f"'extends' cycle: {' -> '.join(chain + [name])}", f"$.models.{name}.extends")
            if name not in models:
                raise self.error(f"extends unknown model {name!r}", f"$.models.{chain[-1]}.extends")
            chain.append(name)
            name = models[name].get("extends")
        values: dict[str, Any] = dict(self.doc.get("params", {}))
        for name in reversed(chain):
            values.update({k: v for k, v in models[name].items() if k not in ("extends", "description")})
        declared = [k for k in values if k in OVERRIDE_KEYS]
        for key, value in self.overrides.items():
            if key not in declared:
                raise self.error(f"unknown override {key!r} for {self.model}; valid keys: {', '.join(sorted(declared))}",
                                 "$.params")
            values[key] = value
        for key in declared:
            try:
                values[key] = OVERRIDE_KEYS[key](values[key])
            except ValueError as e:
                src = "override" if key in self.overrides else "default"
                raise self.error(f"{src} {key}={values[key]!r}: {e}; valid keys: {', '.join(sorted(declared))}",
                                 f"$.params.{key}") from None
        for key in ("in_channels", "input_size"):
            if key not in values:
                raise self.error(f"params must define {key!r}", "$.params")
        return values, {k: values[k] for k in declared}

    def subst(self, value: Any, scope: Mapping[str, Any], path: str) -> Any:
        if isinstance(value, str):
            m = _REF.match(value)
            if m:
                if m.group(1) not in scope:
                    raise self.error(f"unknown parameter {value!r}; known here: "
                                     f"{', '.join(sorted(scope)) or 'none'}", path)
                found = scope[m.group(1)]
                if isinstance(found, (list, dict)):
                    self.copied += limits_size(found)
                    if self.copied > 100 * self.limits.max_layers:
                        raise self.error(limits.exceeded("max_layers", self.copied, "the number of values the spec's "
                                                         "$references copy (100 per allowed layer)",
                                                         100 * self.limits.max_layers), path)
                return copy.deepcopy(found)
            return value
        if isinstance(value, list):
            return [self.subst(v, scope, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    # -- expansion ----------------------------------------------------------
    def expand(self, items: list, path: str, scope: Mapping[str, Any], prefix: str, prev: str,
               stack: tuple[str, ...], index: int | None, context: str = "", depth: int = 0) -> str:
        if depth > self.limits.max_depth:
            raise self.error(limits.exceeded("max_depth", depth, "the nesting of blocks and loops here"), path)
        for j, item in enumerate(items):
            ipath = f"{path}[{j}]"
            self.expanded += 1
            if self.expanded > self.limits.max_layers:
                raise self.error(limits.exceeded("max_layers", self.expanded, "the number of layers, block instances "
                                                 "and loop iterations the spec expands to (counted so far)"), ipath)
            when = self.subst(item.get("when", True), scope, f"{ipath}.when")
            if not isinstance(when, bool):
                raise self.error(f"'when' must resolve to true or false, got {when!r}", f"{ipath}.when")
            name = None
            if "name" in item:
                name = item["name"].replace("{i}", str(index)) if index is not None else item["name"]
                if "{i}" in item["name"] and index is None:
                    raise self.error("'{i}' in a name is only allowed inside a 'for' loop", f"{ipath}.name")
                if not _NAME.match(name):
                    raise self.error(f"layer name {name!r} must match {_NAME.pattern}", f"{ipath}.name")
            full = f"{prefix}{name}" if name else None
            if not when:
                if full:
                    self.excluded.add(full)
                continue
            refs = ([(prefix, r, f"{ipath}.inputs[{k}]") for k, r in enumerate(item["inputs"])]
                    if "inputs" in item else [("", prev, ipath)])
            if "for" in item:
                seq = self.subst(item["for"], scope, f"{ipath}.for")
                if not isinstance(seq, list) or not seq:
                    raise self.error(f"'for' must resolve to a non-empty list, got {seq!r}", f"{ipath}.for")
                for k, value in enumerate(seq, start=1):
                    inner = ChainMap({item["as"]: value}, scope)
                    prev = self.expand(item["layers"], f"{ipath}.layers", inner, prefix, prev, stack, k, context,
                                       depth + 1)
            elif "block" in item:
                prev = self.instantiate(item, ipath, scope, full, refs, stack, context, depth)
            else:
                attrs = {k: self.subst(v, scope, f"{ipath}.{k}") for k, v in item.items()
                         if k not in ("name", "op", "inputs", "when", "doc")}
                self.add(_Raw(full, item["op"], attrs, refs, ipath, context))
                prev = full
        return prev

    def instantiate(self, item: dict, ipath: str, scope: Mapping[str, Any], full: str,
                    refs: list[tuple[str, str, str]], stack: tuple[str, ...], context: str, depth: int = 0) -> str:
        if full in self.names or full in self.aliases:
            raise self.error(f"duplicate layer name {full!r}", f"{ipath}.name")
        blocks = self.doc.get("blocks", {})
        bname = self.subst(item["block"], scope, f"{ipath}.block")
        if not isinstance(bname, str) or bname not in blocks:
            raise self.error(f"unknown block {bname!r}; blocks in this file: {', '.join(blocks) or 'none'}",
                             f"{ipath}.block")
        if bname in stack:
            raise self.error(f"block {bname!r} instantiates itself ({' -> '.join(stack + (bname,))})", f"{ipath}.block")
        block = blocks[bname]
        declared = block.get("args", {})
        given = item.get("args", {})
        args = {}
        for key, value in given.items():
            if key not in declared:
                raise self.error(f"block {bname!r} has no argument {key!r}; its arguments: "
                                 f"{', '.join(declared) or 'none'}", f"{ipath}.args.{key}")
            args[key] = self.subst(value, scope, f"{ipath}.args.{key}")
        for key, default in declared.items():
            if key not in args:
                if default is None:
                    raise self.error(f"block {bname!r} needs argument {key!r}", f"{ipath}.args")
                args[key] = default
        # the block's own "@input" is the instance's input: a pass-through alias
        entry = f"{full}@input"
        self.aliases[entry] = refs  # type: ignore[assignment]
        inner = ChainMap(args, self.root_scope)
        last = self.expand(block["layers"], f"$.blocks.{bname}.layers", inner, f"{full}_", entry,
                           stack + (bname,), None, f" (in block instance {full!r} at {ipath}){context}", depth + 1)
        self.aliases[full] = last
        return full

    def add(self, raw: _Raw) -> None:
        if raw.name in self.names or raw.name in self.aliases:
            first = self.names[raw.name].path if raw.name in self.names else "a block instance"
            raise self.error(f"duplicate layer name {raw.name!r} (first defined at {first}){raw.context}",
                             f"{raw.path}.name")
        if raw.op not in ops.OPS:
            raise self.error(f"unknown op {raw.op!r}; known ops: {', '.join(ops.OPS)}", f"{raw.path}.op")
        self.names[raw.name] = raw

    def deref(self, prefix: str, ref: str, path: str, seen: tuple[str, ...] = ()) -> list[str]:
        """A reference as written -> the producer layer names it stands for."""
        if ref == INPUT:
            target = f"{prefix[:-1]}@input" if prefix else INPUT
        elif prefix and any(prefix + ref in known for known in (self.names, self.aliases, self.excluded)):
            target = prefix + ref  # a name local to the enclosing block
        else:
            target = ref
        if target == INPUT:
            return [INPUT]
        if target in seen:
            raise self.error(f"reference cycle through {target!r}", path)
        if target in self.names:
            return [target]
        if target in self.aliases:
            alias = self.aliases[target]
            if isinstance(alias, list):  # a block's @input
                return [n for p, r, rpath in alias for n in self.deref(p, r, rpath, seen + (target,))]
            return self.deref("", alias, path, seen + (target,))
        if target in self.excluded:
            raise self.error(f"input {ref!r} is switched off by its 'when' condition", path)
        close = difflib.get_close_matches(ref, [*self.names, *self.aliases], n=3)
        raise self.error(f"unknown input {ref!r}" + (f"; did you mean {', '.join(map(repr, close))}?" if close else ""),
                         path)

    # -- resolution ---------------------------------------------------------
    def resolve(self) -> ModelSpec:
        values, declared = self.model_params()
        self.root_scope = values
        model_doc = self.doc["models"][self.model]
        self.expand(self.doc["layers"], "$.layers", values, "", INPUT, (), None)

        # inputs
        inputs: dict[str, list[str]] = {}
        for raw in self.raw_layers():
            names: list[str] = []
            for prefix, ref, path in raw.refs:
                names += self.deref(prefix, ref, path)
            inputs[raw.name] = names
            n_in = ops.OPS[raw.op].n_inputs
            if n_in == -1 and len(names) < 2:
                raise self.error(f"{raw.op} needs at least 2 inputs, got {len(names)}{raw.context}", f"{raw.path}.inputs")
            if n_in == 1 and len(names) != 1:
                raise self.error(f"{raw.op} takes exactly 1 input, got {len(names)}{raw.context}", f"{raw.path}.inputs")

        # outputs
        outputs: dict[str, str] = {}
        for key, ref in self.doc["outputs"].items():
            path = f"$.outputs.{key}"
            if ref in self.excluded or (ref in self.aliases and self.aliases[ref] in self.excluded):
                if key == "logits":
                    raise self.error("the logits output is switched off by a 'when' condition", path)
                continue
            (outputs[key],) = self.deref("", ref, path)
            if outputs[key] == INPUT:
                raise self.error("an output must be a layer, not the model input", path)
        if "logits" not in outputs:
            raise self.error("outputs must name a 'logits' layer", "$.outputs")

        order = self.toposort(inputs)
        main = self.ancestors(outputs["logits"], inputs)
        needed = set().union(*(self.ancestors(o, inputs) for o in outputs.values()))
        for name in order:
            if name not in needed:
                raise self.error(f"layer {name!r} feeds no output{self.names[name].context}", self.names[name].path)

        # attributes, width divisor, shapes
        divisor = declared.get("width_divisor", 1)
        producers = set(outputs.values())
        size = values["input_size"]
        input_shape = (values["in_channels"], *size)
        shapes: dict[str, tuple[int, ...]] = {INPUT: input_shape}
        layers: list[Layer] = []
        self.check_activation("the model input", input_shape, "$.params")
        n_params = 0
        for name in order:
            raw = self.names[name]
            attrs = dict(raw.attrs)
            width = ops.WIDTH_ATTRS.get(raw.op)
            if divisor > 1 and width in attrs and name not in producers:
                w = attrs[width]
                if isinstance(w, int) and not isinstance(w, bool):
                    if w % divisor:
                        raise self.error(f"width_divisor={divisor} does not divide {width}={w}{raw.context}",
                                         f"{raw.path}.{width}")
                    attrs[width] = w // divisor
            try:
                attrs = ops.normalise_attrs(raw.op, attrs)
            except KeyError as e:
                allowed = ", ".join(ops.OPS[raw.op].attrs) or "none"
                raise self.error(f"{raw.op} has no attribute {e.args[0]!r}; its attributes: {allowed}{raw.context}",
                                 f"{raw.path}.{e.args[0]}") from None
            except LookupError as e:
                raise self.error(f"{raw.op} needs attribute {e.args[0]!r}{raw.context}", raw.path) from None
            except ValueError as e:
                bad = next((k for k in raw.attrs if _attr_fails(raw.op, k, attrs, raw.attrs)), None)
                raise self.error(f"{e}{raw.context}", f"{raw.path}.{bad}" if bad else raw.path) from None
            ins = [shapes[i] for i in inputs[name]]
            try:
                out = ops.infer_shape(raw.op, attrs, ins)
            except ValueError as e:
                raise self.error(f"layer {name!r}: {e}{raw.context}", raw.path) from None
            if any(d < 1 for d in out):
                raise self.error(f"layer {name!r}: output size {out} drops below 1 for input "
                                 f"{input_shape[1]}x{input_shape[2]} (input of the layer: {ins[0]}){raw.context}", raw.path)
            shapes[name] = out
            self.check_activation(f"layer {name!r}", out, raw.path, raw.context)
            n_params += sum(ops.count_params(raw.op, attrs, ins[0]))
            if n_params > self.limits.max_params:
                raise self.error(limits.exceeded("max_params", n_params, "the model's parameter and buffer count "
                                                 f"(up to layer {name!r})"), raw.path)
            layers.append(Layer(name, raw.op, tuple(inputs[name]), attrs, tuple(ins), out, raw.path,
                                training_only=name not in main))
        ordered = {"logits": outputs["logits"], **{k: v for k, v in outputs.items() if k != "logits"}}
        return ModelSpec(
            name=self.model, family=self.doc["family"], file=self.file,
            params={k: declared[k] for k in sorted(declared)}, overrides=dict(self.overrides),
            input_shape=input_shape, layers=tuple(layers), outputs=ordered,
            references=tuple(self.doc.get("references", [])) + tuple(model_doc.get("references", [])),
        )

    def check_activation(self, what: str, shape: tuple[int, ...], path: str, context: str = "") -> None:
        n = math.prod(shape)
        if n > self.limits.max_activation:
            raise self.error(limits.exceeded("max_activation", n, f"the output of {what}, shape "
                                             f"{'x'.join(map(str, shape))},") + context, path)

    def raw_layers(self) -> list[_Raw]:
        return list(self.names.values())

    def toposort(self, inputs: dict[str, list[str]]) -> list[str]:
        """Kahn's algorithm, stable in spec order; a cycle is reported with its members."""
        order_index = {n: i for i, n in enumerate(self.names)}
        pending = {n: {i for i in ins if i != INPUT} for n, ins in inputs.items()}
        users: dict[str, list[str]] = {n: [] for n in inputs}
        for n, ins in pending.items():
            for i in ins:
                users[i].append(n)
        out: list[str] = []
        heap = [(order_index[n], n) for n, ins in pending.items() if not ins]
        heapq.heapify(heap)
        while heap:
            _, n = heapq.heappop(heap)
            out.append(n)
            for u in users[n]:
                pending[u].discard(n)
                if not pending[u]:
                    heapq.heappush(heap, (order_index[u], u))
        if len(out) != len(inputs):
            cyc = [n for n in self.names if n not in set(out)]
            raise self.error(f"the layer graph has a cycle among: {', '.join(cyc[:6])}", self.names[cyc[0]].path)
        return out

    @staticmethod
    def ancestors(name: str, inputs: dict[str, list[str]]) -> set[str]:
        seen: set[str] = set()
        todo = [name]
        while todo:
            n = todo.pop()
            if n == INPUT or n in seen:
                continue
            seen.add(n)
            todo += inputs[n]
        return seen


def limits_size(value: Any) -> int:
    """The number of values in a JSON value (lists and objects count their elements, nested)."""
    n, todo = 0, [value]
    while todo:
        v = todo.pop()
        n += 1
        if isinstance(v, dict):
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return n


def _attr_fails(op: str, key: str, attrs: dict, raw: dict) -> bool:
    spec = ops.OPS[op].attrs.get(key)
    if spec is None:
        return False
    try:
        spec.check(raw[key] if key in raw else attrs[key])
    except ValueError:
        return True
    return False
