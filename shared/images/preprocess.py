"""The input each set of weights expects, as data: one :class:`Preprocessing` per pipeline,
recorded in every canonical file's metadata (key ``preprocess``, a JSON object) and applied
to images by :func:`preprocess_image`.

Named preprocessings (:data:`NAMES`), each defined for the model's input size (224x224 below):

``torchvision``
    torchvision's ImageNet classifiers (``Weights.transforms()``, the Pillow path,
    https://pytorch.org/vision/stable/models.html): RGB; the shorter side resized to 256
    (Pillow bilinear, antialiased; the longer side ``int(256 * long / short)``); a centre
    crop of 224; ``/ 255``; minus mean (0.485, 0.456, 0.406), divided by std (0.229, 0.224,
    0.225). At another input size S the resize is ``int(S * 256 / 224)``. torchvision's
    pretrained GoogLeNet takes this input too: its ``transform_input=True`` (a spec override,
    ``--set transform_input=true``) re-scales it inside the model to the [-1, 1] input the
    original weights were trained on, so the file needs both.
``caffe``
    keras.applications VGG16 / VGG19 (``keras.applications.vgg16.preprocess_input``, mode
    "caffe", https://keras.io/api/applications/vgg/) after ``keras.utils.load_img(path,
    target_size=(224, 224))``: RGB resized to 224x224 ignoring the aspect ratio (Pillow
    nearest, load_img's default), channels reversed to BGR, the ImageNet means (103.939,
    116.779, 123.68) (B, G, R) subtracted on the 0-255 scale, no scaling.
``train``
    ``rosetta train``'s own pipeline on digits and IDX files: the model's channels (L or RGB),
    resized to the input size (bilinear), ``/ 255`` (digits: ``/ 16``), minus the training
    set's mean, divided by its standard deviation (both recorded by the run: this one exists
    only in files ``rosetta train`` wrote).

A value is computed as ``((pixel / scale)[channel order] - mean) / std`` in float32, the
operation order of torchvision's ``convert_image_dtype`` + ``normalize`` and of Keras'
``preprocess_input``, so both pipelines are reproduced exactly (measured in docs/images.md).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.errors import RosettaError
from .files import ImageError

#: the torchvision resize / crop ratio (256 / 224) and ImageNet statistics
TORCHVISION_RATIO = 256 / 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: keras.applications "caffe" means, in the BGR order they are subtracted in
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

NAMES = ("torchvision", "caffe", "train")
RESIZES = ("shorter", "stretch")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
CHANNELS = ("RGB", "BGR", "L")
#: which preprocessing each foreign weight format was trained with (``rosetta convert``)
ORIGIN = {"torchvision": "torchvision", "keras-applications": "caffe"}


@dataclass(frozen=True)
class Preprocessing:
    """One image-to-tensor pipeline, for one model input size."""

    name: str
    channels: str  # "RGB", "BGR" or "L": what the model's input channels hold, in order
    resize: str  # "shorter": shorter side to `size`, aspect kept; "stretch": to `crop` scaled by size/min(crop)
    size: int
    crop: tuple[int, int]  # (H, W) of the centre crop: the model's input size
    interpolation: str
    scale: float  # 0-255 pixels are divided by this (255: [0, 1]; 1: kept)
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def mode(self) -> str:
        """The PIL mode images are converted to (``RGB`` or ``L``)."""
        return "L" if self.channels == "L" else "RGB"

    @property
    def in_channels(self) -> int:
        return 1 if self.channels == "L" else 3

    def to_json(self) -> str:
        """The metadata value: a JSON object with every field."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def describe(self) -> str:
        """One line: name, resize, crop, normalisation."""
        how = (f"shorter side {self.size}" if self.resize == "shorter"
               else f"stretched to {self._stretch(self.size)[1]}x{self._stretch(self.size)[0]}")
        return (f"{self.name}: {self.channels}, {how} ({self.interpolation}), centre crop "
                f"{self.crop[0]}x{self.crop[1]}, /{self.scale:g}, mean {list(self.mean)}, std {list(self.std)}")

    def _stretch(self, size: int) -> tuple[int, int]:
        ch, cw = self.crop
        short = min(ch, cw)
        return round(cw * size / short), round(ch * size / short)

    def resized_size(self, width: int, height: int, size: int | None = None) -> tuple[int, int]:
        """(width, height) after the resize step, for an image of ``width`` x ``height`` and a
        resize target ``size`` (default: this preprocessing's). ``shorter`` is torchvision's
        ``Resize(int)`` rule (``int(size * long / short)``)."""
        size = self.size if size is None else size
        if self.resize == "stretch":
            return self._stretch(size)
        if width <= height:
            return size, int(size * height / width)
        return int(size * width / height), size

    def with_size(self, size: int) -> Preprocessing:
        """The same pipeline with another resize target (scale jittering, multi-scale evaluation)."""
        return dataclasses.replace(self, size=int(size))


def named(name: str, input_shape: Sequence[int], *, mean: Sequence[float] | None = None,
          std: Sequence[float] | None = None) -> Preprocessing:
    """The named preprocessing for a model taking ``input_shape`` (C, H, W); ``train`` needs
    the training set's ``mean`` and ``std``."""
    c, h, w = (int(v) for v in input_shape)
    short = min(h, w)
    if name == "torchvision":
        prep = Preprocessing("torchvision", "RGB", "shorter", int(short * TORCHVISION_RATIO), (h, w), "bilinear",
                             255.0, IMAGENET_MEAN, IMAGENET_STD)
    elif name == "caffe":
        prep = Preprocessing("caffe", "BGR", "stretch", short, (h, w), "nearest", 1.0, CAFFE_MEAN_BGR, (1.0, 1.0, 1.0))
    elif name == "train":
        if mean is None or std is None:
            raise RosettaError("the 'train' preprocessing needs the training set's mean and std, which only a file "
                               "written by rosetta train records; choose torchvision or caffe")
        channels = "L" if c == 1 else "RGB"
        mean_t, std_t = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if len(mean_t) == 1:
            mean_t, std_t = mean_t * c, std_t * c
        prep = Preprocessing("train", channels, "stretch", short, (h, w), "bilinear", 255.0, mean_t, std_t)
    else:
        raise RosettaError(f"unknown preprocessing {name!r}; choose from {', '.join(NAMES)}")
    return check_fits(prep, input_shape)


def check_fits(prep: Preprocessing, input_shape: Sequence[int], *, source: str = "preprocessing") -> Preprocessing:
    """``prep`` if it gives ``input_shape`` (C, H, W) tensors, else a RosettaError."""
    c, h, w = (int(v) for v in input_shape)
    if prep.in_channels != c:
        raise RosettaError(f"{source} {prep.name!r} gives {prep.in_channels}-channel ({prep.channels}) input; the "
                           f"model takes {c} channel(s)")
    if tuple(prep.crop) != (h, w):
        raise RosettaError(f"{source} {prep.name!r} crops {prep.crop[0]}x{prep.crop[1]}; the model takes {h}x{w}")
    return prep


def from_json(text: str, *, source: str = "metadata") -> Preprocessing:
    """Parse and check a recorded preprocessing (hostile input: every field is checked)."""
    try:
        d = json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise RosettaError(f"{source}: the recorded preprocessing is not JSON ({e})") from None
    fields = {f.name for f in dataclasses.fields(Preprocessing)}
    if not isinstance(d, dict) or set(d) != fields:
        got = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise RosettaError(f"{source}: the recorded preprocessing must have the fields {sorted(fields)}, got {got}")

    def bad(field: str, want: str) -> RosettaError:
        return RosettaError(f"{source}: preprocess.{field} must be {want}, got {d[field]!r}")

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not isinstance(d["name"], str) or not 0 < len(d["name"]) <= 64:
        raise bad("name", "a short string")
    for field, allowed in (("channels", CHANNELS), ("resize", RESIZES), ("interpolation", INTERPOLATIONS)):
        if d[field] not in allowed:
            raise bad(field, f"one of {', '.join(allowed)}")
    if not (isinstance(d["size"], int) and not isinstance(d["size"], bool) and 1 <= d["size"] <= 65536):
        raise bad("size", "an integer in 1..65536")
    crop = d["crop"]
    if not (isinstance(crop, list) and len(crop) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                               and 1 <= v <= 65536 for v in crop)):
        raise bad("crop", "[H, W] integers in 1..65536")
    if not (number(d["scale"]) and d["scale"] > 0):
        raise bad("scale", "a positive number")
    n = 1 if d["channels"] == "L" else 3
    for field in ("mean", "std"):
        v = d[field]
        if not (isinstance(v, list) and len(v) == n and all(number(x) for x in v)):
            raise bad(field, f"a list of {n} numbers")
    if not all(s > 0 for s in d["std"]):
        raise bad("std", "positive numbers")
    return Preprocessing(d["name"], d["channels"], d["resize"], d["size"], (crop[0], crop[1]), d["interpolation"],
                         float(d["scale"]), tuple(float(x) for x in d["mean"]), tuple(float(x) for x in d["std"]))


def resolve(name: str | None, recorded: Preprocessing | None, input_shape: Sequence[int], *,
            source: str = "the weight file") -> Preprocessing:
    """The preprocessing to use: ``name`` if given (``--preprocess``; ``train`` takes its
    statistics from ``recorded``), else the recorded one; neither is a clear error."""
    if name is None:
        if recorded is None:
            raise RosettaError(f"{source} records no preprocessing (written before it was recorded, or converted "
                               f"from a port's own format); pass --preprocess {'|'.join(NAMES)}")
        return check_fits(recorded, input_shape, source=f"{source}'s preprocessing")
    if name == "train" and recorded is not None and recorded.name == "train":
        return named("train", input_shape, mean=recorded.mean, std=recorded.std)
    return named(name, input_shape)


# ---------------------------------------------------------------------------
# pixels


def _resample(interpolation: str) -> int:
    from PIL import Image

    return getattr(Image.Resampling, interpolation.upper())


def resize(img: Any, prep: Preprocessing, size: int | None = None) -> Any:
    """The resize step on a PIL image (Pillow ``Image.resize``, what torchvision's and Keras'
    Pillow paths call) or on a float (H, W, C) array in [0, 1] (digits and IDX images:
    ``training.data.resize``, bilinear, as ``rosetta train`` resizes them)."""
    if isinstance(img, np.ndarray):
        from ..training.data import resize as resize_array

        h, w = img.shape[:2]
        new_w, new_h = prep.resized_size(w, h, size)
        # [H, W, C] -> [1, C, H, W] -> resized -> [H, W, C]
        return resize_array(img.transpose(2, 0, 1)[None], (new_h, new_w))[0].transpose(1, 2, 0)
    new_w, new_h = prep.resized_size(img.width, img.height, size)
    if (new_w, new_h) == img.size:  # torchvision returns the image itself here
        return img
    return img.resize((new_w, new_h), _resample(prep.interpolation))


def to_array(img: Any) -> np.ndarray:
    """A PIL image as (H, W, C) uint8, or an (H, W, C) float array as it is."""
    if isinstance(img, np.ndarray):
        return img
    a = np.asarray(img)
    return a[:, :, None] if a.ndim == 2 else a


def crop_box(height: int, width: int, crop: tuple[int, int], where: str = "center",
             source: str = "image") -> tuple[int, int]:
    """(top, left) of a ``crop`` in an image of ``height`` x ``width``: ``center``
    (torchvision's ``int(round((size - crop) / 2))``) or a corner (``tl``, ``tr``, ``bl``,
    ``br``). An image smaller than the crop is an :class:`ImageError`."""
    ch, cw = crop
    if height < ch or width < cw:
        raise ImageError(f"{source}: the image is {width}x{height} after resizing, smaller than the {cw}x{ch} crop")
    if where == "center":
        return int(round((height - ch) / 2.0)), int(round((width - cw) / 2.0))
    top = 0 if where[0] == "t" else height - ch
    left = 0 if where[1] == "l" else width - cw
    return top, left


def crop(a: np.ndarray, top: int, left: int, size: tuple[int, int]) -> np.ndarray:
    return a[top:top + size[0], left:left + size[1]]


def normalize(a: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """(H, W, C) pixels -> (C, H, W) float32 model input. uint8 pixels are on the 0-255 scale
    (divided by ``scale``); float pixels are in [0, 1] (digits, IDX)."""
    if a.dtype == np.uint8:
        v = a.astype(np.float32) / np.float32(prep.scale)
    else:
        v = a.astype(np.float32)
        if prep.scale != 255.0:
            v = v * np.float32(255.0 / prep.scale)
    c = prep.in_channels
    if v.shape[2] != c:
        if v.shape[2] == 1:
            v = np.repeat(v, c, axis=2)  # gray arrays (digits, IDX) on a colour model
        else:
            raise ValueError(f"{v.shape[2]}-channel pixels for a {c}-channel preprocessing")
    if prep.channels == "BGR":
        v = v[:, :, ::-1]  # RGB -> BGR
    v = (v - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    return np.ascontiguousarray(v.transpose(2, 0, 1))  # [H, W, C] -> [C, H, W]


def preprocess_image(img: Any, prep: Preprocessing, source: str = "image") -> np.ndarray:
    """One image (PIL, any mode, or a float (H, W, C) array in [0, 1]) -> the (C, H, W) float32
    input ``prep`` describes: resize, centre crop, normalise."""
    if not isinstance(img, np.ndarray):
        from .files import to_mode

        img = to_mode(img, prep.mode, source)
    a = to_array(resize(img, prep))
    top, left = crop_box(a.shape[0], a.shape[1], prep.crop, source=source)
    return normalize(crop(a, top, left, prep.crop), prep)


def load_batch(paths: Sequence[str], prep: Preprocessing) -> np.ndarray:
    """Image files -> an (N, C, H, W) float32 batch (each decoded by :func:`files.open_image`)."""
    from .files import open_image

    return np.stack([preprocess_image(open_image(p, prep.mode), prep, str(p)) for p in paths])


def recorded(meta: Mapping[str, str], *, source: str = "metadata") -> Preprocessing | None:
    """The preprocessing a canonical file's metadata records, or None."""
    text = meta.get("preprocess")
    return None if text is None else from_json(text, source=source)
