"""The one table of parity tolerances, with the reason for each.

A comparison passes when ``max_abs / scale <= rel``, where ``max_abs`` is the largest
absolute difference between the reference output (the source framework's) and the target's,
and ``scale`` is the largest absolute value of the reference output. Relative-to-scale keeps
one number meaningful for logits of any magnitude; it is 10x stricter than the 1e-4 absolute
tolerance of Hugging Face's cross-framework tests at logits of order 1.

Never loosen an entry to make a test pass: find the cause (the mutation tests in
``parity_tests/test_mutations.py`` show what a real port error looks like: 1e-3 and up).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    rel: float
    reason: str


TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("cpu", "eval"): Tolerance(
        1e-5,
        "fp32 on CPU. Each framework sums a conv's or FC's products in its own order (oneDNN, "
        "Eigen, XLA), so results differ by a few ulp per layer (fp32 eps = 1.2e-7), growing "
        "roughly with sqrt(depth x fan-in); measured maxima stay below 2e-6 of the logit scale "
        "for all 12 models at 224x224 (see README).",
    ),
    ("cpu", "train"): Tolerance(
        1e-5,
        "fp32 on CPU in training mode: as eval, plus BatchNorm normalising by the batch's own "
        "mean and variance (computed with different reduction orders per framework), and the "
        "auxiliary heads' outputs compared too; dropout is set to 0 so no random masks enter.",
    ),
    ("gpu", "eval"): Tolerance(
        1e-5,
        "fp32 on GPU with TF32 and reduced-precision matmuls turned off (strict_precision()): "
        "cuDNN/XLA pick different conv algorithms (Winograd, FFT, implicit GEMM) whose rounding "
        "differs more than CPU kernels do, but stays at fp32 accuracy.",
    ),
    ("gpu", "train"): Tolerance(
        1e-5,
        "as GPU eval, plus batch-statistics BatchNorm as on CPU.",
    ),
    ("cpu-vs-gpu", "eval"): Tolerance(
        1e-5,
        "one framework on CPU against itself on GPU, strict fp32 on both: only kernel "
        "summation order differs.",
    ),
    ("cpu-vs-gpu", "train"): Tolerance(1e-5, "as cpu-vs-gpu eval, with batch-statistics BatchNorm."),
}


def tolerance(device: str, mode: str) -> Tolerance:
    """The tolerance for one comparison (device: cpu, gpu or cpu-vs-gpu; mode: eval or train)."""
    return TOLERANCES[(device, mode)]
