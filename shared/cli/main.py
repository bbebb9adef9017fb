"""The ``rosetta`` command: the parser, the command modules, and one-line errors.

    rosetta list | summary | parity | init | predict | convert | train | bench | docs

Each command module (``cli/<group>.py``) adds its sub-commands with ``register(sub)``; the
work itself is done by library functions. Nothing is imported from a framework until a
command needs it, so ``rosetta --help``, ``list`` and ``summary`` start fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
from typing import Any, Sequence

from ..core.errors import RosettaError, SpecError

#: the command modules, in the order their commands appear in ``rosetta --help``
COMMAND_MODULES: tuple[str, ...] = ("models", "parity", "weights", "train", "bench", "docs")


def parse_input(text: str, parts: int) -> tuple[int, ...]:
    """``--input`` as ``CxHxW`` (``parts`` 3) or ``HxW`` / ``N`` (``parts`` 2)."""
    fields = re.split(r"[x,]", text.lower())
    if len(fields) == 1 and parts == 2:
        fields = fields * 2
    try:
        dims = tuple(int(f) for f in fields)
    except ValueError:
        dims = ()
    if len(dims) != parts or any(d < 1 for d in dims):
        shape = "CxHxW, e.g. 3x224x224" if parts == 3 else "HxW, e.g. 224x224"
        raise SpecError(f"--input expects {shape}, got {text!r}")
    return dims


def spec_from_args(model: str, sets: Sequence[str], input_chw: str | None = None) -> Any:
    """The spec a command's ``MODEL``, ``--set`` and ``--input CxHxW`` describe."""
    from ..core.spec import load_spec, parse_overrides

    overrides = parse_overrides(sets or [])
    if input_chw:
        c, h, w = parse_input(input_chw, 3)
        overrides.setdefault("in_channels", c)
        overrides.setdefault("input_size", [h, w])
    return load_spec(model, overrides)


def label_arg(text: str) -> str:
    """``--framework`` / ``--frameworks``: an implementation label (``core.ports.LABELS``)."""
    from ..core import ports

    try:
        ports.resolve(text)
    except RosettaError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def label_help(many: bool = False) -> str:
    from ..core import ports

    what = "implementations" if many else "implementation"
    return (f"{what}: {', '.join(ports.LABELS)} ('keras' is Keras on the backend KERAS_BACKEND names, tensorflow "
            "when unset; keras/jax and keras/torch need the extras keras-jax and keras-torch)")


def run_as(args: argparse.Namespace, label: str) -> int | None:
    """Prepare this process to run ``label`` (``core.ports.activate``: KERAS_BACKEND set before
    Keras is imported) and return None; if Keras is already loaded here on another backend,
    run the same command in a fresh process with the label's environment and return its
    exit code."""
    from ..core import ports

    try:
        ports.activate(label)
        return None
    except ports.BackendMismatch:
        argv = getattr(args, "argv", None)
        if argv is None:
            raise
        env = {**os.environ, **ports.resolve(label).env()}
        return subprocess.call([sys.executable, "-m", "rosetta_cnn.cli.main", *argv], env=env)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rosetta", description="AlexNet, VGG and GoogLeNet in PyTorch, Keras and "
                                "Flax from one spec, with cross-framework parity checks.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # keep TensorFlow's C++ start-up banners (CPU features, XLA service) out of the tables
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except (RosettaError, ImportError) as e:
        print(f"rosetta {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
