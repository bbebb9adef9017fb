"""GPU parity: switches itself on where a framework sees a CUDA GPU, skips with a reason otherwise."""
from __future__ import annotations

import pytest

from rosetta_cnn.core import ports
from rosetta_cnn.verification.parity import model_parity, parity_spec

from ..conftest import ALL_FRAMEWORKS, AVAILABLE, SMALL

GPU = [f for f in AVAILABLE if ports.load(f).gpu_available()]


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["alexnet_paper", "vgg11_bn", "googlenet"])
def test_gpu_pairs_and_cpu_vs_gpu(model):
    """Every pair on the GPU (TF32 and reduced-precision matmuls off), and each framework's GPU
    run against its own CPU run."""
    if len(GPU) < 2:
        pytest.skip(f"needs a CUDA GPU visible to at least two frameworks; visible to: {GPU or 'none'}")
    records = model_parity(parity_spec(model, overrides=SMALL[model]), GPU, devices=["cpu", "gpu"])
    devices = {r.device for r in records}
    assert devices == {"cpu", "gpu", "cpu-vs-gpu"}
    failed = [r for r in records if not r.passed]
    assert not failed, failed


@pytest.mark.gpu
@pytest.mark.parametrize("framework", ALL_FRAMEWORKS)
def test_gpu_request_without_gpu_is_a_clear_error(framework):
    if framework not in AVAILABLE:
        pytest.skip(f"{framework} not installed")
    mod = ports.load(framework)
    if mod.gpu_available():
        pytest.skip(f"{framework} sees a GPU")
    spec = parity_spec("alexnet", overrides=SMALL["alexnet"])
    import numpy as np

    with pytest.raises(RuntimeError, match="(?i)gpu"):
        mod.forward(mod.build_model(spec), np.zeros((1, *spec.input_shape), np.float32), device="gpu")
