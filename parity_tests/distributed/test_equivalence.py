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
"""
from __future__ import annotations

import numpy as np
import pytest

from rosetta_cnn.core import ports
from rosetta_cnn.verification.tolerances import tolerance

from . import harness

TOL = tolerance("cpu", "data-parallel").rel
ENGINES = ("torch", "flax", "keras/jax", "keras/tensorflow")


@pytest.fixture(scope="module", params=ENGINES)
def engine(request, tmp_path_factory) -> tuple[str, harness.Results]:
    """One engine's runs: its worker process(es), joined with a timeout."""
    label = request.param
    if not ports.resolve(label).installed():
        pytest.skip(f"{label} is not installed")
    tmp = tmp_path_factory.mktemp(label.replace("/", "-"))
    job = harness.make_job(tmp, label)
    outcome = harness.run_worker(job, label)
    assert outcome.ok, outcome.describe("worker") + "\n" + "\n".join((e or "")[-3000:] for e in outcome.stderr)
    return label, harness.load_results(job)


def test_without_batchnorm_equals_one_device(engine):
    label, results = engine
    assert harness.problems(results, "plain", "dp", label, TOL) == []


def test_batchnorm_statistics_as_the_engine_states(engine):
    label, results = engine
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
def test_seeded_fault_fails(engine, fault):
    label, results = engine
    found = harness.problems(results, "bn", f"fault:{fault}", label, TOL)
    assert found, f"{label}: the fault {fault!r} passed the equivalence checks"
