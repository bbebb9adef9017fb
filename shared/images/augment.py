"""The papers' training-time data recipes for ``rosetta train``, framework-free and
deterministic: every random number is drawn from the epoch's numpy generator, in a fixed
order, before any image is decoded (so decoding threads and resuming change nothing).

* AlexNet's PCA colour augmentation (Krizhevsky et al. 2012, sec. 4.1,
  https://papers.nips.cc/paper/4824): the eigen-decomposition ``C = P diag(lambda) P^T`` of
  the training set's RGB covariance, and per image ``P (alpha * lambda)`` added to every pixel,
  ``alpha ~ N(0, sigma^2)`` per component (sigma = 0.1). Pixels are on the [0, 1] scale for
  image folders (the magnitude depends on the scale; 0-255 would make it 255x larger) and
  in the standardised space for digits and IDX arrays.
* AlexNet's crops (sec. 4.1): the shorter side resized to the preprocessing's size (256 for
  224), the central square of that side, then a random crop of the input size and a
  horizontal flip with probability 1/2 (``--augment``).
* VGG's scale jittering (Simonyan & Zisserman 2014, sec. 3.1, https://arxiv.org/abs/1409.1556):
  the shorter side resized to ``S`` drawn uniformly from the integers ``[S_min, S_max]``
  (256..512 in the paper), then a random crop of the input size and a random flip
  (``--scale-jitter S_MIN S_MAX``).

Digits and IDX arrays (already at the input size) keep ``training.data.augment_batch`` for
``--augment``; scale jittering resizes them to ``S`` (bilinear) and crops back.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..core.errors import RosettaError

#: the AlexNet paper's standard deviation of the PCA coefficients
PCA_STD = 0.1
#: images (a fixed random subset of the training set) whose pixels give an image folder's RGB covariance
PCA_MAX_IMAGES = 10_000


@dataclass(frozen=True)
class Recipe:
    """What ``rosetta train`` does to each training batch besides the plain preprocessing."""

    augment: bool = False  # AlexNet's random crops and flips
    pca_std: float = 0.0  # AlexNet's PCA colour noise (sigma of alpha; 0: off)
    scale_jitter: tuple[int, int] | None = None  # VGG's (S_min, S_max)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.pca_std) and 0 <= self.pca_std <= 10):
            raise RosettaError(f"--pca-noise must be a number in [0, 10], got {self.pca_std}")
        if self.scale_jitter is not None:
            lo, hi = self.scale_jitter
            if not 1 <= lo <= hi:
                raise RosettaError(f"--scale-jitter needs 1 <= S_MIN <= S_MAX, got {lo} {hi}")

    def settings(self) -> dict[str, Any]:
        """The non-default entries (what a checkpoint's settings record)."""
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()
                if v != Recipe.__dataclass_fields__[k].default and k != "augment"}


# ---------------------------------------------------------------------------
# AlexNet's PCA colour augmentation


@dataclass(frozen=True)
class PCA:
    """Eigenvalues (descending) and eigenvectors (columns) of a pixel covariance."""

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray


def fit_pca(pixel_batches: Sequence[np.ndarray] | Any) -> PCA:
    """The eigen-decomposition of the covariance of every pixel in ``pixel_batches`` (arrays
    of shape (..., C)), accumulated in float64."""
    n, s, ss = 0, None, None
    for batch in pixel_batches:
        p = np.asarray(batch, dtype=np.float64).reshape(-1, np.shape(batch)[-1])
        n += len(p)
        s = p.sum(axis=0) if s is None else s + p.sum(axis=0)
        ss = p.T @ p if ss is None else ss + p.T @ p
    if not n:
        raise RosettaError("PCA colour augmentation needs at least one training image")
    mean = s / n
    cov = ss / n - np.outer(mean, mean)
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    order = np.argsort(values)[::-1]
    return PCA(np.clip(values[order], 0, None), vectors[:, order])


def pca_noise(pca: PCA, alpha: np.ndarray) -> np.ndarray:
    """Per image, the colour offset ``P (alpha * lambda)``: ``alpha`` (N, C) -> (N, C)."""
    return (alpha * pca.eigenvalues) @ pca.eigenvectors.T


def draw_alpha(rng: np.random.Generator, n: int, channels: int, std: float) -> np.ndarray:
    return rng.normal(0.0, std, (n, channels))


# ---------------------------------------------------------------------------
# training batches


def _offset(u: float, room: int) -> int:
    """A uniform integer in [0, room] from a uniform float in [0, 1)."""
    return min(int(u * (room + 1)), room)


class TrainBatches:
    """Training batches under a recipe: ``batches(idx, rng)`` -> (N, C, H, W) float32.

    Built once per run: it checks that jittered scales are not smaller than the crop and
    computes the PCA the colour augmentation needs (deterministically, so a resumed run gets
    the same one). With no recipe on array data a batch is ``data.x_train[idx]`` (plus
    ``augment_batch`` with ``--augment``), exactly as before recipes existed."""

    def __init__(self, data: Any, recipe: Recipe, progress: Callable[[str], None] = lambda m: None):
        from .folders import FolderDataset

        self.data, self.recipe, self.pca = data, recipe, None
        self.folder = isinstance(data, FolderDataset)
        crop = min(data.prep.crop) if self.folder else min(np.shape(data.x_train)[2:])
        if recipe.scale_jitter is not None and recipe.scale_jitter[0] < crop:
            raise RosettaError(f"--scale-jitter {recipe.scale_jitter[0]} {recipe.scale_jitter[1]}: S_MIN must be at "
                               f"least the {crop}-pixel crop (a smaller image cannot be cropped to the input size)")
        if recipe.pca_std:
            self.pca = self._fit_folder(progress) if self.folder else fit_pca(
                np.moveaxis(data.x_train[i:i + 256], 1, -1) for i in range(0, len(data.x_train), 256))
            progress(f"PCA colour augmentation: eigenvalues {np.array2string(self.pca.eigenvalues, precision=5)}")

    def _fit_folder(self, progress: Callable[[str], None]) -> PCA:
        """The pixel covariance of (at most PCA_MAX_IMAGES, a fixed random subset of) the
        training images at the test geometry, on the [0, 1] scale."""
        from .folders import decode_many
        from .preprocess import crop, crop_box, resize, to_array

        data = self.data
        n = len(data.train)
        pick = np.sort(np.random.default_rng(0).permutation(n)[:PCA_MAX_IMAGES])
        progress(f"PCA colour augmentation: {data.prep.mode} covariance of {len(pick)} of {n} training images")

        def pixels(i: int) -> np.ndarray:
            a = to_array(resize(data.train.load(i, data.prep.mode), data.prep))
            top, left = crop_box(a.shape[0], a.shape[1], data.prep.crop, source=data.train.describe(i))
            return crop(a, top, left, data.prep.crop).astype(np.float64) / 255.0

        return fit_pca(decode_many(pixels, pick.tolist()))

    def __call__(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.folder:
            return self._folder_batch(idx, rng)
        from ..training.data import augment_batch

        recipe = self.recipe
        x = self.data.x_train[idx]
        if recipe.augment:
            x = augment_batch(x, rng)
        if recipe.scale_jitter is not None:
            x = _jitter_arrays(x, rng, recipe.scale_jitter)
        if self.pca is not None:
            noise = pca_noise(self.pca, draw_alpha(rng, len(x), x.shape[1], recipe.pca_std))
            x = (x + noise[:, :, None, None]).astype(np.float32)
        return x

    def _folder_batch(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from .folders import decode_many
        from .preprocess import crop, crop_box, normalize, resize, to_array

        data, recipe = self.data, self.recipe
        prep, n = data.prep, len(idx)
        ch, cw = prep.crop
        random_crop = recipe.augment or recipe.scale_jitter is not None
        # every random number first, in a fixed order: decoding threads cannot change them
        sizes = (rng.integers(recipe.scale_jitter[0], recipe.scale_jitter[1] + 1, n)
                 if recipe.scale_jitter is not None else np.full(n, prep.size))
        u = rng.random((n, 2)) if random_crop else np.zeros((n, 2))
        flips = rng.random(n) < 0.5 if random_crop else np.zeros(n, bool)
        noise = (pca_noise(self.pca, draw_alpha(rng, n, prep.in_channels, recipe.pca_std)) if self.pca is not None
                 else None)

        def one(k: int) -> np.ndarray:
            i = int(idx[k])
            where = data.train.describe(i)
            a = to_array(resize(data.train.load(i, prep.mode), prep, int(sizes[k])))
            if not random_crop:  # the test geometry
                top, left = crop_box(a.shape[0], a.shape[1], prep.crop, source=where)
            else:
                if recipe.scale_jitter is None:  # AlexNet: the central square of the shorter side first
                    side = min(a.shape[:2])
                    top0, left0 = crop_box(a.shape[0], a.shape[1], (side, side), source=where)
                    a = crop(a, top0, left0, (side, side))
                crop_box(a.shape[0], a.shape[1], prep.crop, source=where)  # smaller than the crop: an error
                top, left = _offset(u[k, 0], a.shape[0] - ch), _offset(u[k, 1], a.shape[1] - cw)
            a = crop(a, top, left, prep.crop)
            if flips[k]:
                a = a[:, ::-1]
            if noise is not None:  # [0, 1] pixels + P (alpha * lambda)
                a = a.astype(np.float32) / np.float32(255) + noise[k].astype(np.float32)
            return normalize(a, prep)

        return np.stack(decode_many(one, list(range(n))))


def _jitter_arrays(x: np.ndarray, rng: np.random.Generator, scales: tuple[int, int]) -> np.ndarray:
    """VGG's scale jittering on (N, C, h, w) arrays: each resized to S x S (S uniform in
    [S_min, S_max], bilinear), a random h x w crop, a horizontal flip with probability 1/2."""
    from ..training.data import resize

    n, _, h, w = x.shape
    sizes = rng.integers(scales[0], scales[1] + 1, n)
    u = rng.random((n, 2))
    flips = rng.random(n) < 0.5
    out = np.empty_like(x)
    for i in range(n):
        s = int(sizes[i])
        big = resize(x[i:i + 1], (s, s))[0]
        top, left = _offset(u[i, 0], s - h), _offset(u[i, 1], s - w)
        crop = big[:, top:top + h, left:left + w]
        out[i] = crop[:, :, ::-1] if flips[i] else crop
    return out
