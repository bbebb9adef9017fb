"""The port contract (``core/ports.py``), executed: every port has the same files and public
names, its ``OPS`` table covers exactly the spec's ops, and its entry points are callable."""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from rosetta_cnn.core import ops, ports

from ..conftest import needs

ROOT = Path(__file__).resolve().parents[2]


def test_the_three_port_folders_have_the_same_files():
    files = {fw: sorted(p.name for p in (ROOT / f"{fw}_impl").glob("*.py")) for fw in ports.FRAMEWORKS}
    contract = sorted(["__init__.py", *(f"{m}.py" for m in ports.CONTRACT)])
    for fw, names in files.items():
        assert set(contract) <= set(names), f"{fw}_impl lacks {sorted(set(contract) - set(names))}"
    # a file beyond the contract is named in the registry (the torch port's ONNX exporter)
    extra = {fw: set(names) - set(contract) for fw, names in files.items()}
    allowed = {target[1].split(":")[0].rsplit(".", 1)[1] + ".py" for target in ports.TARGETS.values()}
    assert all(e <= allowed for e in extra.values()), extra


@pytest.mark.parametrize("framework", list(ports.FRAMEWORKS))
def test_port_has_every_contract_name(framework):
    needs(framework)
    package = ports.load(framework)
    for name in ports.PACKAGE_API:
        assert callable(getattr(package, name, None)), f"{package.__name__}.{name}"
    for module, names in ports.CONTRACT.items():
        mod = importlib.import_module(f"{ports.FRAMEWORKS[framework]}.{module}")
        missing = [n for n in names if not hasattr(mod, n)]
        assert not missing, f"{mod.__name__} lacks {missing}"


@pytest.mark.parametrize("framework", list(ports.FRAMEWORKS))
def test_ops_table_covers_the_spec_ops_with_named_factories(framework):
    needs(framework)
    table = ports.module(framework, "layers").OPS
    assert set(table) == set(ops.OPS), (sorted(set(ops.OPS) - set(table)), sorted(set(table) - set(ops.OPS)))
    for op, factory in table.items():
        assert inspect.isfunction(factory) and factory.__name__ == op, f"{framework} OPS[{op!r}] is {factory!r}"


@pytest.mark.parametrize("framework", list(ports.FRAMEWORKS))
def test_entry_points_take_the_contract_arguments(framework):
    needs(framework)
    forward = inspect.signature(ports.module(framework, "runtime").forward)
    assert {"train", "activations", "device"} <= set(forward.parameters), forward
    build = inspect.signature(ports.module(framework, "model").build_model)
    for name in ("seed", "initialize"):
        assert name in build.parameters and build.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, build
    assert list(inspect.signature(ports.module(framework, "train").make_trainer).parameters)[:3] == \
        ["model", "spec", "opt"]
    assert ports.module(framework, "weights").FRAMEWORK == framework


def test_installed_frameworks_are_found_without_importing_them():
    import subprocess
    import sys

    code = ("import sys; from rosetta_cnn.core import ports; found = ports.installed();"
            "bad = [m for m in ('torch', 'tensorflow', 'keras', 'jax', 'flax') if m in sys.modules];"
            "print(found, bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
