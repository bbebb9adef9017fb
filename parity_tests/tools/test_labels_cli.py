"""Implementation labels on the command line, and a start-up that imports no framework."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from rosetta_cnn.cli import main
from rosetta_cnn.core import ports
from rosetta_cnn.verification.tolerances import tolerance

from ..conftest import needs

FRAMEWORK_MODULES = ("torch", "tensorflow", "keras", "jax", "flax", "torchvision", "onnxruntime")


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["summary", "googlenet"], ["parity", "--help"]])
def test_startup_commands_import_no_framework(argv):
    """`rosetta --help`, `list` and `summary MODEL` answer without importing a deep-learning framework."""
    code = ("import sys; from rosetta_cnn.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"bad = [m for m in {FRAMEWORK_MODULES!r} if m in sys.modules]\n"
            "print('IMPORTED', bad, file=sys.stderr); sys.exit(3 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "IMPORTED []" in out.stderr


@pytest.mark.parametrize("command", [["init", "alexnet", "--out", "x.safetensors"],
                                     ["parity", "--models", "alexnet"],
                                     ["bench", "--models", "alexnet"],
                                     ["train", "alexnet", "--data", "digits", "--out", "d"]])
def test_unknown_label_is_a_clear_error_naming_the_labels(command, capsys):
    flag = "--frameworks" if command[0] in ("parity", "bench") else "--framework"
    with pytest.raises(SystemExit) as e:
        main([*command, flag, "keras/mxnet"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown implementation 'keras/mxnet'" in err and "keras/jax" in err and "keras-torch" in err


def test_predict_with_another_keras_backend_runs_in_a_process_of_its_own(tmp_path, capfd):
    """This test process runs Keras on TensorFlow; keras/jax gets a fresh process with
    KERAS_BACKEND=jax (the same command, re-run) and gives torch's logits."""
    needs("torch", "keras")
    if "keras/jax" not in ports.installed_implementations():
        pytest.skip("keras/jax not installed")
    import keras

    assert keras.backend.backend() != "jax"
    weights, x = tmp_path / "a.safetensors", tmp_path / "x.npy"
    assert main(["init", "alexnet", "--framework", "torch", "--set", "width_divisor=4", "--set", "input_size=64",
                 "--set", "num_classes=10", "--out", str(weights)]) == 0
    np.save(x, np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
    logits = {}
    for label in ("torch", "keras/jax"):
        out = tmp_path / f"y_{label.replace('/', '_')}.npy"
        assert main(["predict", "--model", "alexnet", "--weights", str(weights), "--framework", label,
                     "--input", str(x), "--output", str(out)]) == 0
        logits[label] = np.load(out)
    assert "logits (2, 10) from keras/jax" in capfd.readouterr().out  # printed by the child process
    ref = logits["torch"]
    assert np.max(np.abs(logits["keras/jax"] - ref)) / np.max(np.abs(ref)) <= tolerance("cpu", "eval").rel


def test_parity_records_carry_the_labels_and_the_run_its_memory(tmp_path, capsys):
    needs("torch", "flax")
    rc = main(["parity", "--models", "alexnet", "--input", "64x64", "--frameworks", "torch", "flax",
               "--out", str(tmp_path)])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    records = json.loads((tmp_path / "parity.json").read_text())
    assert {(r["source"], r["target"]) for r in records} == {("torch", "flax"), ("flax", "torch")}
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["implementations"] == ["torch", "flax"] and run["memory"]["peak_rss_mb"] > 100
    assert set(run["memory"]["hwm_mb"]) == {"parent", "torch", "flax"}
    assert "peak memory of the process tree" in out.out and "peak memory" in (tmp_path / "parity.md").read_text()
