"""Image files in: Pillow decodes (https://pillow.readthedocs.io), every mode is converted
explicitly, and every failure is one :class:`ImageError` naming the file.

Formats: JPEG, PNG, WebP, plus BMP, PPM/PGM, GIF and TIFF (the file endings torchvision's
``ImageFolder`` accepts, and GIF); the first frame of an animation. Pillow is told which
formats to try, so a file of any other kind is refused rather than guessed.

Mode conversion (``Image.mode`` -> the ``RGB`` or ``L`` a model takes), written out so that
nothing depends on a default:

* ``RGB``, ``L``: as they are;
* ``RGBA``, ``RGBa``, ``RGBX``, ``LA``, ``La``, ``P``, ``PA``, ``1``, ``CMYK``, ``YCbCr``,
  ``LAB``, ``HSV``: Pillow's ``convert`` (alpha is dropped, not composited: what
  torchvision's ``pil_loader`` and ``keras.utils.load_img`` do with ``convert("RGB")``, so
  the numbers match the pipelines the weights were trained with);
* ``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, ``I`` (16-bit grayscale PNG / TIFF): scaled to
  8 bits, ``round(v * 255 / 65535)`` (``convert("RGB")`` would clip every value above 255
  to white, which is what torchvision's and Keras' loaders silently do);
* ``F`` (floating-point TIFF): refused, there is no agreed pixel scale.

EXIF orientation is not applied, as neither torchvision's nor Keras' loader applies it.
"""
from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import RosettaError

#: Pillow format names tried when opening a file
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "PPM", "GIF", "TIFF")
#: file endings of images in a folder (torchvision's IMG_EXTENSIONS, plus .gif)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff")
#: the most pixels an image may declare: Pillow's decompression-bomb warning threshold (89.5 MP, e.g. 12000 x
#: 7450), checked before anything is decoded; a larger photo must be downscaled first
MAX_PIXELS = 89_478_485
#: modes Pillow's ``convert`` turns into RGB / L as torchvision's and Keras' loaders do
CONVERTED = ("RGB", "L", "RGBA", "RGBa", "RGBX", "LA", "La", "P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV")
#: 16-bit (and 32-bit integer) grayscale modes, scaled to 8 bits
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageError(RosettaError):
    """An image file cannot be read, or cannot be used as asked; the message names the file."""


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(f"reading images needs Pillow ({e}); install it with: pip install 'rosetta-cnn[images]'") \
            from e
    return Image


def to_mode(img: Any, mode: str, source: str = "image") -> Any:
    """``img`` (a PIL image of any mode) as ``mode`` (``RGB`` or ``L``), converted as the
    module docstring lists."""
    Image = _pillow()
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if img.mode == mode:
        return img
    if img.mode in SIXTEEN_BIT:
        v = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        gray = Image.fromarray(((v * 510 + 65535) // 131070).astype(np.uint8))  # round(v * 255 / 65535)
        return gray if mode == "L" else gray.convert("RGB")
    if img.mode in CONVERTED:
        if img.mode == "La":  # premultiplied: Pillow converts it through LA only
            img = img.convert("LA")
        return img.convert(mode)
    raise ImageError(f"{source}: image mode {img.mode!r} is not supported (floating-point or unknown pixels "
                     "have no agreed 0-255 scale); save it as 8- or 16-bit")


def open_image(path: str | os.PathLike, mode: str = "RGB") -> Any:
    """Decode the image file ``path`` completely and return it as a PIL image in ``mode``
    (``RGB`` or ``L``). An unreadable, truncated, oversized or non-image file is an
    :class:`ImageError` naming the file."""
    Image = _pillow()
    p = Path(path)
    if p.is_dir():
        raise ImageError(f"{p}: is a directory, not an image file")
    if not p.is_file():
        raise ImageError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise ImageError(f"{p}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS is checked below
            with Image.open(p, formats=FORMATS) as img:
                w, h = img.size
                if w < 1 or h < 1 or w * h > MAX_PIXELS:
                    raise ImageError(f"{p}: {w}x{h} pixels is outside 1..{MAX_PIXELS} pixels")
                img.seek(0)
                img.load()  # decode now: a truncated file fails here, not later
                return to_mode(img, mode, str(p))
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError(f"{p}: not an image file Pillow can read as {', '.join(FORMATS)}") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{p}: refused: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, MemoryError, IndexError, TypeError,
            ZeroDivisionError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ImageError(f"{p}: cannot decode the image (truncated or corrupted?): {first}") from None


def image_files(directory: str | os.PathLike) -> list[Path]:
    """The image files (by ending, case-insensitive) directly in ``directory``, sorted by name;
    hidden files are skipped."""
    d = Path(directory)
    return sorted(f for f in d.iterdir() if f.is_file() and not f.name.startswith(".")
                  and f.suffix.lower() in EXTENSIONS)
