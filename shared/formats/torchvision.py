"""torchvision ``state_dict`` files <-> the canonical format, by one declared name table per
family (https://github.com/pytorch/vision/tree/main/torchvision/models).

A table maps spec layer names onto ``state_dict`` prefixes; tensor suffixes (``weight``,
``bias``, ``running_mean``, ``running_var``) are the same on both sides and the layouts are
identical (the canonical layout is PyTorch's), so conversion is renaming only. BatchNorm's
``num_batches_tracked`` counter is dropped on import and written as 0 on export.

Files are read without unpickling anything (``torch.load(..., weights_only=True)``) and
written atomically. torch is imported only when a file is read or written.
"""
from __future__ import annotations

import os
import re
import struct
from typing import Any, Mapping

import numpy as np

from ..core.canonical import expected_tensors
from ..core.errors import WeightError
from ..core.files import atomic_path, check_names_shapes, existing_file, listing
from ..core.spec import ModelSpec, load_spec

# ---------------------------------------------------------------------------
# name tables

#: Per family: (spec layer pattern, torchvision module pattern); ``{x}`` matches one name part
#: (letters and digits) and is copied across. The first matching row wins.
TORCHVISION_TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    # torchvision.models.AlexNet: features = Sequential(conv, relu, pool, conv, relu, pool,
    # conv, relu, conv, relu, conv, relu, pool); classifier = (dropout, fc, relu, dropout, fc, relu, fc)
    "alexnet": (
        ("conv1", "features.0"), ("conv2", "features.3"), ("conv3", "features.6"),
        ("conv4", "features.8"), ("conv5", "features.10"),
        ("fc6", "classifier.1"), ("fc7", "classifier.4"), ("fc8", "classifier.6"),
    ),
    # torchvision.models.GoogLeNet: BasicConv2d = (conv, bn); Inception branch2/3 =
    # Sequential(reduce BasicConv2d, BasicConv2d); branch4 = Sequential(max pool, BasicConv2d)
    "googlenet": (
        ("conv{n}_{part}", "conv{n}.{part}"),
        ("inception{m}_branch1_{part}", "inception{m}.branch1.{part}"),
        ("inception{m}_branch{b}_reduce_{part}", "inception{m}.branch{b}.0.{part}"),
        ("inception{m}_branch4_{part}", "inception{m}.branch4.1.{part}"),
        ("inception{m}_branch{b}_{part}", "inception{m}.branch{b}.1.{part}"),
        ("aux{k}_conv_{part}", "aux{k}.conv.{part}"),
        ("aux{k}_fc{j}", "aux{k}.fc{j}"),
        ("fc", "fc"),
    ),
    # torchvision.models.VGG: classifier = (fc, relu, dropout, fc, relu, dropout, fc); the
    # ``features.{i}`` index counts torchvision's make_layers Sequential: each conv, BatchNorm,
    # ReLU and max pool is one entry (see _vgg_feature_index)
    "vgg": (
        ("block{s}_conv{c}", "features.{i}"),
        ("block{s}_conv{c}_bn", "features.{i}"),
        ("fc1", "classifier.0"), ("fc2", "classifier.3"), ("predictions", "classifier.6"),
    ),
}

#: the bundled models torchvision also has (``torchvision.models.<name>``)
TORCHVISION_MODELS: tuple[str, ...] = (
    "alexnet", "googlenet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
)

def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[A-Za-z0-9]+)", re.escape(pattern)) + "$")


def _vgg_feature_index(spec: ModelSpec) -> dict[str, int]:
    """Spec conv / BatchNorm layer -> its index in torchvision's VGG ``features`` Sequential."""
    index, i = {}, 0
    for layer in spec.layers:
        if layer.op in ("conv2d", "batch_norm") and layer.name.startswith("block"):
            index[layer.name] = i
            i += 2 if layer.attrs.get("activation") == "relu" else 1  # the layer (+ its nn.ReLU)
        elif layer.op == "max_pool2d" and layer.name.startswith("block"):
            i += 1
    return index


def torchvision_names(spec: ModelSpec) -> dict[str, str]:
    """Canonical tensor name -> torchvision ``state_dict`` key, for every canonical tensor."""
    if spec.name not in TORCHVISION_MODELS:
        raise WeightError(f"torchvision has no model {spec.name!r}; it has: {', '.join(TORCHVISION_MODELS)}")
    rows = [(_compile(s), t) for s, t in TORCHVISION_TABLES[spec.family]]
    extra = {"i": _vgg_feature_index(spec)} if spec.family == "vgg" else {}
    out: dict[str, str] = {}
    for name in expected_tensors(spec):
        layer, suffix = name.rsplit(".", 1)
        for pattern, target in rows:
            m = pattern.match(layer)
            if m:
                fields = {**m.groupdict(), **{k: v[layer] for k, v in extra.items() if layer in v}}
                out[name] = f"{target.format(**fields)}.{suffix}"
                break
        else:
            raise WeightError(f"no torchvision name for tensor {name!r} of model {spec.name!r}")
    return out


def _guess_torchvision(keys: set[str]) -> str | None:
    """The torchvision model (and aux variant) whose ``state_dict`` keys best match ``keys``."""
    best, score = None, 0.0
    for model in TORCHVISION_MODELS:
        for aux in ((True, False) if model == "googlenet" else (None,)):
            spec = load_spec(model, {} if aux is None else {"aux_logits": aux})
            exp = set(torchvision_state_shapes(spec))
            s = len(exp & keys) / max(len(exp | keys), 1)
            if s > score:
                best, score = model + ("" if aux is None else f" (aux_logits={aux})"), s
    return best if score > 0.5 else None


def torchvision_state_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """torchvision ``state_dict`` key -> shape, ``num_batches_tracked`` counters included."""
    shapes = expected_tensors(spec)
    out: dict[str, tuple[int, ...]] = {}
    for name, key in torchvision_names(spec).items():
        out[key] = shapes[name]
        if key.endswith(".running_var"):
            out[key[: -len("running_var")] + "num_batches_tracked"] = ()
    return out


# ---------------------------------------------------------------------------
# files


def from_torchvision(spec: ModelSpec, state: Mapping[str, np.ndarray], *, source: str = "checkpoint") -> dict[str, np.ndarray]:
    """A torchvision ``state_dict`` (numpy arrays) -> canonical tensors, every name and shape checked."""
    expected = torchvision_state_shapes(spec)
    got = {k: tuple(np.shape(v)) for k, v in state.items()}
    if set(expected) != set(got):
        guess = _guess_torchvision(set(got))
        own = spec.name + (f" (aux_logits={spec.params['aux_logits']})" if "aux_logits" in spec.params else "")
        hint = f"the names look like torchvision model {guess!r}" if guess and guess != own else None
        check_names_shapes(expected, got, source=source, target=f"torchvision model {own!r}", suggestion=hint)
    check_names_shapes(expected, got, source=source, target=f"torchvision model {spec.name!r}")
    out = {}
    for name, key in torchvision_names(spec).items():
        a = state[key]
        if not np.issubdtype(a.dtype, np.floating):
            raise WeightError(f"{source}: tensor {key!r} has dtype {a.dtype}, expected a floating type")
        out[name] = a if a.dtype == np.float32 else a.astype(np.float32)
    return out


def to_torchvision(spec: ModelSpec, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical tensors -> a torchvision ``state_dict`` (numpy; counters as int64 zeros)."""
    out: dict[str, np.ndarray] = {}
    for name, key in torchvision_names(spec).items():
        out[key] = tensors[name]
        if key.endswith(".running_var"):
            out[key[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return out


def infer_torchvision_model(state: Mapping[str, np.ndarray]) -> tuple[str, dict[str, Any]]:
    """(model, overrides) of a torchvision ``state_dict``: the architecture from its key
    names, ``num_classes`` from the last layer and GoogLeNet's ``aux_logits`` from its keys.
    ``transform_input`` is not stored in a ``state_dict``: pass it as an override."""
    keys = set(state)
    if "inception3a.branch1.conv.weight" in keys:
        return "googlenet", {"num_classes": int(state["fc.weight"].shape[0]),
                             "aux_logits": "aux1.fc2.weight" in keys}
    first = state.get("features.0.weight")
    last = state.get("classifier.6.weight")
    if first is None or last is None:
        raise WeightError("not a torchvision AlexNet, VGG or GoogLeNet state_dict (no features.0.weight / "
                          f"classifier.6.weight / inception keys; first keys: {listing(sorted(keys))}); pass --model")
    overrides = {"num_classes": int(last.shape[0])}
    if tuple(first.shape[2:]) == (11, 11):
        return "alexnet", overrides
    convs = [k for k, v in state.items() if k.startswith("features.") and k.endswith(".weight") and np.ndim(v) == 4]
    bn = any(k.endswith(".running_mean") for k in keys)
    depth = len(convs) + 3
    if depth not in (11, 13, 16, 19):
        raise WeightError(f"a VGG-like state_dict with {len(convs)} convolutions matches no VGG; pass --model")
    return f"vgg{depth}{'_bn' if bn else ''}", overrides


#: what a torch file starts with: a zip archive (torch >= 1.6) or a pickle (the legacy format)
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")
#: tensor dtypes a state_dict may hold: floats (converted to float32) and integer counters
_FLOATS = ("float16", "bfloat16", "float32", "float64")
_COUNTERS = ("int64", "int32", "int16", "int8", "uint8")


def _unpickler_reason(e: Exception) -> str:
    """What torch's weights-only unpickler refused, without its advice to load unsafely."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    first = (lines[0] if lines else type(e).__name__).split(" Please use", 1)[0]  # never its advice to allow it
    return first[:200]


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``state_dict`` file as numpy arrays, read with ``torch.load(weights_only=True)``.

    Memory-mapped where the file allows it (the zip format), so the arrays share the file's
    pages instead of copying them. Anything that is not plain tensors (a pickled object, a
    code payload) is refused by the weights-only unpickler and reported as a WeightError;
    so are sparse, quantized and float8 tensors, and tensors that declare more elements than
    their data holds (a stride-0 view would grow without bound when converted).
    """
    import pickle
    import warnings
    import zipfile

    import torch

    from ..core import limits

    p = existing_file(path)
    if p.stat().st_size == 0:
        raise WeightError(f"{p}: empty file")
    with open(p, "rb") as f:
        head = f.read(4)
    if not head.startswith(_TORCH_MAGIC):
        raise WeightError(f"{p}: not a PyTorch file (it starts with the bytes {head.hex()}; a .pth/.pt file is a "
                          "zip archive or, from PyTorch before 1.6, a pickle)")
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(p) as z:
                members = z.infolist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise WeightError(f"{p}: not a readable PyTorch file (a damaged zip archive: {e})") from None
        packed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
        if packed:
            raise WeightError(f"{p}: not a PyTorch file: member {packed[0]!r} is compressed (torch.save stores "
                              "its members uncompressed)")
    errors = (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, AttributeError, TypeError,
              IndexError, struct.error, UnicodeDecodeError, MemoryError, RecursionError)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                obj = torch.load(p, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        raise WeightError(f"{p}: refused to load: the file holds more than tensors and plain containers (the "
                          f"weights-only loader rejected it: {_unpickler_reason(e)}); it was not executed") from None
    except errors as e:
        raise WeightError(f"{p}: not a readable PyTorch state_dict file (truncated or corrupted?): "
                          f"{type(e).__name__}: {_unpickler_reason(e)}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        what = type(obj).__name__ if not isinstance(obj, dict) else "a mapping with values that are not tensors"
        raise WeightError(f"{p}: not a state_dict (a mapping of names to tensors), got {what}")
    total = 0
    for k, t in obj.items():
        where = f"{p}: tensor {k!r}"
        if t.layout != torch.strided:
            raise WeightError(f"{where} is {str(t.layout).replace('torch.', '')}; only dense tensors are read")
        if t.is_quantized:
            raise WeightError(f"{where} is quantized ({t.dtype}); only float tensors are read")
        dtype = str(t.dtype).replace("torch.", "")
        if dtype not in _FLOATS + _COUNTERS:
            raise WeightError(f"{where} has dtype {dtype}; a state_dict's weights are float16, bfloat16, float32 "
                              "or float64")
        total += t.numel()
        limits.get().check("max_params", total, f"the elements {p} declares (up to tensor {k!r})")
        if t.numel() and t.untyped_storage().nbytes() < (t.storage_offset() + t.numel()) * t.element_size():
            raise WeightError(f"{where} declares {t.numel():,} elements but its data holds "
                              f"{t.untyped_storage().nbytes() // t.element_size():,} (a strided view of "
                              "overlapping memory); save the tensor itself")
    out = {}
    for k, t in obj.items():
        t = t.detach()
        if t.dtype in (torch.float16, torch.bfloat16, torch.float64):
            t = t.float()
        out[k] = t.numpy()  # shares memory with the (memory-mapped) tensor
    return out


def write_torchvision(path: str | os.PathLike, spec: ModelSpec, tensors: Mapping[str, np.ndarray]) -> None:
    """Write canonical ``tensors`` as a torchvision ``state_dict`` file (atomically)."""
    import torch

    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in to_torchvision(spec, tensors).items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
