"""``rosetta bench --devices 1 2``: the structure of the data-parallel scaling outputs on a tiny
model with one engine (figures are never asserted), and its refusals before any worker starts."""
from __future__ import annotations

import json

import pytest

from rosetta_cnn import cli
from rosetta_cnn.core import ports

TINY = ["bench", "--models", "vgg11", "--set", "width_divisor=16", "--set", "num_classes=10", "--input", "32x32",
        "--batch", "4", "--repeats", "1", "--warmup", "0"]
KEYS = {"label", "devices", "engine", "global_batch", "per_device_batch", "first_s", "times_s", "median_s",
        "images_per_s", "efficiency"}


@pytest.mark.skipif(not ports.resolve("torch").installed(), reason="torch is not installed")
def test_scaling_writes_json_markdown_and_plot(tmp_path, capsys):
    assert cli.main([*TINY, "--frameworks", "torch", "--devices", "1", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr()
    report = json.loads((tmp_path / "scaling.json").read_text())
    assert report["failures"] == [] and report["devices"] == [1, 2] and report["batch"] == 4
    assert [(r["label"], r["devices"], r["per_device_batch"]) for r in report["results"]] == [("torch", 1, 4),
                                                                                            ("torch", 2, 2)]
    for r in report["results"]:
        assert KEYS <= set(r), KEYS - set(r)
        assert r["images_per_s"] > 0 and len(r["times_s"]) == 1
    assert report["results"][0]["efficiency"] == 1.0 and "DistributedDataParallel" in report["results"][1]["engine"]
    md = (tmp_path / "scaling.md").read_text()
    for text in ("## Data-parallel scaling", "| efficiency |", "not a speed-up"):
        assert text in md and text in out.out
    assert "[2/2] torch on 2 device(s)" in out.err  # progress
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["--frameworks", "keras/torch", "--devices", "2"], "keras/torch has no data-parallel engine"),
    (["--frameworks", "torch", "--devices", "1", "3"], "--batch 4 does not split evenly over 3 devices"),
    (["--frameworks", "torch", "--devices", "0"], "device counts of at least 1"),
    (["--frameworks", "torch", "--devices", "2", "--batch", "4", "8"], "one model at one global batch"),
])
def test_scaling_refuses_before_starting_anything(argv, message, tmp_path, capsys):
    assert cli.main([*TINY, *argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "scaling.json").exists()
