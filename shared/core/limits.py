"""Resource limits: what a spec, a weight file or a data file may ask for, checked before
anything is allocated, so that a small hostile file cannot make a command allocate without
bound (docs/hostile-input.md).

Each limit has a default that every bundled model and ordinary input stays far below; a user
who means it raises one for a command with ``--limit KEY=N`` (any ``rosetta`` command, as
often as needed) or for a session with ``ROSETTA_LIMITS="KEY=N,KEY=N"``. Byte limits accept
``K``, ``M``, ``G`` and ``T`` suffixes (powers of 1024); every limit accepts ``1e9``.

Inside Python: ``with limits.raised(max_params=5_000_000_000): ...`` or
``limits.configure(max_params=...)``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Iterator

from .errors import LimitError

ENV = "ROSETTA_LIMITS"


@dataclass(frozen=True)
class Limits:
    """The limits in force (``get()``); every field can be raised (see the module docstring)."""

    #: layers, block instances and loop iterations one spec may expand to
    max_layers: int = 10_000
    #: nesting depth of blocks and ``for`` loops in a spec
    max_depth: int = 32
    #: size of one JSON input (a spec file, a spec embedded in a weight file, parity or bench records)
    max_json_bytes: int = 16 << 20
    #: parameters and buffers of one model; also the elements a weight file may declare
    max_params: int = 1_000_000_000
    #: elements of one layer's output for one example (a feature map C*H*W)
    max_activation: int = 1 << 28
    #: uncompressed size of one archive member (the weights inside a ``.keras`` zip)
    max_archive_bytes: int = 2 << 30
    #: float32 size of a data set or an input batch (IDX files, ``predict --input``)
    max_data_bytes: int = 4 << 30

    def check(self, key: str, figure: int, what: str) -> None:
        """Raise LimitError unless ``figure`` <= the limit ``key``."""
        limit = getattr(self, key)
        if figure > limit:
            raise LimitError(exceeded(key, figure, what, limit))


#: the limit names, for messages and `--limit`
KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Limits))

_current = Limits()


def get() -> Limits:
    """The limits in force."""
    return _current


def exceeded(key: str, figure: int, what: str, limit: int | None = None) -> str:
    """The message for ``what`` = ``figure`` over the limit ``key``: the figure, the limit and
    how to raise it."""
    limit = getattr(_current, key) if limit is None else limit
    unit = " bytes" if key.endswith("_bytes") else ""
    return (f"{what} is {figure:,}{unit}, over the limit of {limit:,}{unit} ({key}); if you mean it, raise it "
            f"with --limit {key}=N (or {ENV}={key}=N)")


_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_value(key: str, text: Any) -> int:
    """``"5e9"``, ``"8G"`` (byte limits), ``12`` -> an integer >= 1."""
    if key not in KEYS:
        raise LimitError(f"unknown limit {key!r}; limits: {', '.join(KEYS)}")
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]?)i?[bB]?\s*", str(text))
    try:
        if m is None or (m.group(2) and not key.endswith("_bytes")):
            raise ValueError
        value = int(float(m.group(1)) * _SUFFIX[m.group(2).lower()])
    except (ValueError, OverflowError):
        raise LimitError(f"limit {key}: expected a positive number{' (K, M, G, T allowed)' if key.endswith('_bytes') else ''}"
                         f", got {text!r}") from None
    if value < 1:
        raise LimitError(f"limit {key}: expected a positive number, got {text!r}")
    return value


def parse_items(items: list[str] | str | None) -> dict[str, int]:
    """``["max_params=5e9", "max_layers=20000"]`` or ``"max_params=5e9,max_layers=20000"`` -> values."""
    if not items:
        return {}
    if isinstance(items, str):
        items = [i for i in items.split(",") if i.strip()]
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise LimitError(f"--limit expects KEY=N, got {item!r}; limits: {', '.join(KEYS)}")
        out[key.strip()] = parse_value(key.strip(), value)
    return out


def configure(**values: int) -> Limits:
    """Set limits for the rest of the process; returns the previous ones."""
    global _current
    previous = _current
    for key, value in values.items():
        values[key] = parse_value(key, value)
    _current = dataclasses.replace(_current, **values)
    return previous


@contextlib.contextmanager
def raised(**values: int) -> Iterator[Limits]:
    """Limits changed for the duration of a ``with`` block."""
    global _current
    previous = configure(**values)
    try:
        yield _current
    finally:
        _current = previous
