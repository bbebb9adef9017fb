"""Where images come from: a folder of class folders (torchvision's ImageFolder layout), an
IDX directory or scikit-learn's digits, behind one small interface (:class:`Source`), and the
lazily decoded datasets ``rosetta train --data DIR`` trains on.

ImageFolder layout: ``DIR/<class>/<image>``, classes in sorted folder-name order (as
torchvision's ``ImageFolder``), images found by ending (``files.EXTENSIONS``). For training,
``DIR/train`` and ``DIR/val`` (or ``DIR/test``) are the splits when present; otherwise a fixed
20% of each class is held out.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core.errors import RosettaError
from .files import EXTENSIONS, image_files, open_image

#: test fraction of a folder without train / val splits, and the seed of that split
TEST_FRACTION = 0.2
SPLIT_SEED = 0
#: threads decoding images (Pillow releases the GIL while decoding and resizing)
DECODE_THREADS = min(4, os.cpu_count() or 1)


@dataclass
class ImageFolder:
    """Image files and their class indices (class = sorted folder-name order)."""

    root: Path
    classes: list[str]
    paths: list[Path]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self, i: int) -> str:
        return str(self.paths[i])

    def load(self, i: int, mode: str = "RGB") -> Any:
        """Image ``i`` decoded as a PIL image in ``mode`` (an ImageError names a bad file)."""
        return open_image(self.paths[i], mode)

    def subset(self, idx: Sequence[int]) -> ImageFolder:
        return ImageFolder(self.root, self.classes, [self.paths[i] for i in idx], self.labels[np.asarray(idx, int)])


@dataclass
class ArraySource:
    """Gray images as float (N, H, W) arrays in [0, 1] (digits, IDX), served as (H, W, 1)."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, i: int) -> str:
        return f"{self.name} image {i}"

    def load(self, i: int, mode: str = "L") -> np.ndarray:
        return self.images[i][:, :, None]


Source = Any  # ImageFolder | ArraySource: __len__, labels, classes, describe(i), load(i, mode)


def scan(root: str | os.PathLike) -> ImageFolder:
    """The ImageFolder at ``root``. A missing root, a root without class folders and a class
    folder without images are clear errors."""
    r = Path(root)
    if not r.is_dir():
        raise RosettaError(f"{r}: not a directory (expected a folder of class folders, an IDX directory or 'digits')")
    folders = sorted(d for d in r.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        loose = image_files(r)
        raise RosettaError(f"{r}: no class folders" + (f" ({len(loose)} image files lie directly in it)" if loose else "")
                           + f"; expected {r}/<class>/<image>")
    paths: list[Path] = []
    labels: list[int] = []
    for index, folder in enumerate(folders):
        files = image_files(folder)
        if not files:
            raise RosettaError(f"{folder}: class folder {folder.name!r} has no images ({', '.join(EXTENSIONS)})")
        paths += files
        labels += [index] * len(files)
    return ImageFolder(r, [f.name for f in folders], paths, np.asarray(labels, dtype=np.int64))


def splits(root: str | os.PathLike) -> tuple[ImageFolder, ImageFolder]:
    """(train, test) of an ImageFolder: ``root/train`` and ``root/val`` (or ``root/test``) when
    present, else a fixed :data:`TEST_FRACTION` of each class (at least one image of each
    class stays in train)."""
    r = Path(root)
    held = next((r / name for name in ("val", "test") if (r / name).is_dir()), None)
    if (r / "train").is_dir() and held is not None:
        train, test = scan(r / "train"), scan(held)
        if train.classes != test.classes:
            raise RosettaError(f"{r}: train has classes {train.classes[:5]}... but {held.name} has "
                               f"{test.classes[:5]}...; both need the same class folders")
        return train, test
    everything = scan(r)
    rng = np.random.default_rng(SPLIT_SEED)
    train_idx, test_idx = [], []
    for c in range(len(everything.classes)):
        members = np.flatnonzero(everything.labels == c)
        members = members[rng.permutation(len(members))]
        n_test = min(int(round(len(members) * TEST_FRACTION)), len(members) - 1)
        test_idx += sorted(members[:n_test].tolist())
        train_idx += sorted(members[n_test:].tolist())
    return everything.subset(sorted(train_idx)), everything.subset(sorted(test_idx))


def open_source(data: str, *, split: str = "test") -> Source:
    """``digits``, an IDX directory (its ``split``: train or test) or an ImageFolder root as a
    :class:`Source` (for ``rosetta eval``)."""
    from ..training import data as datasets

    if data == "digits" or datasets.is_idx_dir(data):
        name, x_train, y_train, x_test, y_test, scale = (datasets.digits_split() if data == "digits"
                                                         else datasets.idx_split(data))
        x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
        num_classes = int(max(y_train.max(), y_test.max())) + 1
        return ArraySource(name, x.astype(np.float32) / scale, np.asarray(y, np.int64),
                           [str(i) for i in range(num_classes)])
    return scan(data)


def decode_many(fn: Callable[[int], np.ndarray], indices: Sequence[int]) -> list[np.ndarray]:
    """``fn(i)`` for every index, on :data:`DECODE_THREADS` threads, in order (results do not
    depend on the threads: each call's randomness is drawn before it starts)."""
    if DECODE_THREADS <= 1 or len(indices) < 2:
        return [fn(i) for i in indices]
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        return list(pool.map(fn, indices))


class LazyImages:
    """A folder's images as an indexable (N, C, H, W) float32 batch, decoded on access
    (``x[idx]``, ``x[a:b]``, ``len(x)``) with ``prep``'s test geometry."""

    def __init__(self, folder: ImageFolder, prep: Any):
        self.folder, self.prep = folder, prep

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, idx: Any) -> np.ndarray:
        from .preprocess import preprocess_image

        indices = range(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx).reshape(-1).tolist()

        def one(i: int) -> np.ndarray:
            return preprocess_image(self.folder.load(i, self.prep.mode), self.prep, self.folder.describe(i))

        return np.stack(decode_many(one, list(indices)))

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), self.prep.in_channels, *self.prep.crop)


@dataclass
class FolderDataset:
    """An ImageFolder's train and test splits for ``rosetta train``: ``x_train`` / ``x_test``
    decode lazily with the test geometry of ``prep``; training batches come from
    ``augment.train_batch`` (the recipes)."""

    name: str
    train: ImageFolder
    test: ImageFolder
    prep: Any
    x_train: LazyImages = field(init=False)
    x_test: LazyImages = field(init=False)

    def __post_init__(self) -> None:
        self.x_train, self.x_test = LazyImages(self.train, self.prep), LazyImages(self.test, self.prep)

    @property
    def y_train(self) -> np.ndarray:
        return self.train.labels

    @property
    def y_test(self) -> np.ndarray:
        return self.test.labels

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def classes(self) -> list[str]:
        return self.train.classes
