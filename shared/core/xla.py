"""The fast XLA CPU configuration for JAX processes (Flax, and Keras on JAX), framework-free.

By default XLA's CPU backend (jaxlib 0.10) hands whole subgraphs to YNNPACK, whose
convolutions run at about half the speed of XLA's own: VGG16 inference at 49% of the sgemm
roof instead of 87% (``docs/benchmarks.md``). Turning YNNPACK's fusion types off with
:data:`FAST_FLAGS` restores the fast path. XLA reads ``XLA_FLAGS`` once, when JAX's backend
starts, and an XLA that does not know a flag aborts the process there ("Flag parsing
failed"), so :func:`supported` asks a throw-away process first (``python -c "import jax;
jax.devices('cpu')"`` with the flags) and remembers the answer per jaxlib version in
``~/.cache/rosetta-cnn/xla-flags.json``.

:func:`configure` adds the flags to ``XLA_FLAGS`` of the current process when that is still
possible (JAX's backend not started) and useful (the jaxlib supports them, the user has not
set the YNN flag, ``ROSETTA_XLA_FAST`` is not ``0``), and JAX's persistent compilation cache
(:func:`cache_env`; ``ROSETTA_JAX_CACHE=0`` turns it off). ``import rosetta_cnn.flax_impl``
calls it, and so every process the project starts for Flax (predict, parity, train, bench)
gets it. Nothing here imports JAX.

Several devices on one CPU (data-parallel training, ``training/distributed.py``): XLA makes
N host devices with ``--xla_force_host_platform_device_count=N`` in the same ``XLA_FLAGS``,
also read once when the backend starts. :func:`host_devices_env` gives a new process that
flag (next to the fast flags), :func:`configure_host_devices` sets it in this process while
that is still possible.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

#: XLA's YNNPACK fusions off, every type (removing ``reduce`` alone gives 4.3 of 5.0 images/s on VGG16)
FAST_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type="
              "-dot,-eltwise,-reduce,-individual_convolution,-individual_dot")
#: set to 0 to keep XLA's own default (YNNPACK fusions on)
ENV_SWITCH = "ROSETTA_XLA_FAST"
_FLAG_NAME = FAST_FLAGS.split("=", 1)[0]
_PROBE = "import jax; jax.devices('cpu')"


def enabled() -> bool:
    """Whether the user lets the project set the fast flags (``ROSETTA_XLA_FAST`` not 0/false/off/no)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rosetta-cnn" / "xla-flags.json"


def _jaxlib_key() -> str | None:
    try:
        return f"jaxlib {metadata.version('jaxlib')} {sys.executable}"
    except metadata.PackageNotFoundError:
        return None


def probe(flags: str = FAST_FLAGS, timeout: float = 120.0) -> bool:
    """Whether a fresh process starts JAX's CPU backend with ``flags`` (an unknown flag aborts it)."""
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", ENV_SWITCH: "0"}
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def supported() -> bool:
    """Whether the installed jaxlib accepts :data:`FAST_FLAGS` (probed once per jaxlib, then cached)."""
    key = _jaxlib_key()
    if key is None:
        return False
    path = _cache_file()
    try:
        cache = json.loads(path.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    entry = f"{key} {FAST_FLAGS}"
    if isinstance(cache.get(entry), bool):
        return cache[entry]
    ok = probe()
    cache[entry] = ok
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: probe again next time
    return ok


def _backend_started() -> bool:
    """Whether JAX's backends already exist in this process (then XLA_FLAGS is read already)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def fast_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment variables (``XLA_FLAGS``) a new JAX process should start with to get
    the fast configuration, given its environment ``env`` (default: this process's); empty when
    switched off, already set by the user, or unsupported."""
    env = dict(os.environ if env is None else env)
    flags = env.get("XLA_FLAGS", "")
    if env.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "off", "no") or _FLAG_NAME in flags:
        return {}
    if not supported():
        return {}
    return {"XLA_FLAGS": f"{flags} {FAST_FLAGS}".strip()}


#: set to 0 to keep JAX's default (no persistent compilation cache)
CACHE_SWITCH = "ROSETTA_JAX_CACHE"


def cache_dir() -> str:
    """Where the project keeps JAX's persistent compilation cache."""
    return str(_cache_file().parent / "jax")


def cache_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """JAX's persistent compilation cache settings for a process with environment ``env``: XLA
    on a CPU compiles slowly (0.5-1 s for a one-line program, about 50 s for the initialisers of
    a GoogLeNet in jaxlib 0.10), so every compiled program (initialisers, forward passes,
    training steps) is kept on disk, keyed by the program, jaxlib and flags, and reused by the
    next process. Empty when ``ROSETTA_JAX_CACHE=0`` or the user set a cache directory."""
    env = dict(os.environ if env is None else env)
    if env.get(CACHE_SWITCH, "1").strip().lower() in ("0", "false", "off", "no") or "JAX_COMPILATION_CACHE_DIR" in env:
        return {}
    return {"JAX_COMPILATION_CACHE_DIR": cache_dir(), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _configure_cache() -> None:
    extra = cache_env()
    if not extra:
        return
    jax = sys.modules.get("jax")
    if jax is None:  # read by JAX's config at import
        for key, value in extra.items():
            os.environ.setdefault(key, value)
        return
    jax.config.update("jax_compilation_cache_dir", extra["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def configure() -> bool:
    """Give this process the fast configuration: :data:`FAST_FLAGS` added to ``XLA_FLAGS`` if
    JAX's backend has not started yet, and the persistent compilation cache (:func:`cache_env`).
    True if the process runs (or will run) with the flags."""
    _configure_cache()
    if _FLAG_NAME in os.environ.get("XLA_FLAGS", ""):
        return True
    if not enabled() or _backend_started():
        return False
    extra = fast_env()
    os.environ.update(extra)
    return bool(extra)


#: XLA's flag for N CPU devices in one process
HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def host_device_count(flags: str | None = None) -> int:
    """The host device count ``flags`` (default: this process's ``XLA_FLAGS``) ask for (1 if none)."""
    flags = os.environ.get("XLA_FLAGS", "") if flags is None else flags
    count = 1
    for flag in flags.split():
        name, _, value = flag.partition("=")
        if name == HOST_DEVICES_FLAG and value.isdigit():
            count = int(value)
    return count


def with_host_devices(flags: str, n: int) -> str:
    """``flags`` with the host device count set to ``n`` (an earlier count replaced)."""
    kept = [f for f in flags.split() if f.partition("=")[0] != HOST_DEVICES_FLAG]
    return " ".join([*kept, f"{HOST_DEVICES_FLAG}={n}"])


def host_devices_env(n: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """``XLA_FLAGS`` for a new JAX process with ``n`` host (CPU) devices, given its environment
    ``env`` (default: this process's), the fast flags included where :func:`fast_env` adds them."""
    env = dict(os.environ if env is None else env)
    flags = {**env, **fast_env(env)}.get("XLA_FLAGS", "")
    return {"XLA_FLAGS": with_host_devices(flags, n)}


def configure_host_devices(n: int) -> bool:
    """Ask XLA for ``n`` host devices in this process: True if JAX's backend has not started yet
    (the flag is set now) or already has at least ``n`` of them; False if it started with fewer
    (then only a new process with :func:`host_devices_env` has them)."""
    if _backend_started():
        jax = sys.modules["jax"]  # started, so imported
        return len(jax.local_devices(backend="cpu")) >= n
    os.environ["XLA_FLAGS"] = with_host_devices(os.environ.get("XLA_FLAGS", ""), n)
    return True


def active() -> bool:
    """Whether this process's ``XLA_FLAGS`` carry the YNN fusion flag."""
    return _FLAG_NAME in os.environ.get("XLA_FLAGS", "")


def gather_ints(value: int, processes: int) -> list[int]:
    """``value`` from every JAX process, in process order (the data-parallel engines of Flax and
    of Keras on JAX, ``distributed.py``); imports JAX only when there are several processes."""
    if processes == 1:
        return [int(value)]
    import numpy as np
    from jax.experimental import multihost_utils

    return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.int32(value))).ravel()]
