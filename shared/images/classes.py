"""Class names: ImageNet's 1000 (shipped as data), a user's ``--labels FILE``, the names a
model records, and the top-K of a batch of logits.

``imagenet_classes.json`` was generated once from torchvision's
``torchvision.models._meta._IMAGENET_CATEGORIES`` (the names its ``Weights.meta["categories"]``
list, in the index order of every torchvision and keras.applications ImageNet classifier):
``python -m rosetta_cnn.images.classes`` writes it again (that needs torchvision; reading it
never does).
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.errors import RosettaError

IMAGENET_FILE = Path(__file__).with_name("imagenet_classes.json")
#: the largest labels file read (a million names of 100 bytes)
MAX_LABELS_BYTES = 100 << 20


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names in torchvision's (and keras.applications') index order."""
    return tuple(json.loads(IMAGENET_FILE.read_text())["classes"])


def read_labels(path: str | os.PathLike) -> list[str]:
    """Class names from a file: a JSON list of strings, or one name per line (blank lines and
    surrounding spaces ignored; ImageNet's ``synset_words.txt`` style ``n01440764 tench`` keeps
    the whole line)."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_LABELS_BYTES:
            raise RosettaError(f"--labels {p}: {p.stat().st_size} bytes is over the {MAX_LABELS_BYTES}-byte limit")
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RosettaError(f"--labels {p}: cannot read it as UTF-8 text ({e})") from None
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise RosettaError(f"--labels {p}: starts like a JSON list but is not JSON ({e})") from None
        if not all(isinstance(n, str) for n in names):
            raise RosettaError(f"--labels {p}: a JSON labels file must be a list of strings")
        return list(names)
    return [line.strip() for line in text.splitlines() if line.strip()]


def recorded_classes(meta: Mapping[str, str], *, source: str = "metadata") -> list[str] | None:
    """The class names a canonical file records (``classes``: a JSON list of strings), or None."""
    text = meta.get("classes")
    if text is None:
        return None
    try:
        names = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RosettaError(f"{source}: the recorded class names are not a JSON list of strings")
    return names


def class_names(num_classes: int, *, labels: Sequence[str] | None = None, recorded: Sequence[str] | None = None,
                source: str = "--labels") -> list[str]:
    """The names of a model's ``num_classes`` outputs: ``labels`` if given (their count must
    match), else the names the weight file records, else ImageNet's for 1000 classes, else
    the class indices."""
    for names, where in ((labels, source), (recorded, "the weight file's class names")):
        if names is not None:
            if len(names) != num_classes:
                raise RosettaError(f"{where}: {len(names)} class names for a model with {num_classes} classes")
            return list(names)
    if num_classes == 1000:
        return list(imagenet_classes())
    return [str(i) for i in range(num_classes)]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (max-subtracted), returned as float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(probabilities: np.ndarray, names: Sequence[str], k: int) -> list[list[dict[str, Any]]]:
    """Per row, the ``k`` most probable classes: ``{"index", "label", "probability"}``,
    most probable first (ties by lower index, as a stable sort gives)."""
    k = max(1, min(k, probabilities.shape[1]))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[{"index": int(i), "label": names[i], "probability": float(row[i])} for i in idx]
            for row, idx in zip(probabilities, order)]


def _regenerate() -> None:  # pragma: no cover - run by hand, needs torchvision
    import torchvision
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    data = {"source": f"torchvision {torchvision.__version__}: torchvision.models._meta._IMAGENET_CATEGORIES",
            "classes": list(_IMAGENET_CATEGORIES)}
    IMAGENET_FILE.write_text(json.dumps(data, indent=0) + "\n")
    print(f"wrote {IMAGENET_FILE}: {len(data['classes'])} classes")


if __name__ == "__main__":
    _regenerate()
