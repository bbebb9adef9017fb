"""The ``rosetta`` command: the parser, the command modules, and one-line errors.

    rosetta list | summary | parity | init | predict | convert | eval | train | bench | docs

Each command module (``cli/<group>.py``) adds its sub-commands with ``register(sub)``; the
work itself is done by library functions. Nothing is imported from a framework until a
command needs it, so ``rosetta --help``, ``list`` and ``summary`` start fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from typing import Any, Sequence

from ..core.errors import RosettaError, SpecError

#: the command modules, in the order their commands appear in ``rosetta --help``
COMMAND_MODULES: tuple[str, ...] = ("models", "parity", "weights", "eval", "train", "bench", "docs")


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
    try:
        return args.func(args)
    except (RosettaError, ImportError) as e:
        print(f"rosetta {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
