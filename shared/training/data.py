"""Image classification data for ``rosetta train``, as NCHW float32 numpy arrays.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes; no
  download), split 80/20 with a fixed seed and resized to the model's input;
* a directory of IDX files (the MNIST / Fashion-MNIST format, http://yann.lecun.com/exdb/mnist/):
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``). Nothing is downloaded.

Pixels are scaled to [0, 1] and standardised with the training set's mean and standard
deviation. Images are resized (bilinear) to the model's input size and repeated over its
input channels. ``augment_batch`` gives the AlexNet paper's random crops and horizontal flips.
"""
from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import limits
from ..core.errors import RosettaError
from ..core.files import atomic_path, file_problem

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: IDX type byte -> numpy big-endian dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class Dataset:
    """Train and test splits: images NCHW float32, labels int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    #: the standardisation applied, ``(x / scale - mean) / std`` (recorded as the ``train`` preprocessing)
    mean: float = 0.0
    std: float = 1.0


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a numpy array of its own shape and type.

    The header is read first: its declared size is checked against the limits (``max_data_bytes``
    for the float32 copy training makes) before the data is read or inflated, and the data must
    be exactly that size."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise RosettaError(f"IDX file {path}: {problem}")
    try:
        with open(path, "rb") as raw:
            zipped = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if zipped else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] not in _IDX_TYPES:
                raise RosettaError(f"{path} is not an IDX file (magic bytes {head.hex() or 'missing: empty file'}, "
                                   "expected 0000 + type byte + number of dimensions)")
            dtype, ndim = np.dtype(_IDX_TYPES[head[2]]), head[3]
            if not 1 <= ndim <= 4:
                raise RosettaError(f"{path}: IDX header declares {ndim} dimensions (images have 3, labels 1)")
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise RosettaError(f"{path}: IDX header declares {ndim} dimensions but the file ends before them")
            shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
            count = math.prod(shape)
            limits.get().check("max_data_bytes", count * 4, f"the float32 size of the data {path} declares "
                               f"(shape {shape})")
            expected = count * dtype.itemsize
            if not zipped and path.stat().st_size != 4 + 4 * ndim + expected:
                raise RosettaError(f"{path}: IDX header says shape {shape} ({4 + 4 * ndim + expected:,} bytes in all), "
                                   f"the file has {path.stat().st_size:,} bytes")
            data = f.read(expected + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise RosettaError(f"cannot read IDX file {path}: {e}") from None
    if len(data) != expected:
        raise RosettaError(f"{path}: IDX header says shape {shape} ({expected:,} bytes of data), the "
                           f"{'inflated ' if zipped else ''}file has {'more' if len(data) > expected else len(data)} "
                           f"{'' if len(data) > expected else 'bytes'}".rstrip())
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz); used by tests."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes() + a.tobytes()
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(data) if str(path).endswith(".gz") else data)


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise RosettaError(f"{directory} has no {stem} (or {stem}.gz): an IDX data directory needs "
                       f"{', '.join(IDX_FILES.values())}")


def resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (N, C, H, W) float batch to ``size`` (align-corners off, like
    ``torch.nn.functional.interpolate(mode="bilinear")``)."""
    n, c, h, w = images.shape
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return images.astype(np.float32)

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    (r0, r1, fr), (c0, c1, fc) = axis(h, out_h), axis(w, out_w)
    rows = images[:, :, r0] * (1 - fr)[:, None] + images[:, :, r1] * fr[:, None]
    return (rows[..., c0] * (1 - fc) + rows[..., c1] * fc).astype(np.float32)


def _prepare(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             scale: float, input_shape: tuple[int, int, int]) -> Dataset:
    """[N, H, W] raw pixels -> standardised NCHW at ``input_shape`` (C, H, W)."""
    c, h, w = input_shape
    limits.get().check("max_data_bytes", (len(x_train) + len(x_test)) * c * h * w * 4,
                       f"the float32 size of {name} at the model's input {c}x{h}x{w}")
    prepared = []
    for x in (x_train, x_test):
        x = resize(x[:, None].astype(np.float32) / scale, (h, w))
        prepared.append(np.repeat(x, c, axis=1) if c > 1 else x)
    mean, std = float(prepared[0].mean()), float(prepared[0].std()) or 1.0
    x_train, x_test = ((x - mean) / std for x in prepared)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(name, x_train.astype(np.float32), y_train.astype(np.int64), x_test.astype(np.float32),
                   y_test.astype(np.int64), num_classes, mean, std)


def check_split(where: str, images: np.ndarray, labels: np.ndarray) -> None:
    """RosettaError for a split training cannot use: no images, images of size 0, labels that
    are not non-negative integers, pixels that are not finite."""
    if len(images) == 0:
        raise RosettaError(f"{where} has no images")
    if 0 in images.shape[1:]:
        raise RosettaError(f"{where} images have size {'x'.join(map(str, images.shape[1:]))}")
    if labels.dtype.kind not in "iu":
        raise RosettaError(f"{where} labels are {labels.dtype}, not integers (IDX type 0x08, 0x09, 0x0B or 0x0C)")
    if labels.min() < 0:
        raise RosettaError(f"{where} labels include {int(labels.min())}; class labels are 0, 1, 2, ...")
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        raise RosettaError(f"{where} images hold NaN or infinite pixels")


def check_num_classes(data: Dataset, num_classes: int) -> None:
    """RosettaError unless every label of ``data`` is below ``num_classes``."""
    if num_classes < data.num_classes:
        raise RosettaError(f"the labels of {data.name} go up to {data.num_classes - 1} ({data.num_classes} classes) "
                           f"but the model has num_classes={num_classes}")


def digits_split(*, test_fraction: float = 0.2, seed: int = 0) -> tuple[str, np.ndarray, np.ndarray, np.ndarray,
                                                                        np.ndarray, float]:
    """scikit-learn's digits as raw (name, x_train, y_train, x_test, y_test, pixel scale): 8x8
    images with values 0-16, split with a fixed seed."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    n_test = int(round(len(order) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return "digits", digits.images[train], digits.target[train], digits.images[test], digits.target[test], 16.0


def idx_split(directory: str | Path) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """An IDX directory as raw (name, x_train, y_train, x_test, y_test, pixel scale 255)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RosettaError(f"--data {directory}: not 'digits' and not a directory of IDX files")
    arrays = {key: read_idx(_find(directory, stem)) for key, stem in IDX_FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise RosettaError(f"{directory}: {split} images have shape {images.shape} and labels {labels.shape}; "
                               "expected (N, H, W) images and N labels")
        check_split(f"{directory}: {split}", images, labels)
    return (directory.name, arrays["train_images"], arrays["train_labels"], arrays["test_images"],
            arrays["test_labels"], 255.0)


def load_digits(input_shape: tuple[int, int, int], *, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's digits (8x8, values 0-16), split with a fixed seed, resized to ``input_shape``."""
    return _prepare(*digits_split(test_fraction=test_fraction, seed=seed), input_shape)


def load_idx_dir(directory: str | Path, input_shape: tuple[int, int, int]) -> Dataset:
    """MNIST / Fashion-MNIST style IDX files from ``directory``, resized to ``input_shape``."""
    return _prepare(*idx_split(directory), input_shape)


def is_idx_dir(directory: str | Path) -> bool:
    """Whether ``directory`` holds IDX files (any of :data:`IDX_FILES`, gzipped or not)."""
    d = Path(directory)
    return any((d / stem).is_file() or (d / f"{stem}.gz").is_file() for stem in IDX_FILES.values())


def load(data: str, input_shape: tuple[int, int, int]) -> Dataset:
    """``digits`` or a directory of IDX files."""
    return load_digits(input_shape) if data == "digits" else load_idx_dir(data, input_shape)


def augment_batch(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The AlexNet paper's augmentation (section 4.1) at any input size: a random crop of the
    image padded by 1/8 of its size on every side (the paper crops 224 of 256, a margin of
    1/8), then a horizontal flip with probability 1/2. Same shape out as in."""
    n, _, h, w = x.shape
    ph, pw = h // 8, w // 8
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode="edge")
    out = np.empty_like(x)
    tops = rng.integers(0, 2 * ph + 1, n)
    lefts = rng.integers(0, 2 * pw + 1, n)
    flips = rng.random(n) < 0.5
    for i in range(n):
        crop = padded[i, :, tops[i]:tops[i] + h, lefts[i]:lefts[i] + w]
        out[i] = crop[:, :, ::-1] if flips[i] else crop
    return out


def min_input_size(model: str, overrides: dict) -> int:
    """The smallest square input ``model`` accepts with ``overrides`` (tried upward from 8)."""
    from ..core.errors import SpecError
    from ..core.spec import load_spec

    for size in range(8, 513):
        try:
            load_spec(model, {**overrides, "input_size": size})
        except SpecError:
            continue
        return size
    raise RosettaError(f"model {model!r} accepts no square input up to 512x512")
