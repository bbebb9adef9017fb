"""``rosetta bench``: the structure of its outputs on a tiny model (figures are never asserted)."""
from __future__ import annotations

import json

import pytest

from rosetta_cnn import cli

from ..conftest import AVAILABLE

# one configuration per framework, a VGG11 an eighth wide at 32x32: seconds per framework
TINY = ["--models", "vgg11", "--set", "width_divisor=8", "--set", "num_classes=10", "--input", "32x32",
        "--batch", "2", "--repeats", "1", "--warmup", "0",
        # each framework's defaults: torch channels_last; Keras (TensorFlow) graph inference, xla training
        # step; Flax nnx_jit / jax_jit
        "--configs", "channels_last", "graph", "xla", "nnx_jit", "jax_jit"]
RESULT_KEYS = {"model", "framework", "impl", "config", "mode", "batch", "default", "best", "build_s", "first_s",
               "times_s", "median_s", "spread", "images_per_s", "gflops", "roof_fraction", "peak_rss_mb"}


@pytest.mark.skipif(not AVAILABLE, reason="no framework installed")
def test_bench_writes_table_json_markdown_and_plot(tmp_path, capsys):
    rc = cli.main(["bench", *TINY, "--frameworks", *AVAILABLE, "--out", str(tmp_path)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["roof"]["gflops"] > 0 and report["errors"] == [] and report["failures"] == []
    assert set(report["versions"]) == set(AVAILABLE)
    seen = {(r["framework"], r["impl"], r["mode"]) for r in report["results"]}
    # the spec-built model and the hand-written baseline, inference and training, in every framework
    assert seen == {(fw, impl, mode) for fw in AVAILABLE for impl in ("spec", "plain") for mode in ("infer", "train")}
    for r in report["results"]:
        assert RESULT_KEYS <= set(r), RESULT_KEYS - set(r)
        assert len(r["times_s"]) == 1 and r["images_per_s"] > 0
    best = [(r["framework"], r["impl"], r["mode"]) for r in report["results"] if r["best"]]
    assert sorted(best) == sorted(seen)  # one fastest configuration each
    goals = {g["goal"] for g in report["goals"]}
    assert {"spec >= 0.95x hand-written", "best config >= 0.70 of sgemm roof",
            "default config >= 0.80 of sgemm roof", "default config >= 0.60 of sgemm roof"} <= goals
    # every framework's default configuration as a fraction of the roof, inference and training
    defaults = {(g["framework"], g["mode"]) for g in report["goals"] if g["goal"].startswith("default config")}
    assert defaults == {(fw, mode) for fw in AVAILABLE for mode in ("infer", "train")}
    assert {(r["model"], r["mode"]) for r in report["recommendation"]} == {("vgg11", "infer"), ("vgg11", "train")}
    md = (tmp_path / "bench.md").read_text()
    for heading in ("## Throughput", "## Defaults", "## Goals", "## Recommendation"):
        assert heading in md and heading in out.out
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "] vgg11 spec channels_last infer b2: " in out.err or "torch" not in AVAILABLE  # progress


def test_bench_rejects_bad_arguments(tmp_path, capsys):
    assert cli.main(["bench", "--models", "vgg17", "--out", str(tmp_path)]) == 2
    assert "unknown model(s): vgg17" in capsys.readouterr().err
    assert cli.main(["bench", "--models", "vgg11", "--set", "width_divisor=7", "--out", str(tmp_path)]) == 2
    assert "width_divisor=7" in capsys.readouterr().err
    assert not (tmp_path / "bench.json").exists()
