"""Canonical weight format: exact round trips, clear errors, nothing lost on failure."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from rosetta_cnn import WeightError, load_spec
from rosetta_cnn.core import ports
from rosetta_cnn.core.canonical import expected_tensors, load_canonical, random_canonical, read_metadata, save_canonical
from rosetta_cnn.core.files import atomic_path

from ..conftest import SMALL, needs

MODELS = ["alexnet_paper", "vgg11_bn", "googlenet"]


def _spec(model):
    return load_spec(model, SMALL[model])


@pytest.mark.parametrize("model", MODELS)
def test_import_export_round_trip_is_exact(framework, model):
    mod = ports.load(framework)
    spec = _spec(model)
    net = mod.build_model(spec, seed=0)
    w = random_canonical(spec, 3)
    mod.import_weights(net, spec, w)
    out = mod.export_weights(net, spec)
    assert set(out) == set(expected_tensors(spec))
    for name, t in w.items():
        assert out[name].dtype == np.float32 and out[name].shape == t.shape, name
        np.testing.assert_array_equal(out[name], t, err_msg=name)


def test_a_model_built_without_initialisation_imports_and_runs_the_same(framework):
    """``build_model(initialize=False)`` (parity workers, format checks) differs from an
    initialised build only until weights are imported: then the outputs are bitwise the same,
    and ``iter_weights`` gives ``export_weights`` one tensor at a time."""
    mod = ports.load(framework)
    spec = _spec("googlenet")
    w = random_canonical(spec, 4)
    x = np.random.default_rng(0).standard_normal((2, *spec.input_shape)).astype(np.float32)
    outs = []
    for initialize in (True, False):
        net = mod.build_model(spec, seed=0, initialize=initialize)
        mod.import_weights(net, spec, w)
        outs.append(mod.forward(net, x)["logits"])
    np.testing.assert_array_equal(outs[0], outs[1])
    streamed = list(mod.iter_weights(net, spec))
    assert [n for n, _ in streamed] == list(expected_tensors(spec))
    assert all(np.array_equal(t, w[n]) for n, t in streamed)


def test_wrong_shape_names_tensor_and_both_shapes_and_changes_nothing(framework):
    mod = ports.load(framework)
    spec = _spec("vgg11_bn")
    net = mod.build_model(spec, seed=0)
    mod.import_weights(net, spec, random_canonical(spec, 1))
    before = mod.export_weights(net, spec)
    bad = random_canonical(spec, 2)
    bad["fc2.weight"] = bad["fc2.weight"][:, :-1]
    with pytest.raises(WeightError) as e:
        mod.import_weights(net, spec, bad)
    msg = str(e.value)
    assert "'fc2.weight'" in msg and "(512, 511)" in msg and "(512, 512)" in msg
    after = mod.export_weights(net, spec)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)


def test_other_model_lists_missing_and_unexpected_and_suggests(framework):
    mod = ports.load(framework)
    spec = load_spec("vgg11", SMALL["vgg11"])
    net = mod.build_model(spec, seed=0)
    other = random_canonical(load_spec("vgg11_bn", SMALL["vgg11_bn"]), 0)
    with pytest.raises(WeightError) as e:
        mod.import_weights(net, spec, other)
    msg = str(e.value)
    assert "unexpected tensor(s)" in msg and "block1_conv1_bn.weight" in msg and "(+" in msg
    assert "vgg11_bn" in msg


def test_save_load_file_round_trip(framework, tmp_path):
    mod = ports.load(framework)
    spec = _spec("googlenet")
    net = mod.build_model(spec, seed=0)
    mod.import_weights(net, spec, random_canonical(spec, 4))
    path = tmp_path / "g.safetensors"
    mod.save_weights(net, spec, path)
    meta = read_metadata(path)
    assert meta["model"] == "googlenet" and meta["spec_hash"] == spec.hash() and meta["framework"] == framework
    net2 = mod.build_model(spec, seed=1)
    mod.load_weights(net2, spec, path)
    a, b = mod.export_weights(net, spec), mod.export_weights(net2, spec)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert [p.name for p in tmp_path.iterdir()] == ["g.safetensors"]  # no temporary left behind


def test_canonical_file_errors(tmp_path):
    spec = _spec("vgg11")
    good = tmp_path / "good.safetensors"
    save_canonical(good, spec, random_canonical(spec, 0))
    data = good.read_bytes()

    cases = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "garbage": os.urandom(4096),
        "header_only": data[:8],
    }
    for name, blob in cases.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(blob)
        with pytest.raises(WeightError) as e:
            load_canonical(p, spec)
        assert str(p) in str(e.value), name
    with pytest.raises(WeightError, match="holds weights of model 'vgg11'"):
        load_canonical(good, load_spec("vgg13", SMALL["vgg13"]))
    with pytest.raises(WeightError, match="no such file"):
        load_canonical(tmp_path / "missing.safetensors", spec)


class _Payload:
    def __reduce__(self):
        return (open, ("/tmp/rosetta_pwned_marker", "w"))


def test_pickle_payload_is_refused_without_execution(tmp_path):
    marker = "/tmp/rosetta_pwned_marker"
    if os.path.exists(marker):
        os.remove(marker)
    p = tmp_path / "evil.safetensors"
    p.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(WeightError):
        load_canonical(p, _spec("vgg11"))
    assert not os.path.exists(marker)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]


def test_save_refuses_wrong_tensors(tmp_path):
    spec = _spec("vgg11")
    w = random_canonical(spec, 0)
    w.pop("fc1.bias")
    with pytest.raises(WeightError, match="1 missing tensor"):
        save_canonical(tmp_path / "x.safetensors", spec, w)
    assert not list(tmp_path.iterdir())


def test_channel_last_shapes_are_the_shapes_the_conversion_gives():
    """The Keras import checks every tensor's channel-last shape (``core.layout.channel_last_shape``)
    against the model before it converts any (then converts and assigns one at a time)."""
    from rosetta_cnn.core import layout

    for model, overrides in SMALL.items():
        spec = load_spec(model, overrides)
        flat = layout.flatten_inputs(spec)
        for name, shape in expected_tensors(spec).items():
            layer_name, suffix = name.rsplit(".", 1)
            layer = spec.layer(layer_name)
            converted = layout.convert_tensor(layer, suffix, np.zeros(shape, np.float32), flat.get(layer_name),
                                              conv=layout.conv_kernel_to_hwio, linear=layout.linear_kernel_to_io)
            assert layout.channel_last_shape(layer, suffix, shape) == converted.shape, (model, name)


def test_keras_initialiser_drawn_in_blocks_gives_the_values_of_one_draw(monkeypatch):
    """``keras_impl.layers.GlorotUniform`` draws in blocks (no float64 copy of a 100M-value
    kernel): the same values as one float64 draw cast to float32, last block ragged."""
    needs("keras")
    import math

    from rosetta_cnn.keras_impl.layers import GlorotUniform

    monkeypatch.setattr(GlorotUniform, "BLOCK", 999)
    shape = (3, 3, 40, 50)  # 18000 values: 18 full blocks and a ragged one
    got = np.asarray(GlorotUniform(7)(shape, "float32"))
    limit = math.sqrt(6.0 / ((40 + 50) * 9))
    want = np.random.default_rng(7).uniform(-limit, limit, size=shape).astype(np.float32)
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_array_equal(got, want)
