"""Training-step parity: the same canonical start and batches give the same gradients, the same
weights after 1 and 5 steps and the same BatchNorm running statistics in every framework.

For each model family and every ordered pair (reference, target) of frameworks, each
framework trains once from ``random_canonical`` weights (dropout 0) on 5 fixed batches;
``rosetta_cnn.verification.training.compare_runs`` measures each check against the reference, and the tolerances
are the ``train-*`` entries of ``shared/verification/tolerances.py``. ``test_train_mutations.py`` shows
each check failing on a deliberately broken port.
"""
from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from rosetta_cnn.core.canonical import random_canonical
from rosetta_cnn.core.spec import load_spec
from rosetta_cnn.training.trainer import OptimizerConfig
from rosetta_cnn.verification.tolerances import tolerance
from rosetta_cnn.verification.training import TrainingRun, compare_runs, first_steps_curves, training_run

from ..conftest import ALL_FRAMEWORKS, needs

#: one model per family, at the smallest sizes where every op works (GoogLeNet's aux heads
#: included), dropout 0 so that training is deterministic
FAMILIES: dict[str, dict] = {
    "alexnet": {"width_divisor": 4, "input_size": 64, "num_classes": 10, "dropout": 0.0},
    "vgg11_bn": {"width_divisor": 8, "input_size": 32, "num_classes": 10, "dropout": 0.0},
    "googlenet": {"width_divisor": 8, "input_size": 64, "num_classes": 10, "dropout": 0.0, "dropout_aux": 0.0},
}
#: (batch size, seed of the weights and batches) per family. GoogLeNet at 64x64 has 2x2 maps
#: in inception5 and a 3x3/1 max pool in every block: ~5 x 10^5 max-pool windows in 5 steps at
#: batch 8, so most seeds meet a window whose two largest values lie within fp32 rounding of each
#: other. Where such a window is on the gradient's path, the argmax differs between frameworks (or
#: between fp32 and fp64 in one) and the trajectories part by 0.1-0.8 by step 5; which framework
#: flips depends on the CPU's kernels (seed 1 passed on an AMD EPYC and failed Keras on an Intel
#: Xeon with AVX-512: 2.4e-3 at inception4b_branch4_conv, a near-tie in inception4c's pool).
#: A thread count alone changes the rounding enough: PyTorch on 1 thread reproduces seed 1's flip.
#: So the seed is chosen to agree across ten numeric paths on that Xeon: PyTorch on 2 threads, on 1
#: and in NCHW; Flax and Keras-on-JAX with and without the fast XLA flags; Keras on TensorFlow and
#: on PyTorch. Of the 24 seeds of 0-336 with the widest margin from a tie in the fp64 PyTorch run
#: (smallest gap of a window's top two values over that pool's largest fp32-vs-fp64 difference), 6
#: agree on all ten; seed 73 has the most headroom (its worst check among the PyTorch paths and
#: Flax at 0.22 of its tolerance; seed 321, the widest margin, reaches 1.1 on 1 thread). Smaller
#: batches do not help: at batch 2, BatchNorm over 8 values a channel in inception5 parts the runs.
#: See shared/verification/tolerances.py, train-gradients
DATA = {"alexnet": (4, 1), "vgg11_bn": (4, 1), "googlenet": (8, 73)}
#: lr 1e-4: from random_canonical weights (no BatchNorm in AlexNet) lr 1e-3 already makes the
#: loss jump 5 -> 0.8 -> 14 within 3 steps, where fp32 rounding is amplified chaotically
STEPS, LR = 5, 1e-4
#: Adam's update lr * m / (sqrt(v) + eps) turns a gradient that is fp32 noise (|g| ~ 1e-9, e.g.
#: a weight fed by a ReLU output that is 0 in one framework and 1e-9 in another) into a full
#: +-lr step when eps = 1e-8; eps = 1e-3 keeps such noise at 1e-6 lr, and makes the epsilon
#: placement matter more (Keras' native Adam would differ by ~3% at step 1)
ADAM_EPS = 1e-3
PAIRS = list(itertools.permutations(ALL_FRAMEWORKS, 2))
CHECKS = {"gradients": "train-gradients", "weights@1": "train-weights@1", "weights@5": "train-weights@5",
          "bn_stats@1": "train-bn-stats", "bn_stats@5": "train-bn-stats", "loss": "train-loss"}

_RUNS: dict[tuple, TrainingRun] = {}
#: a folder where PyTorch's and Flax's runs are kept for other processes: the Keras-backend
#: children of ``ports/test_keras_backends.py`` (the first computes them, the next and this
#: session read them); set in the children's environment, or by ``share_runs`` here
RUNS_DIR = "ROSETTA_TEST_TRAINING_RUNS"
_shared: list[str] = []


def batches(spec, batch: int, seed: int, n: int = STEPS) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(batch, *spec.input_shape)).astype(np.float32),
             rng.integers(0, spec.layers[-1].out_shape[0], batch)) for _ in range(n)]


def family_spec(model: str):
    return load_spec(model, FAMILIES[model])


def fresh_run(model: str, framework: str, opt: OptimizerConfig) -> TrainingRun:
    """One framework's training run for a family, from the family's canonical start."""
    spec = family_spec(model)
    batch, seed = DATA[model]
    return training_run(framework, spec, random_canonical(spec, seed=seed), batches(spec, batch, seed), opt)


def share_runs(folder: str) -> None:
    """From now on, read and keep this session's PyTorch and Flax runs in ``folder``."""
    _shared[:] = [folder]


def run(model: str, framework: str, opt: OptimizerConfig) -> TrainingRun:
    """``fresh_run``, cached for the session and, for PyTorch and Flax, in the shared folder
    (``RUNS_DIR``) when there is one."""
    key = (model, framework, opt)
    if key not in _RUNS:
        path = run_file(os.environ.get(RUNS_DIR) or (_shared[0] if _shared else None), model, framework, opt)
        if path is not None and path.exists():
            _RUNS[key] = load_run(path)
        else:
            _RUNS[key] = fresh_run(model, framework, opt)
            if path is not None:
                save_run(path, _RUNS[key])
    return _RUNS[key]


def run_file(folder: str | None, model: str, framework: str, opt: OptimizerConfig) -> Path | None:
    """Where a shared run is kept: PyTorch's and Flax's only (a Keras run depends on the
    process's backend)."""
    if not folder or framework not in ("torch", "flax"):
        return None
    key = hashlib.sha256(repr((model, framework, opt)).encode()).hexdigest()[:16]
    return Path(folder) / f"{model}-{framework}-{key}.npz"


def save_run(path: Path, r: TrainingRun) -> None:
    """``r`` as ``np.savez`` arrays (nothing pickled), written whole or not at all."""
    arrays = {"losses": np.asarray(r.losses, np.float64),
              **{f"start/{k}": v for k, v in r.start.items()}, **{f"grad/{k}": v for k, v in r.gradients.items()},
              **{f"w{step}/{k}": v for step, ws in r.weights.items() for k, v in ws.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_run(path: Path) -> TrainingRun:
    """A run that ``save_run`` wrote."""
    with np.load(path, allow_pickle=False) as f:
        parts: dict[str, dict[str, np.ndarray]] = {}
        for name in f.files:
            if name != "losses":
                group, tensor = name.split("/", 1)
                parts.setdefault(group, {})[tensor] = f[name]
        losses = [float(v) for v in f["losses"]]
    weights = {int(g[1:]): ts for g, ts in parts.items() if g.startswith("w")}
    return TrainingRun(path.name.split("-")[1], parts["start"], parts["grad"], weights, losses)


def failures(ref: TrainingRun, got: TrainingRun) -> list[str]:
    """Every check past its tolerance, as readable lines (empty: parity holds)."""
    out = []
    for check, (diff, where) in compare_runs(ref, got).items():
        tol = tolerance("cpu", CHECKS[check]).rel
        if not diff <= tol:
            out.append(f"{check}: {diff:.2e} > {tol:.0e} at {where}")
    return out


@pytest.mark.parametrize("model", list(FAMILIES))
@pytest.mark.parametrize("ref,target", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_training_step_parity(model: str, ref: str, target: str) -> None:
    needs(ref, target)
    opt = OptimizerConfig("sgd", lr=LR)
    problems = failures(run(model, ref, opt), run(model, target, opt))
    assert not problems, f"{model} {ref} -> {target} (SGD): " + "; ".join(problems)


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("ref,target", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_adam_mappings(name: str, ref: str, target: str) -> None:
    """The Adam / AdamW mappings (epsilon placement, coupled vs decoupled decay) on VGG-BN."""
    needs(ref, target)
    opt = OptimizerConfig(name, lr=LR, eps=ADAM_EPS)
    problems = failures(run("vgg11_bn", ref, opt), run("vgg11_bn", target, opt))
    assert not problems, f"vgg11_bn {ref} -> {target} ({name}): " + "; ".join(problems)


def test_googlenet_aux_heads_are_trained() -> None:
    """The aux heads get gradients (weighted 0.3 in the loss) in training mode."""
    needs("torch")
    grads = run("googlenet", "torch", OptimizerConfig("sgd", lr=LR)).gradients
    assert np.abs(grads["aux1_fc2.weight"]).max() > 0 and np.abs(grads["aux2_fc2.weight"]).max() > 0


@pytest.mark.heavy
def test_digits_loss_curves_agree() -> None:
    """The first 20 steps on digits (the README's figure) agree across the three frameworks."""
    needs(*ALL_FRAMEWORKS)
    curves = first_steps_curves("vgg11", ALL_FRAMEWORKS, steps=20, batch=64, opt=OptimizerConfig("adam", lr=1e-3),
                                overrides={"width_divisor": 4})
    ref = np.asarray(curves["torch"])
    tol = tolerance("cpu", "train-loss-curve").rel
    for fw, losses in curves.items():
        gap = float(np.abs(np.asarray(losses) - ref).max() / np.abs(ref).max())
        assert gap <= tol, f"{fw}: loss curve differs from PyTorch's by {gap:.2e} > {tol:.0e}"


@pytest.mark.parametrize("framework", ALL_FRAMEWORKS)
def test_steps_never_write_into_the_callers_arrays(framework: str) -> None:
    """A trainer that updates buffers in place (Flax donates the model's and optimizer's
    buffers to its compiled step) leaves the loaded tensors and earlier exports untouched."""
    from rosetta_cnn.training.trainer import build_trainer

    needs(framework)
    spec = family_spec("vgg11_bn")
    start = random_canonical(spec, seed=1)
    kept = {k: v.copy() for k, v in start.items()}
    trainer = build_trainer(framework, spec, OptimizerConfig("sgd", lr=0.1), start)
    before = trainer.export_weights()
    kept_before = {k: v.copy() for k, v in before.items()}
    for x, y in batches(spec, 4, 1, n=2):
        trainer.step(x, y)
    after = trainer.export_weights()
    assert all(np.array_equal(start[k], kept[k]) for k in kept), "a step wrote into the loaded tensors"
    assert all(np.array_equal(before[k], kept_before[k]) for k in kept_before), "a step wrote into an export"
    assert not np.array_equal(after["block1_conv1.weight"], before["block1_conv1.weight"]), "the step did not train"
