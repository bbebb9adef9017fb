"""Convert weights between formats (``rosetta convert``).

Every conversion goes through the canonical tensors (``core/canonical.py``): the source is
read and checked against the model's spec, then written in the target format (atomically:
an interrupted conversion leaves no partial file). Formats, and the file endings they are
inferred from:

=====================  ================  ==================================================
format                 file name         what
=====================  ================  ==================================================
``canonical``          ``.safetensors``  the project's canonical weights
``torchvision``        ``.pth``          a ``torchvision.models.<name>`` ``state_dict``
``keras-applications`` ``.weights.h5``   ``keras.applications.VGG16/VGG19`` weights (with or
                                         without the top)
``torch``              ``.pt``           the PyTorch port's ``state_dict``
``keras``              ``.keras``        the Keras port's model file (``--from/--to keras``
                                         for its ``.weights.h5``)
``flax``               ``.msgpack``      the Flax port's NNX state
``onnx``               ``.onnx``         ONNX from the PyTorch port (target only)
=====================  ================  ==================================================

torchvision and keras.applications files name their model by their tensor names (and the
class count by their last layer); the ports' own files need ``--model``. ``--set`` sets spec
overrides a file cannot hold, e.g. ``--set transform_input=true`` for torchvision's
pretrained GoogLeNet. No framework is imported until a command runs.

A canonical target records the preprocessing the weights expect (``images/preprocess.py``):
``torchvision`` from a torchvision file, ``caffe`` from a keras.applications file, the
source's own record from a canonical file, none from a port's own format.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Mapping

from ..core import ports
from ..core.canonical import check_finite, check_tensors, guess_model, load_canonical, save_canonical, spec_from_file
from ..core.errors import RosettaError, WeightError
from ..core.files import output_path
from ..core.spec import load_spec
from . import keras_applications as ka
from . import torchvision as tv

#: format -> (default file ending, description)
FORMATS: dict[str, tuple[str, str]] = {
    "canonical": (".safetensors", "canonical Rosetta weights"),
    "torchvision": (".pth", "torchvision state_dict"),
    "keras-applications": (".weights.h5", "keras.applications VGG16/VGG19 weights"),
    "torch": (".pt", "the PyTorch port's state_dict"),
    "keras": (".keras", "the Keras port's model file (or .weights.h5)"),
    "flax": (".msgpack", "the Flax port's NNX state"),
    "onnx": (".onnx", "ONNX, exported from the PyTorch port (target only)"),
}

#: the ports' own formats -> framework
NATIVE: dict[str, str] = {"torch": "torch", "keras": "keras", "flax": "flax"}


def infer_format(path: str, given: str | None, role: str) -> str:
    """The format named by ``--from``/``--to``, else the one ``path``'s ending names."""
    if given:
        return given
    for fmt, (suffix, _) in sorted(FORMATS.items(), key=lambda kv: -len(kv[1][0])):
        if path.endswith(suffix):
            return fmt
    known = ", ".join(f"{s} ({f})" for f, (s, _) in FORMATS.items())
    raise RosettaError(f"cannot tell the format of {role} {path!r} from its name; known endings: {known}; "
                       f"or pass --{'from' if role == 'SRC' else 'to'} FORMAT")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _spec(model: str, inferred: Mapping[str, Any], sets: Mapping[str, Any]) -> Any:
    return load_spec(model, {**inferred, **sets})


#: the file endings each format may be written with (a known ending of another format is an error)
ENDINGS: dict[str, tuple[str, ...]] = {
    "canonical": (".safetensors",), "torchvision": (".pth", ".pt"), "torch": (".pt", ".pth"),
    "keras-applications": (".weights.h5", ".h5"), "keras": (".keras", ".weights.h5"), "flax": (".msgpack",),
    "onnx": (".onnx",),
}


def check_ending(path: str, fmt: str, role: str = "DST") -> None:
    """RosettaError when ``path`` ends in another format's ending (``--out x.pth`` for
    safetensors bytes); a name without a known ending is left to the user."""
    name = os.fspath(path)
    if name.endswith(ENDINGS[fmt]):
        return
    other = next((f for f, (suffix, _) in sorted(FORMATS.items(), key=lambda kv: -len(kv[1][0]))
                  if name.endswith(suffix) or name.endswith(ENDINGS[f])), None)
    if other is not None:
        raise RosettaError(f"{role} {name!r} ends like a {other} file, but {fmt} is written there "
                           f"(use an ending of {', '.join(ENDINGS[fmt])}, or rosetta convert)")


def read(path: str, fmt: str, model: str | None = None, sets: Mapping[str, Any] | None = None, *,
         allow_nonfinite: bool = False) -> tuple[Any, dict]:
    """Read ``path`` in format ``fmt`` -> (spec, canonical tensors), checked against the spec
    (``model``: a bundled name or ``path/to/spec.json:model``); NaN and infinite weights are
    refused unless ``allow_nonfinite``."""
    spec, tensors = _read(path, fmt, model, dict(sets or {}), allow_nonfinite)
    check_finite(tensors, source=path, allow=allow_nonfinite)
    return spec, tensors


def _read(path: str, fmt: str, model: str | None, sets: dict[str, Any], allow_nonfinite: bool) -> tuple[Any, dict]:
    if fmt == "canonical":
        if sets:
            raise RosettaError("a canonical file records its own overrides; --set applies to other formats")
        return load_canonical(path, spec_from_file(path, model) if model else None, allow_nonfinite=allow_nonfinite)
    if fmt == "torchvision":
        state = tv.read_state_dict(path)
        spec = _spec(*_described(tv.infer_torchvision_model, state, model), sets)
        return spec, tv.from_torchvision(spec, state, source=path)
    if fmt == "keras-applications":
        layers = ka.read_keras_h5(path)
        return ka.from_keras_applications(_spec(*_described(ka.infer_keras_model, layers, model), sets), layers,
                                          source=path)
    if fmt == "torch" and not model:
        state = tv.read_state_dict(path)
        spec = _spec(*_guess_native(state), sets)
        tensors = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
        check_tensors(spec, tensors, source=path)
        return spec, tensors
    if fmt in NATIVE:
        if not model:
            raise RosettaError(f"reading a {fmt} file needs --model (the file does not name its model)")
        spec = _spec(model, {}, sets)
        mod = ports.load(NATIVE[fmt])
        net = mod.build_model(spec, initialize=False)  # the file sets every weight; only exported
        ports.module(NATIVE[fmt], "weights").load_native(net, spec, path)
        return spec, mod.export_weights(net, spec)
    raise RosettaError(f"cannot read format {fmt!r}" + (" (ONNX is a target only)" if fmt == "onnx" else ""))


def _described(infer: Callable[[Any], tuple[str, dict[str, Any]]], data: Any,
               model: str | None) -> tuple[str, dict[str, Any]]:
    """(model, overrides) the file describes (class count, aux heads); ``--model`` wins over
    the architecture the names suggest, and a file whose architecture cannot be told needs it."""
    try:
        name, overrides = infer(data)
    except WeightError:
        if not model:
            raise
        return model, {}
    if model and model != name:  # another architecture: only the class count carries over
        return model, {k: v for k, v in overrides.items() if k == "num_classes"}
    return name, overrides


def _guess_native(state: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(model, overrides) of a file with canonical tensor names: the bundled model whose names
    match best, its class count from the logits layer and GoogLeNet's ``aux_logits``."""
    names = {k for k in state if not k.endswith(".num_batches_tracked")}
    model = guess_model(names)
    if model is None:
        raise WeightError("the tensor names match no bundled model; pass --model")
    spec = load_spec(model)
    overrides: dict[str, Any] = {}
    logits = f"{spec.outputs['logits']}.weight"
    if logits in state:
        overrides["num_classes"] = int(state[logits].shape[0])
    if "aux_logits" in spec.params:
        overrides["aux_logits"] = any(n.startswith("aux") for n in names)
    return model, overrides


def write(path: str, fmt: str, spec: Any, tensors: Mapping[str, Any], *, source: str = "unknown",
          metadata: Mapping[str, str | None] | None = None) -> None:
    """Write canonical ``tensors`` of ``spec`` to ``path`` in format ``fmt`` (atomically);
    ``metadata``: optional canonical metadata (``preprocess``, ``classes``) a canonical target records."""
    check_ending(path, fmt)
    if ka.is_headless(spec) and fmt != "keras-applications":
        raise RosettaError(f"the source holds only {spec.name}'s convolutional features (keras.applications "
                           "include_top=False); only keras-applications can hold that")
    if fmt == "canonical":
        save_canonical(path, spec, tensors, framework=source, **dict(metadata or {}))
    elif fmt == "torchvision":
        tv.write_torchvision(path, spec, tensors)
    elif fmt == "keras-applications":
        ka.write_keras_applications(path, spec, tensors)
    elif fmt == "onnx":
        ports.module("torch", "onnx").export_onnx_tensors(spec, tensors, path)
    elif fmt in NATIVE:
        mod = ports.load(NATIVE[fmt])
        net = mod.build_model(spec)  # initialised as usual: Keras' own files record the initialisers
        mod.import_weights(net, spec, tensors)
        ports.module(NATIVE[fmt], "weights").save_native(net, spec, path)
    else:
        raise RosettaError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def convert(src: str, dst: str, *, model: str | None = None, src_format: str | None = None,
            dst_format: str | None = None, sets: Mapping[str, Any] | None = None,
            allow_nonfinite: bool = False) -> tuple[Any, str, str]:
    """Convert ``src`` to ``dst``; returns (spec, source format, target format)."""
    fmt_in = infer_format(src, src_format, "SRC")
    fmt_out = infer_format(dst, dst_format, "DST")
    check_ending(dst, fmt_out)
    output_path(dst)  # a directory in the way fails now, not after the source is read
    t0 = time.perf_counter()
    _say(f"reading {src} ({fmt_in})")
    spec, tensors = read(src, fmt_in, model, sets, allow_nonfinite=allow_nonfinite)
    _say(f"  {spec.name}: {len(tensors)} tensors ({time.perf_counter() - t0:.1f} s); writing {dst} ({fmt_out})")
    write(dst, fmt_out, spec, tensors, source=fmt_in, metadata=origin_metadata(src, fmt_in, spec))
    _say(f"  done in {time.perf_counter() - t0:.1f} s")
    return spec, fmt_in, fmt_out


def origin_metadata(src: str, fmt: str, spec: Any) -> dict[str, str | None]:
    """The optional canonical metadata a conversion from ``src`` (format ``fmt``) carries: the
    preprocessing the origin's weights were trained with (torchvision, keras.applications),
    or a canonical source's own records."""
    from ..core.canonical import OPTIONAL_METADATA, read_metadata
    from ..images import preprocess

    if fmt == "canonical":
        meta = read_metadata(src)
        return {key: meta.get(key) for key in OPTIONAL_METADATA}
    if fmt not in preprocess.ORIGIN or ka.is_headless(spec):
        return {}
    if spec.family == "googlenet" and fmt == "torchvision" and not spec.params.get("transform_input"):
        _say("  note: torchvision's pretrained GoogLeNet expects transform_input=true (--set transform_input=true); "
             "weights trained with transform_input=false need nothing")
    try:
        return {"preprocess": preprocess.named(preprocess.ORIGIN[fmt], spec.input_shape).to_json()}
    except RosettaError as e:
        _say(f"  note: no preprocessing recorded ({e})")
        return {}
