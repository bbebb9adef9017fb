"""A hypothesis fuzz of every reader: corrupted (bytes flipped or overwritten), truncated and
oversized (sizes in a header raised, junk appended) versions of a valid small file must either
load or fail with a RosettaError naming the file, never with another exception, and leave no
file behind (the ones that write, ``convert``, leave neither the output nor a temporary).

Derandomized (a fixed sequence per test), so CI sees the same examples every run.
"""
from __future__ import annotations

import io
import json
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rosetta_cnn import RosettaError, load_spec
from rosetta_cnn.core.canonical import random_canonical, save_canonical
from rosetta_cnn.formats.convert import convert

from ..conftest import needs

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TINY = {"width_divisor": 16, "input_size": 32, "num_classes": 10}


@st.composite
def damage(draw, size: int):
    """A way to damage a ``size``-byte file: (kind, position, bytes)."""
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "append", "zero_run"]))
    pos = draw(st.integers(0, max(size - 1, 0)))
    if kind == "flip":
        return kind, pos, bytes([draw(st.integers(1, 255))])
    if kind in ("overwrite", "append"):
        return kind, pos, draw(st.binary(min_size=1, max_size=64))
    return kind, pos, b""


def apply(data: bytes, how) -> bytes:
    kind, pos, blob = how
    if kind == "truncate":
        return data[:pos]
    if kind == "flip":
        return data[:pos] + bytes([data[pos] ^ blob[0]]) + data[pos + 1:]
    if kind == "overwrite":
        return data[:pos] + blob + data[pos + len(blob):]
    if kind == "append":
        return data + blob
    return data[:pos] + bytes(min(256, len(data) - pos)) + data[pos + 256:]


def expect_clean(call, path: Path) -> None:
    """``call()`` succeeds or raises a RosettaError that names ``path``; nothing else."""
    try:
        call()
    except RosettaError as e:
        assert str(path) in str(e) or path.name in str(e), str(e)


def hidden(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


class Files(dict):
    """Valid file contents by format (a short repr: hypothesis prints its arguments on failure)."""

    def __repr__(self) -> str:
        return f"Files({', '.join(self)})"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, bytes]:
    """One valid small file per format, as bytes."""
    d = tmp_path_factory.mktemp("fuzz")
    spec = load_spec("vgg16", TINY)
    tensors = random_canonical(spec, 0)
    save_canonical(d / "w.safetensors", spec, tensors)
    out = Files(safetensors=(d / "w.safetensors").read_bytes())
    from rosetta_cnn.formats import keras_applications as ka
    ka.write_keras_applications(d / "w.weights.h5", spec, tensors)
    out["weights.h5"] = (d / "w.weights.h5").read_bytes()
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("model.weights.h5", out["weights.h5"])
        z.writestr("config.json", "{}")
    out["keras"] = buf.getvalue()
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32))
    out["npy"] = buf.getvalue()
    from rosetta_cnn.training.data import write_idx
    write_idx(d / "i", np.arange(2 * 5 * 5).reshape(2, 5, 5))
    out["idx"] = (d / "i").read_bytes()
    return out


def _patched_header(data: bytes, factor: int) -> bytes:
    """A safetensors file whose first tensor declares ``factor`` times its elements."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [header[name]["shape"][0] * factor, *header[name]["shape"][1:]]
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data[8 + n:]


@FUZZ
@given(data=st.data())
def test_fuzz_safetensors(base, data):
    raw = base["safetensors"]
    how = data.draw(damage(len(raw)))
    blob = apply(raw, how) if data.draw(st.booleans()) else _patched_header(raw, data.draw(st.integers(2, 10 ** 9)))
    with tempfile.TemporaryDirectory() as t:
        src, dst = Path(t) / "w.safetensors", Path(t) / "o.safetensors"
        src.write_bytes(blob)
        expect_clean(lambda: convert(str(src), str(dst)), src)
        if how[0] == "flip" and how[1] >= 8 + struct.unpack("<Q", raw[:8])[0]:  # in the data: the checksum finds it
            assert not dst.exists()
        assert hidden(Path(t)) == []


@FUZZ
@given(data=st.data())
def test_fuzz_pth(base, data):
    torch = pytest.importorskip("torch")
    from rosetta_cnn.formats.torchvision import read_state_dict, to_torchvision

    spec = load_spec("vgg16", TINY)
    with tempfile.TemporaryDirectory() as t:
        src = Path(t) / "w.pth"
        torch.save({k: torch.from_numpy(np.array(v)) for k, v in to_torchvision(spec, random_canonical(spec, 1)).items()},
                   src)
        raw = src.read_bytes()
        src.write_bytes(apply(raw, data.draw(damage(len(raw)))))
        expect_clean(lambda: read_state_dict(src), src)
        assert hidden(Path(t)) == []


@FUZZ
@given(data=st.data())
def test_fuzz_weights_h5_and_keras(base, data):
    from rosetta_cnn.formats.keras_applications import read_keras_h5

    kind = data.draw(st.sampled_from(["weights.h5", "keras"]))
    raw = base[kind]
    with tempfile.TemporaryDirectory() as t:
        src, dst = Path(t) / f"w.{kind}", Path(t) / "o.safetensors"
        src.write_bytes(apply(raw, data.draw(damage(len(raw)))))
        if kind == "weights.h5":
            expect_clean(lambda: convert(str(src), str(dst), sets={"width_divisor": 16, "input_size": 32}), src)
        else:
            expect_clean(lambda: read_keras_h5(src), src)
        assert hidden(Path(t)) == []


@FUZZ
@given(data=st.data())
def test_fuzz_npy(base, data):
    from rosetta_cnn.cli.weights import read_npy

    raw = base["npy"]
    with tempfile.TemporaryDirectory() as t:
        src = Path(t) / "x.npy"
        src.write_bytes(apply(raw, data.draw(damage(len(raw)))))
        expect_clean(lambda: read_npy(str(src)), src)


@FUZZ
@given(data=st.data())
def test_fuzz_idx(base, data):
    import gzip

    from rosetta_cnn.training.data import read_idx

    raw = base["idx"]
    if data.draw(st.booleans()):  # oversized: declared dimensions raised
        raw = raw[:4] + struct.pack(">3I", *data.draw(st.tuples(*[st.integers(0, 2 ** 32 - 1)] * 3))) + raw[16:]
    blob = apply(raw, data.draw(damage(len(raw))))
    with tempfile.TemporaryDirectory() as t:
        src = Path(t) / "i.gz" if data.draw(st.booleans()) else Path(t) / "i"
        src.write_bytes(gzip.compress(blob) if src.name.endswith(".gz") else blob)
        expect_clean(lambda: read_idx(src), src)


@pytest.fixture(scope="module")
def flax_net():
    needs("flax")
    from rosetta_cnn.core import ports

    spec = load_spec("vgg11", TINY)
    mod = ports.load("flax")
    net = mod.build_model(spec, seed=0)
    mod.import_weights(net, spec, random_canonical(spec, 0))
    with tempfile.TemporaryDirectory() as t:
        ports.module("flax", "weights").save_native(net, spec, Path(t) / "w.msgpack")
        raw = (Path(t) / "w.msgpack").read_bytes()
    return mod, spec, net, raw


@FUZZ
@given(data=st.data())
def test_fuzz_msgpack(flax_net, data):
    from rosetta_cnn.core import ports

    mod, spec, net, raw = flax_net
    before = mod.export_weights(net, spec)
    with tempfile.TemporaryDirectory() as t:
        src = Path(t) / "w.msgpack"
        src.write_bytes(apply(raw, data.draw(damage(len(raw)))))
        try:
            ports.module("flax", "weights").load_native(net, spec, src)
        except RosettaError as e:
            assert str(src) in str(e)
            after = mod.export_weights(net, spec)
            assert all(np.array_equal(before[k], after[k]) for k in before)  # a failed load changes nothing


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    needs("torch")
    from rosetta_cnn.training import data as datasets
    from rosetta_cnn.training.loop import CHECKPOINT, fit
    from rosetta_cnn.training.resume import TrainSettings
    from rosetta_cnn.training.trainer import OptimizerConfig, build_trainer

    from ..training.test_datasets import write_mnist_like

    d = tmp_path_factory.mktemp("ck")
    write_mnist_like(d / "data", n_train=8, n_test=4, size=8)
    spec = load_spec("vgg11", {"width_divisor": 16, "in_channels": 1, "input_size": 32, "num_classes": 10})
    data = datasets.load(str(d / "data"), spec.input_shape)
    opt = OptimizerConfig("adam", lr=1e-3)
    settings_ = TrainSettings("vgg11", "torch", str(d / "data"), 1, 4, {**opt.__dict__, "betas": list(opt.betas)},
                              False, {}, 0)
    trainer = build_trainer("torch", spec, opt)
    fit(trainer, data, settings_, d / "run", progress=lambda m: None)
    return spec, opt, settings_, Files(raw=(d / "run" / CHECKPOINT).read_bytes())["raw"]


@FUZZ
@given(data=st.data())
def test_fuzz_checkpoint(checkpoint, data):
    from rosetta_cnn.training.resume import load_checkpoint
    from rosetta_cnn.training.trainer import build_trainer

    spec, opt, settings_, raw = checkpoint
    trainer = build_trainer("torch", spec, opt)
    before = trainer.export_weights()
    how = data.draw(damage(len(raw)))
    with tempfile.TemporaryDirectory() as t:
        path = Path(t) / "checkpoint.safetensors"
        path.write_bytes(apply(raw, how))
        try:
            load_checkpoint(path, trainer, settings_, steps_per_epoch=2)
        except RosettaError as e:
            assert str(path) in str(e), str(e)
            after = trainer.export_weights()
            assert all(np.array_equal(before[k], after[k]) for k in before)
        else:  # accepted: only if nothing that means anything changed (the header's JSON and the data)
            n = struct.unpack("<Q", raw[:8])[0]
            damaged = path.read_bytes()
            assert damaged[:8] == raw[:8] and damaged[8 + n:] == raw[8 + n:], how
            assert json.loads(damaged[8:8 + n]) == json.loads(raw[8:8 + n]), how


def test_checkpoint_damage_is_named(checkpoint, tmp_path):
    """Each field a resume depends on, removed or spoiled, is an error naming it."""
    from rosetta_cnn.core.canonical import read_header, read_tensors, write_safetensors
    from rosetta_cnn.training.resume import load_checkpoint
    from rosetta_cnn.training.trainer import build_trainer

    spec, opt, settings_, raw = checkpoint
    (tmp_path / "good.safetensors").write_bytes(raw)
    meta, infos, offset = read_header(tmp_path / "good.safetensors")
    tensors = read_tensors(tmp_path / "good.safetensors", infos, offset, meta)
    cases = {
        "no optimizer": ({k: v for k, v in tensors.items() if not k.startswith("optimizer/")}, {}, "missing tensor"),
        "optimizer shape": ({**tensors, "optimizer/0.exp_avg": np.zeros(3, np.float32)}, {}, "optimizer/0.exp_avg"),
        "no history": (tensors, {"history": None}, "lacks history"),
        "bad history": (tensors, {"history": "{"}, "history: not JSON"),
        "history types": (tensors, {"history": json.dumps({"step_loss": ["x"], "epochs": []})}, "step_loss"),
        "epoch": (tensors, {"epoch": "one"}, "epoch 'one'"),
        "epoch count": (tensors, {"epoch": "3"}, "epoch record(s) for epoch 3"),
        "settings": (tensors, {"settings": "[1"}, "settings"),
        "spec_hash": (tensors, {"spec_hash": "0" * 64}, "spec_hash"),
        "nan": ({**tensors, "fc1.weight": np.full_like(tensors["fc1.weight"], np.nan)}, {}, "non-finite"),
    }
    for name, (ts, changes, words) in cases.items():
        m = {k: v for k, v in {**meta, **changes}.items() if v is not None}
        path = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        write_safetensors(path, ts, m)
        trainer = build_trainer("torch", spec, opt)
        with pytest.raises(RosettaError, match=words.replace("(", r"\(").replace(")", r"\)")):
            load_checkpoint(path, trainer, settings_, steps_per_epoch=2)
    flipped = bytearray(raw)
    flipped[-100] ^= 1
    (tmp_path / "flipped.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(RosettaError, match="checksum"):
        load_checkpoint(tmp_path / "flipped.safetensors", build_trainer("torch", spec, opt), settings_)
    load_checkpoint(tmp_path / "good.safetensors", build_trainer("torch", spec, opt), settings_, steps_per_epoch=2)
    assert hidden(tmp_path) == []
