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
from ..core.errors import WeightError
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


def _h5_open(path: str | os.PathLike) -> Any:
    """An open h5py file: ``path`` itself, or the ``model.weights.h5`` inside a ``.keras`` zip."""
    import io
    import zipfile

    import h5py

    p = existing_file(path)
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
                    t = layout.convert_tensor(layer, suffix, tensors[f"{layer.name}.{suffix}"], flat.get(layer.name),
                                              conv=layout.conv_kernel_to_hwio, linear=layout.linear_kernel_to_io)
                    group.create_dataset(str(i), data=t)
            f.create_group("vars").attrs["name"] = spec.name
