"""Preprocessing is exact: the named pipelines against torchvision's ``Weights.transforms()``
(the Pillow path, run in a child interpreter) and Keras' ``load_img`` + ``vgg16.preprocess_input``,
on image files of odd sizes and modes; the explicit mode conversions; the recorded metadata.

Measured (2026-12-01, Pillow 13.0, torchvision 0.29.1, Keras 3.15; ``pytest -s`` prints them): the
largest difference over the 12 gallery images is 0 against torchvision (224 and 96 crops) and 0
against Keras; 0.0175 (one 8-bit level) against torchvision's tensor path; 4.34 against
torchvision's clipping loader on the 16-bit PNG."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rosetta_cnn.core.errors import RosettaError
from rosetta_cnn.images import files, preprocess
from rosetta_cnn.images.preprocess import from_json, load_batch, named, resolve

from .conftest import GALLERY, make_image

#: images whose mode torchvision's and Keras' loaders handle differently on purpose (16-bit:
#: they clip at 255, we scale); their references start from our 8-bit conversion
SCALED = {"png16.png"}

# torchvision runs in a child: importing it after TensorFlow (loaded by the Keras tests)
# crashes the process, because both bundle LLVM
TORCHVISION = r"""
import json, sys
import numpy as np, torchvision
from torchvision.datasets.folder import pil_loader
from torchvision.transforms._presets import ImageClassification
paths, sizes, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
refs = {}
for crop, resize in sizes:
    t = (torchvision.models.VGG16_Weights.IMAGENET1K_V1.transforms() if crop == 224
         else ImageClassification(crop_size=crop, resize_size=resize))
    refs[str(crop)] = np.stack([t(pil_loader(p)).numpy() for p in paths])
# torchvision's tensor path (decode_image + the same transforms on uint8 tensors), for the record
from torchvision.io import ImageReadMode, decode_image
t = torchvision.models.VGG16_Weights.IMAGENET1K_V1.transforms()
refs["tensor"] = np.stack([t(decode_image(p, mode=ImageReadMode.RGB)).numpy() for p in paths])
refs["clipped16"] = t(pil_loader(sys.argv[4])).numpy()  # a 16-bit PNG as torchvision's loader reads it
from torchvision.models._meta import _IMAGENET_CATEGORIES
np.savez(out, categories=np.array(_IMAGENET_CATEGORIES), **refs)
"""


def _reference_paths(gallery, tmp_path):
    """The gallery's files, the 16-bit one replaced by its 8-bit conversion."""
    paths = []
    for name, path in gallery.items():
        if name in SCALED:
            path = tmp_path / f"{name}-8bit.png"
            files.open_image(gallery[name]).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def torchvision_refs(gallery, tmp_path_factory):
    if importlib.util.find_spec("torchvision") is None:  # find_spec, not import: see TORCHVISION
        pytest.skip("torchvision is not installed")
    tmp = tmp_path_factory.mktemp("tv")
    paths = _reference_paths(gallery, tmp)
    out = tmp / "refs.npz"
    done = subprocess.run([sys.executable, "-c", TORCHVISION, json.dumps(paths), json.dumps([[224, 256], [96, 109]]),
                           str(out), str(gallery["png16.png"])], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as refs:
        return {int(k) if k.isdigit() else k: refs[k] for k in refs.files}


@pytest.mark.parametrize("crop", [224, 96])
def test_torchvision_pipeline_is_exact(gallery, torchvision_refs, crop, capsys):
    prep = named("torchvision", (3, crop, crop))
    assert prep.size == (256 if crop == 224 else 109)
    ours = load_batch(list(gallery.values()), prep)
    ref = torchvision_refs[crop]
    assert ours.shape == ref.shape == (len(GALLERY), 3, crop, crop)
    worst = float(np.abs(ours - ref).max())
    with capsys.disabled():
        print(f"\ntorchvision {crop}: max |ours - Weights.transforms()| over {len(GALLERY)} images = {worst:.3g}")
    np.testing.assert_array_equal(ours, ref)


def test_torchvision_s_tensor_path_is_one_level_away(gallery, torchvision_refs, capsys):
    """torchvision's tensor path (``decode_image`` + the same transforms) resizes uint8 tensors
    with its own rounding: at most one 8-bit level (1 / 255 / 0.224 = 0.0175) from the Pillow
    path the weights' documentation uses, and from ours."""
    ours = load_batch(list(gallery.values()), named("torchvision", (3, 224, 224)))
    d = np.abs(ours - torchvision_refs["tensor"])
    with capsys.disabled():
        print(f"\ntorchvision tensor path: max |ours - decode_image + transforms()| = {d.max():.4f}, mean {d.mean():.2e}")
    assert 0 < d.max() <= 1 / 255 / min(preprocess.IMAGENET_STD) + 1e-6


def test_sixteen_bit_png_differs_from_torchvision_s_clipping_loader(gallery, torchvision_refs, capsys):
    """torchvision's ``pil_loader`` (``convert("RGB")``) clips 16-bit values above 255 to white;
    we scale them to 8 bits. The difference, for the record (docs/images.md)."""
    ours = load_batch([gallery["png16.png"]], named("torchvision", (3, 224, 224)))[0]
    d = np.abs(ours - torchvision_refs["clipped16"])
    with capsys.disabled():
        print(f"\n16-bit PNG: max |ours - pil_loader (clipped)| = {d.max():.2f}, mean {d.mean():.2f}")
    assert d.max() > 1


def test_a_wrong_resize_would_be_caught(gallery, torchvision_refs):
    """The broken counterpart: the same pipeline with Pillow's bicubic instead of bilinear
    differs from torchvision's by far more than float rounding."""
    import dataclasses

    prep = dataclasses.replace(named("torchvision", (3, 224, 224)), interpolation="bicubic")
    assert np.abs(load_batch(list(gallery.values()), prep) - torchvision_refs[224]).max() > 0.05


def test_caffe_pipeline_matches_keras_exactly(gallery, tmp_path, capsys):
    keras = pytest.importorskip("keras")
    paths = _reference_paths(gallery, tmp_path)
    ref = np.stack([keras.applications.vgg16.preprocess_input(
        keras.utils.img_to_array(keras.utils.load_img(p, target_size=(224, 224)))[None])[0] for p in paths])
    ref = ref.transpose(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
    prep = named("caffe", (3, 224, 224))
    ours = load_batch(list(gallery.values()), prep)
    worst = float(np.abs(ours - ref).max())
    with capsys.disabled():
        print(f"\nkeras caffe: max |ours - load_img + vgg16.preprocess_input| = {worst:.3g}")
    np.testing.assert_array_equal(ours, ref)
    # the broken counterpart: RGB order (no channel reversal) is far off
    import dataclasses

    rgb = dataclasses.replace(prep, channels="RGB")
    assert np.abs(load_batch(list(gallery.values()), rgb) - ref).max() > 10


@pytest.mark.parametrize("name", list(GALLERY))
def test_every_mode_converts_explicitly(gallery, name):
    mode, (w, h) = GALLERY[name]
    for target in ("RGB", "L"):
        img = files.open_image(gallery[name], target)
        assert img.mode == target and img.size == (w, h)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 128, 129, 257, 32767, 65535]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    got = np.asarray(files.open_image(tmp_path / "g16.png", "L"))
    np.testing.assert_array_equal(got, np.round(a.astype(np.float64) * 255 / 65535).astype(np.uint8))
    assert np.asarray(files.open_image(tmp_path / "g16.png", "RGB")).shape == (1, 6, 3)


def test_float_images_are_refused(tmp_path):
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(files.ImageError, match=r"f\.tif.*mode 'F'"):
        files.open_image(tmp_path / "f.tif")


def test_named_preprocessings_and_errors():
    tv = named("torchvision", (3, 224, 224))
    assert (tv.size, tv.crop, tv.resize, tv.interpolation) == (256, (224, 224), "shorter", "bilinear")
    caffe = named("caffe", (3, 224, 224))
    assert (caffe.channels, caffe.mean, caffe.scale) == ("BGR", (103.939, 116.779, 123.68), 1.0)
    train = named("train", (1, 32, 32), mean=[0.2], std=[0.3])
    assert train.channels == "L" and train.mean == (0.2,)
    with pytest.raises(RosettaError, match="unknown preprocessing 'imagenet'.*torchvision, caffe, train"):
        named("imagenet", (3, 224, 224))
    with pytest.raises(RosettaError, match="3-channel .* the model takes 1"):
        named("torchvision", (1, 32, 32))
    with pytest.raises(RosettaError, match="only a file written by rosetta train"):
        named("train", (1, 32, 32))
    with pytest.raises(RosettaError, match="records no preprocessing.*--preprocess"):
        resolve(None, None, (3, 224, 224), source="w.safetensors")
    # --preprocess train keeps the recorded statistics
    assert resolve("train", train, (1, 32, 32)).mean == (0.2,)


def test_metadata_round_trip_and_hostile_values():
    for prep in (named("torchvision", (3, 96, 128)), named("caffe", (3, 224, 224)),
                 named("train", (3, 32, 32), mean=[0.1], std=[0.5])):
        assert from_json(prep.to_json()) == prep
    good = json.loads(named("torchvision", (3, 224, 224)).to_json())
    for field, value, needle in (("std", [0.2, 0.0, 0.2], "positive"), ("mean", [1, 2], "3 numbers"),
                                 ("channels", "RGBA", "one of"), ("size", 10**9, "1..65536"),
                                 ("crop", [224], r"\[H, W\]"), ("scale", float("nan"), "positive number"),
                                 ("interpolation", "magic", "one of")):
        with pytest.raises(RosettaError, match=f"w.safetensors: preprocess.{field} must be .*{needle}"):
            from_json(json.dumps({**good, field: value}), source="w.safetensors")
    with pytest.raises(RosettaError, match="must have the fields"):
        from_json(json.dumps({**good, "extra": 1}))
    with pytest.raises(RosettaError, match="not JSON"):
        from_json("{")


def test_an_image_smaller_than_the_crop_is_an_error():
    prep = named("torchvision", (3, 224, 224))
    with pytest.raises(files.ImageError, match=r"x\.png: the image is 100x150 after resizing, smaller than the 224x224"):
        preprocess.crop_box(150, 100, (224, 224), source="x.png")
    img = make_image("RGB", (40, 30))
    assert preprocess.preprocess_image(img, prep).shape == (3, 224, 224)  # resizing makes any image big enough


def test_shipped_imagenet_classes_are_torchvision_s(torchvision_refs):
    """imagenet_classes.json (read without torchvision) is torchvision's _IMAGENET_CATEGORIES."""
    from rosetta_cnn.images.classes import imagenet_classes

    assert list(imagenet_classes()) == torchvision_refs["categories"].tolist()
