"""File and tensor-set helpers every reader and writer shares: atomic writes, the one
name-and-shape check, and short listings of names for error messages."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

from .errors import WeightError


def listing(names: list[str], limit: int = 5) -> str:
    """The first ``limit`` names, and how many more."""
    shown = ", ".join(names[:limit])
    return f"{shown} (+{len(names) - limit} more)" if len(names) > limit else shown


def check_names_shapes(expected: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]], *,
                       source: str, target: str, suggestion: str | None = None) -> None:
    """Raise WeightError unless ``got`` has exactly ``expected``'s names and shapes.

    The message lists the missing and unexpected names (first few, with counts), adds
    ``suggestion`` (e.g. the model the file looks like), or names the tensor and both shapes.
    """
    missing = [n for n in expected if n not in got]
    unexpected = [n for n in got if n not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensor(s): {listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s): {listing(unexpected)}")
        if suggestion:
            parts.append(suggestion)
        raise WeightError(f"{source}: the tensors do not match {target}: " + "; ".join(parts))
    for name, shape in expected.items():
        if tuple(got[name]) != tuple(shape):
            raise WeightError(f"{source}: tensor {name!r} has shape {tuple(got[name])}, "
                              f"{target} expects {tuple(shape)}")


def existing_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path, or a WeightError that says why it cannot be read as a file."""
    p = Path(path)
    if p.is_dir():
        raise WeightError(f"{p}: is a directory, not a file")
    if not p.is_file():
        raise WeightError(f"{p}: no such file")
    return p


def _publish(tmp: Path, target: Path) -> None:
    """fsync ``tmp``, give it the mode a plain ``open()`` would, and rename it over ``target``."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    On any error (or interruption) the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _publish(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_named_path(path: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`atomic_path`, but the temporary file has ``path``'s own name (in a
    temporary directory beside it), for writers that check the file name (Keras' suffixes)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as d:
        tmp = Path(d) / target.name
        yield tmp
        if tmp.is_dir():  # a Keras/orbax writer may produce a directory; we only handle files
            raise WeightError(f"{target}: the writer produced a directory, not a file")
        _publish(tmp, target)
