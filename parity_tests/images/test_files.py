"""Hostile and broken image files, folders and label files: each a one-line error naming the file."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from rosetta_cnn.core.errors import RosettaError
from rosetta_cnn.images import classes, folders
from rosetta_cnn.images.files import ImageError, open_image

from .conftest import make_image, write_folder


def _png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
            + chunk(b"IEND", b""))


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    make_image("RGB", (64, 48)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("name,content,needle", [
    ("truncated.jpg", _jpeg_bytes()[:300], "cannot decode the image"),
    ("text.png", b"hello, I am not an image\n", "not an image file"),
    ("empty.jpg", b"", "empty file"),
    ("bomb.png", _png_declaring(60000, 60000), "refused: Image size .* could be decompression bomb"),
    ("big.png", _png_declaring(12000, 12000), "12000x12000 pixels is outside 1..89478485 pixels"),
    ("icon.ico", (lambda b: (make_image("RGB", (16, 16)).save(b, format="ICO"), b.getvalue())[1])(io.BytesIO()),
     "not an image file Pillow can read as JPEG, PNG, WEBP"),
])
def test_bad_image_files_name_the_file(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError, match=needle) as e:
        open_image(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        open_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="is a directory"):
        open_image(tmp_path)


def test_animated_images_give_their_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    assert np.asarray(open_image(tmp_path / "anim.webp"))[0, 0].tolist() == [255, 0, 0]


def test_folder_errors(tmp_path):
    with pytest.raises(RosettaError, match="not a directory"):
        folders.scan(tmp_path / "missing")
    make_image("RGB", (8, 8)).save(tmp_path / "loose.png")
    with pytest.raises(RosettaError, match=r"no class folders \(1 image files lie directly in it\)"):
        folders.scan(tmp_path)
    write_folder(tmp_path / "data", {"cat": 2, "dog": 1})
    (tmp_path / "data" / "empty").mkdir()
    (tmp_path / "data" / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(RosettaError, match=r"empty: class folder 'empty' has no images \(\.jpg"):
        folders.scan(tmp_path / "data")


def test_folder_scan_and_splits(tmp_path):
    root = write_folder(tmp_path / "d", {"b": 6, "a": 5, "c": 1})
    (root / ".hidden").mkdir()
    (root / "a" / "readme.txt").write_text("x")
    f = folders.scan(root)
    assert f.classes == ["a", "b", "c"] and len(f) == 12
    assert np.bincount(f.labels).tolist() == [5, 6, 1]
    train, test = folders.splits(root)
    assert len(train) + len(test) == 12 and len(test) == 1 + 1 + 0  # round(0.2 n), one image always kept in train
    assert set(train.labels.tolist()) == {0, 1, 2}
    again = folders.splits(root)
    assert [p.name for p in again[1].paths] == [p.name for p in test.paths]  # a fixed split
    write_folder(tmp_path / "tv" / "train", {"x": 2, "y": 2})
    write_folder(tmp_path / "tv" / "val", {"x": 1, "y": 1})
    train, test = folders.splits(tmp_path / "tv")
    assert (len(train), len(test), test.classes) == (4, 2, ["x", "y"])


def test_imagenet_classes():
    names = classes.imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[999] == "toilet tissue" and len(set(names)) == 1000


def test_labels_files(tmp_path):
    (tmp_path / "l.txt").write_text("zero\n\n one \ntwo\n")
    assert classes.read_labels(tmp_path / "l.txt") == ["zero", "one", "two"]
    (tmp_path / "l.json").write_text('["a", "b"]')
    assert classes.read_labels(tmp_path / "l.json") == ["a", "b"]
    (tmp_path / "bad.json").write_text('["a", 3]')
    with pytest.raises(RosettaError, match="list of strings"):
        classes.read_labels(tmp_path / "bad.json")
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(RosettaError, match="bin: cannot read it as UTF-8"):
        classes.read_labels(tmp_path / "bin")
    with pytest.raises(RosettaError, match="3 class names for a model with 10 classes"):
        classes.class_names(10, labels=["a", "b", "c"], source="--labels l.txt")
    assert classes.class_names(1000)[1] == "goldfish" and classes.class_names(3) == ["0", "1", "2"]


def test_top_k():
    p = classes.softmax(np.array([[1.0, 3.0, 2.0, 3.0]]))
    np.testing.assert_allclose(p.sum(), 1.0)
    top = classes.top_k(p, ["a", "b", "c", "d"], 3)[0]
    assert [t["label"] for t in top] == ["b", "d", "c"]  # ties by lower index
    assert len(classes.top_k(p, ["a", "b", "c", "d"], 10)[0]) == 4
