"""Every PNG the project writes: the parity heat map, the benchmark bars, the training curves.

matplotlib is an optional dependency (the ``plots`` extra, part of every framework extra): it
is imported only when a plot is drawn, and the commands that draw one as a by-product
(``rosetta train`` after every epoch) go on without it via :func:`write_optional`. Every file
goes through :func:`save_png`: the Agg backend, written atomically, the figure closed.
"""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..core.files import atomic_path

if TYPE_CHECKING:
    from ..training.resume import History
    from ..verification.parity import Record


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (a clear error without matplotlib)."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(f"plots need matplotlib ({e}); install it with: pip install 'rosetta-cnn[plots]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | Path, dpi: int = 100) -> None:
    """Write ``fig`` as a PNG at ``path`` (atomically) and close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        pyplot().close(fig)


def write_optional(draw: Callable[..., None], *args: Any) -> None:
    """Draw a by-product plot; without matplotlib, say so once on stderr and go on."""
    if importlib.util.find_spec("matplotlib") is None:
        if not getattr(write_optional, "warned", False):
            print("note: matplotlib is not installed (pip install 'rosetta-cnn[plots]'); skipping the PNGs",
                  file=sys.stderr)
            write_optional.warned = True  # type: ignore[attr-defined]
        return
    draw(*args)


def plot_curves(history: History, path: Path, title: str) -> None:
    """Training loss per step and test loss / accuracy per epoch, as a PNG (atomically)."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    steps_per_epoch = len(history.step_loss) / max(len(history.epochs), 1)
    ax_loss.plot(np.arange(1, len(history.step_loss) + 1) / steps_per_epoch, history.step_loss, lw=0.8,
                 label="train (per step)")
    epochs = [e["epoch"] for e in history.epochs]
    ax_loss.plot(epochs, [e["test_loss"] for e in history.epochs], "o-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * e["test_accuracy"] for e in history.epochs], "o-")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)


def plot_parity(records: Sequence[Record], path: str | Path) -> None:
    """Heat map of log10(max_rel / tolerance): rows are models, columns pair/mode/device."""
    plt = pyplot()
    models = list(dict.fromkeys(r.model for r in records))
    cols = list(dict.fromkeys(f"{r.source}->{r.target}\n{r.mode} {r.device}" for r in records))
    grid = np.full((len(models), len(cols)), np.nan)
    for r in records:
        ratio = r.max_rel / r.tolerance if math.isfinite(r.max_rel) else 1e6
        grid[models.index(r.model), cols.index(f"{r.source}->{r.target}\n{r.mode} {r.device}")] = \
            math.log10(max(ratio, 1e-6))
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(cols), 1.2 + 0.45 * len(models)))
    im = ax.imshow(grid, cmap="RdYlGn_r", vmin=-3, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, fontsize=7, rotation=90)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    for i in range(len(models)):
        for j in range(len(cols)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{10 ** grid[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, label="log10(max_rel / tolerance); > 0 fails")
    ax.set_title("Cross-framework parity (cell: max_rel / tolerance)")
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def plot_bench(report: dict[str, Any], path: str | Path) -> None:
    """Horizontal bars of images/s per framework, implementation and configuration, one panel per
    model, mode and batch, with the sgemm roof (in images/s for that model) as a dashed line."""
    from .bench.report import IMPL_LABEL, find, panel_key

    plt = pyplot()
    results = report["results"]
    panels = sorted({panel_key(r) for r in results})
    colors = {"torch": "#ee4c2c", "keras": "#7b2cbf", "flax": "#4a7fc1"}
    heights = [max(2.0, 0.28 * len(find(results, model=m, mode=mo, batch=b)) + 1.0) for m, mo, b in panels]
    fig, axes = plt.subplots(len(panels) or 1, 1, figsize=(9, sum(heights) or 2), squeeze=False,
                             gridspec_kw={"height_ratios": heights or [1]})
    for ax, (model, mode, batch) in zip(axes[:, 0], panels):
        rs = sorted(find(results, model=model, mode=mode, batch=batch),
                    key=lambda r: (r["framework"], list(IMPL_LABEL).index(r["impl"]), r["images_per_s"]))
        labels = [f"{r['framework']} {IMPL_LABEL[r['impl']]} {r['config']}"
                  + (" *" if r["default"] else "") for r in rs]
        ax.barh(range(len(rs)), [r["images_per_s"] for r in rs],
                xerr=[[r["images_per_s"] - batch / r["max_s"] for r in rs],
                      [batch / r["min_s"] - r["images_per_s"] for r in rs]],
                color=[colors.get(r["framework"].split("/")[0], "grey") for r in rs],
                alpha=0.9, capsize=2)
        ax.set_yticks(range(len(rs)), labels, fontsize=7)
        if rs and rs[0]["roof_fraction"]:
            roof_ips = rs[0]["images_per_s"] / rs[0]["roof_fraction"]
            ax.axvline(roof_ips, color="black", linestyle="--", linewidth=1)
            ax.text(roof_ips, len(rs) - 0.5, f" sgemm roof {report['roof']['gflops']:.0f} GFLOP/s", fontsize=7,
                    va="bottom", ha="right")
        ax.set_title(f"{model} {'inference' if mode == 'infer' else 'training step'}, batch {batch}", fontsize=9)
        ax.set_xlabel("images/s (median, whiskers min-max; * = default config)", fontsize=8)
    fig.suptitle(f"rosetta bench {report['date'][:10]}: {report['machine']['cpu']}, "
                 f"{report['threads']} threads", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    save_png(fig, path, dpi=110)
