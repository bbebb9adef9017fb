"""Seeded faults: break one port on purpose and check that parity fails at the right layer.

A parity check that passes a broken port is a bug. Each case below is a mistake people make
when porting these networks; the check must fail for every pair involving the broken port,
by a wide margin over the tolerance, and the first-divergence report must name the layer
where the fault sits.
"""
from __future__ import annotations

import pytest

from rosetta_cnn.verification.parity import model_parity, parity_spec

from ..conftest import SMALL, needs
from .faults import (
    adaptive_windows_off_by_one,
    bn_eps_framework_default,
    drop_ceil_mode,
    grouped_conv_split_interleaved,
    kernel_transpose_swaps_kh_kw,
    lrn_alpha_not_scaled,
    skip_flatten_permutation,
)

# (fault, broken framework, reference framework, model, mode, layer the report must name
#  [, overrides on top of the model's SMALL configuration])
CASES = [
    (skip_flatten_permutation, "keras", "torch", "alexnet", "eval", "fc6"),
    (skip_flatten_permutation, "flax", "torch", "googlenet", "train", "aux1_fc1"),
    (bn_eps_framework_default, "flax", "keras", "googlenet", "eval", "conv1_bn"),
    (bn_eps_framework_default, "keras", "torch", "vgg11_bn", "eval", "block1_conv1_bn"),
    (drop_ceil_mode, "torch", "flax", "googlenet", "eval", "maxpool1"),
    (lrn_alpha_not_scaled, "torch", "keras", "alexnet_paper", "eval", "lrn1"),
    (kernel_transpose_swaps_kh_kw, "flax", "torch", "vgg11", "eval", "block1_conv1"),
    (kernel_transpose_swaps_kh_kw, "keras", "flax", "googlenet_paper", "eval", "conv1"),
    # alexnet at 256x256: pool5 gives 7x7 and avgpool's 7 -> 6 windows overlap
    (adaptive_windows_off_by_one, "flax", "keras", "alexnet", "eval", "avgpool", {"input_size": 256}),
    (grouped_conv_split_interleaved, "torch", "flax", "alexnet_paper", "eval", "conv2"),
]


CASES = [case if len(case) == 7 else (*case, {}) for case in CASES]


def _spec(model, extra):
    return parity_spec(model, overrides={**SMALL[model], **extra})


@pytest.mark.parametrize("fault, broken, reference, model, mode, layer, extra", CASES,
                         ids=[f"{c[0].__name__}-{c[1]}-{c[3]}" for c in CASES])
def test_seeded_fault_is_caught_and_localised(monkeypatch, fault, broken, reference, model, mode, layer, extra):
    needs(broken, reference)
    from rosetta_cnn.core import ports as frameworks

    fault(monkeypatch, frameworks.load(broken))
    records = model_parity(_spec(model, extra), [reference, broken], modes=[mode])
    assert len(records) == 2  # both directions
    for r in records:
        assert not r.passed, f"{fault.__name__} passed parity: {r}"
        assert r.max_rel > 10 * r.tolerance, r.max_rel
        assert r.first_divergence == layer, (r.first_divergence, layer)


def test_unbroken_ports_pass_the_same_cases():
    """The control: the same configurations pass without a fault (so the failures above are
    the faults' doing)."""
    needs("torch", "keras", "flax")
    seen = set()
    for _, broken, reference, model, mode, _, extra in CASES:
        if (model, mode, str(extra)) in seen:
            continue
        seen.add((model, mode, str(extra)))
        records = model_parity(_spec(model, extra), [reference, broken], modes=[mode])
        assert all(r.passed for r in records), [r for r in records if not r.passed]
