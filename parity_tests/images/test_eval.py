"""``rosetta eval``: the test-time views, the same scores in every framework (centre, 10 crops,
flips and rotations, VGG's dense multi-scale head), digits / IDX results equal to the
training run's, the JSON and PNG outputs, and bad input."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from rosetta_cnn import load_spec
from rosetta_cnn.cli import main
from rosetta_cnn.core.canonical import load_canonical, random_canonical, read_metadata
from rosetta_cnn.core.errors import RosettaError
from rosetta_cnn.images import folders
from rosetta_cnn.images.evaluate import class_map, evaluate
from rosetta_cnn.images.files import ImageError
from rosetta_cnn.images.preprocess import named, recorded
from rosetta_cnn.images.testtime import TTA, Runner, check_dense, views
from rosetta_cnn.training.loop import LOG, WEIGHTS
from rosetta_cnn.verification.tolerances import tolerance

from ..conftest import AVAILABLE, needs
from ..training.test_datasets import write_mnist_like
from .conftest import write_folder

TOL = tolerance("cpu", "eval").rel
CLASSES = {"bird": 3, "cat": 4, "dog": 3}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("eval") / "photos", CLASSES)


@pytest.fixture(scope="module")
def alexnet(tmp_path_factory):
    """A 3-class AlexNet at 64x64 (torchvision preprocessing recorded by init)."""
    needs("torch")
    path = tmp_path_factory.mktemp("w") / "alexnet.safetensors"
    assert main(["init", "alexnet", "--framework", "torch", "--set", "width_divisor=16", "--set", "input_size=64",
                 "--set", "num_classes=3", "--seed", "2", "--out", str(path)]) == 0
    return path


def assert_same_scores(ref: np.ndarray, got: np.ndarray, what: str) -> None:
    """Posteriors within the eval tolerance of their scale; a different top-1 only where the
    reference's top two are closer than that."""
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() / np.abs(ref).max() <= TOL, what
    top2 = np.sort(ref, axis=1)[:, -2:]
    differs = ref.argmax(1) != got.argmax(1)
    assert not (differs & (top2[:, 1] - top2[:, 0] > 10 * TOL)).any(), what


def test_ten_crop_views_are_the_corners_and_centre_mirrored():
    prep = named("torchvision", (3, 4, 4))  # resize 4 -> 4 (stretch-free: a square array stays)
    a = np.arange(6 * 6, dtype=np.float32).reshape(6, 6, 1) / 36
    vs = views(a, prep, TTA("ten-crop", crop_from=6))
    assert len(vs) == 10 == TTA("ten-crop").views_per_image()
    norm = [(v[0] * 0.229 + 0.485) * 36 for v in vs]  # undo the normalisation of channel 0
    first = [n[0, 0] for n in norm]
    np.testing.assert_allclose(first[:5], [0, 2, 12, 14, 7], atol=1e-4)  # tl, tr, bl, br, centre
    for k in range(5):
        np.testing.assert_allclose(norm[5 + k], norm[k][:, ::-1], atol=1e-6)
    rot = views(a, prep, TTA("center", flip=True, rotate=True))
    assert len(rot) == 8 == TTA("center", flip=True, rotate=True).views_per_image()
    np.testing.assert_allclose(rot[2], np.rot90(rot[0], 1, axes=(1, 2)))


@pytest.mark.parametrize("tt", [TTA(), TTA("ten-crop"), TTA("center", flip=True, rotate=True)],
                         ids=["center", "ten-crop", "flip-rotate"])
def test_every_framework_gives_the_same_scores(alexnet, folder, tt):
    spec, tensors = load_canonical(alexnet)
    prep = recorded(read_metadata(alexnet))
    source = folders.scan(folder)
    results = {fw: evaluate(source, fw, spec, tensors, prep, tt, model_classes=["0", "1", "2"], batch=4,
                            progress=lambda m: None, bar_stream=io.StringIO())
               for fw in AVAILABLE}
    ref = results["torch"]
    assert ref.probabilities.shape == (10, 3)
    np.testing.assert_allclose(ref.probabilities.sum(axis=1), 1, rtol=1e-6)
    for fw, r in results.items():
        assert_same_scores(ref.probabilities, r.probabilities, f"{fw} {tt}")


def test_dense_head_equals_the_model_at_its_own_size_and_agrees_across_frameworks(tmp_path):
    needs("torch")
    spec = load_spec("vgg11", {"width_divisor": 16, "input_size": 224, "num_classes": 3})
    tensors = random_canonical(spec, 5)
    prep = named("torchvision", spec.input_shape)
    img = np.random.default_rng(0).random((240, 300, 3)).astype(np.float32)
    view = views(img, prep, TTA())
    fc = Runner("torch", spec, tensors).logits(view)
    dense_at_224 = Runner("torch", spec, tensors).logits(view, dense=True)
    assert np.abs(fc - dense_at_224).max() / np.abs(fc).max() <= TOL
    tt = TTA("dense", flip=True, scales=(224, 256))
    dense_views = views(img, prep, tt)
    assert [v.shape[1:] for v in dense_views] == [(224, 280), (256, 320)] * 2
    scores = {fw: Runner(fw, spec, tensors).scores([img], prep, tt) for fw in AVAILABLE}
    for fw, s in scores.items():
        assert_same_scores(scores["torch"], s, f"dense {fw}")


def test_dense_needs_vgg_at_its_7x7_size():
    with pytest.raises(RosettaError, match="alexnet has none"):
        check_dense(load_spec("alexnet"))
    with pytest.raises(RosettaError, match="at 64x64 it is 2x2"):
        check_dense(load_spec("vgg11", {"input_size": 64}))
    check_dense(load_spec("vgg11"))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    needs("torch")
    out = tmp_path_factory.mktemp("digits")
    assert main(["train", "vgg11", "--framework", "torch", "--data", "digits", "--set", "width_divisor=16",
                 "--optimizer", "adam", "--epochs", "1", "--out", str(out)]) == 0
    return out


def test_digits_eval_reproduces_the_training_run_s_accuracy(digits_run, tmp_path, capsys):
    log = json.loads((digits_run / LOG).read_text())
    prep = recorded(read_metadata(digits_run / WEIGHTS))
    assert prep.name == "train" and prep.channels == "L" and prep.crop == (32, 32)
    outs = {}
    for fw in AVAILABLE:
        js = tmp_path / f"{fw}.json"
        assert main(["eval", "--weights", str(digits_run / WEIGHTS), "--framework", fw, "--data", "digits",
                     "--json", str(js), "--batch", "64"]) == 0  # the training loop's batches
        outs[fw] = json.loads(js.read_text())
    # the same images, preprocessing and model as the training loop's test pass: the same accuracy
    assert outs["torch"]["top1"] == log["epochs"][-1]["test_accuracy"]
    assert outs["torch"]["images"] == 359 and outs["torch"]["preprocess"]["name"] == "train"
    assert {abs(o["top1"] - outs["torch"]["top1"]) <= 1 / 359 for o in outs.values()} == {True}
    capsys.readouterr()


def test_digits_ten_crop_agrees_across_frameworks(digits_run):
    spec, tensors = load_canonical(digits_run / WEIGHTS)
    prep = recorded(read_metadata(digits_run / WEIGHTS))
    source = folders.open_source("digits")
    tt = TTA("ten-crop")
    assert tt.ten_crop_size(prep) == 36
    got = {fw: evaluate(source, fw, spec, tensors, prep, tt, model_classes=[str(i) for i in range(10)], batch=64,
                        limit=64, progress=lambda m: None, bar_stream=io.StringIO()).probabilities
           for fw in AVAILABLE}
    for fw, p in got.items():
        assert_same_scores(got["torch"], p, f"digits ten-crop {fw}")


def test_idx_directory_eval(tmp_path):
    needs("torch")
    write_mnist_like(tmp_path / "data", n_train=32, n_test=10)
    assert main(["train", "vgg11", "--framework", "torch", "--data", str(tmp_path / "data"), "--set",
                 "width_divisor=16", "--epochs", "1", "--batch", "16", "--out", str(tmp_path / "run")]) == 0
    log = json.loads((tmp_path / "run" / LOG).read_text())
    assert main(["eval", "--weights", str(tmp_path / "run" / WEIGHTS), "--framework", "torch", "--data",
                 str(tmp_path / "data"), "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["images"] == 10 and result["top1"] == log["epochs"][-1]["test_accuracy"]


def test_cli_outputs_json_png_progress_and_per_class(alexnet, folder, tmp_path, capsys):
    js, png = tmp_path / "e.json", tmp_path / "confusion.png"
    assert main(["eval", "--model", "alexnet", "--weights", str(alexnet), "--framework", "torch", "--data", str(folder),
                 "--crops", "ten-crop", "--batch", "3", "--json", str(js), "--png", str(png)]) == 0
    captured = capsys.readouterr()
    doc = json.loads(js.read_text())
    assert doc["images"] == 10 and 0 <= doc["top1"] <= doc["top5"] == 1.0  # 3 classes: top-5 holds them all
    assert set(doc["per_class"]) == set(CLASSES) and doc["per_class"]["cat"]["images"] == 4
    assert np.asarray(doc["confusion"]["counts"]).sum() == 10 and doc["confusion"]["rows"] == sorted(CLASSES)
    assert doc["test_time"].startswith("10 crops of the image resized to 73")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "top-1" in captured.out and "  cat " in captured.out
    assert "] 10/10 images" in captured.err  # the progress bar's last line


def test_unreadable_images_stop_or_are_skipped(alexnet, folder, tmp_path, capsys):
    import shutil

    bad = tmp_path / "photos"
    shutil.copytree(folder, bad)
    (bad / "cat" / "zz-broken.jpg").write_bytes((bad / "cat" / "001.jpg").read_bytes()[:150])
    common = ["eval", "--weights", str(alexnet), "--framework", "torch", "--data", str(bad)]
    assert main(common) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # the error is one line (after the progress lines)
    assert last.startswith("rosetta eval: error: ") and "zz-broken.jpg: cannot decode the image" in last
    assert "--on-error skip" in last
    assert main([*common, "--on-error", "skip", "--json", str(tmp_path / "s.json")]) == 0
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["images"] == 10 and len(doc["skipped"]) == 1 and doc["skipped"][0]["file"].endswith("zz-broken.jpg")
    assert "1 unreadable, skipped" in capsys.readouterr().out


def test_bad_eval_input_is_a_clear_error(alexnet, folder, tmp_path, capsys):
    common = ["eval", "--weights", str(alexnet), "--framework", "torch"]
    write_folder(tmp_path / "five", {c: 1 for c in "abcde"})
    assert main([*common, "--data", str(tmp_path / "five")]) == 2
    assert "5 class folders for a 3-class model" in capsys.readouterr().err
    (tmp_path / "empty" / "a").mkdir(parents=True)
    assert main([*common, "--data", str(tmp_path / "empty")]) == 2
    assert "class folder 'a' has no images" in capsys.readouterr().err
    assert main([*common, "--data", str(folder), "--crops", "ten-crop", "--crop-from", "50"]) == 2
    err = capsys.readouterr().err
    assert "smaller than the 64x64 crop" in err and "photos/bird/000.png" in err
    assert main([*common, "--data", str(folder), "--crops", "dense"]) == 2
    assert "alexnet has none" in capsys.readouterr().err
    assert main([*common, "--data", str(folder), "--scales", "256"]) == 2
    assert "--scales applies to --crops dense" in capsys.readouterr().err


def test_class_map():
    assert class_map(["cat", "dog"], ["dog", "cat", "eel"], 3).tolist() == [1, 0]
    assert class_map(["2", "0"], ["a", "b", "c"], 3).tolist() == [2, 0]
    assert class_map(["x", "y", "z"], ["a", "b", "c"], 3).tolist() == [0, 1, 2]
    with pytest.raises(RosettaError, match=r"2 class folders for a 3-class model.*\['x', 'y'\]"):
        class_map(["x", "y"], ["a", "b", "c"], 3)


def test_a_bad_image_in_a_training_folder_names_the_file(tmp_path):
    root = write_folder(tmp_path / "d", {"a": 2})
    (root / "a" / "bad.png").write_bytes(b"not a png")
    f = folders.scan(root)
    with pytest.raises(ImageError, match=r"bad\.png: not an image file"):
        folders.LazyImages(f, named("torchvision", (3, 32, 32)))[0:3]
