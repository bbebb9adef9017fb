"""The data loaders of ``rosetta train``: IDX files (written here, gzipped or not), digits,
resizing and the AlexNet-style augmentation."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from rosetta_cnn.core.errors import RosettaError
from rosetta_cnn.training import data as datasets


def write_mnist_like(directory, n_train: int = 12, n_test: int = 5, size: int = 28, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        datasets.write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, size, size)))
        datasets.write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", np.arange(n) % 10)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz: bool) -> None:
    a = np.random.default_rng(1).integers(0, 256, (3, 4, 5)).astype(np.uint8)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    datasets.write_idx(path, a)
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if gz else b"\x00\x00")
    np.testing.assert_array_equal(datasets.read_idx(path), a)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory_resized_and_standardised(tmp_path, gz: bool) -> None:
    write_mnist_like(tmp_path, gz=gz)
    d = datasets.load(str(tmp_path), (1, 32, 32))
    assert d.x_train.shape == (12, 1, 32, 32) and d.x_test.shape == (5, 1, 32, 32)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.num_classes == 10
    assert abs(d.x_train.mean()) < 1e-5 and abs(d.x_train.std() - 1) < 1e-4
    three = datasets.load(str(tmp_path), (3, 28, 28))
    np.testing.assert_array_equal(three.x_train[:, 0], three.x_train[:, 2])


def test_idx_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x00\x08\x02\x00\x00\x00\x03\x00\x00\x00\x03" + bytes(5))  # 3x3 needs 9 bytes
    with pytest.raises(RosettaError, match=r"bad.*\(3, 3\)"):
        datasets.read_idx(bad)
    (tmp_path / "junk.gz").write_bytes(gzip.compress(b"PK\x03\x04"))
    with pytest.raises(RosettaError, match="not an IDX file"):
        datasets.read_idx(tmp_path / "junk.gz")
    datasets.write_idx(tmp_path / "d" / "train-images-idx3-ubyte", np.zeros((2, 4, 4)))
    datasets.write_idx(tmp_path / "d" / "train-labels-idx1-ubyte", np.zeros(2))
    with pytest.raises(RosettaError, match="t10k-images-idx3-ubyte"):
        datasets.load(str(tmp_path / "d"), (1, 8, 8))
    with pytest.raises(RosettaError, match="not 'digits'"):
        datasets.load(str(tmp_path / "missing"), (1, 8, 8))


def test_digits_split_is_fixed() -> None:
    a, b = datasets.load("digits", (1, 32, 32)), datasets.load("digits", (1, 32, 32))
    assert a.x_train.shape == (1438, 1, 32, 32) and a.x_test.shape == (359, 1, 32, 32)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert set(np.unique(a.y_train)) == set(range(10))


def test_resize_matches_torch_bilinear() -> None:
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=(32, 20), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(datasets.resize(x, (32, 20)), ref.numpy(), atol=1e-6)


def test_augment_crops_and_flips() -> None:
    x = np.arange(2 * 1 * 16 * 16, dtype=np.float32).reshape(2, 1, 16, 16)
    outs = [datasets.augment_batch(x, np.random.default_rng(s)) for s in range(20)]
    assert all(o.shape == x.shape for o in outs)
    assert any(not np.array_equal(o, x) for o in outs)
    # a flipped, uncropped image appears for some seed: rows run right to left
    assert any((o[:, :, 4:12, 4:12][..., 1:] < o[:, :, 4:12, 4:12][..., :-1]).all() for o in outs)
    np.testing.assert_array_equal(datasets.augment_batch(x, np.random.default_rng(3)),
                                  datasets.augment_batch(x, np.random.default_rng(3)))


def test_min_input_size() -> None:
    assert datasets.min_input_size("vgg11", {"width_divisor": 4, "in_channels": 1}) == 32
