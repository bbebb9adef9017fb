"""Images the tests write: a gallery of odd sizes and Pillow modes, and ImageFolder trees."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

#: name -> (Pillow mode, (width, height)); the file ending picks the format
GALLERY: dict[str, tuple[str, tuple[int, int]]] = {
    "rgb.jpg": ("RGB", (301, 199)),
    "gray.png": ("L", (97, 130)),
    "rgba.png": ("RGBA", (257, 383)),
    "palette.png": ("P", (200, 150)),
    "la.png": ("LA", (123, 77)),
    "bilevel.png": ("1", (64, 300)),
    "cmyk.jpg": ("CMYK", (230, 260)),
    "png16.png": ("I;16", (123, 77)),
    "rgb.webp": ("RGB", (250, 333)),
    "rgba.webp": ("RGBA", (333, 250)),
    "wide.jpg": ("RGB", (1000, 100)),
    "tiny.png": ("RGB", (3, 2)),
}


def smooth(rng: np.random.Generator, w: int, h: int, channels: int) -> np.ndarray:
    """A photo-like image: smooth gradients plus noise, (h, w, channels) float in [0, 1]."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = [0.5 + 0.4 * np.sin(6 * x + 3 * c) * np.cos(4 * y - c) for c in range(channels)]
    return np.clip(np.stack(base, -1) + rng.normal(0, 0.08, (h, w, channels)), 0, 1)


def make_image(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    w, h = size
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray((smooth(rng, w, h, 1)[..., 0] * 65535).astype(np.uint16))
    rgba = Image.fromarray((smooth(rng, w, h, 4) * 255).astype(np.uint8), "RGBA")
    if mode == "P":
        img = rgba.convert("RGB").quantize(64)
        img.info["transparency"] = 3
        return img
    if mode == "1":
        return rgba.convert("L").point(lambda v: 255 if v > 128 else 0).convert("1")
    return rgba if mode == "RGBA" else rgba.convert(mode)


def write_gallery(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (name, (mode, size)) in enumerate(GALLERY.items()):
        path = directory / name
        img = make_image(mode, size, seed=i)
        kwargs = {"lossless": True} if name == "rgba.webp" else {"quality": 90} if name.endswith((".jpg", ".webp")) else {}
        img.save(path, **kwargs)
        out[name] = path
    return out


def write_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (80, 64), seed: int = 0) -> Path:
    """An ImageFolder tree: ``classes`` maps a class name to its number of images; each class
    has its own colour cast, so a model can tell them apart."""
    rng = np.random.default_rng(seed)
    for c, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            w, h = size[0] + 3 * i, size[1] + 2 * i  # odd, varying sizes
            a = smooth(rng, w, h, 3)
            a[..., c % 3] = np.clip(a[..., c % 3] + 0.3, 0, 1)
            Image.fromarray((a * 255).astype(np.uint8)).save(root / name / f"{i:03d}.{('png', 'jpg', 'webp')[i % 3]}")
    return root


@pytest.fixture(scope="session")
def gallery(tmp_path_factory) -> dict[str, Path]:
    return write_gallery(tmp_path_factory.mktemp("gallery"))
