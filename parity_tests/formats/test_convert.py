"""``rosetta convert`` and the checkpoint readers on bad input: clear errors, no code
execution, no partial files, models left unchanged.

The checkpoints here are small hand-made ``state_dict`` files with torchvision's key names
(the names are what the checks read), so no torchvision model has to be built.
"""
from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rosetta_cnn import RosettaError, WeightError, load_spec
from rosetta_cnn.cli import main
from rosetta_cnn.core import layout, ports
from rosetta_cnn.core.canonical import expected_tensors, load_canonical, random_canonical, save_canonical
from rosetta_cnn.formats import keras_applications as ka
from rosetta_cnn.formats import torchvision as tv
from rosetta_cnn.formats.convert import convert, infer_format

from ..conftest import SMALL, needs

torch = pytest.importorskip("torch")

SMALL_VGG = {"width_divisor": 8, "input_size": 64, "num_classes": 10}


def _state(model, overrides, seed=0):
    spec = load_spec(model, overrides)
    return spec, {k: torch.from_numpy(np.array(v)) for k, v in tv.to_torchvision(spec, random_canonical(spec, seed)).items()}


def _pth(tmp_path, model="vgg11", overrides=SMALL_VGG, name="w.pth"):
    spec, state = _state(model, overrides)
    path = tmp_path / name
    torch.save(state, path)
    return spec, path


def _no_temp_files(directory):
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


def test_torchvision_round_trip_through_cli(tmp_path, capsys):
    spec, pth = _pth(tmp_path)
    assert main(["convert", str(pth), str(tmp_path / "w.safetensors"), "--set", "width_divisor=8",
                 "--set", "input_size=64"]) == 0
    assert "vgg11 (torchvision -> canonical)" in capsys.readouterr().out
    got_spec, tensors = load_canonical(tmp_path / "w.safetensors")
    assert got_spec.hash() == spec.hash()
    assert main(["convert", str(tmp_path / "w.safetensors"), str(tmp_path / "back.pth")]) == 0
    a, b = torch.load(pth, weights_only=True), torch.load(tmp_path / "back.pth", weights_only=True)
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_formats_are_inferred_from_names():
    assert [infer_format(p, None, "SRC") for p in ("a.safetensors", "a.pth", "a.weights.h5", "a.pt", "a.keras",
                                                    "a.msgpack", "a.onnx")] == \
        ["canonical", "torchvision", "keras-applications", "torch", "keras", "flax", "onnx"]
    assert infer_format("a.weights.h5", "keras", "SRC") == "keras"


def test_unknown_ending_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "a.bin"), str(tmp_path / "b.pth")]) == 2
    err = capsys.readouterr().err
    assert "cannot tell the format of SRC" in err and "--from" in err


def test_other_models_checkpoint_lists_names_and_suggests_the_model(tmp_path):
    _, pth = _pth(tmp_path, "vgg11", SMALL_VGG)
    with pytest.raises(WeightError) as e:
        convert(str(pth), str(tmp_path / "o.safetensors"), model="vgg13", sets=SMALL_VGG)
    msg = str(e.value)
    # vgg13's two extra convs shift torchvision's features indices: 18 names missing, 14 unexpected
    assert "18 missing tensor(s): features.2.weight" in msg and "14 unexpected tensor(s)" in msg
    assert "(+13 more)" in msg  # the first 5 names, then the count of the rest
    assert "the names look like torchvision model 'vgg11'" in msg
    assert not (tmp_path / "o.safetensors").exists()


def test_googlenet_without_aux_heads_is_named(tmp_path):
    o = {**SMALL["googlenet"], "aux_logits": False}
    _, pth = _pth(tmp_path, "googlenet", o)
    with pytest.raises(WeightError) as e:
        convert(str(pth), str(tmp_path / "o.safetensors"), model="googlenet", sets={**o, "aux_logits": True})
    msg = str(e.value)
    assert "missing tensor(s): aux1.conv.conv.weight" in msg and "googlenet (aux_logits=False)" in msg


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path):
    spec, state = _state("vgg11", SMALL_VGG)
    state["features.3.weight"] = torch.zeros(16, 8, 5, 5)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(WeightError, match=r"'features.3.weight' has shape \(16, 8, 5, 5\).*expects \(16, 8, 3, 3\)"):
        convert(str(tmp_path / "w.pth"), str(tmp_path / "o.safetensors"), sets=SMALL_VGG)


@pytest.mark.parametrize("damage", ["truncated", "corrupted", "empty"])
@pytest.mark.parametrize("ending", [".pth", ".safetensors", ".weights.h5"])
def test_damaged_files_give_clear_errors(tmp_path, damage, ending):
    spec = load_spec("vgg16", SMALL_VGG)
    path = tmp_path / f"w{ending}"
    tensors = random_canonical(spec, 0)
    if ending == ".pth":
        tv.write_torchvision(path, spec, tensors)
    elif ending == ".safetensors":
        save_canonical(path, spec, tensors)
    else:
        ka.write_keras_applications(path, spec, tensors)
    data = path.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "corrupted":
        data = data[:64] + bytes(b ^ 0x5A for b in data[64:4096]) + data[4096:]
    else:
        data = b""
    path.write_bytes(data)
    with pytest.raises(WeightError) as e:
        convert(str(path), str(tmp_path / "out.pt"), model="vgg16", sets={} if ending == ".safetensors" else SMALL_VGG)
    assert str(path) in str(e.value)
    if damage == "empty":
        assert "empty" in str(e.value) or "header is missing" in str(e.value)
    assert not (tmp_path / "out.pt").exists()


class _Payload:
    """Unpickling this would run code that writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('executed')",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_payload_is_refused_and_not_executed(tmp_path, writer):
    marker = tmp_path / "marker"
    obj = {"features.0.weight": torch.zeros(1), "evil": _Payload(marker)}
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    with pytest.raises(WeightError, match="refused to load.*not executed|not a readable"):
        convert(str(path), str(tmp_path / "o.safetensors"))
    assert not marker.exists()
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("target", ["o.pth", "o.safetensors", "o.weights.h5"])
def test_interrupted_conversion_leaves_no_partial_file(tmp_path, monkeypatch, target):
    spec = load_spec("vgg16", SMALL_VGG)
    src = tmp_path / "w.safetensors"
    save_canonical(src, spec, random_canonical(spec, 0))
    dst = tmp_path / target
    dst_before = b"previous contents"
    dst.write_bytes(dst_before)

    real_open = open

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # interrupt the writer after it has created its temporary file
    from rosetta_cnn.core import canonical

    if target.endswith(".pth"):
        monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (real_open(f, "wb").write(b"partial"), interrupted()))
    elif target.endswith(".safetensors"):
        monkeypatch.setattr(canonical, "write_tensor_data", lambda f, arrays: (f.write(b"partial"), interrupted()))
    else:
        monkeypatch.setattr(layout, "linear_kernel_to_io", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(str(src), str(dst))
    assert dst.read_bytes() == dst_before
    assert _no_temp_files(tmp_path) == []


def test_failed_import_leaves_every_port_unchanged(tmp_path):
    """A checkpoint of the wrong variant fails before any port's model is touched."""
    spec, pth = _pth(tmp_path, "vgg11", SMALL_VGG)
    wrong = load_spec("vgg11_bn", SMALL_VGG)
    with pytest.raises(WeightError):
        tv.from_torchvision(wrong, tv.read_state_dict(pth))
    for framework in ports.available():
        mod = ports.load(framework)
        model = mod.build_model(spec)
        before = mod.export_weights(model, spec)
        bad = dict(random_canonical(spec, 1))
        bad["predictions.weight"] = np.zeros((3, 3), np.float32)
        with pytest.raises(WeightError, match="predictions.weight"):
            mod.import_weights(model, spec, bad)
        after = mod.export_weights(model, spec)
        assert all(np.array_equal(before[k], after[k]) for k in expected_tensors(spec)), framework


def test_headless_keras_file_converts_only_to_keras_applications(tmp_path):
    spec = ka.headless_spec(load_spec("vgg16", SMALL_VGG))
    src = tmp_path / "notop.weights.h5"
    ka.write_keras_applications(src, spec, random_canonical(spec, 0))
    with pytest.raises(RosettaError, match="convolutional features.*only keras-applications"):
        convert(str(src), str(tmp_path / "o.safetensors"), sets=SMALL_VGG)
    assert not (tmp_path / "o.safetensors").exists()
    back, _, _ = convert(str(src), str(tmp_path / "copy.weights.h5"), sets=SMALL_VGG)
    assert ka.is_headless(back)
    a, b = ka.read_keras_h5(src), ka.read_keras_h5(tmp_path / "copy.weights.h5")
    assert a.keys() == b.keys() and all(np.array_equal(x, y) for k in a for x, y in zip(a[k], b[k]))


def test_ports_own_files_need_model(tmp_path, capsys):
    needs("flax")
    assert main(["convert", str(tmp_path / "w.msgpack"), str(tmp_path / "o.safetensors")]) == 2
    assert "needs --model" in capsys.readouterr().err


def test_torch_native_file_names_its_model(tmp_path):
    spec = load_spec("vgg11_bn", SMALL_VGG)
    src = tmp_path / "w.safetensors"
    save_canonical(src, spec, random_canonical(spec, 0))
    convert(str(src), str(tmp_path / "w.pt"))
    got, _, _ = convert(str(tmp_path / "w.pt"), str(tmp_path / "back.safetensors"), sets={"width_divisor": 8, "input_size": 64})
    assert got.name == "vgg11_bn" and got.params["num_classes"] == 10
    _, a = load_canonical(src)
    _, b = load_canonical(tmp_path / "back.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_reading_never_imports_tensorflow_or_jax_for_torchvision(tmp_path):
    """Converting torchvision -> canonical needs torch only (a subprocess, to see fresh imports)."""
    import subprocess
    import sys

    _, pth = _pth(tmp_path)
    code = ("import sys; from rosetta_cnn.formats.convert import convert; "
            f"convert({str(pth)!r}, {str(tmp_path / 'o.safetensors')!r}, sets={{'width_divisor': 8, 'input_size': 64}}); "
            "print(sorted(m for m in ('tensorflow', 'jax', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("[]")


# VmHWM (peak resident set of this process image), not getrusage's ru_maxrss, which a child
# inherits from the (large) pytest process it was forked from
PEAK = r"""
import sys
from rosetta_cnn.formats.convert import convert
convert(sys.argv[1], sys.argv[2])
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(int(status["VmHWM"].split()[0]) * 1024)
"""


@pytest.fixture(scope="module")
def vgg19_files(tmp_path_factory) -> Iterator[Path]:
    """One 548 MiB VGG19 checkpoint in .pth and .safetensors, shared by the peak-memory cases, then deleted."""
    d = tmp_path_factory.mktemp("vgg19")
    spec = load_spec("vgg19")
    tensors = random_canonical(spec, 0)
    save_canonical(d / "vgg19.safetensors", spec, tensors)
    tv.write_torchvision(d / "vgg19.pth", spec, tensors)
    del tensors
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.heavy
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
@pytest.mark.parametrize("src,dst", [("vgg19.pth", "vgg19.safetensors"), ("vgg19.safetensors", "back.pth"),
                                     ("vgg19.safetensors", "vgg19.weights.h5")])
def test_vgg19_conversion_peaks_below_three_times_the_file(vgg19_files, src, dst):
    """Peak resident memory of a whole conversion (a fresh interpreter) <= 3x the 548 MiB of weights."""
    import subprocess
    import sys

    d = vgg19_files
    size = (d / src).stat().st_size
    done = subprocess.run([sys.executable, "-c", PEAK, str(d / src), str(d / dst)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    peak = int(done.stdout.strip().splitlines()[-1])
    print(f"{src} -> {dst}: file {size / 2**20:.0f} MiB, peak RSS {peak / 2**20:.0f} MiB ({peak / size:.2f}x)")
    assert peak <= 3 * size


def test_model_flag_on_a_file_of_another_family_is_a_weight_error(tmp_path):
    _, pth = _pth(tmp_path, "googlenet", {**SMALL["googlenet"], "aux_logits": False})
    with pytest.raises(WeightError, match="the names look like torchvision model 'googlenet"):
        convert(str(pth), str(tmp_path / "o.safetensors"), model="vgg11", sets=SMALL_VGG)
