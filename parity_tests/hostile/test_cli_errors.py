"""Every ``rosetta`` command with a crafted bad input ends in one line on stderr and a non-zero
exit, never a traceback; interrupts end cleanly and leave no temporary file; file-system
failures (a read-only directory, a full disk, a directory in the way) are messages too."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rosetta_cnn.cli import main
from rosetta_cnn.core.canonical import random_canonical, save_canonical
from rosetta_cnn.core.files import TEMP_SUFFIX, atomic_path
from rosetta_cnn.core.spec import load_spec

from .survey import idx_dir, nested_blocks, tiny_spec

TINY = ["--set", "width_divisor=16", "--set", "input_size=32", "--set", "num_classes=10"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    spec = load_spec("vgg11", {"width_divisor": 16, "input_size": 32, "num_classes": 10})
    save_canonical(d / "v.safetensors", spec, random_canonical(spec, 0))
    (d / "tiny.json").write_text(json.dumps(tiny_spec()))
    (d / "fanout.json").write_text(json.dumps(nested_blocks(9, 10)))
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "text.npy").write_text("1 2 3")
    np.savez(open(d / "arch.npy", "wb"), x=np.zeros(3))
    np.save(d / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    (d / "random.pth").write_bytes(os.urandom(512))
    (d / "dir.safetensors").mkdir()
    (d / "afile").write_text("x")
    (d / "records.json").write_text(json.dumps([{"model": "vgg11", "source": "torch", "target": "flax", "mode": "eval",
                                                "device": "cpu", "max_abs": 0.1, "max_rel": 0.5, "tolerance": 1e-5,
                                                "passed": "false"}]))
    idx_dir(d / "neg", raw={"train-labels-idx1-ubyte": bytes([0, 0, 9, 1, 0, 0, 0, 16]) + bytes([255]) * 16})
    idx_dir(d / "empty", raw={"train-images-idx3-ubyte": b""})
    return d


def cases(d: Path) -> dict[str, list[str]]:
    v, out = str(d / "v.safetensors"), str(d / "out")
    predict = ["predict", "--model", "vgg11", "--weights", v, "--framework", "torch", "--output", f"{out}/y.npy"]
    return {
        "list: a limit below every model": ["list", "--limit", "max_layers=3"],
        "list: an unknown limit": ["list", "--limit", "max_fun=3"],
        "summary: a spec expanding to 10^9 layers": ["summary", f"{d}/fanout.json:tiny"],
        "summary: JSON nested 100000 deep": ["summary", f"{d}/deep.json:tiny"],
        "summary: --set and --input disagree": ["summary", "vgg11", "--set", "in_channels=1", "--input", "3x64x64"],
        "summary: a directory as spec": ["summary", f"{d}/dir.safetensors:tiny"],
        "parity: an unknown model": ["parity", "--models", "resnet50"],
        "parity: a spec file that is not there": ["parity", "--models", f"{d}/nothere.json:tiny"],
        "init: --out x.pth": ["init", "vgg11", "--framework", "torch", *TINY, "--out", f"{out}/w.pth"],
        "init: --out dir/": ["init", "vgg11", "--framework", "torch", *TINY, "--out", f"{out}/sub/"],
        "init: --out under a file": ["init", "vgg11", "--framework", "torch", "--out", f"{d}/afile/w.safetensors"],
        "predict: weights that are a directory": ["predict", "--model", "vgg11", "--weights", f"{d}/dir.safetensors",
                                                  "--framework", "torch", "--input", f"{d}/x.npy", "--output",
                                                  f"{out}/y.npy"],
        "predict: a text file as .npy": [*predict, "--input", f"{d}/text.npy"],
        "predict: an .npz as .npy": [*predict, "--input", f"{d}/arch.npy"],
        "predict: --output x.txt": [*predict[:-2], "--output", f"{out}/y.txt", "--input", f"{d}/x.npy"],
        "convert: random bytes as .pth": ["convert", f"{d}/random.pth", f"{out}/c.safetensors"],
        "convert: onto a directory": ["convert", v, f"{d}/dir.safetensors"],
        "convert: --to torch into .safetensors": ["convert", v, f"{out}/c.safetensors", "--to", "torch"],
        "train: negative labels": ["train", "vgg11", "--framework", "torch", "--data", f"{d}/neg", "--out", out],
        "train: an empty IDX file": ["train", "vgg11", "--framework", "torch", "--data", f"{d}/empty", "--out", out],
        "train: num_classes=5 on digits": ["train", "vgg11", "--framework", "torch", "--data", "digits", "--set",
                                           "num_classes=5", "--set", "width_divisor=16", "--out", out],
        "train: --out a file": ["train", "vgg11", "--framework", "torch", "--data", "digits", "--out", f"{d}/afile"],
        "bench: an unknown override": ["bench", "--models", "vgg11", "--set", "depth=3", "--out", out],
        "docs: --out .": ["docs", "--out", "."],
        "docs: passed \"false\"": ["docs", "--out", f"{out}/site", "--parity", f"{d}/records.json"],
    }


CASE_NAMES = list(cases(Path("/x")))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_every_command_fails_in_one_line(files, name, capsys, monkeypatch):
    monkeypatch.chdir(files)
    rc = main(cases(files)[name])  # a traceback would be an exception escaping here
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2 and len(lines) == 1, err
    assert "Traceback" not in err and "unexpected" not in lines[0], err
    assert not (files / "out" / "w.pth").exists() and not (files / "out" / "sub").exists()


def test_debug_shows_the_traceback(files, monkeypatch):
    with pytest.raises(Exception):
        main(["--debug", "summary", f"{files}/deep.json:tiny"])
    monkeypatch.setenv("ROSETTA_DEBUG", "1")
    with pytest.raises(Exception):
        main(["summary", f"{files}/deep.json:tiny"])


def test_an_unexpected_exception_is_one_line_too(monkeypatch, capsys):
    from rosetta_cnn.cli import models

    monkeypatch.setattr(models, "run_list", lambda args: {}["boom"])  # a bug: a KeyError nobody expected
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected KeyError" in err and "--debug" in err


#: ``rosetta ARGS`` in a child; with ``broken``, ``rosetta list`` meets a pipe of its own that broke
PIPE_CHILD = textwrap.dedent("""
    import sys
    from rosetta_cnn.cli import main, models

    if sys.argv[1] == "broken":
        def broken(args):
            raise BrokenPipeError(32, "Broken pipe")

        models.run_list = broken
    sys.exit(main(sys.argv[2:]))
""")


def _pipe_child(mode: str, command: list[str], close_stdout: bool) -> tuple[int, str]:
    proc = subprocess.Popen([sys.executable, "-c", PIPE_CHILD, mode, *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    if close_stdout:
        proc.stdout.close()  # no reader is left before the child writes a byte
    try:
        err = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    return proc.returncode, err.decode()


@pytest.mark.parametrize("command", [["list"], ["summary", "vgg11"]])
def test_a_closed_output_pipe_ends_quietly(command):
    """``rosetta list | head``: the reader closes the pipe before the command writes; the
    command ends with 128 + SIGPIPE and says nothing (before: "error: Broken pipe")."""
    assert _pipe_child("plain", command, close_stdout=True) == (128 + 13, "")


def test_a_broken_pipe_elsewhere_is_still_an_error():
    """A pipe of the command's own breaking (a worker's) while its standard output is still
    read is a failure to report, not a reader that left."""
    assert _pipe_child("broken", ["list"], close_stdout=False) == (2, "rosetta list: error: Broken pipe\n")


# ---------------------------------------------------------------------------
# interrupts and the file system, in child processes

CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from rosetta_cnn.cli import main
    from rosetta_cnn.core import canonical

    mode, dst = sys.argv[1], sys.argv[2]
    real = canonical.write_tensor_data
    # Ctrl-C and a hang-up as in a terminal: a job started in the background of a
    # non-interactive shell (CI scripts) inherits SIGINT ignored, and one started under nohup
    # SIGHUP ignored; the CLI rightly leaves an ignored signal ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)

    def slow(f, arrays):  # write a little, then be interrupted mid-write
        f.write(b"partial")
        f.flush()
        if mode == "KILL":
            os.kill(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), getattr(signal, "SIG" + mode))
        time.sleep(5)  # the signal arrives during the write
        real(f, arrays)

    canonical.write_tensor_data = slow
    sys.exit(main(["convert", sys.argv[3], dst]))
""")


@pytest.mark.parametrize("mode", ["INT", "TERM", "HUP", "KILL"])
def test_interrupted_convert_leaves_nothing(files, tmp_path, mode):
    dst = tmp_path / "o.safetensors"
    dst.write_bytes(b"previous")
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(dst), str(files / "v.safetensors")],
                          capture_output=True, text=True, timeout=120)
    if mode == "KILL":  # nothing can clean up after SIGKILL: the temporary stays until the next write there
        assert proc.returncode == -signal.SIGKILL
        left = [p.name for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]
        assert len(left) == 1 and left[0].startswith(".o.safetensors.")
        assert main(["convert", str(files / "v.safetensors"), str(dst)]) == 0
    else:
        assert proc.returncode == 128 + getattr(signal, f"SIG{mode}"), proc.stderr
        assert "Traceback" not in proc.stderr and "interrupted" in proc.stderr.splitlines()[-1], proc.stderr
        assert dst.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.safetensors"]


def test_stale_temporaries_of_live_processes_are_kept(tmp_path):
    live = tmp_path / f".x.{os.getppid()}-abcd{TEMP_SUFFIX}"
    dead = tmp_path / f".y.{2 ** 22 + 12345}-abcd{TEMP_SUFFIX}"
    live.write_text("a writer still at work")
    dead.mkdir()
    with atomic_path(tmp_path / "z") as tmp:
        tmp.write_text("z")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "z"])


FULL_DISK = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))  # files stop growing at 64 KiB: a full disk
    from rosetta_cnn.cli import main
    sys.exit(main(["convert", sys.argv[1], sys.argv[2]]))
""")


@pytest.mark.parametrize("ending", [".safetensors", ".weights.h5"])
def test_full_disk_is_a_message(tmp_path, ending):
    spec = load_spec("vgg16", {"width_divisor": 4, "input_size": 32, "num_classes": 10})  # ~1.5 MB
    save_canonical(tmp_path / "w.safetensors", spec, random_canonical(spec, 0))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path / "w.safetensors"), str(out / f"o{ending}")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "cannot write: File too large" in proc.stderr.splitlines()[-1]
    assert list(out.iterdir()) == []


@pytest.fixture
def read_only(tmp_path):
    """A directory nobody may write into, root included (chattr +i where we are root)."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(d)]).returncode != 0:
            pytest.skip("running as root without chattr +i: no way to make a read-only directory")
    else:
        d.chmod(0o555)
    yield d
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(d)])
    d.chmod(0o755)


def test_read_only_directory_is_a_message(files, read_only, capsys):
    for argv in (["convert", str(files / "v.safetensors"), str(read_only / "c.safetensors")],
                 ["docs", "--out", str(read_only / "site")],
                 ["predict", "--model", "vgg11", "--weights", str(files / "v.safetensors"), "--framework", "torch",
                  "--input", str(files / "x.npy"), "--output", str(read_only / "sub" / "y.npy")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert str(read_only) in err and ("Operation not permitted" in err or "Permission denied" in err), err
    assert list(read_only.iterdir()) == []
