"""``rosetta predict --image`` and the recorded preprocessing: the same logits as ``--input``
with the preprocessed batch, in every framework; top-K with ImageNet names, ``--labels``,
``--json``; ``rosetta convert`` and ``init`` record what the weights expect."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rosetta_cnn import load_spec
from rosetta_cnn.cli import main
from rosetta_cnn.core.canonical import random_canonical, read_metadata, save_canonical
from rosetta_cnn.formats import keras_applications as ka
from rosetta_cnn.formats import torchvision as tv
from rosetta_cnn.images.preprocess import from_json, load_batch, named
from rosetta_cnn.verification.tolerances import tolerance

from ..conftest import AVAILABLE, needs

#: a 1000-class AlexNet at reduced width and input (so the ImageNet names apply)
ALEXNET = ["--set", "width_divisor=16", "--set", "input_size=64"]
FILES = ["rgb.jpg", "rgba.png", "palette.png", "gray.png", "png16.png", "rgb.webp"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    needs("torch")
    path = tmp_path_factory.mktemp("w") / "alexnet.safetensors"
    assert main(["init", "alexnet", "--framework", "torch", *ALEXNET, "--seed", "1", "--out", str(path)]) == 0
    return path


def _predict(weights, framework, *args):
    return main(["predict", "--model", "alexnet", "--weights", str(weights), "--framework", framework, *args])


def test_init_records_torchvision_preprocessing(weights):
    prep = from_json(read_metadata(weights)["preprocess"])
    assert prep == named("torchvision", (3, 64, 64)) and prep.size == 73


def test_image_gives_the_logits_of_the_preprocessed_input_in_every_framework(weights, gallery, tmp_path):
    images = [str(gallery[f]) for f in FILES]
    x = load_batch(images, named("torchvision", (3, 64, 64)))
    np.save(tmp_path / "x.npy", x)
    assert _predict(weights, "torch", "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "ref.npy")) == 0
    ref = np.load(tmp_path / "ref.npy")
    assert ref.shape == (len(FILES), 1000)
    for framework in AVAILABLE:
        out = tmp_path / f"{framework}.npy"
        assert _predict(weights, framework, "--image", *images, "--output", str(out)) == 0
        got = np.load(out)
        if framework == "torch":
            np.testing.assert_array_equal(got, ref)  # the same batch, the same model: bit for bit
        assert np.abs(got - ref).max() / np.abs(ref).max() <= tolerance("cpu", "eval").rel, framework


def test_top_k_with_imagenet_names_and_json(weights, gallery, capsys):
    assert _predict(weights, "torch", "--image", str(gallery["rgb.jpg"]), str(gallery["tiny.png"]), "--top", "3") == 0
    out = capsys.readouterr().out
    assert out.startswith("preprocessing torchvision: RGB, shorter side 73")
    assert f"{gallery['rgb.jpg']}:\n  1. " in out and out.count("  3. ") == 2
    assert _predict(weights, "torch", "--image", str(gallery["rgb.jpg"]), "--json", "--tta") == 0
    doc = json.loads(capsys.readouterr().out)
    top = doc["predictions"][0]["top"]
    assert len(top) == 5 and doc["preprocess"]["name"] == "torchvision" and doc["tta"] is True
    from rosetta_cnn.images.classes import imagenet_classes

    assert all(t["label"] == imagenet_classes()[t["index"]] for t in top)
    assert top[0]["probability"] >= top[1]["probability"]


def test_labels_file_and_input_without_output(weights, gallery, tmp_path, capsys):
    names = [f"thing {i}" for i in range(1000)]
    (tmp_path / "labels.txt").write_text("\n".join(names))
    x = load_batch([str(gallery["rgb.jpg"])], named("torchvision", (3, 64, 64)))
    np.save(tmp_path / "x.npy", x)
    assert _predict(weights, "torch", "--input", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "labels.txt"),
                    "--top", "1") == 0
    out = capsys.readouterr().out
    assert "x.npy[0]:\n  1. " in out and "thing " in out and "tench" not in out
    (tmp_path / "short.txt").write_text("a\nb\n")
    assert _predict(weights, "torch", "--input", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "short.txt")) == 2
    assert "2 class names for a model with 1000 classes" in capsys.readouterr().err


def test_preprocess_override_and_errors(weights, gallery, tmp_path, capsys):
    image = str(gallery["rgb.jpg"])
    assert _predict(weights, "torch", "--image", image, "--preprocess", "caffe", "--output", str(tmp_path / "c.npy")) == 0
    np.save(tmp_path / "xc.npy", load_batch([image], named("caffe", (3, 64, 64))))
    assert _predict(weights, "torch", "--input", str(tmp_path / "xc.npy"), "--output", str(tmp_path / "cref.npy")) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), np.load(tmp_path / "cref.npy"))

    assert _predict(weights, "torch", "--image", image, "--preprocess", "imagenet") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown preprocessing 'imagenet'; choose from torchvision, caffe, train" in err
    (tmp_path / "broken.jpg").write_bytes(gallery["rgb.jpg"].read_bytes()[:200])
    assert _predict(weights, "torch", "--image", image, str(tmp_path / "broken.jpg")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.jpg: cannot decode the image" in err
    assert _predict(weights, "torch", "--image", image, "--top", "0") == 2
    assert "--top must be at least 1" in capsys.readouterr().err

    spec = load_spec("alexnet", {"width_divisor": 16, "input_size": 64})
    bare = tmp_path / "bare.safetensors"
    save_canonical(bare, spec, random_canonical(spec, 0))  # as files written before preprocessing was recorded
    assert main(["predict", "--model", "alexnet", "--weights", str(bare), "--framework", "torch", "--image", image]) == 2
    assert "records no preprocessing" in capsys.readouterr().err


def test_convert_records_the_origin_s_preprocessing(tmp_path, capsys):
    needs("torch")
    import torch

    small = {"width_divisor": 8, "input_size": 64, "num_classes": 10}
    spec = load_spec("vgg16", small)
    tensors = random_canonical(spec, 0)
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in tv.to_torchvision(spec, tensors).items()},
               tmp_path / "w.pth")
    ka.write_keras_applications(tmp_path / "w.weights.h5", spec, tensors)
    sets = [f"--set={k}={v}" for k, v in small.items() if k != "num_classes"]
    for src, name in (("w.pth", "torchvision"), ("w.weights.h5", "caffe")):
        dst = tmp_path / f"{name}.safetensors"
        assert main(["convert", str(tmp_path / src), str(dst), *sets]) == 0
        assert from_json(read_metadata(dst)["preprocess"]) == named(name, (3, 64, 64))
        # a canonical copy keeps the record
        assert main(["convert", str(dst), str(tmp_path / f"{name}-copy.safetensors")]) == 0
        assert read_metadata(tmp_path / f"{name}-copy.safetensors")["preprocess"] == read_metadata(dst)["preprocess"]
    # a port's own file says nothing about its input
    assert main(["convert", str(tmp_path / "torchvision.safetensors"), str(tmp_path / "w.pt")]) == 0
    assert main(["convert", str(tmp_path / "w.pt"), str(tmp_path / "native.safetensors"), "--model", "vgg16",
                 *sets, "--set=num_classes=10"]) == 0
    assert "preprocess" not in read_metadata(tmp_path / "native.safetensors")


def test_googlenet_conversion_notes_transform_input(tmp_path, capsys):
    needs("torch")
    import torch

    o = {"width_divisor": 4, "input_size": 96, "num_classes": 10, "aux_logits": False}
    spec = load_spec("googlenet", o)
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in tv.to_torchvision(spec, random_canonical(spec, 0)).items()},
               tmp_path / "g.pth")
    sets = ["--set=width_divisor=4", "--set=input_size=96"]
    assert main(["convert", str(tmp_path / "g.pth"), str(tmp_path / "g.safetensors"), *sets]) == 0
    assert "expects transform_input=true" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "g.pth"), str(tmp_path / "g2.safetensors"), *sets,
                 "--set=transform_input=true"]) == 0
    assert "transform_input" not in capsys.readouterr().err
    assert from_json(read_metadata(tmp_path / "g2.safetensors")["preprocess"]).name == "torchvision"
