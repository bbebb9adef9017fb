"""ONNX export from the PyTorch port, run by ONNX Runtime as a fourth parity target."""
from __future__ import annotations

import numpy as np
import pytest

from rosetta_cnn import WeightError, load_spec
from rosetta_cnn.core import ports
from rosetta_cnn.core.canonical import random_canonical
from rosetta_cnn.verification.parity import diff, format_matrix, model_parity, parity_spec
from rosetta_cnn.verification.tolerances import tolerance

from ..conftest import AVAILABLE, SMALL

pytestmark = pytest.mark.skipif("onnx" not in ports.available_targets(),
                                reason="torch, onnxscript or onnxruntime is not installed")
TOL = tolerance("cpu", "eval").rel


@pytest.mark.parametrize("model", ["alexnet_paper"])  # GoogLeNet and VGG: test_torchvision.py
def test_onnx_is_a_parity_target_of_every_framework(model):
    records = model_parity(parity_spec(model, overrides=SMALL[model]), AVAILABLE, modes=["eval"], targets=["onnx"])
    onnx = [r for r in records if r.target == "onnx"]
    assert sorted(r.source for r in onnx) == sorted(AVAILABLE)
    assert all(r.passed for r in records), format_matrix(records)


def test_broken_export_fails():
    """A port fault baked into the exported graph (conv kernels with kH and kW swapped) is caught."""
    spec = load_spec("vgg11", SMALL["vgg11"])
    good = random_canonical(spec, 1)
    bad = {k: (np.ascontiguousarray(np.swapaxes(v, 2, 3)) if v.ndim == 4 else v) for k, v in good.items()}
    x = np.random.default_rng(0).standard_normal((2, *spec.input_shape)).astype(np.float32)
    torch_mod = ports.load("torch")
    net = torch_mod.build_model(spec)
    torch_mod.import_weights(net, spec, good)
    ref = torch_mod.forward(net, x)["logits"]
    got = ports.target_forward("onnx", spec, bad, x)["logits"]
    assert diff(ref, got).max_rel > 10 * TOL


def test_cli_writes_onnx_with_a_dynamic_batch(tmp_path):
    from rosetta_cnn import torch_impl
    from rosetta_cnn.cli import main
    from rosetta_cnn.core.canonical import save_canonical
    from rosetta_cnn.formats import onnx_runtime

    spec = load_spec("alexnet", SMALL["alexnet"])
    tensors = random_canonical(spec, 2)
    save_canonical(tmp_path / "w.safetensors", spec, tensors)
    assert main(["convert", str(tmp_path / "w.safetensors"), str(tmp_path / "w.onnx")]) == 0
    net = torch_impl.build_model(spec)
    torch_impl.import_weights(net, spec, tensors)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, *spec.input_shape)).astype(np.float32)
        d = diff(torch_impl.forward(net, x)["logits"], onnx_runtime.forward(tmp_path / "w.onnx", x)["logits"])
        assert d.max_rel <= TOL
    with pytest.raises(WeightError, match="ONNX Runtime cannot load"):
        (tmp_path / "bad.onnx").write_bytes(b"\x00" * 100)
        onnx_runtime.forward(tmp_path / "bad.onnx", x)
