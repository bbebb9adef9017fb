"""Framework-free analysis of a resolved spec: shape trace, parameters, MACs, receptive field.

Receptive field (RF) and jump follow the usual recurrence over the layer graph,
``rf_out = rf_in + (k - 1) * jump_in`` and ``jump_out = jump_in * s``, starting from
``rf = jump = 1`` at the input; for a stack of n 3x3/1 convs this is the VGG paper's
``k + (k - 1)(n - 1)``. The RF counts input pixels along one axis that can influence one
output position, ignoring padding (so it may exceed the input size: vgg16's conv5_3 sees
196 pixels, its last max pool 212). A concat takes the largest RF of its inputs. Flatten
and the layers after it see the whole input: their RF is reported as ``None`` ("full").
MACs count the multiply-accumulates of convolutions and fully connected layers only, which
is what torchvision's GFLOPS column reports.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from . import ops
from .spec import INPUT, ModelSpec


@dataclass(frozen=True)
class LayerStats:
    name: str
    op: str
    output_shape: tuple[int, ...]
    params: int
    buffers: int
    macs: int
    receptive_field: tuple[int, int] | None
    jump: tuple[int, int] | None
    training_only: bool
    activation: str | None = None  # fused activation applied to the output


@dataclass(frozen=True)
class Summary:
    model: str
    input_shape: tuple[int, int, int]
    layers: tuple[LayerStats, ...]

    @property
    def total_params(self) -> int:
        return sum(l.params for l in self.layers)

    @property
    def total_macs(self) -> int:
        """MACs of one example in eval mode (auxiliary heads excluded)."""
        return sum(l.macs for l in self.layers if not l.training_only)

    @property
    def inference_params(self) -> int:
        return sum(l.params for l in self.layers if not l.training_only)

    def layer(self, name: str) -> LayerStats:
        return next(l for l in self.layers if l.name == name)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "layers": [{**asdict(l), "output_shape": list(l.output_shape),
                        "receptive_field": list(l.receptive_field) if l.receptive_field else None,
                        "jump": list(l.jump) if l.jump else None} for l in self.layers],
            "total_params": self.total_params,
            "inference_params": self.inference_params,
            "total_macs": self.total_macs,
        }


def analyze(spec: ModelSpec) -> Summary:
    """Per-layer statistics of ``spec`` at its input size (``input_size`` override)."""
    rf: dict[str, tuple[tuple[int, int], tuple[int, int]] | None] = {INPUT: ((1, 1), (1, 1))}
    rows = []
    for layer in spec.layers:
        params, buffers = ops.count_params(layer.op, dict(layer.attrs), layer.in_shape)
        macs = ops.count_macs(layer.op, dict(layer.attrs), layer.in_shape, layer.out_shape)
        ins = [rf[i] for i in layer.inputs]
        step = ops.receptive_step(layer.op, dict(layer.attrs), layer.in_shape)
        if step is None or any(i is None for i in ins):
            rf[layer.name] = None
        else:
            r_in = tuple(max(i[0][a] for i in ins) for a in (0, 1))  # type: ignore[index]
            j_in = tuple(max(i[1][a] for i in ins) for a in (0, 1))  # type: ignore[index]
            (kh, kw), (sh, sw) = step
            rf[layer.name] = ((r_in[0] + (kh - 1) * j_in[0], r_in[1] + (kw - 1) * j_in[1]),
                              (j_in[0] * sh, j_in[1] * sw))
        cur = rf[layer.name]
        rows.append(LayerStats(layer.name, layer.op, layer.out_shape, params, buffers, macs,
                               cur[0] if cur else None, cur[1] if cur else None, layer.training_only,
                               layer.attrs.get("activation")))
    return Summary(spec.name, spec.input_shape, tuple(rows))


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _fmt_pair(p: tuple[int, int] | None) -> str:
    if p is None:
        return "full"
    return str(p[0]) if p[0] == p[1] else f"{p[0]}x{p[1]}"


def human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3f}{unit}"
    return str(int(n))


def format_table(summary: Summary) -> str:
    """The shape trace as a text table, one row per layer, totals at the end."""
    head = ("layer", "op", "output (CxHxW)", "params", "MACs", "RF", "jump")
    rows = [(l.name + (" *" if l.training_only else ""), l.op + (f"+{l.activation}" if l.activation else ""),
             _fmt_shape(l.output_shape),
             f"{l.params:,}", human(l.macs) if l.macs else "-", _fmt_pair(l.receptive_field), _fmt_pair(l.jump))
            for l in summary.layers]
    rows.insert(0, ("input", "", _fmt_shape(summary.input_shape), "", "", "1", "1"))
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    right = {3, 4, 5, 6}

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    out = [line(head), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    out.append("")
    out.append(f"total parameters: {summary.total_params:,}")
    if summary.inference_params != summary.total_params:
        out.append(f"  without training-only layers (*, auxiliary heads): {summary.inference_params:,}")
    out.append(f"total MACs (eval, per image): {summary.total_macs:,} ({human(summary.total_macs)})")
    return "\n".join(out)
