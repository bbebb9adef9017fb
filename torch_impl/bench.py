"""The PyTorch side of ``rosetta bench`` (run inside ``rosetta_cnn.tools.bench.worker``).

Implementations measured: ``spec`` (this package's ``build_model``; training through
``torch_impl.train``), ``plain`` (VGG / GoogLeNet written by hand below, torchvision style,
from the tables in ``shared/tools/bench/baselines.py``) and ``torchvision`` (``torchvision.models`` with
``weights=None``, when installed and the spec is a stock architecture).

Configurations: ``nchw`` (eager, contiguous NCHW: PyTorch's default), ``channels_last``
(eager, NHWC memory order: oneDNN's fast path on CPU; the project's default) and ``compile``
(``torch.compile`` of the channels_last spec model, inference only: Inductor with weight
freezing).
"""
from __future__ import annotations

import importlib.util
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rosetta_cnn.core.spec import ModelSpec
from rosetta_cnn.tools.bench import baselines
from rosetta_cnn.training.trainer import AUX_LOSS_WEIGHT, OptimizerConfig

from .model import build_model
from .train import make_trainer

#: extra environment per worker process variant (PyTorch needs none)
ENV_VARIANTS: dict[str, dict[str, str]] = {"": {}}


def setup(threads: int, device: str) -> dict[str, str]:
    """Pin the intra-op thread count; return the versions that matter."""
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    versions = {"torch": torch.__version__, "onednn": str(torch.backends.mkldnn.is_available()),
                "threads": str(torch.get_num_threads())}
    if importlib.util.find_spec("torchvision"):
        import torchvision

        versions["torchvision"] = torchvision.__version__
    if device == "gpu":
        versions["gpu"] = torch.cuda.get_device_name(0)
    return versions


def _device(device: str) -> torch.device:
    return torch.device("cuda" if device == "gpu" else "cpu")


def _sync(device: str) -> None:
    if device == "gpu":
        torch.cuda.synchronize()


def sgemm(n: int, device: str) -> Callable[[], None]:
    """One float32 n x n matrix product per call (the machine's roof)."""
    a = torch.randn(n, n, device=_device(device))
    b = torch.randn(n, n, device=_device(device))

    def run() -> None:
        torch.mm(a, b)
        _sync(device)
    return run


def reset_device_memory(device: str) -> None:
    if device == "gpu":
        torch.cuda.reset_peak_memory_stats()


def device_memory_mb(device: str) -> float | None:
    """Peak GPU memory allocated since the last reset (None on the CPU)."""
    return torch.cuda.max_memory_allocated() / 2 ** 20 if device == "gpu" else None


def implementations(spec: ModelSpec) -> list[str]:
    impls = ["spec"]
    if baselines.plain_arch(spec):
        impls.append("plain")
    if importlib.util.find_spec("torchvision") and baselines.is_stock(spec) and _torchvision_name(spec):
        impls.append("torchvision")
    return impls


def configs(impl: str, mode: str, variant: str) -> list[str]:
    """Configurations to measure; compile only for the spec model's inference (compiling a
    backward pass, or every baseline too, takes minutes on a small CPU)."""
    return ["nchw", "channels_last", "compile"] if mode == "infer" and impl == "spec" else ["nchw", "channels_last"]


def default_config(impl: str, mode: str) -> str:
    """What a user gets without asking: the project builds channels_last, libraries NCHW."""
    return "channels_last" if impl == "spec" else "nchw"


class BasicConv(nn.Sequential):
    """conv (no bias) -> BatchNorm(eps 1e-3) -> ReLU, torchvision GoogLeNet's BasicConv2d."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(cout, eps=0.001), nn.ReLU(inplace=True))


class Inception(nn.Module):
    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int):
        super().__init__()
        self.b1 = BasicConv(cin, c1, 1)
        self.b2 = nn.Sequential(BasicConv(cin, c3r, 1), BasicConv(c3r, c3, 3, padding=1))
        self.b3 = nn.Sequential(BasicConv(cin, c5r, 1), BasicConv(c5r, c5, 3, padding=1))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv(cin, cp, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class AuxHead(nn.Sequential):
    def __init__(self, cin: int, a: baselines.PlainArch):
        conv, hidden = (a.w(c) for c in baselines.GOOGLENET_AUX)
        super().__init__(nn.AdaptiveAvgPool2d(4), BasicConv(cin, conv, 1), nn.Flatten(),
                         nn.Linear(conv * 16, hidden), nn.ReLU(inplace=True), nn.Dropout(0.7),
                         nn.Linear(hidden, a.num_classes))


class PlainGoogLeNet(nn.Module):
    """GoogLeNet as torchvision writes it; in training mode returns (logits, aux1, aux2)."""

    def __init__(self, a: baselines.PlainArch):
        super().__init__()
        c1, c2, c3 = (a.w(c) for c in baselines.GOOGLENET_STEM)
        self.stem = nn.Sequential(BasicConv(a.in_channels, c1, 7, 2, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
                                  BasicConv(c1, c2, 1), BasicConv(c2, c3, 3, padding=1),
                                  nn.MaxPool2d(3, 2, ceil_mode=True))
        self.body = nn.ModuleDict()
        self.aux = nn.ModuleDict()
        cin = c3
        for name, widths in baselines.GOOGLENET_BODY:
            if name.startswith("pool"):
                k = 3 if name == "pool" else 2
                self.body[name] = nn.MaxPool2d(k, 2, ceil_mode=True)
                continue
            w = [a.w(c) for c in widths]
            self.body[name] = Inception(cin, *w)
            cin = w[0] + w[2] + w[4] + w[5]
            if a.aux and name in baselines.GOOGLENET_AUX_FROM:
                self.aux[name] = AuxHead(cin, a)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(a.dropout),
                                  nn.Linear(cin, a.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        x = self.stem(x)
        aux = []
        for name, layer in self.body.items():
            x = layer(x)
            if self.training and name in self.aux:
                aux.append(self.aux[name](x))
        logits = self.head(x)
        return (logits, *aux) if aux else logits


def plain_vgg(a: baselines.PlainArch) -> nn.Sequential:
    """VGG as torchvision writes it: features, 7x7 adaptive pool, three-layer classifier."""
    layers: list[nn.Module] = []
    cin = a.in_channels
    for convs, width in zip(baselines.VGG_STAGE_CONVS[a.depth], baselines.VGG_STAGE_WIDTHS):
        for _ in range(convs):
            layers.append(nn.Conv2d(cin, a.w(width), 3, padding=1))
            if a.batch_norm:
                layers.append(nn.BatchNorm2d(a.w(width)))
            layers.append(nn.ReLU(inplace=True))
            cin = a.w(width)
        layers.append(nn.MaxPool2d(2, 2))
    hidden = a.w(baselines.VGG_HIDDEN)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(7), nn.Flatten(),
                         nn.Linear(cin * 49, hidden), nn.ReLU(inplace=True), nn.Dropout(a.dropout),
                         nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(a.dropout),
                         nn.Linear(hidden, a.num_classes))


def _torchvision_name(spec: ModelSpec) -> str | None:
    if spec.family == "vgg" or (spec.name == "googlenet" and not spec.params["transform_input"]):
        return spec.name
    return None


def build(impl: str, config: str, spec: ModelSpec, device: str) -> nn.Module:
    """The model of ``impl`` in the memory format of ``config``, on ``device``, eval mode."""
    torch._dynamo.reset()  # drop an earlier compiled model (and its frozen weights) before measuring memory
    if impl == "spec":
        model = build_model(spec, channels_last=config != "nchw")
    elif impl == "plain":
        a = baselines.plain_arch(spec)
        model = plain_vgg(a) if a.family == "vgg" else PlainGoogLeNet(a)
    else:
        import torchvision

        kwargs: dict[str, Any] = {"weights": None, "num_classes": spec.params["num_classes"]}
        if spec.family == "googlenet":
            kwargs |= {"aux_logits": spec.params["aux_logits"], "init_weights": True}
        model = getattr(torchvision.models, _torchvision_name(spec))(**kwargs)
    if config != "nchw":
        model = model.to(memory_format=torch.channels_last)
    return model.to(_device(device)).eval()


def _input(x: np.ndarray, config: str, device: str) -> torch.Tensor:
    t = torch.from_numpy(x).to(_device(device))
    return t if config == "nchw" else t.contiguous(memory_format=torch.channels_last)


def inference(model: nn.Module, impl: str, config: str, x: np.ndarray, device: str) -> Callable[[], None]:
    """One eval-mode forward pass per call."""
    inputs = _input(x, config, device)
    if config == "compile":
        import torch._inductor.config as inductor

        inductor.freezing = True  # constant-fold weights and pre-pack them for oneDNN (inference)
        model = torch.compile(model)

    def run() -> None:
        with torch.inference_mode():
            model(inputs)
        _sync(device)
    return run


def training(model: nn.Module, impl: str, config: str, spec: ModelSpec, x: np.ndarray, y: np.ndarray,
             device: str) -> Callable[[], float]:
    """One SGD-momentum step per call: the project's trainer for ``spec``, and the usual
    hand-written loop (aux losses weighted 0.3) for the baselines."""
    opt = OptimizerConfig()
    if impl == "spec":
        trainer = make_trainer(model, spec, opt)
        return lambda: trainer.step(x, y)
    model.train()
    inputs = _input(x, config, device)
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(_device(device))
    sgd = torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)

    def step() -> float:
        out = model(inputs)
        outs = tuple(out) if isinstance(out, tuple) else (out,)  # torchvision: GoogLeNetOutputs
        loss = F.cross_entropy(outs[0], labels)
        loss = loss + sum(AUX_LOSS_WEIGHT * F.cross_entropy(o, labels) for o in outs[1:] if o is not None)
        sgd.zero_grad(set_to_none=True)
        loss.backward()
        sgd.step()
        return float(loss.detach())
    return step
