"""``rosetta eval``: a model's accuracy on a folder of class folders, an IDX directory or
digits, under a test-time recipe (``testtime.py``): top-1 and top-5 accuracy, per-class
accuracy, the confusion matrix (JSON and PNG), with progress on stderr.

Folder classes are matched to the model's outputs by name (the names a ``rosetta train``
file records, or ImageNet's for 1000-class models), by index (folders named ``0``, ``1``,
...), or, when the counts agree, in sorted order (torchvision's ImageFolder convention).
A file that cannot be decoded is reported and skipped (``on_error="skip"``) or stops the
run (``"stop"``); it never counts as a silent zero.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..core.errors import RosettaError
from .files import ImageError
from .preprocess import Preprocessing
from .testtime import TTA, Runner, check_dense

ON_ERROR = ("stop", "skip")


def class_map(source_classes: Sequence[str], model_classes: Sequence[str], num_classes: int,
              *, where: str = "data") -> np.ndarray:
    """Source class index -> model output index (see the module docstring)."""
    index = {name: i for i, name in enumerate(model_classes)}
    if all(c in index for c in source_classes):
        return np.asarray([index[c] for c in source_classes], dtype=np.int64)
    if all(c.isdigit() and int(c) < num_classes for c in source_classes):
        return np.asarray([int(c) for c in source_classes], dtype=np.int64)
    if len(source_classes) == num_classes:
        return np.arange(num_classes, dtype=np.int64)
    unknown = [c for c in source_classes if c not in index][:5]
    raise RosettaError(f"{where}: {len(source_classes)} class folders for a {num_classes}-class model, and the "
                       f"folder names {unknown} are neither the model's class names nor class indices")


@dataclass
class Result:
    """Per-image posteriors and the metrics derived from them."""

    probabilities: np.ndarray  # (N, K) for the images scored
    labels: np.ndarray  # (N,) model class index of each scored image
    source_labels: np.ndarray  # (N,) source class index
    source_classes: list[str]
    model_classes: list[str]
    mapping: np.ndarray  # source class -> model class
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def top_k_accuracy(self, k: int) -> float:
        if not len(self.labels):
            return float("nan")
        k = min(k, self.probabilities.shape[1])
        top = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]
        return float((top == self.labels[:, None]).any(axis=1).mean())

    def predictions(self) -> np.ndarray:
        return np.argmax(self.probabilities, axis=1)

    def per_class(self) -> dict[str, dict[str, float | int]]:
        pred = self.predictions()
        out: dict[str, dict[str, float | int]] = {}
        for c, name in enumerate(self.source_classes):
            members = self.source_labels == c
            n = int(members.sum())
            out[name] = {"images": n, "top1": float((pred[members] == self.labels[members]).mean()) if n else
                         float("nan")}
        return out

    def confusion(self) -> tuple[list[str], list[str], np.ndarray]:
        """(row names, column names, counts): rows are the source classes; columns are their
        model classes, plus ``other`` when a prediction falls outside them."""
        columns = {int(m): j for j, m in enumerate(self.mapping)}
        pred = self.predictions()
        other = any(p not in columns for p in pred)
        counts = np.zeros((len(self.source_classes), len(self.source_classes) + other), dtype=np.int64)
        for s, p in zip(self.source_labels, pred):
            counts[s, columns.get(int(p), len(self.source_classes))] += 1
        return list(self.source_classes), list(self.source_classes) + (["other"] if other else []), counts

    def summary(self) -> dict[str, Any]:
        rows, cols, counts = self.confusion()
        n = len(self.labels)
        return {"images": n, "skipped": self.skipped, "top1": self.top_k_accuracy(1), "top5": self.top_k_accuracy(5),
                "per_class": self.per_class(), "confusion": {"rows": rows, "columns": cols, "counts": counts.tolist()},
                "seconds": self.seconds, "images_per_second": n / self.seconds if self.seconds else None}


class Progress:
    """A progress bar on stderr (redrawn in place on a terminal, every ~10% otherwise)."""

    def __init__(self, total: int, label: str, stream: Any = None):
        self.total, self.label, self.stream = total, label, stream or sys.stderr
        self.t0, self.shown = time.perf_counter(), -1
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, done: int) -> None:
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        step = done * 10 // max(self.total, 1)
        if not self.tty and step == self.shown and done < self.total:
            return
        self.shown = step
        width = 30
        bar = "#" * (width * done // max(self.total, 1))
        line = f"{self.label} [{bar:<{width}}] {done}/{self.total} images, {rate:.1f} images/s"
        print(("\r" + line) if self.tty else line, end="" if self.tty and done < self.total else "\n",
              file=self.stream, flush=True)


def evaluate(source: Any, framework: str, spec: Any, tensors: Any, prep: Preprocessing, tt: TTA, *,
             model_classes: Sequence[str], batch: int = 32, on_error: str = "stop", limit: int | None = None,
             progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
             bar_stream: Any = None) -> Result:
    """Score every image of ``source`` (or the first ``limit``) with ``tt``'s views."""
    if on_error not in ON_ERROR:
        raise RosettaError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    if batch < 1:
        raise RosettaError(f"--batch must be at least 1, got {batch}")
    if tt.crops == "dense":
        check_dense(spec)
    num_classes = spec.params["num_classes"]
    mapping = class_map(source.classes, model_classes, num_classes,
                        where=str(getattr(source, "root", getattr(source, "name", "data"))))
    n = len(source) if limit is None else min(limit, len(source))
    runner = Runner(framework, spec, tensors, batch=batch)
    chunk = max(1, batch // tt.views_per_image())  # images read at once: about `batch` views
    progress(f"evaluating {spec.name} in {framework} on {n} images: {tt.describe(prep)}; {prep.describe()}")
    bar = Progress(n, f"{spec.name} {framework}", bar_stream)
    probs, kept, skipped = [], [], []
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        images, names, idx = [], [], []
        for i in range(start, min(start + chunk, n)):
            try:
                images.append(source.load(i, prep.mode))
            except ImageError as e:
                if on_error == "stop":
                    raise ImageError(f"{e} (pass --on-error skip to skip unreadable images)") from None
                skipped.append({"file": source.describe(i), "error": str(e)})
                progress(f"skipped: {e}")
                continue
            names.append(source.describe(i))
            idx.append(i)
        if images:
            probs.append(runner.scores(images, prep, tt, names))
            kept += idx
        bar.update(min(start + chunk, n))
    seconds = time.perf_counter() - t0
    if not kept:
        raise RosettaError(f"no image could be scored ({len(skipped)} skipped)")
    source_labels = np.asarray(source.labels)[kept]
    return Result(np.concatenate(probs), mapping[source_labels], source_labels, list(source.classes),
                  list(model_classes), mapping, skipped, seconds)


def plot_confusion(result: Result, path: str, title: str) -> None:
    """The confusion matrix as a PNG (``tools.plots.save_png``): counts, rows normalised for colour."""
    from ..tools.plots import pyplot, save_png

    rows, cols, counts = result.confusion()
    plt = pyplot()
    size = max(4.0, 0.35 * len(cols) + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.5, max(3.5, 0.35 * len(rows) + 2.0)))
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true")
    if len(rows) * len(cols) <= 900:
        for i in range(len(rows)):
            for j in range(len(cols)):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, label="share of the true class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, path, dpi=110)
