"""The Keras 3 functional model for a resolved spec.

Papers: AlexNet https://papers.nips.cc/paper/4824 , VGG https://arxiv.org/abs/1409.1556 ,
GoogLeNet https://arxiv.org/abs/1409.4842 .

``build_model`` walks ``spec.layers`` in order and applies the Keras layers that
``layers.OPS`` makes for each one; there are no architecture constants here. As in
``keras.applications``, the Keras layer names are the spec layer names (the contract with the
weight files): ``model.get_layer("conv1")`` is the layer whose output is spec layer ``conv1``
(fused ReLU included). Helper layers Keras needs (explicit padding) are named
``f"{spec_name}_pad"``. The input is ``keras.Input((H, W, C), name="input")``: NHWC.

Outputs: a spec without auxiliary heads gives a model with one output, the logits. A spec
with auxiliary heads (GoogLeNet, aux_logits=true) gives dict outputs
``{"logits": ..., "aux1": ..., "aux2": ...}`` (the keys of ``spec.outputs``). A functional
graph is static, so ``model(x)`` computes the aux heads in both modes; that is the trade-off
of the functional idiom. ``runtime.forward`` follows torchvision instead: it runs a sub-graph
over the same layers that leaves the aux heads out in eval mode, and returns them only with
``train=True``.

The model keeps its spec as ``model.spec`` (``runtime.forward`` needs it).
"""
from __future__ import annotations

import keras
import numpy as np

from rosetta_cnn.core.layout import flattened_maps
from rosetta_cnn.core.ports import initializing
from rosetta_cnn.core.spec import INPUT, ModelSpec

from . import layers, layout


def build_model(spec: ModelSpec, *, seed: int = 0, initialize: bool = True) -> keras.Model:
    """The functional ``keras.Model`` (name ``spec.name``) of ``spec``.

    ``seed`` seeds every initializer (Keras' defaults: Glorot-uniform kernels, here drawn with
    numpy so that a seed gives the same weights on every backend (``layers.GlorotUniform``),
    zero biases, BatchNorm gamma 1 / beta 0) and every dropout layer, without touching Keras'
    global seed. Dropout masks come from the backend's generator and differ per backend.
    ``initialize=False`` skips the draws (zero kernels) for a model whose weights are
    imported right after (parity runs, format checks).
    """
    rng = np.random.default_rng(seed)
    flats = flattened_maps(spec)
    c, h, w = spec.input_shape
    inputs = keras.Input(shape=(h, w, c), name="input")
    values = {INPUT: inputs}
    for layer in spec.layers:
        if layer.op == "batch_norm" and layer.inputs[0] in flats:
            raise NotImplementedError(f"layer {layer.name!r}: batch_norm on a flattened map would need its "
                                      "parameters permuted to Keras' (H, W, C) order")
        args = [values[name] for name in layer.inputs]
        x = args if len(args) > 1 else args[0]
        with initializing(initialize):
            for keras_layer in layers.OPS[layer.op](layer, rng):
                x = keras_layer(x)
        expected = layout.framework_shape(layer.out_shape)
        if tuple(x.shape[1:]) != expected:
            raise RuntimeError(f"layer {layer.name!r} ({layer.op}): Keras gives shape {tuple(x.shape[1:])}, "
                               f"the spec says {expected} (NHWC)")
        values[layer.name] = x
    if spec.aux_outputs:
        outputs = {key: values[name] for key, name in spec.outputs.items()}
    else:
        outputs = values[spec.outputs["logits"]]
    model = keras.Model(inputs, outputs, name=spec.name)
    model.spec = spec
    return model
