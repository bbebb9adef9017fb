"""The Flax NNX model for any resolved spec: AlexNet, VGG and GoogLeNet from the same code.

Papers: AlexNet https://papers.nips.cc/paper/4824 , VGG https://arxiv.org/abs/1409.1556 ,
GoogLeNet https://arxiv.org/abs/1409.4842 . No architecture constant lives here: the layers,
their wiring and the outputs all come from the spec (``shared/core/specs/*.json``).

Each spec layer is a submodule stored under its spec layer name, so ``nnx.state(model)`` has
paths like ``("conv1", "kernel")`` and ``("conv1_bn", "mean")``. Inputs are NHWC.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
from flax import nnx

from rosetta_cnn.core.layout import flattened_maps
from rosetta_cnn.core.ports import initializing
from rosetta_cnn.core.spec import INPUT, ModelSpec

from .layers import OPS


class Step(NamedTuple):
    """One spec layer as the model runs it (static: part of the graph definition)."""

    name: str
    inputs: tuple[str, ...]
    relu: bool  # the layer's fused activation
    training_only: bool  # feeds only auxiliary outputs: runs in training mode only


def _program(spec: ModelSpec) -> tuple[Step, ...]:
    return tuple(Step(l.name, l.inputs, l.attrs.get("activation") == "relu", l.training_only) for l in spec.layers)


class SpecModel(nnx.Module):
    """A CNN built from a resolved :class:`~rosetta_cnn.core.spec.ModelSpec`.

    Mode follows the NNX idiom: ``model.eval()`` / ``model.train()`` set ``deterministic`` on
    this module along with Dropout's ``deterministic`` and BatchNorm's ``use_running_average``.
    In training mode BatchNorm normalises with batch statistics and updates its running ones,
    and the auxiliary heads (GoogLeNet) run, as in torchvision.

    ``model(x)`` returns the logits, except in training mode for a spec with auxiliary
    outputs, where it returns ``{"logits": ..., "aux1": ..., "aux2": ...}``.
    """

    def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs):
        self.deterministic = True
        self._program = _program(spec)
        self._flattened = flattened_maps(spec)
        self._outputs = tuple(spec.outputs.items())
        for layer in spec.layers:
            if hasattr(self, layer.name):
                raise ValueError(f"spec layer name {layer.name!r} clashes with a SpecModel attribute; rename it")
            setattr(self, layer.name, OPS[layer.op](layer, rngs))
        self.eval()

    def _run(self, x: jax.Array) -> dict[str, jax.Array]:
        env = {INPUT: x}
        for step in self._program:
            if step.training_only and self.deterministic:
                continue
            y = getattr(self, step.name)(*(env[i] for i in step.inputs))
            env[step.name] = nnx.relu(y) if step.relu else y
        del env[INPUT]
        return env

    def activations(self, x: jax.Array) -> dict[str, jax.Array]:
        """Every spec layer's output (post-activation, NHWC maps) that runs in the current mode."""
        return self._run(x)

    def flattened_maps(self) -> dict[str, tuple[int, int, int]]:
        """Layers whose flat output holds a (C, H, W) map in NHWC flatten order -> that (C, H, W)."""
        return dict(self._flattened)

    def output_layers(self) -> dict[str, str]:
        """Output key -> layer name: ``logits``, and in training mode the auxiliary outputs too."""
        return {key: name for key, name in self._outputs if key == "logits" or not self.deterministic}

    def outputs(self, x: jax.Array) -> dict[str, jax.Array]:
        """The spec's outputs in the current mode (``output_layers``)."""
        env = self._run(x)
        return {key: env[name] for key, name in self.output_layers().items()}

    def __call__(self, x: jax.Array) -> jax.Array | dict[str, jax.Array]:
        outs = self.outputs(x)
        return outs["logits"] if len(outs) == 1 else outs


def build_model(spec: ModelSpec, *, seed: int = 0, initialize: bool = True) -> SpecModel:
    """A freshly initialised model for ``spec`` (Flax's default initialisers), in eval mode;
    ``initialize=False`` skips the draws (zero kernels) for a model whose weights are
    imported right after (parity runs, format checks)."""
    with initializing(initialize):
        return SpecModel(spec, rngs=nnx.Rngs(seed))
