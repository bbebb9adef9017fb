"""Draws ``docs/figures/train_curves.png``: the first 20 training steps on digits in each
framework from the same start (the ``train-loss-curve`` entry of the tolerance table).

    python docs/figures/train_curves.py          # writes docs/figures/train_curves.png
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from rosetta_cnn.core import ports
from rosetta_cnn.tools import plots
from rosetta_cnn.training.trainer import OptimizerConfig
from rosetta_cnn.verification.training import first_steps_curves


def plot_first_steps(curves: Mapping[str, list[float]], path: str | Path, title: str) -> None:
    """The frameworks' loss curves on one plot, with the largest relative gap (PNG, atomically)."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = ["-", "--", ":"]
    for (fw, losses), style in zip(curves.items(), styles * len(curves)):
        ax.plot(range(1, len(losses) + 1), losses, style, marker="o", ms=3, label=fw)
    ref = np.asarray(next(iter(curves.values())))
    gap = max(float(np.abs(np.asarray(c) - ref).max() / np.abs(ref).max()) for c in curves.values())
    ax.set(xlabel="step", ylabel="training loss (cross-entropy)", title=f"{title}\nlargest gap {gap:.1e} (relative)")
    ax.legend()
    fig.tight_layout()
    plots.save_png(fig, path)


def main() -> None:
    curves = first_steps_curves("vgg11", ports.available(), opt=OptimizerConfig("adam", lr=1e-3),
                                overrides={"width_divisor": 4})
    out = Path(__file__).with_name("train_curves.png")
    plot_first_steps(curves, out, "vgg11 (widths / 4) on digits, Adam 1e-3, batch 64, same start")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
