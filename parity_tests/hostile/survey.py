"""The hostile-input survey of issue 15: about 230 crafted bad (and a few good) inputs run
through the ``rosetta`` command, each in its own process under a memory cap, classified as

* ``ok``         exit 0 (right when the case is a good input, "silently accepted" when bad);
* ``error``      a non-zero exit whose stderr ends in one ``rosetta ...: error:`` line;
* ``traceback``  a Python traceback on stderr;
* ``killed``     killed by a signal or the memory cap; ``timeout`` ran past its time;

and, for cases that write, whether a temporary file was left beside the destination.

    python -m parity_tests.hostile.survey --out survey.json [--only GROUP] [--markdown]

Not part of the test suite (it takes about ten minutes); ``parity_tests/hostile/test_*.py``
hold the fast, deterministic versions of these cases. docs/hostile-input.md has the results.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import pickle
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ROSETTA = [str(Path(sys.executable).parent / "rosetta")]
MEMORY_CAP = 3 << 30  # RLIMIT_DATA of each case: a regression fails here instead of exhausting the machine
TINY_SET = ["--set", "width_divisor=16", "--set", "input_size=32", "--set", "num_classes=10"]


@dataclass
class Case:
    group: str
    name: str
    argv: list[str]
    expect: str = "error"  # or "ok"
    signal: int | None = None  # sent once a temporary file appears beside ``watch``
    watch: str | None = None  # output path whose directory is checked for leftovers
    fsize: int | None = None  # RLIMIT_FSIZE (a full disk)
    immutable: str | None = None  # a directory made read-only (chattr +i) for the run
    timeout: float = 240
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None


# ---------------------------------------------------------------------------
# fixtures


def tiny_spec() -> dict:
    return {
        "format": "rosetta-spec/1", "family": "tiny",
        "params": {"num_classes": 10, "in_channels": 3, "input_size": 16, "width_divisor": 1},
        "layers": [
            {"name": "conv1", "op": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1, "activation": "relu"},
            {"name": "bn1", "op": "batch_norm"},
            {"name": "pool1", "op": "max_pool2d", "kernel_size": 2},
            {"name": "flatten", "op": "flatten"},
            {"name": "fc", "op": "linear", "out_features": "$num_classes"},
        ],
        "outputs": {"logits": "fc"},
        "models": {"tiny": {"description": "a user's own spec"}},
    }


def nested_loops(depth: int, width: int = 10) -> dict:
    doc = tiny_spec()
    inner: list = [{"name": "d{i}", "op": "dropout", "rate": 0.1, "when": False}]  # 10^depth skipped layers
    for k in range(depth):
        inner = [{"for": list(range(width)), "as": f"v{k}", "layers": inner}]
    doc["layers"] = doc["layers"][:4] + inner + doc["layers"][4:]
    return doc


def nested_blocks(depth: int, fanout: int = 1) -> dict:
    doc = tiny_spec()
    blocks = {"b0": {"layers": [{"name": "d", "op": "dropout", "rate": 0.1}]}}
    for k in range(1, depth + 1):
        blocks[f"b{k}"] = {"layers": [{"name": f"i{j}", "block": f"b{k - 1}"} for j in range(fanout)]}
    doc["blocks"] = blocks
    doc["layers"] = doc["layers"][:4] + [{"name": "top", "block": f"b{depth}"}] + doc["layers"][4:]
    return doc


def wide_conv(channels: int) -> dict:
    doc = tiny_spec()
    doc["layers"][0]["out_channels"] = channels
    return doc


def safetensors_bytes(tensors: dict[str, np.ndarray], meta: dict | None, *, dtype_names: dict | None = None,
                      header_extra: dict | None = None) -> bytes:
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": (dtype_names or {}).get(name, {"float32": "F32", "float16": "F16", "int32": "I32",
                                                                 "float64": "F64", "bool": "BOOL"}[str(a.dtype)]),
                        "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if meta is not None:
        header["__metadata__"] = meta
    header.update(header_extra or {})
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def read_st(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path: Path, header: dict, data: bytes) -> None:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def with_meta(src: Path, dst: Path, **changes) -> None:
    header, data = read_st(src)
    meta = dict(header.get("__metadata__", {}))
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    header["__metadata__"] = meta
    write_st(dst, header, data)


def rosetta(*argv: str, cwd: Path | None = None) -> None:
    r = subprocess.run([*ROSETTA, *argv], capture_output=True, text=True, cwd=cwd)
    if r.returncode != 0:
        raise RuntimeError(f"fixture command failed: rosetta {' '.join(argv)}\n{r.stderr[-2000:]}")


def idx_bytes(array: np.ndarray, type_byte: int = 0x08) -> bytes:
    a = np.asarray(array)
    dt = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_byte]
    return bytes([0, 0, type_byte, a.ndim]) + np.asarray(a.shape, ">u4").tobytes() + a.astype(dt).tobytes()


def idx_dir(d: Path, *, train_images=None, train_labels=None, test_images=None, test_labels=None,
            raw: dict[str, bytes] | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": train_images if train_images is not None else rng.integers(0, 256, (16, 8, 8)),
              "train-labels-idx1-ubyte": train_labels if train_labels is not None else np.arange(16) % 10,
              "t10k-images-idx3-ubyte": test_images if test_images is not None else rng.integers(0, 256, (4, 8, 8)),
              "t10k-labels-idx1-ubyte": test_labels if test_labels is not None else np.arange(4) % 10}
    for name, a in arrays.items():
        data = (raw or {}).get(name)
        if data is None:
            data = a if isinstance(a, bytes) else idx_bytes(a)
        (d / name).write_bytes(data)
    return d


def h5_file(path: Path, build: Callable) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        build(f)
    return path


def make_fixtures(d: Path) -> None:
    """Every input file the cases read, made here from scratch."""
    import h5py
    import torch

    d.mkdir(parents=True, exist_ok=True)
    (d / "out").mkdir()
    (d / "tiny.json").write_text(json.dumps(tiny_spec()))
    # --- specs
    (d / "loops9.json").write_text(json.dumps(nested_loops(9)))
    (d / "loops100.json").write_text(json.dumps(nested_loops(100, 1)))
    (d / "blocks100.json").write_text(json.dumps(nested_blocks(100)))
    (d / "fanout9.json").write_text(json.dumps(nested_blocks(9, 10)))
    (d / "wide.json").write_text(json.dumps(wide_conv(10 ** 9)))
    (d / "deepjson.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "notjson.json").write_text("this is not json {")
    (d / "empty.json").write_text("")
    (d / "binary.json").write_bytes(os.urandom(4096))
    (d / "list.json").write_text("[1, 2, 3]")
    (d / "big.json").write_text(json.dumps({**tiny_spec(), "notes": ["x" * 1000] * 60_000}))
    nan = tiny_spec()
    nan["layers"].insert(4, {"name": "drop", "op": "dropout", "rate": float("nan")})
    (d / "nan.json").write_text(json.dumps(nan))
    hugeint = tiny_spec()
    hugeint["layers"][0]["kernel_size"] = 10 ** 400
    (d / "hugeint.json").write_text(json.dumps(hugeint))
    subst = tiny_spec()
    subst["params"]["big"] = list(range(200_000))
    subst["layers"] = subst["layers"][:4] + [
        {"for": "$big", "as": "v", "layers": [{"name": "s{i}", "op": "dropout", "rate": 0.1, "when": False}]}
    ] + subst["layers"][4:]
    (d / "subst.json").write_text(json.dumps(subst))
    os.mkfifo(d / "fifo.json")
    (d / "zero.json").symlink_to("/dev/zero")
    (d / "loop_a.json").symlink_to(d / "loop_b.json")
    (d / "loop_b.json").symlink_to(d / "loop_a.json")
    (d / "adir.json").mkdir()
    # --- canonical weights of a small bundled model and of the user's spec
    rosetta("init", "vgg11", "--framework", "torch", *TINY_SET, "--out", str(d / "v.safetensors"))
    rosetta("init", "vgg11", "--framework", "torch", "--set", "width_divisor=2", "--out", str(d / "big.safetensors"))
    rosetta("init", "vgg16", "--framework", "torch", "--set", "width_divisor=2", "--out", str(d / "big16.safetensors"))
    rosetta("init", str(d / "tiny.json") + ":tiny", "--framework", "torch", "--out", str(d / "tiny.safetensors"))
    header, data = read_st(d / "v.safetensors")
    v = d / "v.safetensors"
    with_meta(v, d / "meta_path.safetensors", model=str(d / "loops9.json") + ":tiny")
    with_meta(v, d / "meta_path2.safetensors", model=str(d / "tiny.json") + ":tiny")
    with_meta(v, d / "meta_unknown.safetensors", model="resnet50")
    with_meta(v, d / "meta_overrides_bad.safetensors", overrides="{not json")
    with_meta(v, d / "meta_overrides_list.safetensors", overrides="[1, 2]")
    with_meta(v, d / "meta_overrides_huge.safetensors", overrides=json.dumps({"width_divisor": 16, "input_size": 100000,
                                                                                "num_classes": 10}))
    with_meta(v, d / "meta_hash.safetensors", spec_hash="0" * 64)
    with_meta(v, d / "meta_noformat.safetensors", format=None)
    with_meta(v, d / "meta_version.safetensors", format_version="99")
    with_meta(v, d / "meta_nomodel.safetensors", model=None)
    h2 = dict(header)
    h2["__metadata__"] = ["format", "rosetta-canonical"]
    write_st(d / "meta_list.safetensors", h2, data)
    h2 = dict(header)
    h2["__metadata__"] = {**header["__metadata__"], "format_version": 1}
    write_st(d / "meta_int.safetensors", h2, data)
    write_st(d / "header_list.safetensors", [1, 2, 3], data)  # type: ignore[arg-type]
    (d / "header_deep.safetensors").write_bytes(struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000)
    (d / "header_huge.safetensors").write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    (d / "header_zero.safetensors").write_bytes(struct.pack("<Q", 0) + b"{}")
    (d / "header_garbage.safetensors").write_bytes(struct.pack("<Q", 16) + os.urandom(16))
    raw = v.read_bytes()
    (d / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    (d / "empty.safetensors").write_bytes(b"")
    (d / "random.safetensors").write_bytes(os.urandom(4096))
    flipped = bytearray(raw)
    flipped[-1000] ^= 0xFF
    (d / "flipped.safetensors").write_bytes(bytes(flipped))
    for kind in ("nan", "inf"):
        h, dat = read_st(v)
        name = next(k for k in h if k.endswith(".weight"))
        start = h[name]["data_offsets"][0]
        dat = bytearray(dat)
        dat[start:start + 4] = np.array([np.nan if kind == "nan" else np.inf], np.float32).tobytes()
        write_st(d / f"{kind}.safetensors", h, bytes(dat))
    h, dat = read_st(v)
    name = next(k for k in h if k.endswith(".weight"))
    h[name]["dtype"] = "F8_E4M3"
    h[name]["shape"] = [*h[name]["shape"][:-1], h[name]["shape"][-1] * 4]
    write_st(d / "float8.safetensors", h, dat)
    h, dat = read_st(v)
    h[name]["dtype"] = "I32"
    write_st(d / "int32.safetensors", h, dat)
    h, dat = read_st(v)
    h[name]["data_offsets"] = [0, h[name]["data_offsets"][1] - h[name]["data_offsets"][0] + 10 ** 12]
    write_st(d / "offsets.safetensors", h, dat)
    h, dat = read_st(v)
    del h[name]
    write_st(d / "missing.safetensors", h, dat)  # a hole in the data
    h, dat = read_st(v)
    h[name]["shape"] = list(reversed(h[name]["shape"]))
    write_st(d / "shape.safetensors", h, dat)
    # an embedded-looking spec bomb and a tiny file whose metadata names a spec on disk
    with_meta(d / "tiny.safetensors", d / "tiny_hash.safetensors", spec_hash="1" * 64)
    (d / "weights_dir.safetensors").mkdir()
    (d / "zero.safetensors").symlink_to("/dev/zero")
    os.mkfifo(d / "fifo.safetensors")
    # --- inputs (.npy)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.save(d / "x.npy", x)
    np.savez(open(d / "x.npz.npy", "wb"), x=x)
    (d / "text.npy").write_text("1 2 3\n")
    np.save(d / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(d / "int.npy", (x * 10).astype(np.int64))
    np.save(d / "bool.npy", x > 0)
    np.save(d / "complex.npy", x.astype(np.complex64))
    np.save(d / "nan_x.npy", np.full_like(x, np.nan))
    np.save(d / "f16.npy", x.astype(np.float16))
    np.save(d / "empty_batch.npy", np.zeros((0, 3, 32, 32), np.float32))
    np.save(d / "rank2.npy", np.zeros((3, 32), np.float32))
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (100000, 3, 320, 320)})
    (d / "lying.npy").write_bytes(buf.getvalue() + x.tobytes())
    (d / "empty.npy").write_bytes(b"")
    (d / "zero.npy").symlink_to("/dev/zero")
    pickle.dump({"x": 1}, open(d / "pickle.npy", "wb"))
    # --- torchvision / torch files
    state = {"features.0.weight": torch.zeros(4, 3, 3, 3)}
    rosetta("convert", str(v), str(d / "v.pth"))
    torch.save({"w": torch.zeros(2).to_sparse()}, d / "sparse.pth")
    torch.save({"features.0.weight": torch.zeros(4, 3, 3, 3, dtype=torch.float8_e4m3fn)}, d / "float8.pth")
    torch.save({"features.0.weight": torch.zeros(4, 3, 3, 3, dtype=torch.complex64)}, d / "complex.pth")
    torch.save({"features.0.weight": torch.zeros(4, 3, 3, 3, dtype=torch.int32)}, d / "int.pth")
    torch.save({"features.0.weight": torch.quantize_per_tensor(torch.zeros(4), 0.1, 0, torch.qint8)}, d / "quant.pth")
    torch.save([torch.zeros(2)], d / "list.pth")
    torch.save({"a": {"b": torch.zeros(2)}}, d / "nested.pth")
    torch.save({"a": 1, "b": "text"}, d / "plain.pth")
    big = torch.zeros(1, dtype=torch.float16).expand(200_000, 200_000)  # stride 0: 80 GB when materialised
    torch.save({"features.0.weight": big, "classifier.6.weight": torch.zeros(10, 4)}, d / "stride0.pth")
    torch.save(state, d / "legacy.pth", _use_new_zipfile_serialization=False)
    (d / "random.pth").write_bytes(os.urandom(4096))
    (d / "text.pth").write_text("not a checkpoint\n")
    (d / "empty.pth").write_bytes(b"")
    raw = (d / "v.pth").read_bytes()
    (d / "trunc.pth").write_bytes(raw[: len(raw) // 2])

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {d / 'PWNED'}",))

    pickle.dump({"features.0.weight": Payload()}, open(d / "payload.pth", "wb"))
    (d / "safetensors_as.pth").write_bytes(v.read_bytes())
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": 1}))
        z.writestr("archive/data/0", b"\0" * (200 << 20))
    (d / "zipbomb.pth").write_bytes(zbuf.getvalue())
    # --- keras.applications / HDF5 files
    rosetta("init", "vgg16", "--framework", "torch", *TINY_SET, "--out", str(d / "v16.safetensors"))
    rosetta("convert", str(d / "v16.safetensors"), str(d / "v.weights.h5"))
    h5_file(d / "huge_ds.weights.h5", lambda f: f.create_group("layers/conv2d/vars").create_dataset(
        "0", shape=(200_000, 500_000), dtype="f4", chunks=(1000, 1000), compression="gzip"))
    (d / "huge_ds.weights.h5").parent  # noqa: B018

    def loop(f):
        f.create_group("layers")
        f["layers/a"] = h5py.SoftLink("/layers/b")
        f["layers/b"] = h5py.SoftLink("/layers/a")

    h5_file(d / "softloop.weights.h5", loop)
    h5_file(d / "other.h5", lambda f: f.create_dataset("secret", data=np.arange(10, dtype="f4")))

    def external(f):
        g = f.create_group("layers/conv2d/vars")
        g.attrs["name"] = "block1_conv1"
        g["0"] = h5py.ExternalLink(str(d / "other.h5"), "/secret")

    h5_file(d / "extlink.weights.h5", external)
    (d / "rawdata.bin").write_bytes(np.arange(16, dtype="f4").tobytes())

    def external_storage(f):
        g = f.create_group("layers/conv2d/vars")
        g.attrs["name"] = "block1_conv1"
        g.create_dataset("0", shape=(16,), dtype="f4", external=[(str(d / "rawdata.bin"), 0, 64)])

    h5_file(d / "extstore.weights.h5", external_storage)

    def strings(f):
        g = f.create_group("layers/conv2d/vars")
        g.attrs["name"] = "block1_conv1"
        g.create_dataset("0", data=np.array([b"abc", b"def"]))

    h5_file(d / "strings.weights.h5", strings)
    h5_file(d / "nolayers.weights.h5", lambda f: f.create_dataset("x", data=np.zeros(3)))

    def k2_missing(f):
        f.attrs["layer_names"] = [b"block1_conv1", b"nowhere"]
        f.create_group("block1_conv1").attrs["weight_names"] = [b"missing_kernel"]

    h5_file(d / "k2missing.h5", k2_missing)

    def vds(f):
        layout = h5py.VirtualLayout(shape=(10,), dtype="f4")
        layout[:] = h5py.VirtualSource(str(d / "other.h5"), "secret", shape=(10,))[:]
        g = f.create_group("layers/conv2d/vars")
        g.attrs["name"] = "block1_conv1"
        g.create_virtual_dataset("0", layout, fillvalue=0)

    h5_file(d / "virtual.weights.h5", vds)
    raw = (d / "v.weights.h5").read_bytes()
    (d / "trunc.weights.h5").write_bytes(raw[: len(raw) // 2])
    (d / "random.weights.h5").write_bytes(os.urandom(8192))
    (d / "empty.weights.h5").write_bytes(b"")
    # .keras zips
    rosetta("convert", str(v), str(d / "v.keras"))
    with zipfile.ZipFile(d / "bomb.keras", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("metadata.json", "{}")
        z.writestr("config.json", "{}")
        with z.open("model.weights.h5", "w", force_zip64=True) as member:
            chunk = b"\0" * (64 << 20)
            for _ in range(64):  # 4 GiB of zeros, ~4 MB compressed
                member.write(chunk)
    with zipfile.ZipFile(d / "nomember.keras", "w") as z:
        z.writestr("config.json", "{}")
    (d / "notzip.keras").write_bytes(os.urandom(2048))
    raw = (d / "v.keras").read_bytes()
    (d / "trunc.keras").write_bytes(raw[: len(raw) // 2])
    with zipfile.ZipFile(d / "h5bomb.keras", "w", zipfile.ZIP_STORED) as z:
        z.write(d / "huge_ds.weights.h5", "model.weights.h5")
    # --- msgpack
    rosetta("convert", str(v), str(d / "v.msgpack"))
    raw = (d / "v.msgpack").read_bytes()
    (d / "trunc.msgpack").write_bytes(raw[: len(raw) // 2])
    (d / "random.msgpack").write_bytes(os.urandom(4096))
    (d / "empty.msgpack").write_bytes(b"")
    (d / "deep.msgpack").write_bytes(b"\x91" * 100_000 + b"\xc0")
    (d / "list.msgpack").write_bytes(b"\x93\x01\x02\x03")
    import msgpack

    (d / "huge_array.msgpack").write_bytes(msgpack.packb({"a": msgpack.ExtType(1, msgpack.packb(
        ((100000, 100000), "float32", b"\0" * 16)))}))
    # --- native .pt
    rosetta("convert", str(v), str(d / "v.pt"))
    # --- IDX directories
    idx_dir(d / "idx_ok")
    idx_dir(d / "idx_empty_file", raw={"train-images-idx3-ubyte": b""})
    idx_dir(d / "idx_zero_items", train_images=np.zeros((0, 8, 8)), train_labels=np.zeros(0))
    idx_dir(d / "idx_zero_size", train_images=np.zeros((16, 0, 8)))
    idx_dir(d / "idx_negative", raw={"train-labels-idx1-ubyte": idx_bytes(np.arange(16) % 10 - 5, 0x09)})
    idx_dir(d / "idx_float_labels", raw={"train-labels-idx1-ubyte": idx_bytes(np.arange(16) % 10 + 0.5, 0x0D)})
    idx_dir(d / "idx_nan_images", raw={"train-images-idx3-ubyte": idx_bytes(np.full((16, 8, 8), np.nan), 0x0D)})
    idx_dir(d / "idx_count_mismatch", train_labels=np.arange(15) % 10)
    idx_dir(d / "idx_rank", raw={"train-images-idx3-ubyte": idx_bytes(np.zeros((16, 64)))})
    idx_dir(d / "idx_trunc", raw={"train-images-idx3-ubyte": idx_bytes(np.zeros((16, 8, 8)))[:-10]})
    idx_dir(d / "idx_trailing", raw={"train-images-idx3-ubyte": idx_bytes(np.zeros((16, 8, 8))) + b"junk"})
    idx_dir(d / "idx_magic", raw={"train-images-idx3-ubyte": b"PK\x03\x04" + bytes(100)})
    idx_dir(d / "idx_ndim255", raw={"train-images-idx3-ubyte": bytes([0, 0, 8, 255]) + b"\0\0\0\1" * 255})
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb") as g:
        g.write(bytes([0, 0, 8, 3]) + struct.pack(">III", 1, 40000, 40000))
        for _ in range(40):
            g.write(bytes(40 * 1000 * 1000))
    idx_dir(d / "idx_huge", raw={"train-images-idx3-ubyte": gz.getvalue()})
    idx_dir(d / "idx_declared", raw={"train-images-idx3-ubyte": bytes([0, 0, 8, 3]) + struct.pack(
        ">III", 4_000_000_000, 60000, 60000)})
    idx_dir(d / "idx_badgz", raw={"train-images-idx3-ubyte": gzip.compress(idx_bytes(np.zeros((16, 8, 8))))[:-20]})
    idx_dir(d / "idx_big_labels", train_labels=np.full(16, 200))
    (d / "idx_symlink").mkdir()
    idx_dir(d / "idx_symlink")
    (d / "idx_symlink" / "train-images-idx3-ubyte").unlink()
    (d / "idx_symlink" / "train-images-idx3-ubyte").symlink_to("/dev/zero")
    (d / "idx_missing").mkdir()
    (d / "data_file").write_text("x")
    # --- training runs to resume from (digits, the tiny spec, one epoch)
    run = d / "run"
    rosetta("train", str(d / "tiny.json") + ":tiny", "--framework", "torch", "--data", str(d / "idx_ok"),
            "--epochs", "1", "--batch", "8", "--out", str(run))
    ck = run / "checkpoint.safetensors"
    header, data = read_st(ck)
    meta = header["__metadata__"]

    def ck_variant(name: str, *, meta_changes: dict | None = None, drop: Callable[[str], bool] | None = None,
                   reshape: str | None = None, flip: bool = False, nan: bool = False) -> None:
        out = d / f"ck_{name}"
        shutil.copytree(run, out)
        h, dat = json.loads(json.dumps(header)), bytearray(data)
        m = dict(meta)
        for k, val in (meta_changes or {}).items():
            if val is None:
                m.pop(k, None)
            else:
                m[k] = val
        h["__metadata__"] = m
        if drop is not None:  # drop tensors and re-pack the data
            keep = {k: v for k, v in h.items() if k == "__metadata__" or not drop(k)}
            blobs, off = [], 0
            for k, info in keep.items():
                if k == "__metadata__":
                    continue
                a, b = info["data_offsets"]
                blobs.append(bytes(dat[a:b]))
                info["data_offsets"] = [off, off + b - a]
                off += b - a
            h, dat = keep, bytearray(b"".join(blobs))
        if reshape is not None:
            key = next(k for k in h if k.startswith(reshape))
            h[key]["shape"] = [int(np.prod(h[key]["shape"]))]
        if flip:
            dat[len(dat) // 2] ^= 0x10
        if nan:
            key = next(k for k in h if k.endswith(".weight"))
            a = h[key]["data_offsets"][0]
            dat[a:a + 4] = np.array([np.nan], np.float32).tobytes()
        write_st(out / "checkpoint.safetensors", h, bytes(dat))

    ck_variant("no_optimizer", drop=lambda k: k.startswith("optimizer/"))
    ck_variant("optimizer_shape", reshape="optimizer/0.")
    ck_variant("no_history", meta_changes={"history": None})
    ck_variant("bad_history", meta_changes={"history": "{not json"})
    ck_variant("history_types", meta_changes={"history": json.dumps({"step_loss": "x", "epochs": 3})})
    ck_variant("no_epoch", meta_changes={"epoch": None})
    ck_variant("bad_epoch", meta_changes={"epoch": "one"})
    ck_variant("negative_epoch", meta_changes={"epoch": "-3"})
    ck_variant("future_epoch", meta_changes={"epoch": "7"})
    ck_variant("no_settings", meta_changes={"settings": None})
    ck_variant("bad_settings", meta_changes={"settings": "[1,"})
    ck_variant("spec_hash", meta_changes={"spec_hash": "2" * 64})
    ck_variant("flipped", flip=True)
    ck_variant("nan", nan=True)
    ck_variant("no_weights", drop=lambda k: not k.startswith("optimizer/"))
    out = d / "ck_truncated"
    shutil.copytree(run, out)
    raw = ck.read_bytes()
    (out / "checkpoint.safetensors").write_bytes(raw[: len(raw) // 2])
    out = d / "ck_dir"
    shutil.copytree(run, out)
    (out / "checkpoint.safetensors").unlink()
    (out / "checkpoint.safetensors").mkdir()
    spec = tiny_spec()
    spec["layers"][0]["out_channels"] = 12
    (d / "tiny_edited.json").write_text(json.dumps(spec))
    (d / "edit").mkdir()
    (d / "edit" / "tiny.json").write_text(json.dumps(tiny_spec()))
    rosetta("train", str(d / "edit" / "tiny.json") + ":tiny", "--framework", "torch", "--data", str(d / "idx_ok"),
            "--epochs", "1", "--batch", "8", "--out", str(d / "ck_edited_spec"))
    (d / "edit" / "tiny.json").write_text(json.dumps(spec))
    rosetta("train", str(d / "tiny.json") + ":tiny", "--framework", "torch", "--data", str(d / "idx_ok"),
            "--epochs", "1", "--batch", "8", "--out", str(d / "run_user"))
    (d / "emptycwd").mkdir()
    # --- docs inputs
    good = [{"model": "alexnet", "source": "torch", "target": "flax", "mode": "eval", "device": "cpu",
             "max_abs": 1e-6, "max_rel": 1e-7, "tolerance": 1e-5, "passed": True}]
    (d / "parity_ok").mkdir()
    (d / "parity_ok" / "parity.json").write_text(json.dumps(good))
    (d / "parity_str").mkdir()
    (d / "parity_str" / "parity.json").write_text(json.dumps([{**good[0], "passed": "false", "max_rel": 0.5}]))
    (d / "parity_list_str.json").write_text(json.dumps(["a", "b"]))
    (d / "parity_types.json").write_text(json.dumps([{**good[0], "model": ["x"], "max_rel": "big"}]))
    (d / "parity_deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "parity_obj.json").write_text(json.dumps({"records": good}))
    (d / "parity_link").mkdir()
    (d / "parity_link" / "parity.json").write_text(json.dumps(good))
    (d / "parity_link" / "parity.png").symlink_to("/etc/passwd")
    (d / "parity_notpng").mkdir()
    (d / "parity_notpng" / "parity.json").write_text(json.dumps(good))
    (d / "parity_notpng" / "parity.png").write_text("not a png")
    (d / "bench_bad").mkdir()
    (d / "bench_bad" / "bench.json").write_text(json.dumps({"records": [1, 2]}))
    (d / "bench_link").mkdir()
    (d / "bench_link" / "bench.json").write_text(json.dumps({"meta": {}, "records": [], "recommendation": {}}))
    (d / "bench_link" / "bench.md").symlink_to("/etc/shadow")
    (d / "nonsite").mkdir()
    (d / "nonsite" / "keep.txt").write_text("user data")
    (d / "afile").write_text("x")


# ---------------------------------------------------------------------------
# cases


def cases(d: Path) -> list[Case]:
    D = str(d)
    out = f"{D}/out"
    v, tiny = f"{D}/v.safetensors", f"{D}/tiny.json:tiny"
    C: list[Case] = []

    def add(group: str, name: str, *argv: str, **kw) -> None:
        C.append(Case(group, name, list(argv), **kw))

    # A. specs (summary / init / list on users' own spec files)
    for f, what in [("loops9", "loops nested 9 deep, 10^9 layers"), ("loops100", "loops nested 100 deep"),
                    ("blocks100", "blocks nested 100 deep"), ("fanout9", "blocks fanning out 10x, 9 deep"),
                    ("deepjson", "JSON nested 100000 deep"), ("notjson", "not JSON"), ("empty", "empty file"),
                    ("binary", "random bytes"), ("list", "a JSON list"), ("big", "60 MB of notes"),
                    ("nan", "NaN dropout rate"), ("hugeint", "kernel_size 10^400"),
                    ("subst", "a 200000-item loop of skipped layers"), ("fifo", "a named pipe"),
                    ("zero", "a symlink to /dev/zero"), ("loop_a", "a symlink loop"), ("adir", "a directory"),
                    ("missing", "no such file")]:
        add("spec", f"summary: {what}", "summary", f"{D}/{f}.json:tiny", timeout=120)
    add("spec", "init: a 10^9-channel conv", "init", f"{D}/wide.json:tiny", "--framework", "torch", "--out",
        f"{out}/wide.safetensors", watch=f"{out}/wide.safetensors")
    add("spec", "summary: 10^9-channel conv", "summary", f"{D}/wide.json:tiny")
    add("spec", "summary: --set input_size=1000000", "summary", "vgg11", "--set", "input_size=1000000")
    add("spec", "summary: --set input_size=[0,0]", "summary", "vgg11", "--set", "input_size=[0,0]")
    add("spec", "summary: --set num_classes=-1", "summary", "vgg11", "--set", "num_classes=-1")
    add("spec", "summary: --set num_classes=1e400", "summary", "vgg11", "--set", "num_classes=1e400")
    add("spec", "summary: --set num_classes=10**12", "summary", "vgg11", "--set", "num_classes=1000000000000")
    add("spec", "summary: --set width_divisor=0", "summary", "vgg11", "--set", "width_divisor=0")
    add("spec", "summary: --set unknown key", "summary", "vgg11", "--set", "depth=3")
    add("spec", "summary: --set without =", "summary", "vgg11", "--set", "num_classes")
    add("spec", "summary: --set in_channels=1 --input 3x64x64", "summary", "vgg11", "--set", "in_channels=1",
        "--input", "3x64x64")
    add("spec", "summary: --input 0x0x0", "summary", "vgg11", "--input", "0x0x0")
    add("spec", "summary: --input 3x99999999x99999999", "summary", "vgg11", "--input", "3x99999999x99999999")
    add("spec", "summary: unknown model", "summary", "resnet50")
    add("spec", "summary: spec:model not in file", "summary", f"{D}/tiny.json:huge")
    add("spec", "summary: user spec (good)", "summary", tiny, expect="ok")
    add("spec", "init: --set dropout=NaN", "init", "alexnet", "--framework", "torch", "--set", "dropout=NaN",
        "--out", f"{out}/x.safetensors")
    # B. canonical weights: predict (torch) and convert
    def predict(weights: str, model: str = "vgg11", x: str = f"{D}/x.npy", output: str = f"{out}/y.npy",
                **kw) -> list[str]:
        return ["predict", "--model", model, "--weights", weights, "--framework", "torch", "--input", x,
                "--output", output]

    for f, what in [("empty", "empty"), ("trunc", "truncated"), ("random", "random bytes"),
                    ("header_huge", "header length 2^62"), ("header_zero", "header length 0"),
                    ("header_garbage", "header not JSON"), ("header_list", "header a JSON list"),
                    ("header_deep", "header nested 100000 deep"), ("meta_list", "metadata a list"),
                    ("meta_int", "a metadata value not a string"), ("meta_noformat", "no format key"),
                    ("meta_version", "format_version 99"), ("meta_nomodel", "no model key"),
                    ("meta_unknown", "model unknown"), ("meta_path", "model names a spec bomb on disk"),
                    ("meta_path2", "model names a spec file on disk"),
                    ("meta_overrides_bad", "overrides not JSON"), ("meta_overrides_list", "overrides a list"),
                    ("meta_overrides_huge", "overrides input_size=100000"), ("meta_hash", "wrong spec_hash"),
                    ("flipped", "a flipped byte in the data"), ("nan", "a NaN weight"), ("inf", "an Inf weight"),
                    ("float8", "float8 tensor"), ("int32", "int32 tensor"), ("offsets", "data offsets past the end"),
                    ("missing", "a tensor missing (hole in the data)"), ("shape", "a tensor of another shape"),
                    ("weights_dir", "a directory"), ("zero", "a symlink to /dev/zero"), ("fifo", "a named pipe"),
                    ("nothere", "no such file")]:
        add("canonical", f"predict: {what}", *predict(f"{D}/{f}.safetensors"), watch=f"{out}/y.npy", timeout=120)
    for f, what in [("trunc", "truncated"), ("meta_path", "model names a spec bomb on disk"),
                    ("meta_hash", "wrong spec_hash"), ("flipped", "a flipped byte"), ("nan", "a NaN weight"),
                    ("header_deep", "header nested deep"), ("meta_list", "metadata a list"),
                    ("float8", "float8 tensor")]:
        add("canonical", f"convert -> .pth: {what}", "convert", f"{D}/{f}.safetensors", f"{out}/c.pth",
            watch=f"{out}/c.pth")
    add("canonical", "predict: other model's weights", *predict(v, model="alexnet"))
    add("canonical", "predict: good (bundled)", *predict(v), expect="ok")
    add("canonical", "init: --out x.pth (safetensors bytes in a .pth)", "init", "vgg11", "--framework", "torch",
        *TINY_SET, "--out", f"{out}/init.pth")
    add("canonical", "init: --out a trailing-slash dir/", "init", "vgg11", "--framework", "torch", *TINY_SET,
        "--out", f"{out}/newdir/")
    add("canonical", "init: --out an existing directory", "init", "vgg11", "--framework", "torch", *TINY_SET,
        "--out", f"{D}/adir.json")
    add("canonical", "init: --out under a file", "init", "vgg11", "--framework", "torch", *TINY_SET,
        "--out", f"{D}/afile/w.safetensors")
    add("canonical", "init: --out name too long", "init", "vgg11", "--framework", "torch", *TINY_SET,
        "--out", f"{out}/{'n' * 300}.safetensors")
    # C. users' own specs end to end
    add("user-spec", "init my.json:tiny", "init", tiny, "--framework", "torch", "--out", f"{out}/t.safetensors",
        expect="ok")
    add("user-spec", "predict --model my.json:tiny", *predict(f"{D}/tiny.safetensors", model=tiny,
                                                              x=f"{D}/x16.npy"), expect="ok")
    add("user-spec", "predict --model tiny (bare name)", *predict(f"{D}/tiny.safetensors", model="tiny",
                                                                  x=f"{D}/x16.npy"), expect="ok")
    add("user-spec", "convert -> .pt --model my.json:tiny", "convert", f"{D}/tiny.safetensors", f"{out}/t.pt",
        "--model", tiny, expect="ok")
    add("user-spec", "convert -> .msgpack", "convert", f"{D}/tiny.safetensors", f"{out}/t.msgpack", expect="ok")
    add("user-spec", "convert -> .safetensors (copy)", "convert", f"{D}/tiny.safetensors", f"{out}/t2.safetensors",
        expect="ok")
    add("user-spec", "parity --models my.json:tiny", "parity", "--models", tiny, "--frameworks", "torch", "flax",
        expect="ok", timeout=400)
    add("user-spec", "predict: edited spec (hash mismatch)", *predict(f"{D}/tiny.safetensors",
                                                                     model=f"{D}/tiny_edited.json:tiny",
                                                                     x=f"{D}/x16.npy"))
    add("user-spec", "predict: wrong spec_hash in the file", *predict(f"{D}/tiny_hash.safetensors", model=tiny,
                                                                     x=f"{D}/x16.npy"))
    add("user-spec", "train --resume on my.json:tiny", "train", tiny, "--framework", "torch", "--data",
        f"{D}/idx_ok", "--epochs", "2", "--batch", "8", "--out", f"{D}/run_user", expect="ok")
    # D. .pth
    for f, what in [("empty", "empty"), ("random", "random bytes"), ("text", "a text file"), ("trunc", "truncated"),
                    ("payload", "a pickle payload"), ("sparse", "a sparse tensor"), ("float8", "a float8 tensor"),
                    ("complex", "a complex tensor"), ("int", "an int tensor"), ("quant", "a quantized tensor"),
                    ("list", "a list"), ("nested", "nested dicts"), ("plain", "no tensors"),
                    ("stride0", "a stride-0 tensor of 80 GB"), ("legacy", "the legacy format"),
                    ("safetensors_as", "safetensors bytes"), ("zipbomb", "a zip bomb")]:
        add("pth", f"convert: {what}", "convert", f"{D}/{f}.pth", f"{out}/p.safetensors", watch=f"{out}/p.safetensors",
            timeout=180)
    add("pth", "convert: good", "convert", f"{D}/v.pth", f"{out}/good.safetensors", *TINY_SET[:4], expect="ok")
    add("pth", "convert a reduced-width .pt without --set", "convert", f"{D}/v.pt", f"{out}/pt.safetensors")
    add("pth", "convert .pt without --model (guessed)", "convert", f"{D}/v.pt", f"{out}/pt.safetensors",
        *TINY_SET[:4], expect="ok")
    add("pth", "convert .pt with another model", "convert", f"{D}/v.pt", f"{out}/pt2.safetensors", "--model",
        "alexnet")
    # E. HDF5 / .keras
    for f, what in [("huge_ds.weights.h5", "a dataset declaring 373 GiB"), ("softloop.weights.h5", "a soft-link loop"),
                    ("extlink.weights.h5", "an external link to another file"),
                    ("extstore.weights.h5", "external raw storage"), ("virtual.weights.h5", "a virtual dataset"),
                    ("strings.weights.h5", "a string dataset"), ("nolayers.weights.h5", "no Keras layers"),
                    ("k2missing.h5", "Keras 2 names that are missing"), ("trunc.weights.h5", "truncated"),
                    ("random.weights.h5", "random bytes"), ("empty.weights.h5", "empty")]:
        add("hdf5", f"convert: {what}", "convert", f"{D}/{f}", f"{out}/h.safetensors", *(
            ["--from", "keras-applications"] if f.endswith(".h5") and not f.endswith(".weights.h5") else []),
            watch=f"{out}/h.safetensors", timeout=180)
    add("hdf5", "convert: good", "convert", f"{D}/v.weights.h5", f"{out}/hgood.safetensors", *TINY_SET[:4],
        expect="ok")
    for f, what in [("bomb", "a zip bomb (4 GiB of zeros)"), ("nomember", "no model.weights.h5"),
                    ("notzip", "not a zip"), ("trunc", "truncated"), ("h5bomb", "a 373 GiB dataset inside")]:
        add("keras", f"convert .keras: {what}", "convert", f"{D}/{f}.keras", f"{out}/k.safetensors", "--model",
            "vgg11", *TINY_SET, watch=f"{out}/k.safetensors", timeout=240)
    add("keras", "convert .keras: good", "convert", f"{D}/v.keras", f"{out}/kgood.safetensors", "--model", "vgg11",
        *TINY_SET, expect="ok", timeout=240)
    add("keras", "convert .keras: other model", "convert", f"{D}/v.keras", f"{out}/k2.safetensors", "--model",
        "vgg13", *TINY_SET, timeout=240)
    # F. msgpack
    for f, what in [("trunc", "truncated"), ("random", "random bytes"), ("empty", "empty"),
                    ("deep", "nested 100000 deep"), ("list", "a list"), ("huge_array", "an array declaring 40 GB")]:
        add("msgpack", f"convert: {what}", "convert", f"{D}/{f}.msgpack", f"{out}/m.safetensors", "--model", "vgg11",
            *TINY_SET, watch=f"{out}/m.safetensors", timeout=180)
    add("msgpack", "convert: good", "convert", f"{D}/v.msgpack", f"{out}/mgood.safetensors", "--model", "vgg11",
        *TINY_SET, expect="ok", timeout=180)
    # G. predict inputs (.npy)
    for f, what in [("x.npz", "an .npz"), ("text", "a text file"), ("obj", "an object array"),
                    ("pickle", "a pickle"), ("int", "int64"), ("bool", "bool"), ("complex", "complex64"),
                    ("nan_x", "NaN values"), ("empty_batch", "an empty batch"), ("rank2", "rank 2"),
                    ("lying", "a header declaring 120 GB"), ("empty", "an empty file"), ("zero", "/dev/zero"),
                    ("nothere", "no such file")]:
        add("npy", f"predict --input {what}", *predict(v, x=f"{D}/{f}.npy"), watch=f"{out}/y.npy")
    add("npy", "predict --input a directory", *predict(v, x=f"{D}/adir.json"))
    add("npy", "predict --input float16 (good)", *predict(v, x=f"{D}/f16.npy", output=f"{out}/f16.npy"), expect="ok")
    add("npy", "predict --output x.txt", *predict(v, output=f"{out}/y.txt"))
    add("npy", "predict --output an existing directory", *predict(v, output=f"{D}/adir.json"))
    add("npy", "predict --output dir/", *predict(v, output=f"{out}/ydir/"))
    add("npy", "predict NaN weights (no word?)", *predict(f"{D}/nan.safetensors"))
    # H. training data
    T = ["--framework", "torch", "--epochs", "1", "--batch", "8"]
    for sub, what in [("idx_empty_file", "an empty IDX file"), ("idx_zero_items", "zero images"),
                      ("idx_zero_size", "zero-sized images"), ("idx_negative", "negative labels"),
                      ("idx_float_labels", "float labels"), ("idx_nan_images", "NaN pixels"),
                      ("idx_count_mismatch", "15 labels for 16 images"), ("idx_rank", "images of rank 2"),
                      ("idx_trunc", "truncated"), ("idx_trailing", "trailing bytes"), ("idx_magic", "bad magic"),
                      ("idx_ndim255", "255 dimensions"), ("idx_huge", "a gzip of one 40000x40000 image"),
                      ("idx_declared", "declaring 4e9 images of 60000x60000"), ("idx_badgz", "a truncated gzip"),
                      ("idx_symlink", "a symlink to /dev/zero"),
                      ("idx_missing", "no files"), ("data_file", "a file, not a directory")]:
        add("data", f"train --data {what}", "train", "vgg11", *T, "--set", "width_divisor=16", "--data", f"{D}/{sub}",
            "--out", f"{out}/train_{sub}", timeout=180)
    add("data", "train --data labels of 200 (201 classes)", "train", "vgg11", *T, "--set", "width_divisor=16",
        "--data", f"{D}/idx_big_labels", "--out", f"{out}/train_big_labels", expect="ok")
    add("data", "train digits --set num_classes=5", "train", "vgg11", *T, "--set", "width_divisor=16", "--set",
        "num_classes=5", "--data", "digits", "--out", f"{out}/t_nc5")
    add("data", "train digits --set input_size=100000", "train", "vgg11", *T, "--set", "input_size=100000",
        "--data", "digits", "--out", f"{out}/t_big")
    add("data", "train --lr nan", "train", "vgg11", *T, "--lr", "nan", "--data", "digits", "--out", f"{out}/t_nan")
    add("data", "train --lr -1", "train", "vgg11", *T, "--lr", "-1", "--data", "digits", "--out", f"{out}/t_neg")
    add("data", "train --lr 1e30 (diverges)", "train", "vgg11", "--framework", "torch", "--epochs", "1", "--batch",
        "64", "--set", "width_divisor=16", "--lr", "1e30", "--data", "digits", "--out", f"{out}/t_lr")
    add("data", "train --weight-decay -1", "train", "vgg11", *T, "--weight-decay", "-1", "--data", "digits",
        "--out", f"{out}/t_wd")
    add("data", "train --batch 0", "train", "vgg11", "--framework", "torch", "--batch", "0", "--data", "digits",
        "--out", f"{out}/t_b0")
    add("data", "train --out a file", "train", "vgg11", *T, "--data", f"{D}/idx_ok", "--out", f"{D}/afile")
    add("data", "train good (IDX)", "train", "vgg11", *T, "--set", "width_divisor=16", "--data", f"{D}/idx_ok",
        "--out", f"{out}/t_ok", expect="ok")
    # I. resume
    for sub, what in [("no_optimizer", "no optimizer tensors"), ("optimizer_shape", "an optimizer tensor reshaped"),
                      ("no_history", "no history"), ("bad_history", "history not JSON"),
                      ("history_types", "history of wrong types"), ("no_epoch", "no epoch"),
                      ("bad_epoch", "epoch 'one'"), ("negative_epoch", "epoch -3"), ("future_epoch", "epoch 7 of 2"),
                      ("no_settings", "no settings"), ("bad_settings", "settings not JSON"),
                      ("spec_hash", "wrong spec_hash"), ("flipped", "a flipped byte"), ("nan", "a NaN weight"),
                      ("no_weights", "no weights"), ("truncated", "truncated"), ("dir", "a directory")]:
        add("resume", f"resume: {what}", "train", tiny, "--framework", "torch", "--data", f"{D}/idx_ok", "--epochs",
            "2", "--batch", "8", "--out", f"{D}/ck_{sub}", timeout=180)
    add("resume", "resume: the spec file edited since", "train", f"{D}/edit/tiny.json:tiny", "--framework", "torch",
        "--data", f"{D}/idx_ok", "--epochs", "2", "--batch", "8", "--out", f"{D}/ck_edited_spec")
    add("resume", "resume: another framework", "train", tiny, "--framework", "flax", "--data", f"{D}/idx_ok",
        "--epochs", "2", "--batch", "8", "--out", f"{D}/run", timeout=180)
    # J. file system and interrupts
    src = f"{D}/big.safetensors"
    add("files", "convert into a read-only directory", "convert", v, f"{D}/ro/c.pth", immutable=f"{D}/ro",
        watch=f"{D}/ro/c.pth")
    add("files", "init into a read-only directory", "init", "vgg11", "--framework", "torch", *TINY_SET, "--out",
        f"{D}/ro/i.safetensors", immutable=f"{D}/ro")
    add("files", "predict into a read-only directory", *predict(v, output=f"{D}/ro/y.npy"), immutable=f"{D}/ro")
    add("files", "train into a read-only directory", "train", "vgg11", *T, "--set", "width_divisor=16", "--data",
        f"{D}/idx_ok", "--out", f"{D}/ro/run", immutable=f"{D}/ro")
    add("files", "parity --json into a read-only directory", "parity", "--models", "vgg11", "--frameworks", "torch",
        "flax", "--input", "32x32", "--json", f"{D}/ro/p.json", immutable=f"{D}/ro", timeout=400)
    add("files", "docs into a read-only directory", "docs", "--out", f"{D}/ro/site", immutable=f"{D}/ro")
    add("files", "convert onto an existing directory", "convert", v, f"{D}/adir.json")
    add("files", "convert: full disk (RLIMIT_FSIZE 1 MB) -> .pth", "convert", src, f"{out}/full.pth",
        fsize=1 << 20, watch=f"{out}/full.pth")
    add("files", "convert: full disk -> .safetensors", "convert", src, f"{out}/full.safetensors", fsize=1 << 20,
        watch=f"{out}/full.safetensors")
    add("files", "convert: full disk -> .weights.h5", "convert", f"{D}/big16.safetensors", f"{out}/full.weights.h5",
        fsize=1 << 20,
        watch=f"{out}/full.weights.h5")
    add("files", "init: full disk", "init", "vgg11", "--framework", "torch", "--set", "width_divisor=2", "--out",
        f"{out}/fullinit.safetensors", fsize=1 << 20, watch=f"{out}/fullinit.safetensors")
    for sig, label in [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM"), (signal.SIGKILL, "SIGKILL")]:
        for dst in ("sig.pth", "sig.safetensors", "sig.weights.h5"):
            source = f"{D}/big16.safetensors" if dst.endswith(".h5") else src  # keras.applications: VGG16/19
            add("files", f"convert {dst.split('.', 1)[1]}: {label} while writing", "convert", source,
                f"{out}/{label}_{dst}", signal=sig, watch=f"{out}/{label}_{dst}")
            if sig == signal.SIGKILL:
                add("files", f"convert {dst.split('.', 1)[1]}: the next run after SIGKILL", "convert", source,
                    f"{out}/{label}_{dst}", watch=f"{out}/{label}_{dst}", expect="ok")
    add("files", "convert: src == dst", "convert", v, v, expect="ok")
    add("files", "convert --to torch into x.safetensors", "convert", v, f"{out}/mismatch.safetensors", "--to",
        "torch", "--model", "vgg11", *TINY_SET)
    # K. docs
    add("docs", "docs --out . (a non-empty directory)", "docs", "--out", ".", cwd=f"{D}/nonsite", timeout=180)
    add("docs", "docs --out . (an empty directory)", "docs", "--out", ".", cwd=f"{D}/emptycwd", timeout=180)
    add("docs", "docs --out an existing file", "docs", "--out", f"{D}/afile")
    add("docs", "docs --out a non-site directory", "docs", "--out", f"{D}/nonsite")
    add("docs", "docs --parity passed: \"false\"", "docs", "--out", f"{out}/site1", "--parity", f"{D}/parity_str")
    add("docs", "docs --parity a list of strings", "docs", "--out", f"{out}/site2", "--parity",
        f"{D}/parity_list_str.json")
    add("docs", "docs --parity fields of wrong types", "docs", "--out", f"{out}/site3", "--parity",
        f"{D}/parity_types.json")
    add("docs", "docs --parity nested 100000 deep", "docs", "--out", f"{out}/site4", "--parity",
        f"{D}/parity_deep.json")
    add("docs", "docs --parity an object", "docs", "--out", f"{out}/site5", "--parity", f"{D}/parity_obj.json")
    add("docs", "docs --parity parity.png -> /etc/passwd", "docs", "--out", f"{out}/site6", "--parity",
        f"{D}/parity_link")
    add("docs", "docs --parity parity.png not a PNG", "docs", "--out", f"{out}/site7", "--parity",
        f"{D}/parity_notpng")
    add("docs", "docs --bench records of numbers", "docs", "--out", f"{out}/site8", "--bench", f"{D}/bench_bad")
    add("docs", "docs --bench bench.md -> /etc/shadow", "docs", "--out", f"{out}/site9", "--bench",
        f"{D}/bench_link")
    add("docs", "docs --parity missing", "docs", "--out", f"{out}/site10", "--parity", f"{D}/nothere.json")
    add("docs", "docs good", "docs", "--out", f"{out}/site_ok", "--parity", f"{D}/parity_ok", expect="ok")
    # L. other commands
    add("misc", "parity --models unknown", "parity", "--models", "resnet50")
    add("misc", "parity --input 0x0", "parity", "--models", "vgg11", "--input", "0x0")
    add("misc", "parity --input 100000x100000", "parity", "--models", "vgg11", "--frameworks", "torch", "flax",
        "--input", "100000x100000")
    add("misc", "bench --set junk", "bench", "--models", "vgg11", "--set", "depth=3", "--out", f"{out}/bench")
    add("misc", "bench --threads 0", "bench", "--models", "vgg11", "--threads", "0", "--out", f"{out}/bench")
    add("misc", "convert unknown ending", "convert", f"{D}/afile", f"{out}/x.bin")
    add("misc", "convert --from onnx", "convert", v, f"{out}/x.pth", "--from", "onnx")
    add("misc", "convert --set on a canonical file", "convert", v, f"{out}/x.pth", "--set", "num_classes=3")
    return C


# ---------------------------------------------------------------------------
# running


def _limits(case: Case) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a survey started in the background inherits SIG_IGN
        resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_CAP, MEMORY_CAP))
        if case.fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (case.fsize, case.fsize))
        os.setpgrp()

    return apply


def _leftovers(watch: str | None) -> list[str]:
    if not watch:
        return []
    parent = Path(watch.rstrip("/")).parent
    name = Path(watch.rstrip("/")).name
    if not parent.is_dir():
        return []
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and name in p.name)


def run_case(case: Case) -> dict:
    if case.immutable:
        Path(case.immutable).mkdir(exist_ok=True)
        subprocess.run(["chattr", "+i", case.immutable], check=False)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **case.env}
    t0 = time.time()
    proc = subprocess.Popen([*ROSETTA, *case.argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=_limits(case), cwd=case.cwd)
    status = None
    try:
        if case.signal is not None:
            parent, name = Path(case.watch).parent, Path(case.watch).name
            while proc.poll() is None and time.time() - t0 < case.timeout:
                if any(p.name.startswith(f".{name}") for p in parent.iterdir()):
                    time.sleep(0.05)
                    proc.send_signal(case.signal)
                    break
                time.sleep(0.01)
        out, err = proc.communicate(timeout=max(case.timeout - (time.time() - t0), 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        status = "timeout"
    finally:
        if case.immutable:
            subprocess.run(["chattr", "-i", case.immutable], check=False)
    rc = proc.returncode
    lines = [line for line in err.splitlines() if line.strip()]
    if status is None:
        if "Traceback (most recent call last)" in err:
            status = "traceback"
        elif rc == 0:
            status = "ok"
        elif rc < 0 or rc == 137:
            status = "killed"
        else:
            status = "error"
    last = lines[-1] if lines else ""
    if status == "traceback":
        last = next((line for line in reversed(lines) if not line.startswith(" ")), last)
    leftovers = _leftovers(case.watch)
    good = (status == "ok") if case.expect == "ok" else (status == "error")
    good = good and not leftovers
    if case.signal == signal.SIGKILL and case.expect == "error":
        good = status == "killed"  # judged by the next run, which must remove what was left
    return {"group": case.group, "name": case.name, "expect": case.expect, "status": status, "rc": rc,
            "message": last[:300], "leftovers": leftovers, "good": good, "seconds": round(time.time() - t0, 1),
            "marker": False}


def markdown(before: list[dict], after: list[dict]) -> str:
    """A table of the cases by group: outcome before and after (``--compare BEFORE AFTER``)."""
    old = {(r["group"], r["name"]): r for r in before}
    rows = ["| group | case | before | after |", "|---|---|---|---|"]

    def cell(r: dict | None) -> str:
        if r is None:
            return "not run"
        text = r["status"] + ("" if r["good"] else " (bad)")
        if r["status"] in ("error", "traceback") and r["message"]:
            msg = r["message"].split(": error: ", 1)[-1] if r["status"] == "error" else r["message"]
            text += ": " + msg[:90].replace("|", "/") + ("..." if len(msg) > 90 else "")
        if r["leftovers"]:
            text += f" (left {len(r['leftovers'])} temporary file(s))"
        return text

    for r in after:
        rows.append(f"| {r['group']} | {r['name'].replace('|', '/')} | {cell(old.get((r['group'], r['name'])))} | "
                    f"{cell(r)} |")
    good_before = sum(r["good"] for r in before)
    good_after = sum(r["good"] for r in after)
    rows.append(f"\n{len(after)} cases: {good_before} handled well before, {good_after} after.")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="results JSON")
    p.add_argument("--only", nargs="*", help="groups to run")
    p.add_argument("--dir", help="fixture directory (default: a new temporary one)")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="print a Markdown table of two runs")
    args = p.parse_args(argv)
    if args.compare:
        print(markdown(*(json.loads(Path(f).read_text()) for f in args.compare)))
        return 0
    d = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="rosetta-survey-"))
    if not (d / "out").exists():
        make_fixtures(d)
    np.save(d / "x16.npy", np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32))
    results = []
    for case in cases(d):
        if args.only and case.group not in args.only:
            continue
        r = run_case(case)
        r["marker"] = (d / "PWNED").exists()
        results.append(r)
        print(f"[{len(results):3d}] {'good' if r['good'] else 'BAD '} {r['status']:<9} {case.group:<10} "
              f"{case.name[:60]:<60} {r['message'][:110]}", flush=True)
        if case.signal == signal.SIGKILL:  # the next run must remove what the killed one left
            for leftover in r["leftovers"]:
                r["message"] += f" (left {leftover})"
        Path(args.out).write_text(json.dumps(results, indent=1))
    bad = sum(not r["good"] for r in results)
    print(f"{len(results)} cases, {len(results) - bad} good, {bad} bad; fixtures in {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
