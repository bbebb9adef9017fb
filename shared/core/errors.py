"""Errors raised by the framework-free core; every message says what was wrong and where."""
from __future__ import annotations


class RosettaError(Exception):
    """Base class for every error this project raises on purpose."""


class SpecError(RosettaError, ValueError):
    """A spec file or an override is invalid.

    The message names the file, the JSON path (``$.layers[12].kernel_size``) and what was
    expected, so that a user can fix the spec without reading a traceback.
    """

    def __init__(self, message: str, *, file: str | None = None, path: str | None = None):
        self.file = file
        self.path = path
        self.detail = message
        where = ": ".join(p for p in (file, path) if p)
        super().__init__(f"{where}: {message}" if where else message)


class WeightError(RosettaError, ValueError):
    """A weight file does not fit the model (names, shapes, metadata) or cannot be read."""


class FileError(RosettaError):
    """A file or directory cannot be read or written (a directory where a file was expected,
    a read-only or full disk, a name that is too long); the message names the path."""


class LimitError(RosettaError):
    """An input asks for more than a resource limit allows (``core/limits.py``); the message
    gives the figure, the limit and how to raise it."""


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop (Ctrl-C, SIGTERM, SIGHUP): raised so that every pending
    ``finally`` removes its temporary files before the command ends."""

    def __init__(self, signal_name: str = "SIGINT"):
        super().__init__(signal_name)
        self.signal_name = signal_name
