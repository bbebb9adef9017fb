"""The PyTorch model for a resolved spec: one ``nn.Module`` per spec layer, walked in order.

Papers: AlexNet https://papers.nips.cc/paper/4824 , VGG https://arxiv.org/abs/1409.1556 ,
GoogLeNet https://arxiv.org/abs/1409.4842 .

``SpecModel`` registers every spec layer as a submodule under the layer's own name, so
``state_dict()`` keys are exactly the canonical tensor names of ``shared/core/canonical.py`` (plus
BatchNorm's ``num_batches_tracked`` counters). There are no architecture constants here:
everything comes from the spec, through the ``layers.OPS`` dispatch table.

Outputs follow torchvision's GoogLeNet: in eval mode ``model(x)`` returns the logits tensor
and the auxiliary heads (``training_only`` layers) are not computed; in training mode a spec
with auxiliary outputs returns a dict ``{"logits": ..., "aux1": ..., "aux2": ...}`` (the keys
of ``spec.outputs``) and a spec without them returns the logits tensor.
``model.activations(x)`` returns every computed layer's output by layer name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rosetta_cnn.core.spec import INPUT, ModelSpec

from . import layers


class SpecModel(nn.Module):
    """A spec's layer graph as an ``nn.Module``; see the module docstring for the outputs."""

    def __init__(self, spec: ModelSpec, *, channels_last: bool = True):
        super().__init__()
        self.spec = spec
        self.channels_last = channels_last
        for layer in spec.layers:
            if hasattr(self, layer.name):
                raise ValueError(f"layer name {layer.name!r} clashes with an nn.Module attribute")
            self.add_module(layer.name, layers.OPS[layer.op](layer))
        # the steps of a forward pass in eval and in training mode (aux heads only in training):
        # (layer name, input names, fused relu?, intermediates no longer needed after it)
        self._steps = {training: _plan(spec, training) for training in (False, True)}

    def _run(self, x: torch.Tensor, keep_all: bool) -> dict[str, torch.Tensor]:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        values = {INPUT: x}
        for name, inputs, relu, release in self._steps[self.training]:
            y = self._modules[name](*(values[i] for i in inputs))
            if relu:
                y = F.relu(y, inplace=True)  # fused activation, on the layer's own fresh output
            values[name] = y
            if not keep_all:
                for i in release:
                    del values[i]
        values.pop(INPUT, None)
        return values

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """NCHW batch -> logits; in training mode with auxiliary heads, a dict of all outputs."""
        values = self._run(x, keep_all=False)
        if self.training and self.spec.aux_outputs:
            return {key: values[name] for key, name in self.spec.outputs.items()}
        return values[self.spec.outputs["logits"]]

    def activations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every computed layer's output by spec layer name (post fused activation).

        Auxiliary-head layers are included only in training mode, where they are computed.
        """
        return self._run(x, keep_all=True)


def _plan(spec: ModelSpec, training: bool) -> tuple[tuple[str, tuple[str, ...], bool, tuple[str, ...]], ...]:
    """The forward steps: every layer in training mode, no auxiliary-head layer in eval mode;
    each step lists the values (not model outputs) whose last use it is."""
    layers_run = [layer for layer in spec.layers if training or not layer.training_only]
    last_use = {i: layer.name for layer in layers_run for i in layer.inputs}
    keep = set(spec.outputs.values())
    return tuple(
        (layer.name, layer.inputs, layer.attrs.get("activation") == "relu",
         tuple(i for i, user in last_use.items() if user == layer.name and i not in keep))
        for layer in layers_run
    )


def init_weights(model: nn.Module) -> None:
    """torchvision's VGG initialisation: convs kaiming_normal_(fan_out, relu), linears N(0, 0.01),
    biases 0, BatchNorm weight 1 and bias 0 (running statistics 0 and 1)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)) and m.bias is not None:
            nn.init.zeros_(m.bias)


def build_model(spec: ModelSpec, *, seed: int = 0, channels_last: bool = True, initialize: bool = True) -> SpecModel:
    """Build the model for ``spec`` on the CPU, initialised like torchvision from ``seed``.

    The global RNG state is left as it was. ``channels_last`` stores conv weights and runs
    feature maps in NHWC memory order (same logical NCHW tensors, faster oneDNN kernels on CPU).
    ``initialize=False`` skips torchvision's initialisation (the layers keep PyTorch's own
    defaults, half the build time of a VGG) for a model whose weights are imported right
    after (parity runs, format checks).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SpecModel(spec, channels_last=channels_last)
        if initialize:
            init_weights(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()
