"""The spec's operations: their attributes, and how each one changes shape, parameters,
multiply-accumulates and receptive field.

This table is the contract between the spec and the three framework packages: every
framework has one dispatch table from these op names to its layers, and the canonical
weight format stores, for each op, the tensors listed in ``Op.tensors`` (PyTorch layout).

Shapes are per example and channel-first: ``(C, H, W)`` for feature maps, ``(F,)`` after a
flatten. All arithmetic follows PyTorch's definitions, which the other frameworks are made
to match (floor division for convolutions, PyTorch's ``ceil_mode`` rule for pools, PyTorch's
adaptive-pool windows ``[floor(i*H/o), ceil((i+1)*H/o))``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

Shape = tuple[int, ...]

# ---------------------------------------------------------------------------
# attribute kinds: a check returns the normalised value or raises ValueError with what was
# expected. Public: the spec loader checks its override keys with the same functions.


def integer(minimum: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"expected an integer >= {minimum}, got {v!r}")
        return v

    return check


def pair(minimum: int) -> Callable[[Any], tuple[int, int]]:
    one = integer(minimum)

    def check(v: Any) -> tuple[int, int]:
        if isinstance(v, list) and len(v) == 2:
            return (one(v[0]), one(v[1]))
        if isinstance(v, list):
            raise ValueError(f"expected an integer >= {minimum} or a list [h, w], got {v!r}")
        x = one(v)
        return (x, x)

    return check


def number(lo: float, hi: float, *, hi_open: bool = False, lo_open: bool = False) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"expected a number, got {v!r}")
        if v < lo or v > hi or (hi_open and v == hi) or (lo_open and v == lo):
            lb = "(" if lo_open else "["
            rb = ")" if hi_open else "]"
            raise ValueError(f"expected a number in {lb}{lo}, {hi}{rb}, got {v!r}")
        return float(v)

    return check


def boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def activation(v: Any) -> str | None:
    if v is None or v == "relu":
        return v
    raise ValueError(f"expected null or \"relu\", got {v!r}")


def numbers(n: int) -> Callable[[Any], tuple[float, ...]]:
    num = number(-1e6, 1e6)

    def check(v: Any) -> tuple[float, ...]:
        if not isinstance(v, list) or len(v) != n:
            raise ValueError(f"expected a list of {n} numbers, got {v!r}")
        return tuple(num(x) for x in v)

    return check


@dataclass(frozen=True)
class Attr:
    check: Callable[[Any], Any]
    default: Any = None
    required: bool = False


@dataclass(frozen=True)
class Op:
    """One operation of the spec language."""

    doc: str
    attrs: dict[str, Attr]
    #: canonical tensors of a layer with this op: suffix -> shape function(layer attrs, input shape)
    tensors: Callable[[dict, Shape], dict[str, Shape]] = field(default=lambda a, s: {})
    #: tensors that are buffers (running statistics), not trainable parameters
    buffers: tuple[str, ...] = ()
    n_inputs: int = 1  # -1: any number >= 2


# ---------------------------------------------------------------------------
# shape rules (PyTorch semantics)


def conv_out(size: int, k: int, s: int, p: int) -> int:
    """Output length of a convolution: floor((n + 2p - k) / s) + 1."""
    return (size + 2 * p - k) // s + 1


def pool_out(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """Output length of a max/avg pool with PyTorch's ceil_mode rule.

    With ceil_mode the last window may start in the right padding only if it starts inside
    the input or the left padding (PyTorch drops a window that would start past ``n + p``).
    """
    if not ceil_mode:
        return conv_out(size, k, s, p)
    out = -(-(size + 2 * p - k) // s) + 1
    if (out - 1) * s >= size + p:
        out -= 1
    return out


def adaptive_windows(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive-pool windows: [floor(i*n/o), ceil((i+1)*n/o)) for i in range(o)."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def uniform_windows(windows: list[tuple[int, int]], size: int) -> tuple[int, int] | None:
    """(kernel, stride) when ``windows`` over an axis of ``size`` are exactly those of a plain
    unpadded pool (so a framework's native pooling layer can compute them), else None."""
    k = windows[0][1] - windows[0][0]
    s = windows[1][0] - windows[0][0] if len(windows) > 1 else k
    if s > 0 and (size - k) // s + 1 == len(windows) and all(
            (a, b) == (i * s, i * s + k) for i, (a, b) in enumerate(windows)):
        return k, s
    return None


def _chw(shape: Shape, op: str) -> Shape:
    if len(shape) != 3:
        raise ValueError(f"{op} expects a (C, H, W) feature map, got shape {shape} (flattened?)")
    return shape


def _conv_tensors(a: dict, s: Shape) -> dict[str, Shape]:
    kh, kw = a["kernel_size"]
    t = {"weight": (a["out_channels"], s[0] // a["groups"], kh, kw)}
    if a["bias"]:
        t["bias"] = (a["out_channels"],)
    return t


def _linear_tensors(a: dict, s: Shape) -> dict[str, Shape]:
    t = {"weight": (a["out_features"], s[0])}
    if a["bias"]:
        t["bias"] = (a["out_features"],)
    return t


def _bn_tensors(a: dict, s: Shape) -> dict[str, Shape]:
    c = (s[0],)
    return {"weight": c, "bias": c, "running_mean": c, "running_var": c}


POS = integer(1)
NONNEG = integer(0)

OPS: dict[str, Op] = {
    "conv2d": Op(
        "2-D convolution (cross-correlation), symmetric zero padding, optional grouped channels "
        "and fused ReLU.",
        {
            "out_channels": Attr(POS, required=True),
            "kernel_size": Attr(pair(1), required=True),
            "stride": Attr(pair(1), (1, 1)),
            "padding": Attr(pair(0), (0, 0)),
            "groups": Attr(POS, 1),
            "bias": Attr(boolean, True),
            "activation": Attr(activation, None),
            "in_channels": Attr(POS),  # optional, checked against the inferred input
        },
        _conv_tensors,
    ),
    "linear": Op(
        "Fully connected layer y = x W^T + b on a flat input, optional fused ReLU.",
        {
            "out_features": Attr(POS, required=True),
            "bias": Attr(boolean, True),
            "activation": Attr(activation, None),
            "in_features": Attr(POS),
        },
        _linear_tensors,
    ),
    "batch_norm": Op(
        "Batch normalisation over channels; `momentum` uses PyTorch's convention "
        "(running = (1 - momentum) * running + momentum * batch), optional fused ReLU.",
        {
            "eps": Attr(number(0.0, 1.0, lo_open=True), 1e-5),
            "momentum": Attr(number(0.0, 1.0), 0.1),
            "activation": Attr(activation, None),
            "num_features": Attr(POS),
        },
        _bn_tensors,
        buffers=("running_mean", "running_var"),
    ),
    "max_pool2d": Op(
        "Max pooling; padding counts as -inf; `ceil_mode` as in PyTorch.",
        {
            "kernel_size": Attr(pair(1), required=True),
            "stride": Attr(pair(1)),  # default: kernel_size
            "padding": Attr(pair(0), (0, 0)),
            "ceil_mode": Attr(boolean, False),
        },
    ),
    "avg_pool2d": Op(
        "Average pooling over valid windows (no padding, floor mode).",
        {"kernel_size": Attr(pair(1), required=True), "stride": Attr(pair(1))},
    ),
    "adaptive_avg_pool2d": Op(
        "Average pooling to a fixed output size with PyTorch's window rule "
        "[floor(i*n/o), ceil((i+1)*n/o)); windows may overlap when n is not a multiple of o.",
        {"output_size": Attr(pair(1), required=True)},
    ),
    "lrn": Op(
        "Local response normalisation across channels, as the AlexNet paper writes it: "
        "b_i = a_i / (k + alpha * sum_{j=i-n/2}^{i+n/2} a_j^2)^beta. `alpha` is NOT divided by "
        "`size` (PyTorch's LocalResponseNorm and Caffe divide it; TensorFlow does not).",
        {
            "size": Attr(POS, required=True),
            "alpha": Attr(number(0.0, 1e3), required=True),
            "beta": Attr(number(0.0, 1e3), required=True),
            "k": Attr(number(0.0, 1e3), required=True),
        },
    ),
    "dropout": Op("Dropout with drop probability `rate` (identity in eval mode).",
                  {"rate": Attr(number(0.0, 1.0, hi_open=True), required=True)}),
    "flatten": Op("Flatten (C, H, W) to (C*H*W,) in channel-first order (the canonical order).", {}),
    "concat": Op("Concatenate feature maps along channels.", {}, n_inputs=-1),
    "transform_input": Op(
        "torchvision GoogLeNet's transform_input: x_c * std_c / 0.5 + (mean_c - 0.5) / 0.5, which "
        "turns ImageNet mean/std-normalised input into the [-1, 1] scaling of the original weights.",
        {"mean": Attr(numbers(3), required=True), "std": Attr(numbers(3), required=True)},
    ),
}

#: ops whose output width ``width_divisor`` divides (unless the layer produces a model output)
WIDTH_ATTRS = {"conv2d": "out_channels", "linear": "out_features"}


def normalise_attrs(op: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Check and normalise a layer's attributes; raises KeyError(attr)/ValueError(msg)."""
    spec = OPS[op]
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in spec.attrs:
            raise KeyError(key)
        out[key] = spec.attrs[key].check(value)
    for key, attr in spec.attrs.items():
        if key not in out:
            if attr.required:
                raise LookupError(key)
            out[key] = attr.default
    if op in ("max_pool2d", "avg_pool2d") and out["stride"] is None:
        out["stride"] = out["kernel_size"]
    return out


def infer_shape(op: str, a: dict[str, Any], ins: list[Shape]) -> Shape:
    """Output shape of one layer, or ValueError saying what does not fit."""
    if op == "concat":
        maps = [_chw(s, op) for s in ins]
        if len({s[1:] for s in maps}) != 1:
            raise ValueError("concat inputs must share H and W, got shapes " + ", ".join(map(str, maps)))
        return (sum(s[0] for s in maps), *maps[0][1:])
    (s,) = ins
    if op == "conv2d":
        c, h, w = _chw(s, op)
        if a["in_channels"] is not None and a["in_channels"] != c:
            raise ValueError(f"in_channels is {a['in_channels']} but the input has {c} channels")
        g = a["groups"]
        if c % g or a["out_channels"] % g:
            raise ValueError(f"groups={g} must divide in_channels={c} and out_channels={a['out_channels']}")
        (kh, kw), (sh, sw), (ph, pw) = a["kernel_size"], a["stride"], a["padding"]
        return (a["out_channels"], conv_out(h, kh, sh, ph), conv_out(w, kw, sw, pw))
    if op in ("max_pool2d", "avg_pool2d"):
        c, h, w = _chw(s, op)
        (kh, kw), (sh, sw) = a["kernel_size"], a["stride"]
        (ph, pw), ceil = a.get("padding", (0, 0)), a.get("ceil_mode", False)
        if ph > kh // 2 or pw > kw // 2:
            raise ValueError(f"padding {a['padding']} must be at most half the kernel {a['kernel_size']}")
        return (c, pool_out(h, kh, sh, ph, ceil), pool_out(w, kw, sw, pw, ceil))
    if op == "adaptive_avg_pool2d":
        c, _, _ = _chw(s, op)
        return (c, *a["output_size"])
    if op == "linear":
        if len(s) != 1:
            raise ValueError(f"linear expects a flat input, got shape {s}: add a flatten layer before it")
        if a["in_features"] is not None and a["in_features"] != s[0]:
            raise ValueError(f"in_features is {a['in_features']} but the input has {s[0]} features")
        return (a["out_features"],)
    if op == "batch_norm":
        if a["num_features"] is not None and a["num_features"] != s[0]:
            raise ValueError(f"num_features is {a['num_features']} but the input has {s[0]} channels")
        return s
    if op == "lrn":
        _chw(s, op)
        return s
    if op == "flatten":
        return (math.prod(s),)
    if op == "transform_input":
        if _chw(s, op)[0] != 3:
            raise ValueError(f"transform_input needs 3 input channels, got {s[0]}")
        return s
    return s  # dropout


def count_params(op: str, a: dict[str, Any], in_shape: Shape) -> tuple[int, int]:
    """(trainable parameters, buffer elements) of one layer."""
    spec = OPS[op]
    tensors = spec.tensors(a, in_shape)
    params = sum(math.prod(t) for k, t in tensors.items() if k not in spec.buffers)
    buffers = sum(math.prod(t) for k, t in tensors.items() if k in spec.buffers)
    return params, buffers


def count_macs(op: str, a: dict[str, Any], in_shape: Shape, out_shape: Shape) -> int:
    """Multiply-accumulates of convolutions and fully connected layers (what torchvision's
    GFLOPS column counts); pooling, normalisation and activations are not counted."""
    if op == "conv2d":
        kh, kw = a["kernel_size"]
        return math.prod(out_shape) * (in_shape[0] // a["groups"]) * kh * kw
    if op == "linear":
        return in_shape[0] * out_shape[0]
    return 0


def receptive_step(op: str, a: dict[str, Any], in_shape: Shape) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(kernel, stride) per axis that the op applies in the receptive-field recurrence
    rf_out = rf_in + (k - 1) * jump_in, jump_out = jump_in * s; None for ops that see the whole
    input (flatten and what follows it)."""
    if op in ("conv2d", "max_pool2d", "avg_pool2d"):
        return a["kernel_size"], a["stride"]
    if op == "adaptive_avg_pool2d":
        # the widest window and the smallest step between windows starts
        ks, ss = [], []
        for n, o in zip(in_shape[1:], a["output_size"]):
            win = adaptive_windows(n, o)
            ks.append(max(e - b for b, e in win))
            ss.append(min((win[i + 1][0] - win[i][0] for i in range(o - 1)), default=1) or 1)
        return (ks[0], ks[1]), (ss[0], ss[1])
    if op in ("flatten", "linear"):
        return None
    return (1, 1), (1, 1)
