"""Users' own specs end to end: ``rosetta init my.json:tiny`` writes weights that embed the
spec, and ``predict``, ``convert``, ``parity``, ``train`` (with its resume) and ``docs`` accept
them with ``--model my.json:tiny`` (or the bare name); an edited spec file is a clear error;
a spec file named inside a weight file is never opened; the same seed gives the same bytes."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from rosetta_cnn.cli import main
from rosetta_cnn.core.canonical import read_metadata

from ..conftest import needs
from .survey import idx_dir, tiny_spec


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> Path:
    needs("torch")
    d = tmp_path_factory.mktemp("user")
    (d / "tiny.json").write_text(json.dumps(tiny_spec()))
    assert main(["init", f"{d}/tiny.json:tiny", "--framework", "torch", "--seed", "1", "--out",
                 f"{d}/t.safetensors"]) == 0
    np.save(d / "x.npy", np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32))
    return d


def test_weights_embed_the_spec(user):
    meta = read_metadata(user / "t.safetensors")
    assert meta["model"] == "tiny" and meta["spec_file"] == "tiny.json"
    assert json.loads(meta["spec"]) == tiny_spec()


@pytest.mark.parametrize("model", ["{d}/tiny.json:tiny", "tiny"])
def test_predict_and_convert_accept_the_file(user, model, capsys):
    model = model.format(d=user)
    out = user / f"y_{len(model)}.npy"
    assert main(["predict", "--model", model, "--weights", f"{user}/t.safetensors", "--framework", "torch",
                 "--input", f"{user}/x.npy", "--output", str(out)]) == 0, capsys.readouterr().err
    assert np.load(out).shape == (2, 10)
    assert main(["convert", f"{user}/t.safetensors", f"{user}/t.pt", "--model", model]) == 0
    assert main(["convert", f"{user}/t.pt", f"{user}/back.safetensors", "--model", f"{user}/tiny.json:tiny"]) == 0
    assert read_metadata(user / "back.safetensors")["spec_hash"] == read_metadata(user / "t.safetensors")["spec_hash"]


def test_an_edited_spec_is_a_clear_error(user, tmp_path, capsys):
    edited = tiny_spec()
    edited["layers"][0]["out_channels"] = 12
    (tmp_path / "tiny.json").write_text(json.dumps(edited))
    assert main(["predict", "--model", f"{tmp_path}/tiny.json:tiny", "--weights", f"{user}/t.safetensors",
                 "--framework", "torch", "--input", f"{user}/x.npy", "--output", f"{tmp_path}/y.npy"]) == 2
    err = capsys.readouterr().err
    assert "spec_hash" in err and "edited" in err
    assert main(["predict", "--model", "vgg11", "--weights", f"{user}/t.safetensors", "--framework", "torch",
                 "--input", f"{user}/x.npy", "--output", f"{tmp_path}/y.npy"]) == 2
    assert "holds weights of model 'tiny', not 'vgg11'" in capsys.readouterr().err
    assert not (tmp_path / "y.npy").exists()


def _rewrite_meta(src: Path, dst: Path, **changes: str | None) -> None:
    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    for k, v in changes.items():
        if v is None:
            header["__metadata__"].pop(k, None)
        else:
            header["__metadata__"][k] = v
    blob = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])


def test_a_spec_file_named_in_metadata_is_never_opened(user, tmp_path, capsys):
    os.mkfifo(tmp_path / "named.json")  # opening it would block: the test would hang
    _rewrite_meta(user / "t.safetensors", tmp_path / "w.safetensors", spec=None, spec_file=None, sha256=None,
                  model=f"{tmp_path}/named.json:tiny")
    assert main(["predict", "--model", "tiny", "--weights", f"{tmp_path}/w.safetensors", "--framework", "torch",
                 "--input", f"{user}/x.npy", "--output", f"{tmp_path}/y.npy"]) == 2
    assert "not 'tiny'" in capsys.readouterr().err
    assert main(["convert", f"{tmp_path}/w.safetensors", f"{tmp_path}/o.safetensors"]) == 2
    assert "never opened" in capsys.readouterr().err


def test_a_tampered_embedded_spec_fails_its_hash(user, tmp_path, capsys):
    edited = tiny_spec()
    edited["layers"][0]["activation"] = None  # same tensors, another network
    _rewrite_meta(user / "t.safetensors", tmp_path / "w.safetensors", spec=json.dumps(edited), sha256=None)
    assert main(["convert", f"{tmp_path}/w.safetensors", f"{tmp_path}/o.pt"]) == 2
    assert "spec_hash" in capsys.readouterr().err


def test_same_seed_same_bytes(user, tmp_path):
    for name in ("a", "b"):
        assert main(["init", f"{user}/tiny.json:tiny", "--framework", "torch", "--seed", "1", "--out",
                     f"{tmp_path}/{name}.safetensors"]) == 0
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert (tmp_path / "a.safetensors").read_bytes() == (user / "t.safetensors").read_bytes()
    needs("keras")  # keras.applications files too (h5py without timestamps)
    from rosetta_cnn import load_spec
    from rosetta_cnn.core.canonical import random_canonical
    from rosetta_cnn.formats import keras_applications as ka

    spec = load_spec("vgg16", {"width_divisor": 16, "input_size": 32, "num_classes": 10})
    for name in ("a", "b"):
        ka.write_keras_applications(tmp_path / f"{name}.weights.h5", spec, random_canonical(spec, 0))
    assert (tmp_path / "a.weights.h5").read_bytes() == (tmp_path / "b.weights.h5").read_bytes()


def test_parity_train_resume_and_docs_on_a_user_spec(user, tmp_path, capsys):
    needs("flax")
    model = f"{user}/tiny.json:tiny"
    assert main(["parity", "--models", model, "--frameworks", "torch", "flax", "--json",
                 f"{tmp_path}/p.json"]) == 0, capsys.readouterr().err
    records = json.loads((tmp_path / "p.json").read_text())
    assert {r["model"] for r in records} == {"tiny"} and all(r["passed"] for r in records)
    assert main(["docs", "--out", f"{tmp_path}/site", "--parity", f"{tmp_path}/p.json"]) == 0
    assert "<td>tiny</td>" in (tmp_path / "site" / "parity.html").read_text()
    idx_dir(tmp_path / "data")
    common = ["train", model, "--framework", "torch", "--data", f"{tmp_path}/data", "--batch", "8",
              "--out", f"{tmp_path}/run"]
    assert main([*common, "--epochs", "1"]) == 0
    assert main([*common, "--epochs", "2"]) == 0
    assert "resuming from" in capsys.readouterr().err
    assert read_metadata(tmp_path / "run" / "model.safetensors")["model"] == "tiny"
