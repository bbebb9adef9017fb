"""The ``rosetta`` command: the parser, the command modules, and one-line errors.

    rosetta list | summary | parity | init | predict | convert | eval | train | bench | docs

Each command module (``cli/<group>.py``) adds its sub-commands with ``register(sub)``; the
work itself is done by library functions. :func:`main` is the one error path: every failure
(spec, weights, inputs, data, file system, interrupt) ends in one line naming what was wrong. Nothing is imported from a framework until a
command needs it, so ``rosetta --help``, ``list`` and ``summary`` start fast.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import select
import signal
import subprocess
import sys
from typing import Any, Sequence

from ..core import limits
from ..core.errors import Interrupted, RosettaError, SpecError

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
        for key, value in (("in_channels", c), ("input_size", [h, w])):
            given = overrides.get(key, value)
            if (given if isinstance(given, list) or key != "input_size" else [given, given]) != value:
                raise SpecError(f"--set {key}={json.dumps(given)} and --input {input_chw} disagree; give one of them")
            overrides[key] = value
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


#: set to 1 to see the traceback of any failure (as ``--debug`` does)
DEBUG_ENV = "ROSETTA_DEBUG"


def _common_options(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help=f"show the traceback of a failure (or set {DEBUG_ENV}=1)")
    p.add_argument("--limit", action="append", default=default, metavar="KEY=N",
                   help="raise a resource limit for this command, e.g. max_params=5e9 (docs/hostile-input.md)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rosetta", description="AlexNet, VGG and GoogLeNet in PyTorch, Keras and "
                                "Flax from one spec, with cross-framework parity checks.")
    _common_options(p, None)
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    for command in sub.choices.values():  # also after the command: rosetta init ... --limit max_params=5e9
        _common_options(command, argparse.SUPPRESS)
    return p


def one_line(e: BaseException) -> str:
    """An exception's message on one line (a multi-line message joined with '; ')."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return "; ".join(lines) or type(e).__name__


def _stop(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def install_signal_handlers() -> dict[int, Any]:
    """SIGTERM and SIGHUP end a command like Ctrl-C does: as an exception, so that every
    pending ``finally`` removes its temporary files before the process exits. Returns the
    handlers it replaced (for :func:`restore_signal_handlers`)."""
    replaced = {}
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) in (signal.SIG_DFL, None):
            replaced[signum] = signal.signal(signum, _stop)
    return replaced


def restore_signal_handlers(replaced: dict[int, Any]) -> None:
    for signum, handler in replaced.items():
        signal.signal(signum, handler)


def report(command: str, e: BaseException) -> int:
    """Print the one-line message for a failure; returns the exit status."""
    prefix = f"rosetta {command}: "
    if isinstance(e, KeyboardInterrupt):
        name = getattr(e, "signal_name", "SIGINT")
        print(f"{prefix}interrupted ({'Ctrl-C' if name == 'SIGINT' else name}); nothing partial was left behind",
              file=sys.stderr)
        return 128 + int(getattr(signal, name, signal.SIGINT))
    if isinstance(e, (RosettaError, ImportError)):
        message = one_line(e)
    elif isinstance(e, MemoryError):
        message = ("out of memory; the limits (docs/hostile-input.md) did not stop this input: please report it, "
                   f"or lower a limit with --limit ({DEBUG_ENV}=1 shows where)")
    elif isinstance(e, RecursionError):
        message = f"the input nests too deeply to process ({DEBUG_ENV}=1 shows where)"
    elif isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        message = f"{where}{e.strerror or one_line(e)}"
    else:
        message = (f"unexpected {type(e).__name__}: {one_line(e)[:300]} (this is a bug: run with --debug or "
                   f"{DEBUG_ENV}=1 for the traceback and report it)")
    print(f"{prefix}error: {message}", file=sys.stderr)
    return 2


def stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (not some other pipe, such as
    a worker's). If so, it is pointed at ``os.devnull``, so that the interpreter's final flush
    does not fail a second time."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):  # closed or replaced: not a pipe that broke
        return False
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass  # the reader has gone
    except (OSError, ValueError):
        return False
    else:
        if not hasattr(select, "poll"):
            return False
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if not any(events & select.POLLERR for _, events in poller.poll(0)):  # a pipe without readers reports POLLERR
            return False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure ends in one line on stderr and a non-zero exit status
    (2 for an error, 128 + the signal for an interruption), with no traceback unless
    ``--debug`` or ROSETTA_DEBUG=1 asks for one. A reader that closes the output pipe early
    (``rosetta list | head``) ends the command quietly with status 141, as Unix tools do."""
    # keep TensorFlow's C++ start-up banners (CPU features, XLA service) out of the tables
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = "command"
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    replaced: dict[int, Any] = {}
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        command = args.command
        debug = debug or bool(args.debug)
        replaced = install_signal_handlers()
        with limits.raised(**{**limits.parse_items(os.environ.get(limits.ENV)), **limits.parse_items(args.limit)}):
            return args.func(args)
    except SystemExit:
        raise
    except BaseException as e:
        if isinstance(e, BrokenPipeError) and stdout_closed():
            return 128 + int(getattr(signal, "SIGPIPE", 13))  # the reader left (``rosetta list | head``): no error
        if debug:
            raise
        return report(command, e)
    finally:
        restore_signal_handlers(replaced)


if __name__ == "__main__":
    sys.exit(main())
