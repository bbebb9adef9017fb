"""Resource limits on hostile inputs, run in child processes under an address-space limit
(``resource.setrlimit(RLIMIT_AS)``): a regression fails fast with a MemoryError there instead of
exhausting the machine. Each case must end in the limit's own clean error.

The framework-free readers run under 1.5 GiB of address space; the ``.pth`` case imports
torch, which reserves more, so it runs under 5 GiB (its bomb asks for 80 GB).
"""
from __future__ import annotations

import gzip
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rosetta_cnn.core import limits
from rosetta_cnn.core.errors import LimitError, SpecError

from .survey import nested_blocks, nested_loops, tiny_spec, wide_conv

#: the child: runs each case of a JSON list, prints one JSON line per case
CHILD = r"""
import resource, sys
cap = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))  # before anything is imported: numpy, h5py, torch
import json
import numpy as np
from rosetta_cnn.core import limits
from rosetta_cnn.core.errors import RosettaError

READERS = {"spec": ("rosetta_cnn.core.spec", "load_spec"), "safetensors": ("rosetta_cnn.core.canonical", "load_canonical"),
           "h5": ("rosetta_cnn.formats.keras_applications", "read_keras_h5"),
           "idx": ("rosetta_cnn.training.data", "read_idx"), "npy": ("rosetta_cnn.cli.weights", "read_npy"),
           "pth": ("rosetta_cnn.formats.torchvision", "read_state_dict"), "cli": ("rosetta_cnn.cli", "main")}

def run(kind, path, extra):
    import importlib
    module, name = READERS[kind]
    return getattr(importlib.import_module(module), name)(extra if kind == "cli" else path)

for kind, path, extra, raise_limits in json.loads(sys.argv[1]):
    limits.configure(**raise_limits)
    try:
        result = run(kind, path, extra)
        out = {"outcome": "ok", "message": repr(result)[:200]}
    except RosettaError as e:
        out = {"outcome": type(e).__name__, "message": str(e)}
    except BaseException as e:
        out = {"outcome": "crash", "message": type(e).__name__ + ": " + str(e)[:300]}
    print(json.dumps(out), flush=True)
"""


def _run_limited(cases: list[tuple], address_space: int, timeout: float = 240) -> list[dict]:
    """Run ``cases`` in a child whose address space is capped at ``address_space`` bytes (set by
    the child itself, first thing: no preexec_fn in a multithreaded parent)."""
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases), str(address_space)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "ROSETTA_LIMITS": ""})
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(cases), f"the child stopped early (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    return lines


def _gz_idx_header(*shape: int) -> bytes:
    """A gzip file whose IDX header declares ``shape``, with (almost) no data after it."""
    return gzip.compress(bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + bytes(64))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    import h5py

    d = tmp_path_factory.mktemp("hostile")
    for name, doc in {"loops": nested_loops(9), "fanout": nested_blocks(9, 10), "deep_blocks": nested_blocks(100),
                      "wide": wide_conv(10 ** 9)}.items():
        (d / f"{name}.json").write_text(json.dumps(doc))
    (d / "deep.json").write_text("[" * 50_000 + "]" * 50_000)
    big_input = tiny_spec()
    big_input["params"]["input_size"] = 1_000_000
    (d / "big_input.json").write_text(json.dumps(big_input))
    # a canonical file whose metadata names a spec on disk: a FIFO, so following it would block
    os.mkfifo(d / "named.json")
    meta = {"format": "rosetta-canonical", "format_version": "1", "model": f"{d / 'named.json'}:tiny",
            "overrides": "{}", "spec_hash": "0" * 64, "framework": "torch"}
    header = json.dumps({"__metadata__": meta, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (d / "named.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    deep = b"[" * 50_000 + b"]" * 50_000
    (d / "deep.safetensors").write_bytes(struct.pack("<Q", len(deep)) + deep)
    huge = json.dumps({"w": {"dtype": "F32", "shape": [10 ** 6, 10 ** 6], "data_offsets": [0, 4 * 10 ** 12]}}).encode()
    (d / "huge.safetensors").write_bytes(struct.pack("<Q", len(huge)) + huge + bytes(8))
    with h5py.File(d / "huge.weights.h5", "w") as f:  # 373 GiB declared, a few KB on disk
        f.create_group("layers/conv2d/vars").create_dataset("0", shape=(200_000, 500_000), dtype="f4",
                                                            chunks=(1000, 1000), compression="gzip")
    with zipfile.ZipFile(d / "bomb.keras", "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("model.weights.h5", "w") as member:  # 256 MiB of zeros, ~250 KB compressed
            for _ in range(16):
                member.write(bytes(16 << 20))
    (d / "huge-images-idx3-ubyte.gz").write_bytes(_gz_idx_header(1, 40000, 40000))
    (d / "many-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 4_000_000_000, 60000, 60000))
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (100000, 3, 320, 320)})
    (d / "lying.npy").write_bytes(buf.getvalue() + bytes(64))
    return d


def test_framework_free_limits_hold_under_an_address_space_cap(hostile):
    d = str(hostile)
    cases = [  # (kind, path, extra, limits to set, expected error type, expected words)
        ("spec", f"{d}/loops.json:tiny", None, {}, "SpecError", "max_layers"),
        ("spec", f"{d}/fanout.json:tiny", None, {}, "SpecError", "max_layers"),
        ("spec", f"{d}/deep_blocks.json:tiny", None, {}, "SpecError", "max_depth"),
        ("spec", f"{d}/deep.json:tiny", None, {}, "SpecError", "nests too deeply"),
        ("spec", f"{d}/wide.json:tiny", None, {}, "SpecError", "max_activation"),
        ("spec", f"{d}/big_input.json:tiny", None, {}, "SpecError", "max_activation"),
        ("spec", f"{d}/wide.json:tiny", None, {"max_activation": 10 ** 12}, "SpecError", "max_params"),
        ("safetensors", f"{d}/named.safetensors", None, {}, "WeightError", "never opened"),
        ("safetensors", f"{d}/deep.safetensors", None, {}, "WeightError", "nested too deeply"),
        ("safetensors", f"{d}/huge.safetensors", None, {}, "WeightError", "truncated or padded"),
        ("h5", f"{d}/huge.weights.h5", None, {}, "LimitError", "max_params"),
        ("h5", f"{d}/bomb.keras", None, {"max_archive_bytes": 64 << 20}, "WeightError", "max_archive_bytes"),
        ("idx", f"{d}/huge-images-idx3-ubyte.gz", None, {"max_data_bytes": 1 << 30}, "LimitError", "max_data_bytes"),
        ("idx", f"{d}/many-images-idx3-ubyte", None, {}, "LimitError", "max_data_bytes"),
        ("npy", f"{d}/lying.npy", None, {}, "LimitError", "max_data_bytes"),
        # the broken counterpart: with its limit raised, the 373 GiB dataset is allocated and the cap stops it
        ("h5", f"{d}/huge.weights.h5", None, {"max_params": 10 ** 12}, "crash", "MemoryError"),
        ("cli", None, ["init", f"{d}/wide.json:tiny", "--framework", "torch", "--out", f"{d}/w.safetensors"], {},
         "ok", ""),
    ]
    results = _run_limited([c[:4] for c in cases], address_space=3 << 29)
    for (kind, path, extra, _, outcome, words), got in zip(cases, results):
        assert got["outcome"] == outcome, (kind, path, got)
        assert words in got["message"], (kind, path, got)
    assert results[-1]["message"] == "2"  # the CLI reported the limit and returned 2
    assert not (hostile / "w.safetensors").exists()


def test_stride0_pth_bomb_under_an_address_space_cap(tmp_path):
    torch = pytest.importorskip("torch")
    big = torch.zeros(1, dtype=torch.float16).expand(200_000, 200_000)  # 80 GB once converted to float32
    torch.save({"features.0.weight": big}, tmp_path / "bomb.pth")
    torch.save({"features.0.weight": big[:3, :3]}, tmp_path / "view.pth")
    results = _run_limited([("pth", str(tmp_path / "bomb.pth"), None, {}),
                            ("pth", str(tmp_path / "view.pth"), None, {})], address_space=5 << 30)
    assert results[0]["outcome"] == "LimitError" and "max_params" in results[0]["message"], results[0]
    assert results[1]["outcome"] == "WeightError" and "overlapping memory" in results[1]["message"], results[1]


def test_limits_are_named_and_raisable(tmp_path):
    doc = nested_loops(5, 10)  # 10^5 skipped layers
    with pytest.raises(SpecError, match=r"is 10,001, over the limit of 10,000 \(max_layers\).*--limit max_layers=N"):
        from rosetta_cnn.core.spec import load_spec_dict
        load_spec_dict(doc, "tiny")
    with limits.raised(max_layers=200_000):
        assert len(load_spec_dict(doc, "tiny").layers) == 5
    assert limits.get().max_layers == 10_000
    assert limits.parse_items("max_params=5e9,max_archive_bytes=8G") == {"max_params": 5_000_000_000,
                                                                         "max_archive_bytes": 8 << 30}
    for bad in ("nope=3", "max_params=-1", "max_params=lots", "max_layers=2G", "max_params"):
        with pytest.raises(LimitError):
            limits.parse_items(bad)


def test_cli_limit_flag_and_environment(tmp_path, capsys, monkeypatch):
    from rosetta_cnn.cli import main

    (tmp_path / "s.json").write_text(json.dumps(nested_loops(5, 10)))
    assert main(["summary", f"{tmp_path}/s.json:tiny"]) == 2
    assert "max_layers" in capsys.readouterr().err
    assert main(["summary", f"{tmp_path}/s.json:tiny", "--limit", "max_layers=200000"]) == 0
    monkeypatch.setenv("ROSETTA_LIMITS", "max_layers=200000")
    assert main(["summary", f"{tmp_path}/s.json:tiny"]) == 0
    assert limits.get().max_layers == 10_000  # a command's limits end with it
