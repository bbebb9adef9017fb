"""Architecture tables for the hand-written baseline models of ``rosetta bench``.

The benchmark compares each spec-built model with a plain model written by hand in the same
framework (``<framework>_impl/bench.py``), the way one writes VGG or GoogLeNet without this
project: torchvision-style constant tables, not the JSON spec. The tables live here once so
that the three hand-written ports read the same numbers; :func:`plain_arch` says whether a
spec has a hand-written equivalent and with which size parameters.

Papers: VGG https://arxiv.org/abs/1409.1556 , GoogLeNet https://arxiv.org/abs/1409.4842 ;
layouts as torchvision's ``vgg.py`` and ``googlenet.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...core.spec import ModelSpec

#: convolutions per stage (3x3, padding 1, each stage ends in a 2x2/2 max pool), by depth
VGG_STAGE_CONVS: dict[int, tuple[int, ...]] = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2),
                                              16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
VGG_STAGE_WIDTHS: tuple[int, ...] = (64, 128, 256, 512, 512)
VGG_HIDDEN = 4096  # width of fc1 and fc2

#: GoogLeNet after the stem: ``"pool"`` is a 3x3/2 max pool (ceil mode), ``"pool2"`` the 2x2/2
#: one before 5a, anything else an inception module's widths
#: (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj); 4a and 4d feed the auxiliary heads
GOOGLENET_BODY: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("3a", (64, 96, 128, 16, 32, 32)), ("3b", (128, 128, 192, 32, 96, 64)), ("pool", ()),
    ("4a", (192, 96, 208, 16, 48, 64)), ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)), ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)), ("pool2", ()),
    ("5a", (256, 160, 320, 32, 128, 128)), ("5b", (384, 192, 384, 48, 128, 128)),
)
GOOGLENET_AUX_FROM = ("4a", "4d")
GOOGLENET_STEM = (64, 64, 192)  # conv1 7x7/2, conv2 1x1, conv3 3x3
GOOGLENET_AUX = (128, 1024)  # aux head: 1x1 conv width, fc1 width (after a 4x4 average pool)


@dataclass(frozen=True)
class PlainArch:
    """What a hand-written baseline needs from a spec: family, depth and the size parameters."""

    family: str  # "vgg" or "googlenet"
    depth: int  # VGG depth (11, 13, 16, 19); 22 for GoogLeNet
    batch_norm: bool  # VGG _bn variants (GoogLeNet always has BatchNorm)
    num_classes: int
    in_channels: int
    width_divisor: int
    dropout: float
    aux: bool  # GoogLeNet auxiliary heads (trained with weight 0.3)

    def w(self, width: int) -> int:
        """A hidden width divided by the spec's ``width_divisor``."""
        return width // self.width_divisor


def plain_arch(spec: ModelSpec) -> PlainArch | None:
    """The hand-written equivalent of ``spec``, or None when there is none (AlexNet, the paper
    variants, GoogLeNet with transform_input)."""
    p = spec.params
    common = dict(num_classes=p["num_classes"], in_channels=p["in_channels"],
                  width_divisor=p["width_divisor"], dropout=p["dropout"])
    if spec.family == "vgg":
        depth = int(spec.name[3:5])
        return PlainArch("vgg", depth, spec.name.endswith("_bn"), aux=False, **common)
    if spec.name == "googlenet" and not p["transform_input"]:
        return PlainArch("googlenet", 22, True, aux=bool(p["aux_logits"]), **common)
    return None


def is_stock(spec: ModelSpec) -> bool:
    """Whether a library's stock model (torchvision, keras.applications) has ``spec``'s
    architecture: full width, 3 input channels (the class count and input size may differ)."""
    return spec.params["width_divisor"] == 1 and spec.params["in_channels"] == 3
