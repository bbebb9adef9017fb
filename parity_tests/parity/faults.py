"""Seeded faults: mistakes people make when porting these networks, each a function
``fault(monkeypatch, port)`` that breaks one port (``port`` is its package, e.g.
``rosetta_cnn.flax_impl``). A plain module (not a test file) so that a parity worker process
can import and apply them (``WorkerPool(patches={label: ["parity_tests.parity.faults:NAME"]})``)
without importing pytest's fixtures.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from rosetta_cnn.core import layout as nhwc


def _with_attrs(factory, **changes):
    """An OPS factory that builds its layer as if the spec said ``changes`` (a port that
    ignores or hard-codes an attribute)."""
    def broken(layer, *args):
        return factory(dataclasses.replace(layer, attrs={**layer.attrs, **changes}), *args)
    return broken


def skip_flatten_permutation(mp, fw):
    # the first FC after an NHWC flatten keeps its canonical (C, H, W) row order
    lay = fw.layout
    mp.setattr(lay, "linear_kernel_to_framework", lambda w, chw: nhwc.linear_kernel_to_io(w, None))
    mp.setattr(lay, "linear_kernel_from_framework", lambda w, chw: nhwc.linear_kernel_from_io(w, None))


def bn_eps_framework_default(mp, fw):
    # the framework's default epsilon instead of the spec's (Keras 1e-3; Flax, PyTorch 1e-5):
    # caught where the spec says otherwise (GoogLeNet 1e-3, VGG-BN 1e-5)
    default = {"rosetta_cnn.keras_impl": 1e-3}.get(fw.__name__, 1e-5)
    mp.setitem(fw.layers.OPS, "batch_norm", _with_attrs(fw.layers.OPS["batch_norm"], eps=default))


def drop_ceil_mode(mp, fw):
    mp.setitem(fw.layers.OPS, "max_pool2d", _with_attrs(fw.layers.OPS["max_pool2d"], ceil_mode=False))


def lrn_alpha_not_scaled(mp, fw):
    # nn.LocalResponseNorm divides alpha by size: passing the paper's alpha straight through
    mp.setattr(fw.layers, "lrn_alpha", lambda alpha, size: alpha)


def kernel_transpose_swaps_kh_kw(mp, fw):
    # [O, I, kH, kW] -> [kW, kH, I, O] instead of [kH, kW, I, O] (and the matching inverse)
    mp.setattr(fw.layout, "conv_kernel_to_framework", lambda w: np.ascontiguousarray(w.transpose(3, 2, 1, 0)))
    mp.setattr(fw.layout, "conv_kernel_from_framework", lambda w: np.ascontiguousarray(w.transpose(3, 2, 1, 0)))


def adaptive_windows_off_by_one(mp, fw):
    # windows end one pixel early: [floor(i*n/o), ceil((i+1)*n/o) - 1)
    exact = fw.layers.adaptive_windows
    mp.setattr(fw.layers, "adaptive_windows",
               lambda n, o: [(a, b - 1 if b - a > 1 else b) for a, b in exact(n, o)])


def grouped_conv_split_interleaved(mp, fw):
    # groups take every g-th input channel instead of consecutive blocks
    factory = fw.layers.OPS["conv2d"]

    def broken(layer, *args):
        conv = factory(layer, *args)
        g = layer.attrs["groups"]
        if g > 1:
            c = layer.in_shape[0]
            perm = np.arange(c).reshape(c // g, g).T.ravel().tolist()
            conv.register_forward_pre_hook(lambda mod, inputs: (inputs[0][:, perm],))
        return conv

    mp.setitem(fw.layers.OPS, "conv2d", broken)
