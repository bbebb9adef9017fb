"""Test-time recipes: the views of each image a model is run on, and how their scores are
combined (class posteriors averaged, as both papers do).

* ``center``: the preprocessing's own single view (resize, centre crop).
* ``ten-crop``: AlexNet's 10 patches (Krizhevsky et al. 2012, sec. 4.1): the four corner
  crops and the centre crop of the resized image, each with its horizontal mirror; "averaging
  the predictions made by the network's softmax layer on the ten patches".
* ``dense``: VGG's dense multi-scale evaluation (Simonyan & Zisserman 2014, sec. 3.2):
  the fully-convolutional net (``formats/fcn.py``) on the whole image rescaled so its
  shorter side is Q, for each Q in ``scales`` (default the paper's {S - 32, S, S + 32} for
  the preprocessing's size S); the class score map is averaged over positions, and the
  softmax posteriors are averaged over scales (and flips).
* ``flip`` adds each view's horizontal mirror; ``rotate`` adds its 90, 180 and 270 degree
  rotations (square inputs; the dense views may be any shape).

A :class:`Runner` runs views of mixed shapes through one framework: the model itself for
crops, one fully-convolutional model per input shape for dense views (built once, cached).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.errors import RosettaError
from .classes import softmax
from .preprocess import TORCHVISION_RATIO, Preprocessing, crop, crop_box, normalize, resize, to_array

CROPS = ("center", "ten-crop", "dense")
#: torchvision's FiveCrop order: top-left, top-right, bottom-left, bottom-right, centre
FIVE = ("tl", "tr", "bl", "br", "center")
#: fully-convolutional models kept per runner (one per input shape)
FCN_CACHE = 8


@dataclass(frozen=True)
class TTA:
    """Which views of each image are scored, and averaged."""

    crops: str = "center"
    flip: bool = False
    rotate: bool = False
    scales: tuple[int, ...] = ()  # dense: the shorter side Q of each scale (default from the preprocessing)
    crop_from: int | None = None  # ten-crop: the resize target (default: the preprocessing's, or crop * 256 / 224)

    def __post_init__(self) -> None:
        if self.crops not in CROPS:
            raise RosettaError(f"unknown test-time crops {self.crops!r}; choose from {', '.join(CROPS)}")
        if self.scales and self.crops != "dense":
            raise RosettaError("--scales applies to --crops dense")
        if any(q < 1 for q in self.scales):
            raise RosettaError(f"--scales must be positive sizes, got {list(self.scales)}")

    def scale_list(self, prep: Preprocessing) -> tuple[int, ...]:
        if self.scales:
            return self.scales
        s = max(prep.size, min(prep.crop) + 32)
        return (s - 32, s, s + 32)

    def ten_crop_size(self, prep: Preprocessing) -> int:
        if self.crop_from is not None:
            return self.crop_from
        return prep.size if prep.size > min(prep.crop) else int(min(prep.crop) * TORCHVISION_RATIO)

    def describe(self, prep: Preprocessing) -> str:
        what = {"center": "centre crop", "ten-crop": f"10 crops of the image resized to {self.ten_crop_size(prep)}",
                "dense": f"dense (fully convolutional) at scales {list(self.scale_list(prep))}"}[self.crops]
        extras = [w for w, on in (("flips", self.flip), ("rotations 90/180/270", self.rotate)) if on]
        return what + (" + " + " + ".join(extras) if extras else "")

    def views_per_image(self) -> int:
        base = {"center": 1, "ten-crop": 10, "dense": len(self.scales) or 3}[self.crops]
        return base * (2 if self.flip and self.crops != "ten-crop" else 1) * (4 if self.rotate else 1)


def views(img: Any, prep: Preprocessing, tt: TTA, source: str = "image") -> list[np.ndarray]:
    """The (C, h, w) float32 inputs of one image (PIL image or float (H, W, C) array) under ``tt``."""
    arrays: list[np.ndarray] = []
    if tt.crops == "center":
        a = to_array(resize(img, prep))
        top, left = crop_box(a.shape[0], a.shape[1], prep.crop, source=source)
        arrays.append(crop(a, top, left, prep.crop))
    elif tt.crops == "ten-crop":
        a = to_array(resize(img, prep, tt.ten_crop_size(prep)))
        for where in FIVE:
            top, left = crop_box(a.shape[0], a.shape[1], prep.crop, where, source=source)
            arrays.append(crop(a, top, left, prep.crop))
        arrays += [v[:, ::-1] for v in arrays]  # each patch's horizontal mirror
    else:
        for q in tt.scale_list(prep):
            a = to_array(resize(img, prep, q))
            crop_box(a.shape[0], a.shape[1], prep.crop, source=source)  # smaller than the crop: a clear error
            arrays.append(a)
    if tt.flip and tt.crops != "ten-crop":
        arrays += [v[:, ::-1] for v in arrays]
    if tt.rotate:
        if tt.crops != "dense" and prep.crop[0] != prep.crop[1]:
            raise RosettaError(f"--rotate needs a square input; the model takes {prep.crop[0]}x{prep.crop[1]}")
        arrays += [np.rot90(v, k, axes=(0, 1)) for k in (1, 2, 3) for v in arrays]
    return [normalize(v, prep) for v in arrays]


def check_dense(spec: Any) -> None:
    """Dense evaluation turns fc1 into a 7x7 convolution over ``block5_pool``; that equals the
    trained model only where its ``block5_pool`` is 7x7 (so its adaptive pool is the identity)."""
    if spec.family != "vgg":
        raise RosettaError(f"dense evaluation needs VGG's fully-convolutional head; {spec.name} has none "
                           "(use --crops ten-crop)")
    pool = spec.layer("block5_pool").out_shape
    if tuple(pool[1:]) != (7, 7):
        raise RosettaError(f"dense evaluation reuses fc1 as a 7x7 convolution over block5_pool, which equals "
                           f"{spec.name} only where block5_pool is 7x7 (input 224..255); at "
                           f"{spec.input_shape[1]}x{spec.input_shape[2]} it is {pool[1]}x{pool[2]}")


class Runner:
    """Eval-mode scores of views of any shape in one framework."""

    def __init__(self, framework: str, spec: Any, tensors: Mapping[str, np.ndarray], *, batch: int = 32):
        from ..core import ports

        self.framework, self.spec, self.tensors, self.batch = framework, spec, tensors, batch
        self.port = ports.load(framework)
        self.model = self.port.build_model(spec, initialize=False)  # every weight is imported next
        self.port.import_weights(self.model, spec, tensors)
        self._fcn: OrderedDict[tuple[int, int], Any] = OrderedDict()

    def _model_for(self, shape: tuple[int, ...], dense: bool) -> Any:
        if not dense:
            return self.model
        key = (int(shape[1]), int(shape[2]))
        if key not in self._fcn:
            from ..core.spec import load_spec
            from ..formats.fcn import fcn_spec, fcn_weights

            fspec = fcn_spec(load_spec(self.spec.name, {**dict(self.spec.overrides), "input_size": list(key)}))
            net = self.port.build_model(fspec, initialize=False)
            self.port.import_weights(net, fspec, fcn_weights(self.spec, self.tensors))
            self._fcn[key] = net
            if len(self._fcn) > FCN_CACHE:
                self._fcn.popitem(last=False)
        self._fcn.move_to_end(key)
        return self._fcn[key]

    def logits(self, xs: Sequence[np.ndarray], dense: bool = False) -> np.ndarray:
        """Class scores (N, K) of views (each (C, h, w)): dense views' score maps averaged over
        positions. Views of equal shape run together, ``batch`` at a time (fewer when they are
        larger than the model's input: the same number of pixels)."""
        out: list[np.ndarray | None] = [None] * len(xs)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(xs):
            groups.setdefault(x.shape, []).append(i)
        area = self.spec.input_shape[1] * self.spec.input_shape[2]
        for shape, members in groups.items():
            model = self._model_for(shape, dense)
            step = max(1, self.batch * area // (shape[1] * shape[2]))  # larger views, fewer at once
            for start in range(0, len(members), step):
                chunk = members[start:start + step]
                y = self.port.forward(model, np.stack([xs[i] for i in chunk]), train=False)["logits"]
                if y.ndim == 4:
                    y = y.mean(axis=(2, 3))  # the class score map, averaged over positions
                for i, row in zip(chunk, y):
                    out[i] = row
        return np.stack(out)  # type: ignore[arg-type]

    def scores(self, images: Sequence[Any], prep: Preprocessing, tt: TTA,
               sources: Sequence[str] | None = None) -> np.ndarray:
        """Class posteriors (N, K) of ``images``: the softmax of each view, averaged per image."""
        per_image = [views(img, prep, tt, sources[i] if sources else "image") for i, img in enumerate(images)]
        flat = [v for vs in per_image for v in vs]
        probs = softmax(self.logits(flat, dense=tt.crops == "dense"))
        out, at = [], 0
        for vs in per_image:
            out.append(probs[at:at + len(vs)].mean(axis=0))
            at += len(vs)
        return np.stack(out)
