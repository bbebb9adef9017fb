"""The data-parallel plan, the process group's join and the XLA host-device flag, without a
framework: clear errors before anything starts, a failing process stopping its peers at once."""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest

from rosetta_cnn import cli
from rosetta_cnn.core import xla
from rosetta_cnn.core.errors import RosettaError
from rosetta_cnn.training import distributed

from ..conftest import needs

TORCHRUN = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_plan_splits_the_global_batch_and_trims_the_last():
    plan = distributed.plan("flax", 4, 64, env={})
    assert (plan.devices, plan.per_device_batch, plan.launcher, plan.processes, plan.primary) == (4, 16, "local", 1, True)
    assert plan.steps(1438) == 23 and len(plan.trim(np.arange(30))) == 28  # digits: last batch 30 -> 28
    assert plan.steps(64 * 3 + 2) == 3  # a last batch of 2 examples on 4 devices is left out
    assert distributed.replica_rows(8, 1, 2) == slice(4, 8)
    assert distributed.plan("torch", 1, 64, env={}) is None and distributed.plan("keras/torch", None, 64, env={}) is None


@pytest.mark.parametrize("label, devices, batch, env, kwargs, message", [
    ("torch", 4, 30, {}, {}, "--batch 30 does not split evenly over 4 devices"),
    ("keras/torch", 2, 8, {}, {}, "keras/torch has no data-parallel engine"),
    ("keras", 2, 8, {"KERAS_BACKEND": "torch"}, {}, "torch, flax, keras/jax, keras/tensorflow"),
    ("flax", 1, 8, {}, {"sync_bn": True}, "--sync-bn synchronises BatchNorm"),
    ("flax", 2, 8, {}, {"launcher": "torchrun"}, "--launcher torchrun starts torch processes, not flax"),
    ("torch", 2, 8, {}, {"launcher": "torchrun"}, "RANK and WORLD_SIZE are not set"),
    ("torch", 4, 8, TORCHRUN, {}, "--devices 4 but torchrun started 2 processes"),
    ("keras/tensorflow", None, 8, {"TF_CONFIG": "{bad"}, {}, "TF_CONFIG is not a tf.distribute cluster"),
    ("flax", 0, 8, {}, {}, "--devices must be at least 1"),
])
def test_plan_errors_name_the_problem(label, devices, batch, env, kwargs, message, monkeypatch):
    if "KERAS_BACKEND" in env:  # the label 'keras' reads this process's environment
        monkeypatch.setenv("KERAS_BACKEND", env["KERAS_BACKEND"])
    with pytest.raises(RosettaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        distributed.plan(label, devices, batch, env=env, **kwargs)


def test_launchers_are_found_in_the_environment():
    plan = distributed.plan("torch", None, 8, env=TORCHRUN)
    assert (plan.launcher, plan.devices, plan.processes, plan.process_index, plan.primary) == \
        ("torchrun", 2, 2, 1, False)
    assert distributed.plan("torch", None, 8, env={**TORCHRUN, distributed.LOCAL_WORKER_ENV: "1"}).launcher == "local"
    config = {"cluster": {"worker": ["a:1", "b:2", "c:3"]}, "task": {"type": "worker", "index": 2}}
    plan = distributed.plan("keras/tensorflow", None, 9, env={"TF_CONFIG": json.dumps(config)})
    assert (plan.launcher, plan.devices, plan.process_index, plan.engine) == \
        ("tf-config", 3, 2, "tf.distribute.MultiWorkerMirroredStrategy")
    jax_env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert distributed.plan("flax", 4, 8, env=jax_env).local_devices == 2
    assert distributed.plan("flax", 2, 8, env=jax_env, launcher="local").processes == 1  # an explicit local wins
    assert distributed.plan("keras/jax", 2, 8, env={"TF_CONFIG": "{}"}).launcher == "local"  # another engine's


def test_xla_host_devices_flag_is_set_next_to_the_others():
    flags = xla.with_host_devices(f"--foo=1 {xla.HOST_DEVICES_FLAG}=2", 4)
    assert flags == f"--foo=1 {xla.HOST_DEVICES_FLAG}=4" and xla.host_device_count(flags) == 4
    assert xla.host_device_count("") == 1
    env = xla.host_devices_env(3, {"XLA_FLAGS": "--foo=1", xla.ENV_SWITCH: "0"})
    assert env == {"XLA_FLAGS": f"--foo=1 {xla.HOST_DEVICES_FLAG}=3"}


def test_a_failing_process_stops_the_others_at_once():
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    fail = [sys.executable, "-c", "import sys; print('worker broke', file=sys.stderr); sys.exit(3)"]
    t0 = time.monotonic()
    outcome = distributed.run_group([(sleep, {}), (fail, {})], timeout=60, capture=[True, True])
    assert time.monotonic() - t0 < 20
    assert not outcome.ok and outcome.failed == 1 and outcome.returncodes[1] == 3
    assert "process 1 of 2 exited with status 3: worker broke" in outcome.describe()
    t0 = time.monotonic()
    outcome = distributed.run_group([(sleep, {})], timeout=1)
    assert outcome.timed_out and time.monotonic() - t0 < 15 and "did not finish in time" in outcome.describe()


def test_cli_refuses_before_starting_anything(tmp_path, capsys):
    base = ["train", "vgg11", "--data", "digits", "--out", str(tmp_path / "run")]
    assert cli.main([*base, "--framework", "keras/torch", "--devices", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "keras/torch has no data-parallel engine" in err and "keras/jax" in err
    assert cli.main([*base, "--framework", "flax", "--devices", "4", "--batch", "30"]) == 2
    assert "e.g. 28 or 32" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_sync_bn_on_cpu_is_a_clear_error(tmp_path):
    """DDP refuses SyncBatchNorm in CPU modules: the workers stop with that reason (the command
    in a process of its own, joined with a timeout)."""
    needs("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: SyncBatchNorm is available")
    argv = ["train", "vgg11_bn", "--framework", "torch", "--data", "digits", "--set", "width_divisor=16",
            "--devices", "2", "--sync-bn", "--epochs", "1", "--out", str(tmp_path / "run")]
    outcome = distributed.run_group([(distributed.rosetta_command(argv), dict(os.environ))], timeout=120,
                                    capture=[True])
    assert not outcome.timed_out and outcome.returncodes == [2], outcome.describe()
    assert "torch.nn.SyncBatchNorm needs CUDA devices" in outcome.stderr[0]
