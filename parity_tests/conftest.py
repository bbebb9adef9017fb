"""Shared fixtures: which frameworks are installed, small per-model configurations; the
session's memory is handed back after each test that grew it and after each module."""
from __future__ import annotations

import gc
import os
import sys

# TensorFlow's oneDNN build keeps freed CPU memory in a pool of its own and never returns it:
# every Keras model built in the session stayed resident (2.1 GB after the keras.applications
# tests alone). The system allocator returns it, as in the parity workers (runtime_env).
os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")

import pytest  # noqa: E402

from rosetta_cnn.core import ports  # noqa: E402

ALL_FRAMEWORKS = list(ports.FRAMEWORKS)
AVAILABLE = ports.available()

# Reduced configurations that keep every op of each model (grouped convs, LRN, ceil-mode
# pools, overlapping adaptive-pool windows, aux heads) but run in seconds on 2 cores.
SMALL = {
    "alexnet": {"width_divisor": 4, "input_size": 96, "num_classes": 10},
    "alexnet_paper": {"width_divisor": 4, "input_size": 112, "num_classes": 10},
    "googlenet": {"width_divisor": 4, "input_size": 96, "num_classes": 10},
    "googlenet_paper": {"width_divisor": 4, "input_size": 224, "num_classes": 10},
    **{f"vgg{d}{bn}": {"width_divisor": 8, "input_size": 64, "num_classes": 10}
       for d in (11, 13, 16, 19) for bn in ("", "_bn")},
}


_rss_key = pytest.StashKey[int]()


def needs(*frameworks: str) -> None:
    missing = [f for f in frameworks if f not in AVAILABLE]
    if missing:
        pytest.skip(f"framework(s) not installed: {', '.join(missing)}")


@pytest.fixture(params=ALL_FRAMEWORKS)
def framework(request):
    needs(request.param)
    return request.param


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:  # not Linux
        return 0


#: a test that grew this process by more than this gets its freed memory returned
_GREW = 256 << 20


#: modules whose checks run in child processes of up to 3.4 GB (the Keras-backends suites): they
#: run first, while the session is smallest (1.2 GB after collection, about 2.4 GB later on),
#: so that the session and such a child together stay under the suite's 6 GB
FIRST = ("parity_tests/ports/test_keras_backends.py",)


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in FIRST)  # stable: the rest keep their order


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_rss_key] = _rss_bytes()


def hand_back() -> None:
    """Collect reference cycles (Keras and Flax models hold some) and return freed heap pages,
    which glibc keeps otherwise."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """After a test that built large models in this process, give their memory back (the
    suite's one process grew past 12 GB without it)."""
    if _rss_bytes() - item.stash.get(_rss_key, 0) >= _GREW:
        hand_back()


@pytest.fixture(autouse=True, scope="module")
def _framework_caches_per_module():
    """After each test module, drop what the frameworks cache for models that are gone: JAX's
    compiled executables (one per function and input shape; a module's training steps hold
    hundreds of MB) and Keras' global state (layer names, TensorFlow graphs)."""
    yield
    if "keras" in sys.modules:
        sys.modules["keras"].backend.clear_session()
    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()
    hand_back()
