"""Real torchvision checkpoints in and out: every torchvision model, every port, ONNX Runtime.

Each case builds ``torchvision.models.<name>(weights=None)`` with non-trivial random weights
(He-scaled, BatchNorm statistics far from 0 / 1), saves its ``state_dict`` with ``torch.save``,
converts it with ``rosetta convert`` and compares every port's logits (and ONNX Runtime's)
with torchvision's own forward pass on the same input; then the reverse: the project's
weights exported to a ``.pth`` that torchvision loads with ``strict=True``.
"""
from __future__ import annotations

import importlib.util
import json
import select
import subprocess
import sys

import numpy as np
import pytest

from rosetta_cnn import load_spec
from rosetta_cnn.core import ports
from rosetta_cnn.core.canonical import load_canonical, random_canonical
from rosetta_cnn.formats.convert import convert
from rosetta_cnn.formats.torchvision import TORCHVISION_MODELS
from rosetta_cnn.verification.parity import diff
from rosetta_cnn.verification.tolerances import tolerance

from ..conftest import hand_back, needs

# find_spec, not import: see WORKER
pytestmark = pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed")

TOL = tolerance("cpu", "eval").rel
#: cases run by default (small, fast); the rest are heavy: (model, torchvision kwargs, input size)
LIGHT = {"alexnet", "googlenet-noaux"}
CASES = {
    "alexnet": ("alexnet", {}, 64),
    **{m: (m, {"init_weights": False}, 64) for m in TORCHVISION_MODELS if m.startswith("vgg")},
    # aux heads present in the file (eval ignores them); transform_input honoured
    "googlenet": ("googlenet", {"aux_logits": True, "transform_input": False, "init_weights": False}, 96),
    "googlenet-noaux": ("googlenet", {"aux_logits": False, "transform_input": True, "init_weights": False}, 96),
}
#: cases also run through ONNX Runtime (an export of a full-size VGG takes ~30 s: the deepest
#: VGG with BatchNorm stands for the family)
WITH_ONNX = {"alexnet", "vgg19_bn", "googlenet"}
PARAMS = [pytest.param(c, id=c, marks=() if c in LIGHT else pytest.mark.heavy) for c in CASES]

# torchvision runs in a child interpreter: importing it after TensorFlow (which the test
# session loads) crashes the process, because both bundle LLVM (torchvision imports Triton).
# One child serves the whole module (one request per line), so torch and torchvision are
# imported once, not once per case.
WORKER = r"""
import ctypes, gc, json, math, sys
import numpy as np, torch, torchvision
for line in sys.stdin:
    action, name, kwargs, size, pth, out = json.loads(line)
    try:
        net = getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs)
        if action == "make":  # non-trivial random weights and BatchNorm statistics
            g = torch.Generator().manual_seed(0)
            def uniform(t, lo, hi):
                t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
            with torch.no_grad():
                for m in net.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        uniform(m.weight, 0.5, 1.5); uniform(m.bias, -0.3, 0.3); uniform(m.running_var, 0.3, 2.0)
                        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                    elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                        std = math.sqrt(2.0 / math.prod(m.weight.shape[1:]))
                        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
                        if m.bias is not None:
                            uniform(m.bias, -0.1, 0.1)
            torch.save(net.state_dict(), pth)
        else:  # the project's export must load strictly
            net.load_state_dict(torch.load(pth, weights_only=True), strict=True)
        x = np.random.default_rng(7).standard_normal((2, 3, size, size)).astype(np.float32)
        with torch.no_grad():
            np.save(out, net.eval()(torch.from_numpy(x)).numpy())
        del net
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand the model's memory back between requests
        print("ok", flush=True)
    except Exception as e:
        print("error", type(e).__name__, str(e).replace("\n", " ")[:2000], flush=True)
"""
#: seconds one request (building, saving or loading a full-size VGG) may take
REQUEST_TIMEOUT = 300


class TorchvisionChild:
    """The module's torchvision process (``WORKER``), started on the first request and again
    after :meth:`stop`."""

    def __init__(self, log):
        self.log, self.proc = log, None

    def request(self, action, name, kwargs, size, pth, tmp_path):
        """Ask the child to ``make`` a random checkpoint at ``pth`` or ``load`` one strictly;
        returns torchvision's logits on :func:`_input`."""
        if self.proc is None:
            with open(self.log, "w") as err:
                self.proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=err, text=True)
        out = tmp_path / f"{action}-logits.npy"
        self.proc.stdin.write(json.dumps([action, name, kwargs, size, str(pth), str(out)]) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], REQUEST_TIMEOUT)
        answer = self.proc.stdout.readline().strip() if ready else f"no answer within {REQUEST_TIMEOUT} s"
        if not answer:  # the child died
            answer = f"the torchvision child exited {self.proc.wait()}: {self.log.read_text()[-3000:]}"
        assert answer == "ok", f"torchvision {action} {name}: {answer}"
        return np.load(out)

    def stop(self):
        """End the child (its ~0.9 GB of torch and torchvision) until the next request."""
        if self.proc is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def torchvision_child(tmp_path_factory):
    """The module's :class:`TorchvisionChild`; stopped when the module is done."""
    child = TorchvisionChild(tmp_path_factory.mktemp("torchvision") / "stderr.log")
    yield child
    child.stop()


def _input(size, batch=2):
    return np.random.default_rng(7).standard_normal((batch, 3, size, size)).astype(np.float32)


def assert_every_port_matches(spec, tensors, x, ref, origin):
    """Every installed port, given ``tensors``, reproduces ``ref`` (the originating library's
    logits on ``x``) within the eval tolerance."""
    for framework in ports.available():
        mod = ports.load(framework)
        model = mod.build_model(spec, initialize=False)
        mod.import_weights(model, spec, tensors)
        d = diff(ref, mod.forward(model, x)["logits"])
        assert d.max_rel <= TOL, f"{origin} -> {framework}: max_rel {d.max_rel:.2e}"
        del model
        hand_back()  # a full-size model per framework: freed before the next (and the ONNX export's process)


def _overrides(name, kwargs, size):
    o = {"num_classes": 10, "input_size": size}
    if name == "googlenet":
        o.update(aux_logits=kwargs["aux_logits"], transform_input=kwargs["transform_input"])
    return o


@pytest.mark.parametrize("case", PARAMS)
def test_torchvision_to_every_port_and_onnx(case, tmp_path, torchvision_child):
    needs("torch")
    name, kwargs, size = CASES[case]
    pth = tmp_path / f"{name}.pth"
    ref = torchvision_child.request("make", name, kwargs, size, pth, tmp_path)
    x = _input(size)

    canonical = tmp_path / f"{name}.safetensors"
    # the model, class count and aux heads are read from the file; transform_input and the
    # input size are not in a state_dict
    sets = {"input_size": size}
    if name == "googlenet":
        sets["transform_input"] = kwargs["transform_input"]
    spec, fmt_in, fmt_out = convert(str(pth), str(canonical), sets=sets)
    assert (spec.name, fmt_in, fmt_out) == (name, "torchvision", "canonical")
    assert dict(spec.overrides) == _overrides(name, kwargs, size)
    spec, tensors = load_canonical(canonical)
    assert_every_port_matches(spec, tensors, x, ref, "torchvision")
    if case in WITH_ONNX:
        if "onnx" not in ports.available_targets():
            pytest.skip("ONNX Runtime or the exporter is not installed")
        if case not in LIGHT:  # the exporter's process holds ~3 GB for a VGG19-BN: the idle torchvision
            torchvision_child.stop()  # child (~0.9 GB) makes way, so that the suite's process tree stays under 6 GB
        d = diff(ref, ports.target_forward("onnx", spec, tensors, x)["logits"])
        assert d.max_rel <= TOL, f"torchvision -> onnx: max_rel {d.max_rel:.2e}"


@pytest.mark.parametrize("case", PARAMS)
def test_project_to_torchvision_loads_strictly(case, tmp_path, torchvision_child):
    needs("torch")
    from rosetta_cnn import torch_impl

    name, kwargs, size = CASES[case]
    spec = load_spec(name, _overrides(name, kwargs, size))
    model = torch_impl.build_model(spec, initialize=False)
    torch_impl.import_weights(model, spec, random_canonical(spec, 11))
    canonical = tmp_path / "w.safetensors"
    torch_impl.save_weights(model, spec, canonical)
    pth = tmp_path / f"{name}.pth"
    convert(str(canonical), str(pth))

    got = torchvision_child.request("load", name, kwargs, size, pth, tmp_path)
    d = diff(torch_impl.forward(model, _input(size))["logits"], got)
    assert d.max_rel <= TOL, f"project -> torchvision: max_rel {d.max_rel:.2e}"


def test_broken_mapping_fails(tmp_path, torchvision_child):
    """The check above must catch a wrong table entry: swap two conv layers' torchvision keys."""
    needs("torch")
    from rosetta_cnn.formats import torchvision as tv

    name, kwargs, size = CASES["vgg11"]
    pth = tmp_path / f"{name}.pth"
    ref = torchvision_child.request("make", name, kwargs, size, pth, tmp_path)
    x = _input(size)
    state = tv.read_state_dict(pth)
    spec = load_spec(name, _overrides(name, kwargs, size))
    # block4_conv2 and block5_conv1 have the same shape; exchanging them is a plausible table bug
    keys = tv.torchvision_names(spec)
    for suffix in ("weight", "bias"):
        a, b = keys[f"block4_conv2.{suffix}"], keys[f"block5_conv1.{suffix}"]
        state[a], state[b] = state[b], state[a]
    tensors = tv.from_torchvision(spec, state)
    from rosetta_cnn import torch_impl

    model = torch_impl.build_model(spec)
    torch_impl.import_weights(model, spec, tensors)
    assert diff(ref, torch_impl.forward(model, x)["logits"]).max_rel > 10 * TOL
