"""Each framework's own format: save, load into a fresh model, bitwise-identical outputs;
bad files give clear errors and leave the model unchanged."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from rosetta_cnn import WeightError, load_spec
from rosetta_cnn.core.canonical import expected_tensors, random_canonical

from ..conftest import SMALL, needs

#: framework -> file endings of its own format
ENDINGS = {"torch": [".pt"], "keras": [".keras", ".weights.h5"], "flax": [".msgpack"]}
CASES = [pytest.param(f, e, id=f"{f}{e}") for f, endings in ENDINGS.items() for e in endings]


def _setup(framework, model, overrides=None, seed=0):
    needs(framework)
    mod = importlib.import_module(f"{framework}_impl")
    spec = load_spec(model, overrides or SMALL[model])
    net = mod.build_model(spec, seed=seed)
    mod.import_weights(net, spec, random_canonical(spec, seed + 5))
    return mod, importlib.import_module(f"{framework}_impl.weights"), spec, net


@pytest.mark.parametrize("framework,ending", CASES)
def test_native_round_trip_is_bitwise(framework, ending, tmp_path):
    mod, weights, spec, net = _setup(framework, "vgg11_bn")
    path = tmp_path / f"m{ending}"
    weights.save_native(net, spec, path)
    fresh = mod.build_model(spec, seed=1)
    weights.load_native(fresh, spec, path)
    x = np.random.default_rng(0).standard_normal((2, *spec.input_shape)).astype(np.float32)
    a, b = mod.forward(net, x)["logits"], mod.forward(fresh, x)["logits"]
    np.testing.assert_array_equal(a, b)
    # and the load did something: the fresh model's own weights were different
    own = mod.export_weights(mod.build_model(spec, seed=1), spec)
    assert not np.array_equal(own["fc1.weight"], mod.export_weights(fresh, spec)["fc1.weight"])


@pytest.mark.parametrize("framework,ending", CASES)
@pytest.mark.parametrize("bad", ["other_model", "empty", "truncated"])
def test_bad_native_file_is_clear_and_changes_nothing(framework, ending, bad, tmp_path):
    mod, weights, spec, net = _setup(framework, "vgg11_bn", SMALL["vgg11_bn"])
    path = tmp_path / f"m{ending}"
    if bad == "other_model":  # same family, other class count and depth
        _, _, ospec, onet = _setup(framework, "vgg13", {**SMALL["vgg13"], "num_classes": 7})
        weights.save_native(onet, ospec, path)
    else:
        weights.save_native(net, spec, path)
        data = path.read_bytes()
        path.write_bytes(b"" if bad == "empty" else data[: len(data) // 2])
    before = mod.export_weights(net, spec)
    with pytest.raises(WeightError) as e:
        weights.load_native(net, spec, path)
    assert str(path) in str(e.value)
    if bad == "other_model":
        assert "missing" in str(e.value) or "shape" in str(e.value)
    after = mod.export_weights(net, spec)
    assert all(np.array_equal(before[k], after[k]) for k in expected_tensors(spec))
