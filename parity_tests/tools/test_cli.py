"""The parity, init and predict commands end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rosetta_cnn.cli import main
from rosetta_cnn.verification.tolerances import tolerance

from ..conftest import AVAILABLE, needs


def test_parity_command_writes_json_and_png(tmp_path, capsys):
    needs("torch", "keras", "flax")
    out_json, out_png = tmp_path / "parity.json", tmp_path / "parity.png"
    rc = main(["parity", "--models", "alexnet", "--input", "64x64", "--frameworks", "torch", "keras", "flax",
               "--json", str(out_json), "--png", str(out_png)])
    captured = capsys.readouterr()
    assert rc == 0, captured.out + captured.err
    assert "[1/1] alexnet" in captured.err  # progress
    assert "12 passed, 0 failed" in captured.out
    records = json.loads(out_json.read_text())
    assert len(records) == 12
    for r in records:
        assert {"model", "source", "target", "mode", "device", "max_abs", "max_rel", "tolerance", "passed"} <= set(r)
    assert {(r["source"], r["target"]) for r in records} == {
        (a, b) for a in ("torch", "keras", "flax") for b in ("torch", "keras", "flax") if a != b}
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parity_per_layer_prints_every_layer(capsys):
    needs("torch", "keras")
    assert main(["parity", "--models", "alexnet", "--frameworks", "torch", "keras", "--input", "64x64",
                 "--per-layer"]) == 0
    out = capsys.readouterr().out
    assert "per layer" in out and "conv1" in out and "fc8" in out


def test_parity_gpu_without_gpu_is_a_clear_refusal(capsys):
    needs("torch", "keras")
    from rosetta_cnn.verification.parity import gpu_frameworks

    if gpu_frameworks(["torch", "keras"]) == ["torch", "keras"]:
        pytest.skip("a GPU is present")
    assert main(["parity", "--models", "alexnet", "--frameworks", "torch", "keras", "--device", "gpu"]) == 2
    assert "no GPU visible" in capsys.readouterr().err


def test_init_then_predict_gives_the_same_logits_in_every_framework(tmp_path):
    needs("torch")
    weights = tmp_path / "g.safetensors"
    assert main(["init", "googlenet", "--framework", "torch", "--seed", "3", "--set", "width_divisor=4",
                 "--set", "input_size=96", "--set", "num_classes=7", "--out", str(weights)]) == 0
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "x_nhwc.npy", x.transpose(0, 2, 3, 1))  # [N, C, H, W] -> [N, H, W, C]
    logits = {}
    for fw in AVAILABLE:
        for layout, name in (("nchw", "x.npy"), ("nhwc", "x_nhwc.npy")):
            out = tmp_path / f"y_{fw}_{layout}.npy"
            assert main(["predict", "--model", "googlenet", "--weights", str(weights), "--framework", fw,
                         "--input", str(tmp_path / name), "--layout", layout, "--output", str(out)]) == 0
            logits[fw, layout] = np.load(out)
    ref = logits["torch", "nchw"]
    assert ref.shape == (2, 7)
    tol = tolerance("cpu", "eval").rel
    for key, y in logits.items():
        assert np.max(np.abs(y - ref)) / np.max(np.abs(ref)) <= tol, key


def test_predict_rejects_wrong_model_and_shape(tmp_path, capsys):
    needs("torch")
    weights = tmp_path / "a.safetensors"
    assert main(["init", "alexnet", "--framework", "torch", "--set", "width_divisor=4", "--out", str(weights)]) == 0
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 64, 64), np.float32))
    assert main(["predict", "--model", "vgg11", "--weights", str(weights), "--framework", "torch",
                 "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 2
    assert "not 'vgg11'" in capsys.readouterr().err
    assert main(["predict", "--model", "alexnet", "--weights", str(weights), "--framework", "torch",
                 "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 2
    assert "expects (3, 224, 224)" in capsys.readouterr().err
    assert not (tmp_path / "y.npy").exists()
