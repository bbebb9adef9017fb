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
  (JSON), ``spec_hash`` (sha256 of the resolved spec) and ``framework`` (who wrote it);
  optionally (:data:`OPTIONAL_METADATA`) ``preprocess``, the input pipeline the weights
  expect (a JSON object, ``images/preprocess.py``), and ``classes``, the class names (a JSON
  list) of a model trained on a folder of class folders.

Reading never unpickles anything, and writing is atomic (temporary file, fsync, rename).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import ops
from .errors import RosettaError, SpecError, WeightError
from .files import atomic_path, check_names_shapes
from .spec import ModelSpec, load_spec

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
    from .spec import list_models

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

    No tensor is zero or constant: He-scaled weights keep activations O(1) through deep
    stacks; biases are U(-0.1, 0.1); BatchNorm gets gamma U(0.5, 1.5), beta U(-0.3, 0.3),
    running_mean N(0, 0.3^2) and running_var U(0.3, 2.0), never the mean 0 / var 1 that
    would hide an eps or a statistics mix-up.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in expected_tensors(spec).items():
        suffix = name.rsplit(".", 1)[1]
        layer = spec.layer(name.rsplit(".", 1)[0])
        if layer.op == "batch_norm":
            lo_hi = {"weight": (0.5, 1.5), "bias": (-0.3, 0.3), "running_var": (0.3, 2.0)}
            if suffix == "running_mean":
                t = rng.normal(0.0, 0.3, shape)
            else:
                t = rng.uniform(*lo_hi[suffix], shape)
        elif suffix == "weight":
            fan_in = math.prod(shape[1:])
            t = rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
        else:
            t = rng.uniform(-0.1, 0.1, shape)
        out[name] = t.astype(np.float32)
    return out


# ---------------------------------------------------------------------------
# files


def metadata_for(spec: ModelSpec, framework: str, **optional: str | None) -> dict[str, str]:
    """The metadata of a canonical file; ``optional`` sets :data:`OPTIONAL_METADATA` keys (None: left out)."""
    unknown = set(optional) - set(OPTIONAL_METADATA)
    if unknown:
        raise ValueError(f"unknown canonical metadata key(s) {sorted(unknown)}; optional keys: {OPTIONAL_METADATA}")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": spec.name,
        "overrides": json.dumps(dict(spec.overrides), sort_keys=True),
        "spec_hash": spec.hash(),
        "framework": framework,
        **{k: v for k, v in optional.items() if v is not None},
    }


def save_canonical(path: str | os.PathLike, spec: ModelSpec, tensors: Mapping[str, np.ndarray],
                   *, framework: str = "unknown", **optional: str | None) -> None:
    """Check ``tensors`` against ``spec`` and write them atomically as canonical safetensors
    (``optional``: :data:`OPTIONAL_METADATA` values, e.g. ``preprocess=prep.to_json()``)."""
    from safetensors.numpy import save_file

    check_tensors(spec, tensors, source="tensors to save")
    data = {k: np.ascontiguousarray(tensors[k], dtype=np.float32) for k in expected_tensors(spec)}
    with atomic_path(path) as tmp:
        save_file(data, str(tmp), metadata=metadata_for(spec, framework, **optional))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors header metadata, checked to be a canonical file of a known version."""
    p = Path(path)
    if not p.is_file():
        raise WeightError(f"{p}: no such file")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightError(f"{p}: not a safetensors file ({size} bytes; the header is missing)")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > min(size - 8, 100 << 20):
            raise WeightError(f"{p}: not a safetensors file (header length {n} does not fit a {size}-byte file)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise WeightError(f"{p}: corrupted safetensors header (not JSON)") from None
    meta = header.get("__metadata__") or {} if isinstance(header, dict) else {}
    if meta.get("format") != FORMAT:
        raise WeightError(f"{p}: not a canonical Rosetta weight file (metadata format={meta.get('format')!r}, "
                          f"expected {FORMAT!r}); convert it first")
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightError(f"{p}: canonical format version {meta.get('format_version')!r} is not supported "
                          f"(this version reads {FORMAT_VERSION!r})")
    return meta


def spec_from_file(path: str | os.PathLike) -> ModelSpec:
    """Rebuild the spec a canonical file was written for (model name + overrides in its metadata)."""
    meta = read_metadata(path)
    try:
        overrides = json.loads(meta.get("overrides", "{}"))
        return load_spec(meta["model"], overrides)
    except (KeyError, json.JSONDecodeError, SpecError) as e:
        raise WeightError(f"{path}: metadata does not describe a known model: {e}") from None


def load_canonical(path: str | os.PathLike, spec: ModelSpec | None = None) -> tuple[ModelSpec, dict[str, np.ndarray]]:
    """Read a canonical file; check it against ``spec`` (default: the spec in its metadata)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    meta = read_metadata(path)
    if spec is None:
        spec = spec_from_file(path)
    elif meta.get("model") != spec.name:
        raise WeightError(f"{path}: the file holds weights of model {meta.get('model')!r}, not {spec.name!r}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightError(f"{path}: corrupted or truncated safetensors file ({e})") from None
    check_tensors(spec, tensors, source=str(path))
    return spec, tensors
