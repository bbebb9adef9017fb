"""The README's Python API: ``rosetta_cnn.build_model`` with canonical and foreign weights in
every framework, and ``rosetta_cnn.forward`` on whatever it built."""
from __future__ import annotations

import numpy as np
import pytest

import rosetta_cnn as rc
from rosetta_cnn.core import ports
from rosetta_cnn.core.canonical import random_canonical, save_canonical
from rosetta_cnn.verification.parity import diff, make_input
from rosetta_cnn.verification.tolerances import tolerance

from ..conftest import SMALL, needs


@pytest.fixture(scope="module")
def alexnet_files(tmp_path_factory):
    """One small AlexNet's random weights as a canonical file and as a torchvision ``state_dict``."""
    needs("torch")
    import torch

    from rosetta_cnn.formats import torchvision as tv

    d = tmp_path_factory.mktemp("api")
    spec = rc.load_spec("alexnet", SMALL["alexnet"])
    tensors = random_canonical(spec, 3)
    save_canonical(d / "a.safetensors", spec, tensors)
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tv.to_torchvision(spec, tensors).items()},
               d / "a.pth")
    return spec, d


def test_build_model_loads_canonical_and_torchvision_weights_in_every_framework(alexnet_files):
    spec, d = alexnet_files
    x = make_input(spec, 2, 0)
    outs = {}
    for fw in ports.available():
        outs[f"{fw} canonical"] = rc.forward(rc.build_model("alexnet", fw, weights=d / "a.safetensors"), x)["logits"]
        net = rc.build_model("alexnet", fw, weights=d / "a.pth", width_divisor=4, input_size=96)
        assert rc.framework_of(net) == fw
        outs[f"{fw} torchvision"] = rc.forward(net, x)["logits"]
    ref = next(iter(outs.values()))
    for name, out in outs.items():
        assert diff(ref, out).max_rel <= tolerance("cpu", "eval").rel, name


def test_build_model_without_weights_uses_overrides_and_seed():
    needs("torch")
    a = rc.build_model("vgg11", "torch", seed=1, **SMALL["vgg11"])
    b = rc.build_model("vgg11", "torch", seed=1, **SMALL["vgg11"])
    x = make_input(a.spec, 1, 0)
    assert np.array_equal(rc.forward(a, x)["logits"], rc.forward(b, x)["logits"])
    assert a.spec.params["num_classes"] == 10


def test_forward_refuses_a_model_no_port_built():
    with pytest.raises(TypeError, match="was not built"):
        rc.forward(object(), np.zeros((1, 3, 8, 8), np.float32))
