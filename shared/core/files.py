"""File and tensor-set helpers every reader and writer shares: atomic writes (and the removal
of what a killed writer left), checks of input and output paths, the one name-and-shape
check, and short listings of names for error messages."""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import Callable, Iterator, Mapping

from .errors import FileError, RosettaError, WeightError


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


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a file (a directory, missing, a symlink loop, a FIFO or a
    device, which are never read: they could block or never end; unreadable), or None."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return "no such file"
    except OSError as e:
        return f"cannot read: {e.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a pipe, socket or device is never read)"
    if not os.access(p, os.R_OK):
        return "cannot read: permission denied"
    return None


def existing_file(path: str | os.PathLike, what: str = "") -> Path:
    """``path`` as a Path, or a WeightError that says why it cannot be read as a file."""
    p = Path(path)
    problem = file_problem(p)
    if problem:
        raise WeightError(f"{what + ' ' if what else ''}{p}: {problem}")
    return p


#: temporary files and directories of :func:`atomic_path` end so; ``.NAME.PID-RANDOM.rosetta-tmp``
TEMP_SUFFIX = ".rosetta-tmp"
_TEMP = re.compile(r"^\..*\.(\d+)-[0-9a-z_]+" + re.escape(TEMP_SUFFIX) + "$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and directories that writers killed beyond recall (SIGKILL,
    a power cut) left in ``directory``: ``.*.PID-RANDOM.rosetta-tmp`` entries whose process is
    gone. Called by every atomic write; returns what it removed."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is None or _alive(int(m.group(1))):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass  # another process got there first, or it is not ours to remove
    return removed


def output_path(path: str | os.PathLike) -> Path:
    """``path`` as a file to write, or a FileError: a name ending in a separator, an existing
    directory, a parent that is a file."""
    text = os.fspath(path)
    target = Path(text)
    if text.endswith(("/", os.sep)) or target.is_dir():
        raise FileError(f"{text}: is a directory; give a file name")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FileError(f"{text}: {parent} is not a directory")
            break
    return target


def _temp_name(target: Path) -> str:
    return f".{target.name[:96]}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"


def _write_failure(target: Path, tmp: Path, e: BaseException) -> FileError | None:
    """The FileError for a writer that failed with ``e`` because the file cannot be written
    (a full disk, a file-size limit, an I/O error), or None for a failure of another kind.
    Writers wrap I/O errors in their own exceptions (torch's RuntimeError, h5py's), so a
    failure that is not an OSError is judged by probing: one more byte written to the
    temporary file fails the same way when the file system is the cause."""
    if isinstance(e, OSError) and e.errno is not None:
        return FileError(f"{target}: cannot write: {e.strerror}")
    if isinstance(e, RosettaError) or not isinstance(e, Exception):
        return None
    probe = tmp if tmp.is_file() else tmp / ".probe"
    try:
        with open(probe, "ab") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        return FileError(f"{target}: cannot write: {err.strerror}")
    return None


def check_space(target: Path, nbytes: int) -> None:
    """FileError before a write of about ``nbytes`` that cannot fit: over the process's
    file-size limit (RLIMIT_FSIZE) or the free space of the disk. Writers that cannot fail
    cleanly half-way (h5py crashes on a full disk) call it first."""
    try:
        import resource

        soft, unlimited = resource.getrlimit(resource.RLIMIT_FSIZE)[0], resource.RLIM_INFINITY
    except (ImportError, OSError, ValueError):  # not POSIX
        soft = unlimited = -1
    if soft not in (-1, unlimited) and nbytes > soft:
        raise FileError(f"{target}: cannot write: File too large ({nbytes:,} bytes, over this process's file-size "
                        f"limit of {soft:,})")
    try:
        free = shutil.disk_usage(target.parent if target.parent.exists() else Path.cwd()).free
    except OSError:
        return
    if nbytes > free:
        raise FileError(f"{target}: cannot write: no space left on device ({nbytes:,} bytes needed, {free:,} free)")


@contextlib.contextmanager
def _temporary(path: str | os.PathLike, make: Callable[[Path], None], nbytes: int = 0) -> Iterator[Path]:
    target = output_path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileError(f"{target}: cannot create the directory {target.parent}: {e.strerror}") from None
    remove_stale_temporaries(target.parent)
    if nbytes:
        check_space(target, nbytes)
    tmp = target.parent / _temp_name(target)
    try:
        make(tmp)
    except OSError as e:
        raise FileError(f"{target}: cannot write in {target.parent}: {e.strerror}") from None
    try:
        yield tmp
    except BaseException as e:
        failure = _write_failure(target, tmp, e)
        if failure is not None:
            raise failure from None
        raise
    finally:
        with contextlib.suppress(OSError):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            elif tmp.exists() or tmp.is_symlink():
                tmp.unlink()


def _publish(tmp: Path, target: Path) -> None:
    """fsync ``tmp``, give it the mode a plain ``open()`` would, and rename it over ``target``."""
    try:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a new temporary file is 0600; give the file the usual mode
        os.replace(tmp, target)
    except OSError as e:
        raise FileError(f"{target}: cannot write: {e.strerror}") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, nbytes: int = 0) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    On any error (or interruption) the temporary file is removed and ``path`` is untouched; a
    writer killed beyond recall leaves ``.NAME.PID-RANDOM.rosetta-tmp``, which the next atomic
    write into the same directory removes. File-system failures (a read-only directory, a full
    disk, a directory in the way) are FileErrors naming the path; ``nbytes``, the size about to
    be written when the writer knows it, is checked against the free space first.
    """
    target = Path(path)
    with _temporary(path, lambda tmp: tmp.touch(mode=0o600, exist_ok=False), nbytes) as tmp:
        yield tmp
        _publish(tmp, target)


@contextlib.contextmanager
def atomic_named_path(path: str | os.PathLike, nbytes: int = 0) -> Iterator[Path]:
    """Like :func:`atomic_path`, but the temporary file has ``path``'s own name (in a
    temporary directory beside it), for writers that check the file name (Keras' suffixes)."""
    target = Path(path)
    with _temporary(path, lambda d: d.mkdir(mode=0o700), nbytes) as d:
        tmp = d / target.name
        yield tmp
        if tmp.is_dir():  # a Keras/orbax writer may produce a directory; we only handle files
            raise WeightError(f"{target}: the writer produced a directory, not a file")
        _publish(tmp, target)
