"""The papers' training recipes: AlexNet's PCA colour noise (its covariance), VGG's scale
jittering (the distribution of scales), determinism, and ``rosetta train --data DIR`` on an
image folder (recorded preprocessing and class names, bit-identical resume)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from rosetta_cnn.cli import main
from rosetta_cnn.core.canonical import read_metadata
from rosetta_cnn.core.errors import RosettaError
from rosetta_cnn.images import augment, folders
from rosetta_cnn.images.preprocess import from_json, named
from rosetta_cnn.training.loop import LOG, WEIGHTS

from ..conftest import needs
from .conftest import write_folder

COV = np.array([[0.06, 0.05, 0.04], [0.05, 0.06, 0.05], [0.04, 0.05, 0.07]])


def _pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).multivariate_normal([0.4, 0.5, 0.45], COV, n)


def _noise_covariance_error(pca: augment.PCA, noise: np.ndarray, sigma: float) -> float:
    """Relative (Frobenius) distance of the noise's covariance from the AlexNet paper's
    sigma^2 P diag(lambda^2) P^T."""
    p, lam = pca.eigenvectors, pca.eigenvalues
    expected = sigma ** 2 * p @ np.diag(lam ** 2) @ p.T
    return float(np.linalg.norm(np.cov(noise.T, bias=True) - expected) / np.linalg.norm(expected))


def test_pca_is_the_eigen_decomposition_of_the_pixel_covariance():
    x = _pixels(50_000)
    pca = augment.fit_pca([x[:20_000, None], x[20_000:]])  # any batching gives the same sums
    values, vectors = np.linalg.eigh(np.cov(x.T, bias=True))
    np.testing.assert_allclose(pca.eigenvalues, values[::-1], rtol=1e-9)
    np.testing.assert_allclose(np.abs(pca.eigenvectors), np.abs(vectors[:, ::-1]), atol=1e-9)
    assert pca.eigenvalues[0] > pca.eigenvalues[1] > pca.eigenvalues[2] > 0


def test_pca_noise_has_the_paper_s_covariance():
    pca = augment.fit_pca([_pixels(20_000)])
    rng = np.random.default_rng(1)
    noise = augment.pca_noise(pca, augment.draw_alpha(rng, 40_000, 3, 0.1))
    assert _noise_covariance_error(pca, noise, 0.1) < 0.03  # sampling error of 40k draws: ~1%
    np.testing.assert_allclose(noise.mean(axis=0), 0, atol=3e-4)
    # the broken counterpart: alpha scaled by sqrt(lambda) (the standard deviation, not the eigenvalue)
    wrong = (augment.draw_alpha(rng, 40_000, 3, 0.1) * np.sqrt(pca.eigenvalues)) @ pca.eigenvectors.T
    assert _noise_covariance_error(pca, wrong, 0.1) > 1


def test_scale_jitter_draws_every_scale_uniformly(monkeypatch):
    """S is uniform on the integers [S_min, S_max]: recorded from the resize calls of a folder batch."""
    seen: list[int] = []
    from rosetta_cnn.images import preprocess

    real = preprocess.resize

    def spy(img, prep, size=None):
        seen.append(size)
        return real(img, prep, size)

    monkeypatch.setattr(preprocess, "resize", spy)
    data = _ArrayFolder(n=400, side=20)
    batches = augment.TrainBatches(data, augment.Recipe(scale_jitter=(16, 23)))
    out = batches(np.arange(400), np.random.default_rng(0))
    assert out.shape == (400, 3, 16, 16) and out.dtype == np.float32
    counts = np.bincount(np.asarray(seen) - 16, minlength=8)
    assert len(counts) == 8 and counts.min() > 0
    chi2 = float(((counts - 50) ** 2 / 50).sum())
    assert chi2 < 24.3  # 7 degrees of freedom, p = 0.001
    # deterministic for a seed, different for another
    again = augment.TrainBatches(data, augment.Recipe(scale_jitter=(16, 23)))(np.arange(400), np.random.default_rng(0))
    np.testing.assert_array_equal(out, again)
    other = batches(np.arange(400), np.random.default_rng(1))
    assert not np.array_equal(out, other)


def test_scale_jitter_on_arrays_and_smaller_than_the_crop(monkeypatch):
    from rosetta_cnn.training import data as datasets

    sizes: list[int] = []
    real = datasets.resize
    monkeypatch.setattr(datasets, "resize", lambda x, size: (sizes.append(size[0]), real(x, size))[1])
    d = datasets.Dataset("t", np.random.default_rng(0).normal(size=(300, 1, 8, 8)).astype(np.float32),
                         np.zeros(300, np.int64), np.zeros((1, 1, 8, 8), np.float32), np.zeros(1, np.int64), 2)
    x = augment.TrainBatches(d, augment.Recipe(scale_jitter=(8, 12)))(np.arange(300), np.random.default_rng(0))
    assert x.shape == (300, 1, 8, 8) and set(sizes) == {8, 9, 10, 11, 12}
    with pytest.raises(RosettaError, match="S_MIN must be at least the 8-pixel crop"):
        augment.TrainBatches(d, augment.Recipe(scale_jitter=(6, 12)))
    # PCA noise on arrays: the batch moves along the data's principal direction only
    noisy = augment.TrainBatches(d, augment.Recipe(pca_std=0.1))
    y = noisy(np.arange(4), np.random.default_rng(0))
    shift = (y - d.x_train[:4]).reshape(4, -1)
    assert np.ptp(shift, axis=1).max() < 1e-6 and np.abs(shift).max() > 0  # one offset per image (1 channel)


class _ArrayFolder(folders.FolderDataset):
    """A FolderDataset whose images are in-memory PIL images (no files), for the statistics tests."""

    def __init__(self, n: int, side: int, colours: np.ndarray | None = None):
        from PIL import Image

        rng = np.random.default_rng(0)
        if colours is None:
            imgs = [Image.fromarray(rng.integers(0, 255, (side, side + 4, 3), dtype=np.uint8)) for _ in range(n)]
        else:  # solid colours: resizing keeps every pixel, so the pixel covariance is the colours'
            imgs = [Image.new("RGB", (side + 4, side), tuple(int(v) for v in c)) for c in colours]
        train = folders.ImageFolder(None, ["a"], [f"img{i}" for i in range(n)], np.zeros(n, np.int64))
        train.load = lambda i, mode="RGB": imgs[i]
        super().__init__("mem", train, train, named("torchvision", (3, 16, 16)))


def test_folder_pca_from_the_training_images():
    colours = np.clip(np.round(_pixels(30) * 255), 0, 255)
    data = _ArrayFolder(n=30, side=24, colours=colours)
    b = augment.TrainBatches(data, augment.Recipe(augment=True, pca_std=0.1))
    assert b.pca.eigenvalues.shape == (3,) and b.pca.eigenvectors.shape == (3, 3)
    # the covariance of [0, 1] RGB pixels over the training set
    np.testing.assert_allclose(b.pca.eigenvalues, np.linalg.eigvalsh(np.cov(colours.T / 255, bias=True))[::-1],
                               rtol=1e-9)
    x1 = b(np.arange(8), np.random.default_rng(3))
    np.testing.assert_array_equal(x1, b(np.arange(8), np.random.default_rng(3)))
    assert x1.shape == (8, 3, 16, 16)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("train") / "photos", {"bird": 5, "cat": 5, "dog": 5}, size=(70, 60))


TINY = ["alexnet", "--set", "width_divisor=16", "--set", "input_size=64", "--batch", "4", "--optimizer", "adam"]


def test_train_on_a_folder_records_preprocessing_and_classes_and_resumes_identically(photos, tmp_path, capsys):
    needs("torch")
    recipe = ["--augment", "--pca-noise", "--scale-jitter", "64", "80"]
    common = [*TINY, "--framework", "torch", "--data", str(photos), *recipe]
    assert main(["train", *common, "--epochs", "2", "--out", str(tmp_path / "straight")]) == 0
    assert main(["train", *common, "--epochs", "1", "--out", str(tmp_path / "resumed")]) == 0
    assert main(["train", *common, "--epochs", "2", "--out", str(tmp_path / "resumed")]) == 0
    assert "resuming from" in capsys.readouterr().err
    a, b = (load_file(str(tmp_path / d / WEIGHTS)) for d in ("straight", "resumed"))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    log = json.loads((tmp_path / "straight" / LOG).read_text())
    assert log["settings"]["recipe"] == {"pca_std": 0.1, "scale_jitter": [64, 80], "preprocess": "torchvision"}
    assert log["settings"]["augment"] is True
    meta = read_metadata(tmp_path / "straight" / WEIGHTS)
    assert from_json(meta["preprocess"]) == named("torchvision", (3, 64, 64))
    assert json.loads(meta["classes"]) == ["bird", "cat", "dog"]
    # predict names the folder's classes
    assert main(["predict", "--model", "alexnet", "--weights", str(tmp_path / "straight" / WEIGHTS), "--framework",
                 "torch", "--image", str(photos / "cat" / "000.png"), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {c} (" in out for c in ("bird", "cat", "dog"))
    # another recipe does not resume this run
    assert main(["train", *TINY, "--framework", "torch", "--data", str(photos), "--epochs", "3",
                 "--out", str(tmp_path / "straight")]) == 2
    assert "recipe" in capsys.readouterr().err


def test_train_recipe_errors(photos, tmp_path, capsys):
    needs("torch")
    assert main(["train", *TINY, "--framework", "torch", "--data", str(photos), "--scale-jitter", "48", "80",
                 "--out", str(tmp_path / "a")]) == 2
    assert "S_MIN must be at least the 64-pixel crop" in capsys.readouterr().err
    assert main(["train", "vgg11", "--framework", "torch", "--data", "digits", "--preprocess", "caffe",
                 "--out", str(tmp_path / "b")]) == 2
    assert "--preprocess applies to image folders" in capsys.readouterr().err
    assert main(["train", *TINY, "--framework", "torch", "--data", str(photos), "--preprocess", "imagenet",
                 "--out", str(tmp_path / "c")]) == 2
    assert "unknown preprocessing 'imagenet'" in capsys.readouterr().err
    assert main(["train", *TINY, "--framework", "torch", "--data", str(photos), "--pca-noise", "-1",
                 "--out", str(tmp_path / "d")]) == 2
    assert "--pca-noise must be a number in [0, 10]" in capsys.readouterr().err
