"""Real keras.applications VGG16 / VGG19 weight files in and out, with and without the top.

Each case builds ``keras.applications.VGG16/VGG19(weights=None)`` with non-trivial random
weights (non-zero biases), saves ``.weights.h5``, converts it and compares every port's output
(logits, or the ``block5_pool`` features without the top) and ONNX Runtime's (with the top)
against Keras' own forward pass; then the reverse: the project's weights written as a
``.weights.h5`` that keras.applications loads. With the top the input must be 224x224 (Keras
flattens the 7x7 map straight into ``fc1``), so those cases are heavy.
"""
from __future__ import annotations

import numpy as np
import pytest

from rosetta_cnn import WeightError, load_spec
from rosetta_cnn.core import layout, ports
from rosetta_cnn.core.canonical import random_canonical
from rosetta_cnn.formats import keras_applications as ka
from rosetta_cnn.formats.convert import read, write
from rosetta_cnn.verification.parity import diff
from rosetta_cnn.verification.tolerances import tolerance

from ..conftest import needs
from .test_torchvision import assert_every_port_matches

keras = pytest.importorskip("keras")

TOL = tolerance("cpu", "eval").rel
CASES = [pytest.param(m, top, id=f"{m}-{'top' if top else 'notop'}", marks=pytest.mark.heavy if top else ())
         for m in ("vgg16", "vgg19") for top in (False, True)]


def _size(top):
    return 224 if top else 64


def _keras_app(model, top):
    build = getattr(keras.applications, ka.KERAS_APPLICATIONS[model])
    return build(weights=None, include_top=top, input_shape=(_size(top), _size(top), 3),
                 classes=10, classifier_activation=None)


def _input(top, batch=1):
    return np.random.default_rng(3).standard_normal((batch, 3, _size(top), _size(top))).astype(np.float32)


def _keras_forward(app, x):
    y = np.asarray(app(np.transpose(x, (0, 2, 3, 1)), training=False))  # [N, C, H, W] -> [N, H, W, C]
    return np.transpose(y, (0, 3, 1, 2)) if y.ndim == 4 else y  # [N, H, W, C] -> [N, C, H, W]


@pytest.mark.parametrize("model,top", CASES)
def test_keras_applications_to_every_port(model, top, tmp_path):
    needs("keras")
    app = _keras_app(model, top)
    rng = np.random.default_rng(0)
    app.set_weights([w if w.ndim > 1 else rng.uniform(-0.1, 0.1, w.shape).astype(np.float32)
                     for w in app.get_weights()])
    path = tmp_path / f"{model}.weights.h5"
    app.save_weights(path)
    x = _input(top)
    ref = _keras_forward(app, x)
    del app

    spec, tensors = read(str(path), "keras-applications", sets={"input_size": _size(top)})
    assert spec.name == model and ka.is_headless(spec) == (not top)
    assert_every_port_matches(spec, tensors, x, ref, "keras.applications")
    if model == "vgg16" and top and "onnx" in ports.available_targets():
        d = diff(ref, ports.target_forward("onnx", spec, tensors, x)["logits"])
        assert d.max_rel <= TOL, f"keras.applications -> onnx: max_rel {d.max_rel:.2e}"


@pytest.mark.parametrize("model,top", CASES)
def test_project_to_keras_applications(model, top, tmp_path):
    needs("keras", "torch")
    from rosetta_cnn import torch_impl

    spec = load_spec(model, {"num_classes": 10, "input_size": _size(top)})
    if not top:
        spec = ka.headless_spec(spec)
    net = torch_impl.build_model(spec, initialize=False)
    tensors = random_canonical(spec, 5)
    torch_impl.import_weights(net, spec, tensors)
    path = tmp_path / f"{model}.weights.h5"
    write(str(path), "keras-applications", spec, tensors)
    app = _keras_app(model, top)
    app.load_weights(path)
    x = _input(top)
    d = diff(torch_impl.forward(net, x)["logits"], _keras_forward(app, x))
    assert d.max_rel <= TOL, f"project -> keras.applications: max_rel {d.max_rel:.2e}"


def test_skipped_flatten_permutation_fails(tmp_path):
    """The check must catch Keras' NHWC flatten: reading fc1 without the row permutation fails."""
    needs("keras", "torch")
    from rosetta_cnn import torch_impl

    spec = load_spec("vgg16", {"num_classes": 10, "width_divisor": 8})
    tensors = random_canonical(spec, 5)
    layers = {}
    for layer in spec.layers:
        if layer.op in ka.KERAS_VARIABLES:
            w, b = tensors[f"{layer.name}.weight"], tensors[f"{layer.name}.bias"]
            w = layout.conv_kernel_to_hwio(w) if layer.op == "conv2d" else np.ascontiguousarray(w.T)  # no permutation
            layers[layer.name] = [w, b]
    _, broken = ka.from_keras_applications(spec, layers)
    x = np.random.default_rng(0).standard_normal((1, *spec.input_shape)).astype(np.float32)
    good = torch_impl.build_model(spec)
    torch_impl.import_weights(good, spec, tensors)
    bad = torch_impl.build_model(spec)
    torch_impl.import_weights(bad, spec, broken)
    assert diff(torch_impl.forward(good, x)["logits"], torch_impl.forward(bad, x)["logits"]).max_rel > 10 * TOL


def test_keras_file_of_another_model_is_named(tmp_path):
    spec = ka.headless_spec(load_spec("vgg19", {"width_divisor": 8, "input_size": 64}))
    path = tmp_path / "vgg19.weights.h5"
    ka.write_keras_applications(path, spec, random_canonical(spec, 0))
    layers = ka.read_keras_h5(path)
    assert ka.infer_keras_model(layers)[0] == "vgg19"
    with pytest.raises(WeightError, match=r"6 unexpected tensor\(s\): block4_conv4.weight.*look like keras.applications VGG19"):
        ka.from_keras_applications(load_spec("vgg16", {"width_divisor": 8, "input_size": 64}), layers, source=str(path))
