"""VGG's fully-convolutional test-time head (Simonyan & Zisserman 2014, sec. 3.2,
https://arxiv.org/abs/1409.1556): "the fully-connected layers are first converted to
convolutional layers (the first FC layer to a 7x7 conv. layer, the last two FC layers to 1x1
conv. layers)", so the net takes any input of at least 224x224 and returns a class-score map.

Framework-free: :func:`fcn_spec` rewrites a VGG spec (``avgpool`` and ``flatten`` removed,
``fc1`` a 7x7 conv, ``fc2`` and ``predictions`` 1x1 convs, same layer names) and
:func:`fcn_weights` reshapes the same canonical weights; each framework just builds the
transformed spec and imports the reshaped tensors. At 224x224 the score map is 1x1 and equals
the FC model's logits; at 320x320 it is 4x4 (one score vector per 32-pixel step).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from ..core import ops
from ..core.errors import SpecError
from ..core.layout import flatten_inputs
from ..core.spec import Layer, ModelSpec

#: the FC layers that become convolutions -> kernel size (fc1 reads the 7x7 map)
HEAD = {"fc1": 7, "fc2": 1, "predictions": 1}


def fcn_spec(spec: ModelSpec) -> ModelSpec:
    """The fully-convolutional form of a VGG spec (use the spec's ``input_size`` for the input
    the FCN will run on, at least 224x224). Its ``logits`` output is an [N, classes, h, w] map."""
    if spec.family != "vgg":
        raise SpecError(f"the fully-convolutional head is defined for VGG models, not {spec.name!r}")
    pool = spec.layer("block5_pool")
    if min(pool.out_shape[1:]) < HEAD["fc1"]:
        raise SpecError(f"{spec.name}: the fully-convolutional head needs an input of at least 224x224 "
                        f"(block5_pool is {pool.out_shape[1]}x{pool.out_shape[2]}, fc1's kernel is 7x7)")
    layers: list[Layer] = []
    prev = pool
    for layer in spec.layers:
        if layer.name in ("avgpool", "flatten"):
            continue
        if layer.name in HEAD:
            k = HEAD[layer.name]
            attrs = ops.normalise_attrs("conv2d", {"out_channels": layer.out_shape[0], "kernel_size": k,
                                                   "activation": layer.attrs.get("activation")})
            layer = Layer(layer.name, "conv2d", (prev.name,), attrs, (prev.out_shape,),
                          ops.infer_shape("conv2d", attrs, [prev.out_shape]), f"fcn({layer.path})")
        elif layer.op == "dropout" and prev.name in HEAD:
            layer = dataclasses.replace(layer, inputs=(prev.name,), in_shapes=(prev.out_shape,),
                                        out_shape=prev.out_shape, path=f"fcn({layer.path})")
        layers.append(layer)
        prev = layer
    return dataclasses.replace(spec, layers=tuple(layers), _index={})


def fcn_weights(spec: ModelSpec, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical tensors of the FC model ``spec`` -> those of ``fcn_spec(spec)`` (views, no copies).

    ``fc1.weight`` ``[O, C*7*7]`` numbers its inputs channel-first (``c*49 + h*7 + w``, the
    canonical flatten order), which is exactly a ``[O, C, 7, 7]`` conv kernel; ``fc2`` and
    ``predictions`` ``[O, I]`` become ``[O, I, 1, 1]``. Biases are unchanged.
    """
    c, h, w = flatten_inputs(spec)["fc1"]
    out = dict(tensors)
    for name in HEAD:
        weight = np.asarray(tensors[f"{name}.weight"])
        if name == "fc1":
            out[f"{name}.weight"] = weight.reshape(weight.shape[0], c, h, w)  # [O, C*H*W] -> [O, C, H, W]
        else:
            out[f"{name}.weight"] = weight.reshape(*weight.shape, 1, 1)  # [O, I] -> [O, I, 1, 1]
    return out
