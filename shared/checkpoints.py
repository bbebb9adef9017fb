"""Foreign checkpoints <-> the canonical format: torchvision ``state_dict`` files and
``keras.applications`` weight files, by declared name tables.

torchvision (https://github.com/pytorch/vision/tree/main/torchvision/models): one table per
model family maps spec layer names onto ``state_dict`` prefixes; tensor suffixes
(``weight``, ``bias``, ``running_mean``, ``running_var``) are the same on both sides and the
layouts are identical (the canonical layout is PyTorch's), so conversion is renaming only.
BatchNorm's ``num_batches_tracked`` counter is dropped on import and written as 0 on export.

keras.applications VGG16 / VGG19 (https://keras.io/api/applications/vgg/): the spec's VGG
layer names *are* the Keras layer names (``block1_conv1`` ... ``fc1``, ``fc2``,
``predictions``), so the table is the identity on names; kernels change layout
(``shared.nhwc``) and ``fc1``'s rows are permuted, because Keras flattens the NHWC map.

Files are read without unpickling anything (``torch.load(..., weights_only=True)``, HDF5 via
h5py) and written atomically. No framework is imported at module import time.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from . import nhwc
from .errors import WeightError
from .spec import ModelSpec, load_spec
from .weights import expected_tensors, flatten_inputs

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

#: keras.applications constructors of the bundled models; their layer names are the spec's
KERAS_APPLICATIONS: dict[str, str] = {"vgg16": "VGG16", "vgg19": "VGG19"}

#: the spec layers of a keras.applications VGG "top" (absent with include_top=False)
KERAS_TOP = ("fc1", "fc2", "predictions")

#: Keras variable order inside a layer's ``vars`` group, per spec op -> canonical suffix
KERAS_VARIABLES: dict[str, tuple[str, ...]] = {
    "conv2d": ("weight", "bias"),
    "linear": ("weight", "bias"),
    "batch_norm": ("weight", "bias", "running_mean", "running_var"),
}


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


# ---------------------------------------------------------------------------
# checks


def listing(names: list[str], limit: int = 5) -> str:
    """The first ``limit`` names, and how many more."""
    shown = ", ".join(names[:limit])
    return f"{shown} (+{len(names) - limit} more)" if len(names) > limit else shown


def check_names_shapes(expected: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]], *,
                       source: str, target: str, suggestion: str | None = None) -> None:
    """Raise WeightError unless ``got`` has exactly ``expected``'s names and shapes.

    The message lists the missing and unexpected names (first few, with counts), adds
    ``suggestion`` (e.g. the model the file looks like), or names the tensor and both shapes.
    """
    missing = [n for n in expected if n not in got]
    unexpected = [n for n in got if n not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensor(s): {listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s): {listing(unexpected)}")
        if suggestion:
            parts.append(suggestion)
        raise WeightError(f"{source} does not match {target}: " + "; ".join(parts))
    for name, shape in expected.items():
        if tuple(got[name]) != tuple(shape):
            raise WeightError(f"{source}: tensor {name!r} has shape {tuple(got[name])}, "
                              f"{target} expects {tuple(shape)}")


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
# torchvision


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


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``state_dict`` file as numpy arrays, read with ``torch.load(weights_only=True)``.

    Memory-mapped where the file allows it (the zip format), so the arrays share the file's
    pages instead of copying them. Anything that is not plain tensors (a pickled object, a
    code payload) is refused by the weights-only unpickler and reported as a WeightError.
    """
    import pickle
    import zipfile

    import torch

    p = _existing(path)
    if p.stat().st_size == 0:
        raise WeightError(f"{p}: empty file")
    errors = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile,
              KeyError, AttributeError, TypeError, IndexError)
    try:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(p, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightError(f"{p}: refused to load: the file holds more than tensors (the weights-only loader "
                          f"rejected it: {first[:300]}); it was not executed") from None
    except errors as e:
        raise WeightError(f"{p}: not a readable PyTorch state_dict file (truncated or corrupted?): "
                          f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise WeightError(f"{p}: not a state_dict (a mapping of names to tensors), got {type(obj).__name__}")
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

    from .weights import atomic_path

    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in to_torchvision(spec, tensors).items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


# ---------------------------------------------------------------------------
# keras.applications


def headless_spec(spec: ModelSpec) -> ModelSpec:
    """A VGG spec cut after ``block5_pool`` (keras.applications' ``include_top=False``): its
    ``logits`` output is the last feature map."""
    if spec.family != "vgg":
        raise WeightError(f"only VGG models have a headless (include_top=False) form, not {spec.name!r}")
    keep = []
    for layer in spec.layers:
        keep.append(layer)
        if layer.name == "block5_pool":
            break
    return dataclasses.replace(spec, layers=tuple(keep), outputs={"logits": "block5_pool"}, _index={})


def is_headless(spec: ModelSpec) -> bool:
    """Whether ``spec`` is a :func:`headless_spec` (no classifier layers)."""
    return spec.family == "vgg" and spec.outputs["logits"] == "block5_pool"


def _h5_open(path: str | os.PathLike) -> Any:
    """An open h5py file: ``path`` itself, or the ``model.weights.h5`` inside a ``.keras`` zip."""
    import io
    import zipfile

    import h5py

    p = _existing(path)
    if p.stat().st_size == 0:
        raise WeightError(f"{p}: empty file")
    try:
        if p.name.endswith(".keras"):
            with zipfile.ZipFile(p) as z:
                return h5py.File(io.BytesIO(z.read("model.weights.h5")), "r")
        return h5py.File(p, "r")
    except (OSError, zipfile.BadZipFile, KeyError, EOFError) as e:
        raise WeightError(f"{p}: not a readable Keras weight file (truncated or corrupted?): {e}") from None


def read_keras_h5(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> its variables in order, from a Keras 3 ``.weights.h5`` or ``.keras``
    file (or a Keras 2 ``.h5`` weights file, as keras.applications' published ones are)."""
    import h5py

    layers: dict[str, list[np.ndarray]] = {}
    with _h5_open(path) as f:
        try:
            if "layer_names" in f.attrs:  # Keras 2: one group per layer name, weight_names attribute
                for raw in f.attrs["layer_names"]:
                    name = raw.decode() if isinstance(raw, bytes) else str(raw)
                    group = f[name]
                    weights = [w.decode() if isinstance(w, bytes) else str(w) for w in group.attrs.get("weight_names", [])]
                    if weights:
                        layers[name] = [np.asarray(group[w], dtype=np.float32) for w in weights]
            elif "layers" in f:  # Keras 3: layers/<path>/vars/<i>, the layer name in vars' "name" attribute
                for key, group in f["layers"].items():
                    vars_ = group.get("vars")
                    if not isinstance(vars_, h5py.Group) or not len(vars_):
                        continue
                    name = vars_.attrs.get("name", key)
                    name = name.decode() if isinstance(name, bytes) else str(name)
                    layers[name] = [np.asarray(vars_[str(i)], dtype=np.float32) for i in range(len(vars_))]
            else:
                raise WeightError(f"{path}: an HDF5 file without Keras weights (no 'layers' group or 'layer_names')")
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise WeightError(f"{path}: corrupted or truncated Keras weight file: {type(e).__name__}: {e}") from None
    return layers


def infer_keras_model(layers: Mapping[str, list[np.ndarray]]) -> tuple[str, dict[str, Any]]:
    """(model, overrides) of a keras.applications VGG weight file: VGG16 or VGG19 from the
    number of conv layers, ``num_classes`` from ``predictions``."""
    convs = sum(1 for n in layers if re.fullmatch(r"block\d_conv\d", n))
    model = {13: "vgg16", 16: "vgg19"}.get(convs)
    if model is None:
        raise WeightError(f"not a keras.applications VGG16/VGG19 weight file ({convs} block convolutions; "
                          f"layers: {listing(sorted(layers))}); pass --model")
    overrides = {"num_classes": int(layers["predictions"][0].shape[1])} if "predictions" in layers else {}
    return model, overrides


def from_keras_applications(spec: ModelSpec, layers: Mapping[str, list[np.ndarray]], *,
                            source: str = "checkpoint") -> tuple[ModelSpec, dict[str, np.ndarray]]:
    """keras.applications layers -> (spec, canonical tensors); the spec is
    :func:`headless_spec` when the file has no top."""
    if spec.name not in KERAS_APPLICATIONS:
        raise WeightError(f"keras.applications has no model {spec.name!r}; it has: {', '.join(KERAS_APPLICATIONS)}")
    if not any(n in layers for n in KERAS_TOP):
        spec = headless_spec(spec)
    shapes = expected_tensors(spec)
    expected: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        layer, suffix = name.rsplit(".", 1)
        expected[name] = _keras_shape(spec, layer, suffix, shape)
    own = {layer.name: layer.op for layer in spec.layers}
    by_count = {len(v): v for v in KERAS_VARIABLES.values()}  # a layer the spec lacks: name by its variable count
    got = {}
    for layer, values in layers.items():
        suffixes = KERAS_VARIABLES[own[layer]] if own.get(layer) in KERAS_VARIABLES else by_count.get(len(values), ())
        for i, v in enumerate(values):
            got[f"{layer}.{suffixes[i] if i < len(suffixes) else i}"] = tuple(v.shape)
    hint = None
    if set(got) != set(expected):
        with contextlib.suppress(WeightError):
            other = infer_keras_model(layers)[0]
            hint = f"the layers look like keras.applications {KERAS_APPLICATIONS[other]}" if other != spec.name else None
    check_names_shapes(expected, got, source=source, suggestion=hint,
                       target=f"keras.applications {KERAS_APPLICATIONS[spec.name]} ({'without' if is_headless(spec) else 'with'} top)")
    flat = flatten_inputs(spec)
    out = {}
    for name in shapes:
        layer, suffix = name.rsplit(".", 1)
        v = layers[layer][KERAS_VARIABLES[spec.layer(layer).op].index(suffix)]
        if suffix != "weight":
            out[name] = v
        elif spec.layer(layer).op == "conv2d":
            out[name] = nhwc.conv_kernel_from_hwio(v)
        else:
            out[name] = nhwc.linear_kernel_from_io(v, flat.get(layer))
    return spec, out


def _keras_shape(spec: ModelSpec, layer: str, suffix: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if suffix != "weight":
        return shape
    if spec.layer(layer).op == "conv2d":
        return (shape[2], shape[3], shape[1], shape[0])  # [O, I, kH, kW] -> [kH, kW, I, O]
    return (shape[1], shape[0])  # [out, in] -> [in, out]


#: Keras 3 object paths of the layer classes keras.applications VGG uses (snake-case class names)
_KERAS_PATHS = {"conv2d": "conv2d", "max_pool2d": "max_pooling2d", "flatten": "flatten", "linear": "dense"}


def write_keras_applications(path: str | os.PathLike, spec: ModelSpec, tensors: Mapping[str, np.ndarray]) -> None:
    """Write canonical ``tensors`` as a Keras 3 ``.weights.h5`` file that
    ``keras.applications.VGG16/VGG19(weights=None, include_top=...)`` loads with ``load_weights``
    (``include_top`` is whether ``spec`` has a top; see :func:`headless_spec`)."""
    import h5py

    if spec.name not in KERAS_APPLICATIONS:
        raise WeightError(f"keras.applications has no model {spec.name!r}; it has: {', '.join(KERAS_APPLICATIONS)}")
    flat = flatten_inputs(spec)
    counts: dict[str, int] = {}
    with atomic_named_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            root = f.create_group("layers")
            root.create_group("input_layer").create_group("vars").attrs["name"] = "input_layer"
            for layer in spec.layers:
                if layer.op not in _KERAS_PATHS or layer.name == "avgpool":
                    continue
                base = _KERAS_PATHS[layer.op]
                k = counts.get(base, 0)
                counts[base] = k + 1
                group = root.create_group(base if k == 0 else f"{base}_{k}").create_group("vars")
                group.attrs["name"] = layer.name
                for i, suffix in enumerate(KERAS_VARIABLES.get(layer.op, ())):
                    t = np.asarray(tensors[f"{layer.name}.{suffix}"], dtype=np.float32)
                    if suffix == "weight":
                        t = (nhwc.conv_kernel_to_hwio(t) if layer.op == "conv2d"
                             else nhwc.linear_kernel_to_io(t, flat.get(layer.name)))
                    group.create_dataset(str(i), data=t)
            f.create_group("vars").attrs["name"] = spec.name


# ---------------------------------------------------------------------------
# files


def _existing(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise WeightError(f"{p}: no such file")
    return p


@contextlib.contextmanager
def atomic_named_path(path: str | os.PathLike) -> Iterator[Path]:
    """Like ``shared.weights.atomic_path``, but the temporary file has ``path``'s own name (in a
    temporary directory beside it), for writers that check the file name (Keras' suffixes)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as d:
        tmp = Path(d) / target.name
        yield tmp
        if tmp.is_dir():  # a Keras/orbax writer may produce a directory; we only handle files
            raise WeightError(f"{target}: the writer produced a directory, not a file")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
