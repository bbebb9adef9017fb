"""Flax fast by default: XLA's YNNPACK fusions off in every process that imports the Flax port,
when the installed jaxlib takes the flag (asked in a throw-away process: an unknown XLA flag
aborts the process that starts JAX's backend), and ROSETTA_XLA_FAST=0 to keep XLA's default."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rosetta_cnn.core import xla

from ..conftest import needs

CHILD = "import os, rosetta_cnn.flax_impl, jax; jax.devices(); print('FLAGS=' + os.environ.get('XLA_FLAGS', ''))"


def _child(env_extra, code=CHILD):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla.ENV_SWITCH)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**env, **env_extra})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split("FLAGS=", 1)[1].strip()


def test_an_unknown_flag_is_detected_without_aborting_this_process():
    needs("flax")
    assert xla.probe("--xla_cpu_no_such_flag_rosetta=1") is False
    assert xla.probe("") is True


def test_fast_env_respects_the_switch_and_the_users_flags(monkeypatch, tmp_path):
    needs("flax")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert xla.fast_env({}) == {"XLA_FLAGS": xla.FAST_FLAGS}  # this jaxlib supports it (probed, then cached)
    cache = json.loads((tmp_path / "rosetta-cnn" / "xla-flags.json").read_text())
    assert list(cache.values()) == [True]
    assert xla.fast_env({"XLA_FLAGS": "--xla_cpu_use_onednn=true"}) == {
        "XLA_FLAGS": f"--xla_cpu_use_onednn=true {xla.FAST_FLAGS}"}
    assert xla.fast_env({xla.ENV_SWITCH: "0"}) == {}
    assert xla.fast_env({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=-dot"}) == {}


def test_importing_the_flax_port_sets_the_flags_unless_switched_off_or_unsupported(tmp_path):
    needs("flax")
    assert _child({}) == xla.FAST_FLAGS
    assert _child({xla.ENV_SWITCH: "0"}) == ""
    # a jaxlib that lacks the flag (the cached probe says so): the process starts, without it
    key = f"{xla._jaxlib_key()} {xla.FAST_FLAGS}"
    (tmp_path / "rosetta-cnn").mkdir()
    (tmp_path / "rosetta-cnn" / "xla-flags.json").write_text(json.dumps({key: False}))
    assert _child({"XDG_CACHE_HOME": str(tmp_path)}) == ""


def test_importing_the_keras_port_on_jax_sets_the_flags_unless_switched_off():
    """Keras on JAX runs the same XLA as Flax: ``import rosetta_cnn.keras_impl`` gives it the
    fast configuration too (on TensorFlow and PyTorch it leaves XLA_FLAGS alone)."""
    from rosetta_cnn.core import ports

    if "keras/jax" not in ports.installed_implementations():
        pytest.skip("keras/jax not installed")
    code = CHILD.replace("rosetta_cnn.flax_impl", "rosetta_cnn.keras_impl")
    assert _child({"KERAS_BACKEND": "jax"}, code) == xla.FAST_FLAGS
    assert _child({"KERAS_BACKEND": "jax", xla.ENV_SWITCH: "0"}, code) == ""
    if "keras/torch" in ports.installed_implementations():
        assert _child({"KERAS_BACKEND": "torch"}, code.replace(", jax; jax.devices()", "")) == ""


def test_the_persistent_compilation_cache_is_configured_for_jax_processes(monkeypatch):
    env = xla.cache_env({})
    assert env["JAX_COMPILATION_CACHE_DIR"].endswith(os.path.join("rosetta-cnn", "jax"))
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    assert xla.cache_env({xla.CACHE_SWITCH: "0"}) == {}
    assert xla.cache_env({"JAX_COMPILATION_CACHE_DIR": "/elsewhere"}) == {}


@pytest.mark.parametrize("label", ["flax", "keras/jax"])
def test_parity_workers_of_jax_implementations_run_fast(label):
    from rosetta_cnn.core import ports
    from rosetta_cnn.verification.workers import WorkerPool

    if label not in ports.installed_implementations():
        pytest.skip(f"{label} not installed")
    with WorkerPool([label], monitor=False) as pool:
        assert pool.versions()[label]["fast_xla"] == "True"
