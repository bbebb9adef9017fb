"""Data parallel proven equal to one device, per engine (CPU, 2 devices): 3 SGD steps from the
same canonical weights on the same global batches (``harness.py``; the runs: ``worker.py``).

* Without BatchNorm (vgg11): every engine equals one device within the ``data-parallel``
  tolerance, each device having trained on B/N rows.
* With BatchNorm (vgg11_bn): JAX sharding and Keras' DataParallel compute global statistics and
  equal one device; DDP and MirroredStrategy compute per-replica statistics and equal one
  process that splits each batch into N chunks and accumulates their gradients (DDP bitwise),
  and not one device; Keras' synchronized BatchNorm (``--sync-bn``, TensorFlow) equals one device.
* Seeded faults, each of which must fail those checks: a loss summed instead of averaged over
  the replicas, every replica fed the whole batch, the gradient all-reduce skipped.

The default run trains each engine's light share (``harness.LIGHT``: one 2-vs-1 equivalence per
engine, the faults on DDP and Flax); ``heavy`` runs every engine x part.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from rosetta_cnn.core import ports
from rosetta_cnn.verification.tolerances import tolerance

from . import harness

TOL = tolerance("cpu", "data-parallel").rel
ENGINES = ("torch", "flax", "keras/jax", "keras/tensorflow")


def cases(part: str) -> list:
    """The engines, each in the default run where ``part`` is in its light share (else heavy)."""
    return [pytest.param(label, id=label, marks=() if part in harness.LIGHT[label] else pytest.mark.heavy)
            for label in ENGINES]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Callable[[str, str], harness.Results]:
    """An engine's runs for a test needing ``part``: its light job where that covers the part,
    else every part; each job's worker process(es) run once per module, joined with a timeout."""
    done: dict[tuple[str, tuple[str, ...]], harness.Results] = {}

    def get(label: str, part: str) -> harness.Results:
        if not ports.resolve(label).installed():
            pytest.skip(f"{label} is not installed")
        parts = harness.LIGHT[label] if part in harness.LIGHT[label] else harness.PARTS
        if (label, parts) not in done:
            tmp = tmp_path_factory.mktemp(label.replace("/", "-"))
            job = harness.make_job(tmp, label, parts)
            outcome = harness.run_worker(job, label)
            assert outcome.ok, outcome.describe("worker") + "\n" + "\n".join((e or "")[-3000:] for e in outcome.stderr)
            done[label, parts] = harness.load_results(job)
        return done[label, parts]

    return get


@pytest.mark.parametrize("label", cases("plain"))
def test_without_batchnorm_equals_one_device(runs, label):
    results = runs(label, "plain")
    assert harness.problems(results, "plain", "dp", label, TOL) == []


@pytest.mark.parametrize("label", cases("bn"))
def test_batchnorm_statistics_as_the_engine_states(runs, label):
    results = runs(label, "bn")
    assert harness.problems(results, "bn", "dp", label, TOL) == []
    dp, one = results.weights("bn", "dp"), results.weights("bn", "reference")
    if harness.BN_REFERENCE[label] == "chunked":  # per-replica statistics are not one device's
        assert harness.difference(dp, one, parameters=True)[0] > 100 * TOL
    if label == "torch":  # DDP == one process accumulating the chunks' gradients, bit for bit
        chunked = results.weights("bn", "chunked")
        assert all(np.array_equal(dp[k], chunked[k]) for k in dp), [k for k in dp if not np.array_equal(dp[k], chunked[k])]
    if label == "keras/tensorflow":  # --sync-bn: Keras' synchronized BatchNorm gives global statistics
        assert harness.problems(results, "bn", "sync", label, TOL) == []


@pytest.mark.parametrize("fault", harness.FAULTS)
@pytest.mark.parametrize("label", cases("faults"))
def test_seeded_fault_fails(runs, label, fault):
    found = harness.problems(runs(label, "faults"), "bn", f"fault:{fault}", label, TOL)
    assert found, f"{label}: the fault {fault!r} passed the equivalence checks"
