"""VGG's fully-convolutional head: the same weights reshaped into convolutions."""
from __future__ import annotations

import numpy as np
import pytest

from rosetta_cnn import SpecError, load_spec
from rosetta_cnn.core import ports
from rosetta_cnn.core.canonical import random_canonical
from rosetta_cnn.formats.fcn import fcn_spec, fcn_weights
from rosetta_cnn.verification.parity import diff
from rosetta_cnn.verification.tolerances import tolerance

from ..conftest import AVAILABLE, needs

TOL = tolerance("cpu", "eval").rel
SMALL = {"width_divisor": 8, "num_classes": 10}
#: reduced width (every layer and the 7x7 fc1 reshape kept); full width is the same code path
MODELS = ["vgg11_bn", "vgg16"]


def _x(size, seed=0):
    return np.random.default_rng(seed).standard_normal((2, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("model", MODELS)
def test_fcn_matches_fc_model_at_224_and_agrees_at_320(model):
    needs("torch")
    spec = load_spec(model, SMALL)
    tensors = random_canonical(spec, 4)
    ref_mod = ports.load("torch")
    fc = ref_mod.build_model(spec)
    ref_mod.import_weights(fc, spec, tensors)
    ref224 = ref_mod.forward(fc, _x(224))["logits"]
    maps = {}
    for framework in AVAILABLE:
        mod = ports.load(framework)
        for size in (224, 320):
            fspec = fcn_spec(load_spec(model, {**SMALL, "input_size": size}))
            net = mod.build_model(fspec)
            mod.import_weights(net, fspec, fcn_weights(spec, tensors))
            out = mod.forward(net, _x(size))["logits"]
            if size == 224:
                assert out.shape == (2, spec.params["num_classes"], 1, 1)
                d = diff(ref224, out.mean(axis=(2, 3)))
                assert d.max_rel <= TOL, f"{framework} FCN at 224: max_rel {d.max_rel:.2e}"
            else:
                assert out.shape == (2, spec.params["num_classes"], 4, 4)
                maps[framework] = out
    first = AVAILABLE[0]
    for framework, m in maps.items():
        d = diff(maps[first], m)
        assert d.max_rel <= TOL, f"score maps at 320: {first} vs {framework}: max_rel {d.max_rel:.2e}"


def test_wrong_fc1_reshape_fails():
    """Reading fc1's columns as (h, w, c) instead of (c, h, w) must fail the check above."""
    needs("torch")
    spec = load_spec("vgg11_bn", SMALL)
    tensors = random_canonical(spec, 4)
    mod = ports.load("torch")
    fc = mod.build_model(spec)
    mod.import_weights(fc, spec, tensors)
    ref = mod.forward(fc, _x(224))["logits"]
    fspec = fcn_spec(spec)
    bad = fcn_weights(spec, tensors)
    o, c = bad["fc1.weight"].shape[:2]
    # [O, H*W*C] read as channel-last: [O, 7, 7, C] -> [O, C, 7, 7]
    bad["fc1.weight"] = np.ascontiguousarray(tensors["fc1.weight"].reshape(o, 7, 7, c).transpose(0, 3, 1, 2))
    net = mod.build_model(fspec)
    mod.import_weights(net, fspec, bad)
    assert diff(ref, mod.forward(net, _x(224))["logits"].mean(axis=(2, 3))).max_rel > 10 * TOL


def test_fcn_needs_vgg_and_224():
    with pytest.raises(SpecError, match="VGG models"):
        fcn_spec(load_spec("alexnet"))
    with pytest.raises(SpecError, match="at least 224x224"):
        fcn_spec(load_spec("vgg11", {**SMALL, "input_size": 128}))
