"""The test-time recipes on digits in the three frameworks (docs/images.md): a VGG11 (widths / 16)
trained at 224x224 (so its fully-convolutional head is exact at its own size), evaluated with
the centre view, AlexNet's 10 crops and VGG's dense multi-scale head, with and without flips;
prints a markdown table and writes ``docs/figures/digits_tta.json`` and the confusion matrix
of the best recipe (``docs/figures/digits_confusion.png``).

    rosetta train vgg11 --framework torch --data digits --set width_divisor=16 --set input_size=224 \\
        --optimizer adam --epochs 8 --out runs/fixed
    rosetta train ... --scale-jitter 224 288 --out runs/jitter
    python docs/figures/digits_tta.py runs/fixed runs/jitter
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from rosetta_cnn.core import ports
from rosetta_cnn.core.canonical import load_canonical, read_metadata
from rosetta_cnn.images.evaluate import evaluate, plot_confusion
from rosetta_cnn.images.folders import open_source
from rosetta_cnn.images.preprocess import recorded
from rosetta_cnn.images.testtime import TTA

RECIPES = {
    "centre": TTA(),
    "centre + flip": TTA(flip=True),
    "10 crops": TTA("ten-crop"),
    "dense 224/256/288": TTA("dense", scales=(224, 256, 288)),
    "dense 224/256/288 + flip": TTA("dense", flip=True, scales=(224, 256, 288)),
}


def main(runs: list[str]) -> None:
    source = open_source("digits")
    frameworks = ports.available()
    rows, best = [], None
    for run in runs:
        weights = Path(run) / "model.safetensors"
        spec, tensors = load_canonical(weights)
        prep = recorded(read_metadata(weights))
        for name, tta in RECIPES.items():
            results, seconds = {}, {}
            for fw in frameworks:
                t0 = time.perf_counter()
                results[fw] = evaluate(source, fw, spec, tensors, prep, tta, model_classes=[str(i) for i in range(10)],
                                       batch=32, progress=lambda m: None)
                seconds[fw] = time.perf_counter() - t0
            ref = results[frameworks[0]].probabilities
            gap = max(float(np.abs(r.probabilities - ref).max()) for r in results.values())
            row = {"run": Path(run).name, "recipe": name, "gap": gap, "seconds": seconds,
                   **{f"top1_{fw}": r.top_k_accuracy(1) for fw, r in results.items()}}
            rows.append(row)
            print(f"| {row['run']} | {name} | " + " | ".join(f"{100 * row[f'top1_{fw}']:.2f}%" for fw in frameworks)
                  + f" | {gap:.1e} |", flush=True)
            if best is None or row[f"top1_{frameworks[0]}"] > best[0]:
                best = (row[f"top1_{frameworks[0]}"], results[frameworks[0]], f"{row['run']}, {name}")
    out = Path(__file__).with_name("digits_tta.json")
    out.write_text(json.dumps(rows, indent=1))
    assert best is not None
    plot_confusion(best[1], str(Path(__file__).with_name("digits_confusion.png")),
                   f"vgg11 (widths / 16, 224x224) on digits, {best[2]}: top-1 {100 * best[0]:.2f}%")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
