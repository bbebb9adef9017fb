"""keras.applications VGG16 / VGG19 weight files <-> the canonical format
(https://keras.io/api/applications/vgg/).

The spec's VGG layer names *are* the Keras layer names (``block1_conv1`` ... ``fc1``, ``fc2``,
``predictions``), so the table is the identity on names; kernels change layout
(``core/layout.py``) and ``fc1``'s rows are permuted, because Keras flattens the NHWC map.
Keras 3 ``.weights.h5`` / ``.keras`` files and Keras 2 ``.h5`` weight files are read with
h5py (nothing is unpickled); files are written atomically. No framework is imported.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from typing import Any, Mapping

import numpy as np

from ..core import layout
from ..core.canonical import expected_tensors
from ..core.errors import RosettaError, WeightError
from ..core.files import atomic_named_path, check_names_shapes, existing_file, listing
from ..core.spec import ModelSpec

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


#: the signature at the start of an HDF5 file
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: the most HDF5 objects (groups and datasets) a weight file may hold (a hard-link cycle ends here)
_MAX_OBJECTS = 100_000


def _h5_open(path: str | os.PathLike, max_bytes: int | None = None) -> Any:
    """An open h5py file: ``path`` itself, or the ``model.weights.h5`` inside a ``.keras`` zip
    (its declared size checked against ``max_archive_bytes`` and ``max_bytes`` before it is
    inflated), with every object checked by :func:`check_h5_tree` before any data is read."""
    import io
    import zipfile

    import h5py

    from ..core import limits

    p = existing_file(path)
    if p.stat().st_size == 0:
        raise WeightError(f"{p}: empty file")
    try:
        if p.name.endswith(".keras"):
            with zipfile.ZipFile(p) as z:
                try:
                    info = z.getinfo("model.weights.h5")
                except KeyError:
                    raise WeightError(f"{p}: a zip archive without model.weights.h5: not a Keras model file") from None
                limit = min(limits.get().max_archive_bytes, max_bytes or limits.get().max_archive_bytes)
                if info.file_size > limit:
                    key = "max_archive_bytes" if limit == limits.get().max_archive_bytes else None
                    raise WeightError(f"{p}: " + (limits.exceeded(key, info.file_size, "the uncompressed size of its "
                                                                  "model.weights.h5") if key else
                                                  f"its model.weights.h5 inflates to {info.file_size:,} bytes, more "
                                                  f"than {limit:,} for this model's weights"))
                with z.open(info) as member:
                    data = member.read(info.file_size + 1)
            f = h5py.File(io.BytesIO(data), "r")
        else:
            with open(p, "rb") as raw:
                if raw.read(8) != _HDF5_MAGIC:
                    raise WeightError(f"{p}: not an HDF5 file (a Keras .weights.h5 / .h5 starts with the HDF5 signature)")
            f = h5py.File(p, "r")
    except RosettaError:
        raise
    except (OSError, zipfile.BadZipFile, KeyError, EOFError, ValueError, RuntimeError) as e:
        raise WeightError(f"{p}: not a readable Keras weight file (truncated or corrupted?): {e}") from None
    try:
        check_h5_tree(f, p)
    except BaseException:
        f.close()
        raise
    return f


def check_h5_tree(f: Any, path: str | os.PathLike) -> None:
    """Raise WeightError for anything in an HDF5 file that would read outside it or without
    bound: soft and external links (never followed: a link loop, or a path to another file),
    datasets stored in external files or virtual, more elements in all than ``max_params``,
    more than 100,000 objects (what a hard-link cycle would give)."""
    import h5py

    from ..core import limits

    todo, seen, total = [("", f)], 0, 0
    try:
        while todo:
            prefix, group = todo.pop()
            for name in group:
                where = f"{prefix}/{name}"
                link = group.get(name, getlink=True)
                if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
                    kind = "an external link to another file" if isinstance(link, h5py.ExternalLink) else "a soft link"
                    raise WeightError(f"{path}: {where} is {kind}; links inside weight files are never followed")
                seen += 1
                if seen > _MAX_OBJECTS:
                    raise WeightError(f"{path}: more than {_MAX_OBJECTS:,} HDF5 objects (a hard-link cycle?)")
                obj = group[name]
                if isinstance(obj, h5py.Group):
                    todo.append((where, obj))
                elif isinstance(obj, h5py.Dataset):
                    if obj.is_virtual or obj.external:
                        raise WeightError(f"{path}: dataset {where} keeps its data "
                                          f"{'in other files (virtual)' if obj.is_virtual else 'in an external file'}; "
                                          "only data inside the file is read")
                    total += int(np.prod(obj.shape, dtype=np.float64)) if obj.shape else 1
                    limits.get().check("max_params", total, f"the elements {path} declares (up to dataset {where})")
    except RosettaError:
        raise
    except (KeyError, OSError, RuntimeError, ValueError) as e:
        raise WeightError(f"{path}: corrupted HDF5 structure: {e}") from None


def _dataset(group: Any, name: str, path: str | os.PathLike) -> np.ndarray:
    """One variable as float32, after checking it is a float (or integer) dataset."""
    import h5py

    ds = group[name]
    if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiu":
        what = f"dtype {ds.dtype}" if isinstance(ds, h5py.Dataset) else type(ds).__name__
        raise WeightError(f"{path}: {ds.name} is not a numeric weight ({what})")
    return np.asarray(ds, dtype=np.float32)


def read_keras_h5(path: str | os.PathLike, *, max_bytes: int | None = None) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> its variables in order, from a Keras 3 ``.weights.h5`` or ``.keras``
    file (or a Keras 2 ``.h5`` weights file, as keras.applications' published ones are).
    ``max_bytes`` bounds the weights inside a ``.keras`` zip (the caller knows the model)."""
    import h5py

    layers: dict[str, list[np.ndarray]] = {}
    with _h5_open(path, max_bytes) as f:
        try:
            if "layer_names" in f.attrs:  # Keras 2: one group per layer name, weight_names attribute
                for raw in f.attrs["layer_names"]:
                    name = raw.decode() if isinstance(raw, bytes) else str(raw)
                    group = f[name]
                    weights = [w.decode() if isinstance(w, bytes) else str(w) for w in group.attrs.get("weight_names", [])]
                    if weights:
                        layers[name] = [_dataset(group, w, path) for w in weights]
            elif "layers" in f:  # Keras 3: layers/<path>/vars/<i>, the layer name in vars' "name" attribute
                for key, group in f["layers"].items():
                    vars_ = group.get("vars") if isinstance(group, h5py.Group) else None
                    if not isinstance(vars_, h5py.Group) or not len(vars_):
                        continue
                    name = vars_.attrs.get("name", key)
                    name = name.decode() if isinstance(name, bytes) else str(name)
                    layers[name] = [_dataset(vars_, str(i), path) for i in range(len(vars_))]
            else:
                raise WeightError(f"{path}: an HDF5 file without Keras weights (no 'layers' group or 'layer_names')")
        except RosettaError:
            raise
        except (OSError, KeyError, ValueError, TypeError, UnicodeDecodeError, RuntimeError) as e:
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
    flat = layout.flatten_inputs(spec)
    out = {}
    for name in shapes:
        layer, suffix = name.rsplit(".", 1)
        v = layers[layer][KERAS_VARIABLES[spec.layer(layer).op].index(suffix)]
        out[name] = layout.convert_tensor(spec.layer(layer), suffix, v, flat.get(layer),
                                          conv=layout.conv_kernel_from_hwio, linear=layout.linear_kernel_from_io)
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
    flat = layout.flatten_inputs(spec)
    counts: dict[str, int] = {}
    # h5py cannot fail cleanly half-way through a full disk: the space is checked first
    nbytes = sum(np.asarray(t).size * 4 + 4096 for t in tensors.values()) + (64 << 10)
    with atomic_named_path(path, nbytes) as tmp:
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
                    t = layout.convert_tensor(layer, suffix, tensors[f"{layer.name}.{suffix}"], flat.get(layer.name),
                                              conv=layout.conv_kernel_to_hwio, linear=layout.linear_kernel_to_io)
                    group.create_dataset(str(i), data=t, track_times=False)  # no timestamps: same bytes each time
            f.create_group("vars").attrs["name"] = spec.name
