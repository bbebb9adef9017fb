"""The canonical weight format: one safetensors file per model, shared by all frameworks.

Layout (format version 1):

* tensor names are ``<spec layer name>.<suffix>``: ``weight`` and ``bias`` for conv2d and
  linear layers; ``weight``, ``bias``, ``running_mean``, ``running_var`` for batch_norm
  (BatchNorm's ``num_batches_tracked`` counter is not stored);
* shapes and memory order are PyTorch's: conv weights ``[O, I/groups, kH, kW]``, linear
  weights ``[out, in]``; a linear layer that follows a ``flatten`` of a ``(C, H, W)`` map
  numbers its inputs in channel-first order ``c*H*W + h*W + w`` (frameworks that flatten
  NHWC permute the rows on import and export: ``core/layout.py``);
* dtype float32, little-endian (safetensors);
* metadata: ``format`` = ``rosetta-canonical``, ``format_version``, ``model``, ``overrides``
  (JSON), ``spec_hash`` (sha256 of the resolved spec), ``framework`` (who wrote it),
  ``sha256`` (of the header without it and of the tensor data, so that a flipped byte is
  found), for a model from a user's own spec file ``spec`` (that spec document, compact JSON)
  and ``spec_file`` (its file name, for messages), and optionally (:data:`OPTIONAL_METADATA`)
  ``preprocess``, the input pipeline the weights expect (a JSON object,
  ``images/preprocess.py``), and ``classes``, the class names (a JSON list) of a model trained
  on a folder of class folders.

Reading never unpickles anything and never follows a path named inside the file: the model
comes from the bundled specs or from the spec embedded in the file, and ``spec_hash`` is
checked on every load. The header is checked (sizes, offsets, dtypes, names, shapes) before
any tensor data is read. Writing is atomic (temporary file, fsync, rename) and deterministic:
the same tensors and spec give the same bytes.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from . import limits, ops
from .errors import RosettaError, SpecError, WeightError
from .files import atomic_path, check_names_shapes, existing_file
from .spec import ModelSpec, is_bundled, is_file_reference, list_models, load_spec, load_spec_dict, parse_json

FORMAT = "rosetta-canonical"
FORMAT_VERSION = "1"
#: metadata keys a canonical file may add (format version 1 readers ignore keys they do not use)
OPTIONAL_METADATA = ("preprocess", "classes")


def expected_tensors(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Canonical tensor name -> shape for every parameter and buffer of ``spec``."""
    out: dict[str, tuple[int, ...]] = {}
    for layer in spec.layers:
        for suffix, shape in ops.OPS[layer.op].tensors(dict(layer.attrs), layer.in_shape).items():
            out[f"{layer.name}.{suffix}"] = tuple(shape)
    return out


def guess_model(names: set[str]) -> str | None:
    """The bundled model (default overrides) whose tensor names best match ``names``."""
    best, score = None, 0.0
    for model in list_models():
        try:
            exp = set(expected_tensors(load_spec(model)))
        except RosettaError:
            continue
        s = len(exp & names) / max(len(exp | names), 1)
        if s > score:
            best, score = model, s
    return best if score > 0.5 else None


def check_tensors(spec: ModelSpec, tensors: Mapping[str, Any], *, source: str = "the weights") -> None:
    """Raise WeightError unless ``tensors`` has exactly the canonical names and shapes of ``spec``.

    Called before any framework touches its model, so a bad file leaves the model unchanged.
    """
    expected = expected_tensors(spec)
    got = {name: tuple(np.shape(t)) for name, t in tensors.items()}
    hint = None
    if set(got) != set(expected):
        guess = guess_model(set(tensors))
        if guess and guess != spec.name:
            hint = f"the names look like model {guess!r}"
        elif spec.aux_outputs and any((".aux" in n or n.startswith("aux")) for n in expected if n not in got):
            hint = "the file may come from a model built with aux_logits=false"
    check_names_shapes(expected, got, source=source, target=f"model {spec.name!r}", suggestion=hint)
    for name in expected:
        dtype = getattr(tensors[name], "dtype", None) or np.asarray(tensors[name]).dtype
        if "float" not in str(dtype):  # numpy, torch, TF and JAX dtypes all name floats so
            raise WeightError(f"{source}: tensor {name!r} has dtype {dtype}, expected a floating type")


def random_canonical(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Non-trivial random weights for parity tests, in the canonical layout.

    No tensor is zero or constant: He-scaled weights (uniform, variance 2 / fan_in, as
    PyTorch's ``kaiming_uniform_``) keep activations O(1) through deep stacks; biases are
    U(-0.1, 0.1); BatchNorm gets gamma U(0.5, 1.5), beta U(-0.3, 0.3), running_mean
    N(0, 0.3^2) and running_var U(0.3, 2.0), never the mean 0 / var 1 that would hide an eps
    or a statistics mix-up. Drawn in float32 directly and scaled in place (no float64 copy of
    a 100M-parameter tensor): VGG19's 143M weights in about 0.3 s.
    """
    return dict(random_tensors(spec, seed))


def random_tensors(spec: ModelSpec, seed: int = 0,
                   alloc: Callable[[str, tuple[int, ...]], np.ndarray] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """:func:`random_canonical` one tensor at a time (the same values, in the same order), so
    that a caller can write each to a file and drop it; ``alloc(name, shape)`` gives the
    float32 array to draw into (e.g. a memory-mapped region of that file)."""
    rng = np.random.default_rng(seed)
    for name, shape in expected_tensors(spec).items():
        suffix = name.rsplit(".", 1)[1]
        layer = spec.layer(name.rsplit(".", 1)[0])
        t = alloc(name, shape) if alloc else np.empty(shape, np.float32)
        if layer.op == "batch_norm" and suffix == "running_mean":
            rng.standard_normal(dtype=np.float32, out=t)
            t *= np.float32(0.3)
            yield name, t
            continue
        if layer.op == "batch_norm":
            lo, hi = {"weight": (0.5, 1.5), "bias": (-0.3, 0.3), "running_var": (0.3, 2.0)}[suffix]
        elif suffix == "weight":
            bound = math.sqrt(6.0 / math.prod(shape[1:]))  # U(-b, b) has variance b^2 / 3 = 2 / fan_in
            lo, hi = -bound, bound
        else:
            lo, hi = -0.1, 0.1
        rng.random(dtype=np.float32, out=t)  # U[0, 1)
        t *= np.float32(hi - lo)
        t += np.float32(lo)
        yield name, t


# ---------------------------------------------------------------------------
# safetensors, read and written here (header checked before any data is read; deterministic bytes)

#: safetensors dtype -> (numpy dtype or None where numpy has none, bytes per element)
SAFETENSORS_DTYPES: dict[str, tuple[str | None, int]] = {
    "F64": ("<f8", 8), "F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": (None, 2), "F8_E4M3": (None, 1),
    "F8_E5M2": (None, 1), "I64": ("<i8", 8), "I32": ("<i4", 4), "I16": ("<i2", 2), "I8": ("i1", 1),
    "U64": ("<u8", 8), "U32": ("<u4", 4), "U16": ("<u2", 2), "U8": ("u1", 1), "BOOL": ("?", 1),
}
_NUMPY_TO_SAFETENSORS = {np.dtype(v[0]).str: k for k, v in SAFETENSORS_DTYPES.items() if v[0] is not None}
#: the largest header this reader parses (safetensors' own limit)
MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a safetensors header declares it (checked against the file's size)."""

    dtype: str
    shape: tuple[int, ...]
    start: int  # byte offsets in the data section
    end: int


def read_header(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, TensorInfo], int]:
    """(metadata, tensor name -> TensorInfo, offset of the data) of a safetensors file, every
    field checked: the header's length, JSON and structure, each tensor's dtype, shape and
    offsets, and that the tensors exactly tile the data that follows. Reads only the header."""
    p = existing_file(path)
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightError(f"{p}: not a safetensors file ({size} bytes; the header is missing)"
                              if size else f"{p}: empty file")
        n = int.from_bytes(head, "little")
        if n < 2 or n > min(size - 8, MAX_HEADER):
            raise WeightError(f"{p}: not a safetensors file (header length {n:,} does not fit a {size:,}-byte file)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise WeightError(f"{p}: not a safetensors file (the header is not JSON)") from None
    except RecursionError:
        raise WeightError(f"{p}: corrupted safetensors header (JSON nested too deeply)") from None
    if not isinstance(header, dict):
        raise WeightError(f"{p}: corrupted safetensors header (a JSON {type(header).__name__}, not an object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise WeightError(f"{p}: corrupted safetensors header (__metadata__ must map strings to strings, got "
                          f"{type(meta).__name__ if not isinstance(meta, dict) else 'other values'})")
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        where = f"{p}: tensor {name!r}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise WeightError(f"{where}: corrupted header entry (expected dtype, shape and data_offsets)")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise WeightError(f"{where}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise WeightError(f"{where}: invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise WeightError(f"{where}: invalid data_offsets {offsets!r}")
        nbytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype][1]
        if offsets[1] - offsets[0] != nbytes:
            raise WeightError(f"{where}: shape {tuple(shape)} of {dtype} needs {nbytes:,} bytes, its data_offsets "
                              f"hold {offsets[1] - offsets[0]:,}")
        infos[name] = TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])
    end = 0
    for name, info in sorted(infos.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if info.start != end:
            raise WeightError(f"{p}: corrupted safetensors header (tensor {name!r} starts at byte {info.start:,} of "
                              f"the data, expected {end:,}: tensors overlap or leave a gap)")
        end = info.end
    if end != size - 8 - n:
        raise WeightError(f"{p}: truncated or padded safetensors file (the header declares {end:,} bytes of "
                          f"tensor data, the file holds {size - 8 - n:,})")
    return meta, infos, 8 + n


#: the metadata key of a file's checksum: sha256 of the header (without this key) and the data
CHECKSUM = "sha256"


def _header_json(meta: Mapping[str, str], infos: Mapping[str, TensorInfo]) -> bytes:
    """The header a checksum covers: every tensor entry and the metadata without the checksum."""
    header: dict[str, Any] = {name: {"dtype": i.dtype, "shape": list(i.shape), "data_offsets": [i.start, i.end]}
                              for name, i in infos.items()}
    header["__metadata__"] = {k: v for k, v in meta.items() if k != CHECKSUM}
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def read_tensors(path: str | os.PathLike, infos: Mapping[str, TensorInfo], data_offset: int,
                 meta: Mapping[str, str] | None = None, *, require_checksum: bool = False) -> dict[str, np.ndarray]:
    """The tensors ``infos`` describes (from :func:`read_header`), as numpy arrays over one
    buffer. When ``meta`` has a checksum (every file written here does), the header and the data
    must match it: a flipped byte anywhere is an error."""
    meta = meta or {}
    if require_checksum and CHECKSUM not in meta:
        raise WeightError(f"{path}: the metadata lacks its checksum ({CHECKSUM})")
    for name, info in infos.items():
        if SAFETENSORS_DTYPES[info.dtype][0] is None:
            raise WeightError(f"{path}: tensor {name!r} has dtype {info.dtype}, which this reader does not "
                              "convert (use float32, float16 or float64)")
    size = max((i.end for i in infos.values()), default=0)
    buf = bytearray(size)
    try:
        with open(path, "rb") as f:
            f.seek(data_offset)
            got = f.readinto(buf)
    except OSError as e:
        raise WeightError(f"{path}: cannot read: {e.strerror}") from None
    if got != size:
        raise WeightError(f"{path}: truncated while reading ({got:,} of {size:,} bytes of tensor data)")
    if CHECKSUM in meta:
        digest = hashlib.sha256(_header_json(meta, infos))
        digest.update(buf)
        if digest.hexdigest() != meta[CHECKSUM]:
            raise WeightError(f"{path}: corrupted: the header and data do not match the file's checksum "
                              f"({CHECKSUM}); a byte was changed after it was written")
    return {name: np.frombuffer(buf, SAFETENSORS_DTYPES[i.dtype][0], math.prod(i.shape), i.start).reshape(i.shape)
            for name, i in infos.items()}


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` as a safetensors file, atomically and deterministically (names and
    metadata sorted), with a checksum of the header and the data (``sha256``) in the metadata."""
    arrays = {}
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        a = np.asarray(a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a, order="C")  # 0-d stays 0-d
        if a.dtype.str not in _NUMPY_TO_SAFETENSORS:
            raise WeightError(f"tensor {name!r}: dtype {a.dtype} cannot be written to safetensors")
        arrays[name] = a
    infos, offset = {}, 0
    for name, a in arrays.items():
        infos[name] = TensorInfo(_NUMPY_TO_SAFETENSORS[a.dtype.str], a.shape, offset, offset + a.nbytes)
        offset += a.nbytes
    meta = {k: v for k, v in metadata.items() if k != CHECKSUM}
    digest = hashlib.sha256(_header_json(meta, infos))
    for a in arrays.values():
        digest.update(memoryview(a).cast("B") if a.size else b"")
    header: dict[str, Any] = {name: {"dtype": i.dtype, "shape": list(i.shape), "data_offsets": [i.start, i.end]}
                              for name, i in infos.items()}
    header["__metadata__"] = {**meta, CHECKSUM: digest.hexdigest()}
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with atomic_path(path, 8 + len(blob) + offset) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            write_tensor_data(f, arrays.values())


def write_tensor_data(f: Any, arrays: Any) -> None:
    """Write the arrays' bytes one after the other (C order) to the open file ``f``."""
    for a in arrays:
        if a.size:
            f.write(memoryview(a).cast("B"))


def check_finite(tensors: Mapping[str, Any], *, source: str, allow: bool = False) -> None:
    """Raise WeightError naming the first tensor with a NaN or an infinity (unless ``allow``).

    A float64 sum of float32/float16 data cannot overflow, so it is finite exactly when every
    value is; only a tensor whose sum is not finite is scanned element by element."""
    if allow:
        return
    for name, t in tensors.items():
        a = np.asarray(t)
        if a.dtype.kind != "f" or not a.size or math.isfinite(float(a.sum(dtype=np.float64))):
            continue
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise WeightError(f"{source}: tensor {name!r} holds {bad:,} non-finite value(s) (NaN or Inf) out of "
                              f"{a.size:,}; pass --allow-nonfinite to use it anyway")


# ---------------------------------------------------------------------------
# canonical files


def metadata_for(spec: ModelSpec, framework: str, **optional: str | None) -> dict[str, str]:
    """The metadata of a canonical file of ``spec`` (a user's own spec is embedded); ``optional``
    sets :data:`OPTIONAL_METADATA` keys (None: left out)."""
    unknown = set(optional) - set(OPTIONAL_METADATA)
    if unknown:
        raise ValueError(f"unknown canonical metadata key(s) {sorted(unknown)}; optional keys: {OPTIONAL_METADATA}")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": spec.name,
        "overrides": json.dumps(dict(spec.overrides), sort_keys=True),
        "spec_hash": spec.hash(),
        "framework": framework,
        **{k: v for k, v in optional.items() if v is not None},
    }
    if not is_bundled(spec):
        if not spec.document:
            raise WeightError(f"model {spec.name!r} is not a bundled model and its spec document is unknown; "
                              "load it with load_spec('path/to/spec.json:model') to save its weights")
        meta["spec"] = spec.document
        meta["spec_file"] = Path(spec.file).name
    return meta


def save_canonical(path: str | os.PathLike, spec: ModelSpec, tensors: Mapping[str, np.ndarray],
                   *, framework: str = "unknown", **optional: str | None) -> None:
    """Check ``tensors`` against ``spec`` and write them atomically as canonical safetensors
    (``optional``: :data:`OPTIONAL_METADATA` values, e.g. ``preprocess=prep.to_json()``)."""
    check_tensors(spec, tensors, source="tensors to save")
    data = {k: np.ascontiguousarray(tensors[k], dtype=np.float32) for k in expected_tensors(spec)}
    write_safetensors(path, data, metadata_for(spec, framework, **optional))


def check_format(path: str | os.PathLike, meta: Mapping[str, str]) -> None:
    """Raise WeightError unless ``meta`` is a canonical file's metadata of a known version."""
    if meta.get("format") != FORMAT:
        raise WeightError(f"{path}: not a canonical Rosetta weight file (metadata format={meta.get('format')!r}, "
                          f"expected {FORMAT!r}); convert it first")
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightError(f"{path}: canonical format version {meta.get('format_version')!r} is not supported "
                          f"(this version reads {FORMAT_VERSION!r})")
    missing = [k for k in ("model", "overrides", "spec_hash") if k not in meta]
    if missing:
        raise WeightError(f"{path}: the metadata lacks {', '.join(missing)}")


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors header metadata, checked to be a canonical file of a known version."""
    meta, _, _ = read_header(path)
    check_format(path, meta)
    return meta


def _overrides(path: str | os.PathLike, meta: Mapping[str, str]) -> dict[str, Any]:
    try:
        overrides = json.loads(meta.get("overrides", "{}"))
    except (json.JSONDecodeError, RecursionError):
        raise WeightError(f"{path}: the metadata's overrides are not JSON") from None
    if not isinstance(overrides, dict):
        raise WeightError(f"{path}: the metadata's overrides must be a JSON object, got {type(overrides).__name__}")
    return overrides


def spec_from_metadata(path: str | os.PathLike, meta: Mapping[str, str]) -> ModelSpec:
    """The spec a canonical file describes: its embedded spec, or a bundled model by name
    (never a file its metadata names), with its overrides; ``spec_hash`` must match."""
    model = meta.get("model", "")
    overrides = _overrides(path, meta)
    try:
        if "spec" in meta:
            label = f"{path} (the spec embedded in it)"
            limits.get().check("max_json_bytes", len(meta["spec"]), "the embedded spec's size")
            spec = load_spec_dict(parse_json(meta["spec"], label), model, overrides, file=label)
        elif model in list_models():
            spec = load_spec(model, overrides)
        elif is_file_reference(model) or "/" in model or model.endswith(".json"):
            raise WeightError(f"{path}: its metadata names the spec file {model!r}; a file named inside a weight "
                              "file is never opened: pass --model with the spec you mean, and the weights are "
                              "checked against it")
        else:
            raise WeightError(f"{path}: its metadata names model {model!r}, which is not a bundled model, and the "
                              "file embeds no spec: pass --model path/to/spec.json:model")
    except (SpecError, limits.LimitError) as e:
        raise WeightError(f"{path}: its metadata does not describe a valid model: {e}") from None
    check_spec_matches(path, meta, spec)
    return spec


def check_spec_matches(path: str | os.PathLike, meta: Mapping[str, str], spec: ModelSpec) -> None:
    """Raise WeightError unless the file's model name and ``spec_hash`` are ``spec``'s."""
    if meta.get("model") != spec.name:
        raise WeightError(f"{path}: the file holds weights of model {meta.get('model')!r}, not {spec.name!r}")
    if meta.get("spec_hash") != spec.hash():
        raise WeightError(f"{path}: the weights were written for another spec of {spec.name!r}: the file's spec_hash "
                          f"{str(meta.get('spec_hash'))[:12]}... differs from this spec's {spec.hash()[:12]}... "
                          f"(the file's overrides: {meta.get('overrides')}; this spec's: "
                          f"{json.dumps(dict(spec.overrides), sort_keys=True)}); was the spec file edited?")


def spec_from_file(path: str | os.PathLike, model: str | None = None) -> ModelSpec:
    """The spec a canonical file was written for, checked against ``model`` when given: a
    bundled name (or the bare name of the file's own model) must be the file's model; a
    ``path/to/spec.json:model`` the user names is loaded and must have the file's spec_hash."""
    meta = read_metadata(path)
    if model is None:
        return spec_from_metadata(path, meta)
    if is_file_reference(model):
        spec = load_spec(model, _overrides(path, meta))
        check_spec_matches(path, meta, spec)
        return spec
    if meta.get("model") != model:
        raise WeightError(f"{path}: the file holds weights of model {meta.get('model')!r}, not {model!r}")
    return spec_from_metadata(path, meta)


def load_canonical(path: str | os.PathLike, spec: ModelSpec | None = None, *,
                   allow_nonfinite: bool = False) -> tuple[ModelSpec, dict[str, np.ndarray]]:
    """Read a canonical file; check it against ``spec`` (default: the spec in its metadata).

    Checked before any tensor data is read: the header, the metadata, the spec (``spec_hash``),
    every name, shape and dtype; then the data's checksum and, unless ``allow_nonfinite``,
    that no tensor holds a NaN or an infinity."""
    meta, infos, offset = read_header(path)
    check_format(path, meta)
    if spec is None:
        spec = spec_from_metadata(path, meta)
    else:
        check_spec_matches(path, meta, spec)
    expected = expected_tensors(spec)
    check_names_shapes(expected, {k: i.shape for k, i in infos.items()}, source=str(path),
                       target=f"model {spec.name!r}")
    for name, info in infos.items():
        if info.dtype not in ("F32", "F16", "F64"):
            raise WeightError(f"{path}: tensor {name!r} has dtype {info.dtype}, expected a floating type "
                              "(float32, float16 or float64)")
    tensors = read_tensors(path, infos, offset, meta)
    tensors = {k: t if t.dtype == np.float32 else t.astype(np.float32) for k, t in tensors.items()}
    check_finite(tensors, source=str(path), allow=allow_nonfinite)
    return spec, tensors
