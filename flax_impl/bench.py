"""The Flax NNX side of ``rosetta bench`` (run inside ``rosetta_cnn.tools.bench.worker``).

Implementations measured: ``spec`` (this package's ``build_model``; training in the default
configuration through ``flax_impl.train``) and ``plain`` (VGG / GoogLeNet written by hand
below as NNX modules, from the tables in ``shared/tools/bench/baselines.py``). Flax ships no model zoo.

Configurations: ``nnx_jit`` (``nnx.jit`` over the module: the NNX default; the graph of Python
objects is traversed on every call) and ``jax_jit`` (the module split once into a graph
definition and a state pytree, a plain ``jax.jit`` function of the state, which donates the
parameter and optimizer buffers in training so that XLA updates them in place).

Every worker runs with the project's fast XLA CPU configuration (``core/xla.py``, set by
``import rosetta_cnn.flax_impl``): XLA's YNNPACK fusions off. By default XLA's CPU backend
(jaxlib 0.10) hands whole subgraphs to YNNPACK; for VGG16 it takes the entire forward pass as
one ``ynn_fusion`` (see ``compile().as_text()``), whose convolutions run at about half the
speed of XLA's own (Eigen) ones: 2.5 -> 5.0 images/s for VGG16 and 34 -> 45 for GoogLeNet at
batch 8 on a 2-core CPU. Worker variants (XLA reads its flags once per process, hence a
separate worker each):

* ``ynn``: ``ROSETTA_XLA_FAST=0``, XLA's own default (YNNPACK fusions on): what a plain JAX
  user gets, kept as the baseline of the fast default;
* ``onednn``: ``--xla_cpu_use_onednn=true`` (XLA's CPU convolutions and matmuls through
  oneDNN instead of Eigen; 4% on VGG16), on top of the fast configuration.
"""
from __future__ import annotations

import os
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rosetta_cnn.core.spec import ModelSpec
from rosetta_cnn.tools.bench import baselines
from rosetta_cnn.training.trainer import AUX_LOSS_WEIGHT, OptimizerConfig

from . import layout
from .model import build_model
from .train import build_optimizer, cross_entropy, make_trainer

#: extra environment per worker process variant: XLA's CPU flags are read once per process
ENV_VARIANTS: dict[str, dict[str, str]] = {
    "": {},
    "ynn": {"ROSETTA_XLA_FAST": "0"},
    "onednn": {"XLA_FLAGS": "--xla_cpu_use_onednn=true"},
}


def setup(threads: int, device: str) -> dict[str, str]:
    """JAX sizes its CPU pool from the CPUs the process may use (the parent pins them); return
    the versions that matter."""
    import flax

    from rosetta_cnn.core import xla

    dev = jax.devices("gpu" if device == "gpu" else "cpu")[0]
    jax.config.update("jax_default_device", dev)
    return {"jax": jax.__version__, "flax": flax.__version__, "device": str(dev.device_kind),
            "threads": str(threads), "fast_xla": str(xla.active()), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def sgemm(n: int, device: str) -> Callable[[], None]:
    """One float32 n x n matrix product per call (the machine's roof)."""
    a = jax.random.normal(jax.random.key(0), (n, n))
    b = jax.random.normal(jax.random.key(1), (n, n))
    mm = jax.jit(jnp.matmul)
    return lambda: mm(a, b).block_until_ready()


def reset_device_memory(device: str) -> None:
    """JAX keeps no resettable peak: the figure is the process's peak so far."""


def device_memory_mb(device: str) -> float | None:
    """Peak GPU memory in use (None on the CPU)."""
    if device != "gpu":
        return None
    return jax.devices("gpu")[0].memory_stats()["peak_bytes_in_use"] / 2 ** 20


def implementations(spec: ModelSpec) -> list[str]:
    return ["spec", "plain"] if baselines.plain_arch(spec) else ["spec"]


def configs(impl: str, mode: str, variant: str) -> list[str]:
    return ["nnx_jit", "jax_jit"]


def default_config(impl: str, mode: str) -> str:
    """What a user gets: ``runtime.forward`` is a split-once ``jax.jit`` (inference), the trainer
    an ``nnx.jit`` step with donated buffers (training)."""
    return "jax_jit" if mode == "infer" else "nnx_jit"


class BasicConv(nnx.Module):
    """conv (no bias) -> BatchNorm(eps 1e-3) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding="SAME", use_bias=False,
                             rngs=rngs)
        self.bn = nnx.BatchNorm(cout, epsilon=0.001, momentum=0.9, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.bn(self.conv(x)))


class Inception(nnx.Module):
    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int, *, rngs: nnx.Rngs):
        self.b1 = BasicConv(cin, c1, 1, rngs=rngs)
        self.b2 = nnx.Sequential(BasicConv(cin, c3r, 1, rngs=rngs), BasicConv(c3r, c3, 3, rngs=rngs))
        self.b3 = nnx.Sequential(BasicConv(cin, c5r, 1, rngs=rngs), BasicConv(c5r, c5, 3, rngs=rngs))
        self.b4 = BasicConv(cin, cp, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        pooled = nnx.max_pool(x, (3, 3), (1, 1), "SAME")
        return jnp.concatenate([self.b1(x), self.b2(x), self.b3(x), self.b4(pooled)], axis=-1)


class AuxHead(nnx.Module):
    """The paper's 5x5/3 average pool (14x14 -> 4x4), 1x1 conv, two fully connected layers."""

    def __init__(self, cin: int, size: int, a: baselines.PlainArch, *, rngs: nnx.Rngs):
        conv, hidden = (a.w(c) for c in baselines.GOOGLENET_AUX)
        self.pool = max(1, size // 4)
        pooled = (size - self.pool) // self.pool + 1
        self.conv = BasicConv(cin, conv, 1, rngs=rngs)
        self.fc1 = nnx.Linear(conv * pooled * pooled, hidden, rngs=rngs)
        self.dropout = nnx.Dropout(0.7, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, a.num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(nnx.avg_pool(x, (self.pool, self.pool), (self.pool, self.pool)))
        return self.fc2(self.dropout(nnx.relu(self.fc1(x.reshape(x.shape[0], -1)))))


class PlainGoogLeNet(nnx.Module):
    """GoogLeNet as NNX modules; in training mode returns (logits, aux1, aux2)."""

    def __init__(self, a: baselines.PlainArch, size: int, *, rngs: nnx.Rngs):
        c1, c2, c3 = (a.w(c) for c in baselines.GOOGLENET_STEM)
        self.conv1 = BasicConv(a.in_channels, c1, 7, 2, rngs=rngs)
        self.conv2 = BasicConv(c1, c2, 1, rngs=rngs)
        self.conv3 = BasicConv(c2, c3, 3, rngs=rngs)
        blocks, aux = {}, {}
        cin, size = c3, -(-size // 8)  # after conv1 and two stride-2 pools (SAME: ceil)
        for name, widths in baselines.GOOGLENET_BODY:
            if name.startswith("pool"):
                size = -(-size // 2)
                continue
            w = [a.w(c) for c in widths]
            blocks[name] = Inception(cin, *w, rngs=rngs)
            cin = w[0] + w[2] + w[4] + w[5]
            if a.aux and name in baselines.GOOGLENET_AUX_FROM:
                aux[name] = AuxHead(cin, size, a, rngs=rngs)
        self.blocks = nnx.Dict(blocks)
        self.aux = nnx.Dict(aux)
        self.dropout = nnx.Dropout(a.dropout, rngs=rngs)
        self.fc = nnx.Linear(cin, a.num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array | tuple[jax.Array, ...]:
        x = nnx.max_pool(self.conv1(x), (3, 3), (2, 2), "SAME")
        x = nnx.max_pool(self.conv3(self.conv2(x)), (3, 3), (2, 2), "SAME")
        aux = []
        for name, _ in baselines.GOOGLENET_BODY:
            if name.startswith("pool"):
                k = 3 if name == "pool" else 2
                x = nnx.max_pool(x, (k, k), (2, 2), "SAME")
                continue
            x = self.blocks[name](x)
            if not self.dropout.deterministic and name in self.aux:  # training mode
                aux.append(self.aux[name](x))
        logits = self.fc(self.dropout(x.mean(axis=(1, 2))))
        return (logits, *aux) if aux else logits


class PlainVGG(nnx.Module):
    """VGG as NNX modules (no adaptive pool: at 224x224 the last map is already 7x7)."""

    def __init__(self, a: baselines.PlainArch, size: int, *, rngs: nnx.Rngs):
        convs, bns, pool_after, cin = [], [], [], a.in_channels
        for n, width in zip(baselines.VGG_STAGE_CONVS[a.depth], baselines.VGG_STAGE_WIDTHS):
            for _ in range(n):
                convs.append(nnx.Conv(cin, a.w(width), (3, 3), padding=1, rngs=rngs))
                if a.batch_norm:
                    bns.append(nnx.BatchNorm(a.w(width), rngs=rngs))
                cin = a.w(width)
            pool_after.append(len(convs) - 1)
        self.convs = nnx.List(convs)
        self.bns = nnx.List(bns) if a.batch_norm else None
        self.pool_after = tuple(pool_after)
        hidden, last = a.w(baselines.VGG_HIDDEN), size // 32
        self.fc1 = nnx.Linear(cin * last * last, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.fc3 = nnx.Linear(hidden, a.num_classes, rngs=rngs)
        self.dropout = nnx.Dropout(a.dropout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            x = nnx.relu(self.bns[i](x) if self.bns is not None else x)
            if i in self.pool_after:
                x = nnx.max_pool(x, (2, 2), (2, 2))
        x = self.dropout(nnx.relu(self.fc1(x.reshape(x.shape[0], -1))))
        x = self.dropout(nnx.relu(self.fc2(x)))
        return self.fc3(x)


def build(impl: str, config: str, spec: ModelSpec, device: str) -> nnx.Module:
    """The model of ``impl`` in eval mode (the configuration applies to the step)."""
    if impl == "spec":
        return build_model(spec)
    a = baselines.plain_arch(spec)
    cls = PlainVGG if a.family == "vgg" else PlainGoogLeNet
    model = cls(a, spec.input_shape[1], rngs=nnx.Rngs(0))
    model.eval()
    return model


def inference(model: nnx.Module, impl: str, config: str, x: np.ndarray, device: str) -> Callable[[], None]:
    """One eval-mode forward pass per call."""
    inputs = jnp.asarray(layout.nchw_to_framework(x))  # [N, C, H, W] -> [N, H, W, C]
    if config == "nnx_jit":
        fn = nnx.jit(lambda m, x: m(x))
        return lambda: fn(model, inputs).block_until_ready()
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    return lambda: forward(state, inputs).block_until_ready()


def _loss(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    out = model(x)
    outs = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, tuple) else [out]
    return cross_entropy(outs[0], y) + sum(AUX_LOSS_WEIGHT * cross_entropy(o, y) for o in outs[1:])


def training(model: nnx.Module, impl: str, config: str, spec: ModelSpec, x: np.ndarray, y: np.ndarray,
             device: str) -> Callable[[], float]:
    """One SGD-momentum step per call: the project's trainer for ``spec`` in the default
    configuration, else the hand-written step of the configuration (aux losses weighted 0.3)."""
    opt = OptimizerConfig()
    if impl == "spec" and config == "nnx_jit":
        trainer = make_trainer(model, spec, opt)
        return lambda: trainer.step(x, y)
    model.train()
    inputs = jnp.asarray(layout.nchw_to_framework(x))  # [N, C, H, W] -> [N, H, W, C]
    labels = jnp.asarray(np.asarray(y, dtype=np.int32))
    optimizer = nnx.Optimizer(model, build_optimizer(opt), wrt=nnx.Param)

    def update(m: nnx.Module, o: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
        loss, grads = nnx.value_and_grad(_loss)(m, x, y)
        o.update(m, grads)
        return loss

    if config == "nnx_jit":
        step = nnx.jit(update)
        return lambda: float(step(model, optimizer, inputs, labels))
    graphdef, state = nnx.split((model, optimizer))

    @partial(jax.jit, donate_argnums=0)
    def pure(s: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, Any]:
        m, o = nnx.merge(graphdef, s)
        loss = update(m, o, x, y)
        return loss, nnx.state((m, o))

    def run() -> float:
        nonlocal state
        loss, state = pure(state, inputs, labels)
        return float(loss)
    return run
