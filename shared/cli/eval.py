"""``rosetta eval``: accuracy of canonical weights on a folder of class folders, an IDX
directory or digits, with the papers' test-time recipes (``images/evaluate.py``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..core.errors import RosettaError
from ..images.evaluate import ON_ERROR
from ..images.preprocess import NAMES as PREPROCESSINGS
from ..images.testtime import CROPS
from .main import label_arg, label_help, run_as

#: per-class lines printed (the JSON has them all)
PRINTED_CLASSES = 20


def run_eval(args: argparse.Namespace) -> int:
    from ..core.canonical import load_canonical, read_metadata, spec_from_file
    from ..core.files import atomic_path
    from ..images.classes import class_names, read_labels, recorded_classes
    from ..images.evaluate import evaluate, plot_confusion
    from ..images.folders import open_source
    from ..images.preprocess import recorded, resolve
    from ..images.testtime import TTA

    spec = spec_from_file(args.weights, args.model)
    spec, tensors = load_canonical(args.weights, spec)
    elsewhere = run_as(args, args.framework)
    if elsewhere is not None:
        return elsewhere
    meta = read_metadata(args.weights)
    prep = resolve(args.preprocess, recorded(meta, source=args.weights), spec.input_shape, source=args.weights)
    tt = TTA(args.crops, flip=args.flip, rotate=args.rotate, scales=tuple(args.scales or ()),
                  crop_from=args.crop_from)
    names = class_names(spec.params["num_classes"], labels=read_labels(args.labels) if args.labels else None,
                        recorded=recorded_classes(meta, source=args.weights), source=f"--labels {args.labels}")
    if args.max_images is not None and args.max_images < 1:
        raise RosettaError(f"--max-images must be at least 1, got {args.max_images}")
    source = open_source(args.data, split=args.split)
    result = evaluate(source, args.framework, spec, tensors, prep, tt, model_classes=names, batch=args.batch,
                      on_error=args.on_error, limit=args.max_images)
    summary = {"model": spec.name, "weights": args.weights, "framework": args.framework, "data": args.data,
               "split": args.split, "preprocess": json.loads(prep.to_json()), "test_time": tt.describe(prep),
               **result.summary()}
    print(f"{spec.name} ({args.framework}) on {args.data}: top-1 {100 * summary['top1']:.2f}%, top-5 "
          f"{100 * summary['top5']:.2f}% over {summary['images']} images"
          + (f" ({len(result.skipped)} unreadable, skipped)" if result.skipped else "")
          + f"; {tt.describe(prep)}")
    per_class = summary["per_class"]
    for name, row in list(per_class.items())[:PRINTED_CLASSES]:
        print(f"  {name:<24} {100 * row['top1']:6.2f}%  ({row['images']} images)")
    if len(per_class) > PRINTED_CLASSES:
        print(f"  ... {len(per_class) - PRINTED_CLASSES} more classes (see --json)")
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(summary, indent=1))
        print(f"wrote {args.json}")
    if args.png:
        plot_confusion(result, args.png, f"{spec.name} ({args.framework}) on {Path(args.data).name}: top-1 "
                       f"{100 * summary['top1']:.2f}%; {tt.describe(prep)}")
        print(f"wrote {args.png}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("eval", help="accuracy on a folder of class folders, an IDX directory or digits, with the "
                       "papers' test-time recipes",
                       description="Evaluate canonical weights on DATA: top-1 / top-5, per-class accuracy and a "
                       "confusion matrix. Images are preprocessed as the weight file records (or --preprocess).")
    s.add_argument("--model", help="check that the weights are this model's")
    s.add_argument("--weights", required=True, metavar="FILE.safetensors")
    s.add_argument("--framework", required=True, type=label_arg, metavar="LABEL", help=label_help())
    s.add_argument("--data", required=True, metavar="DIR|digits",
                   help="a folder of class folders (DIR/<class>/<image>), an IDX directory (its t10k split) or "
                        "'digits' (the held-out 20%% rosetta train uses)")
    s.add_argument("--split", choices=["test", "train"], default="test", help="IDX / digits split (default test)")
    s.add_argument("--preprocess", metavar="NAME",
                   help=f"override the recorded preprocessing: {', '.join(PREPROCESSINGS)}")
    s.add_argument("--crops", choices=CROPS, default="center",
                   help="center (default); ten-crop (AlexNet: 4 corners + centre, each mirrored); dense (VGG: the "
                        "fully-convolutional net on the whole image at several scales)")
    s.add_argument("--scales", type=int, nargs="+", metavar="Q",
                   help="dense: the shorter side at each scale (default: S-32, S, S+32 for the resize size S)")
    s.add_argument("--crop-from", type=int, metavar="S", help="ten-crop: resize the shorter side to S first "
                   "(default: the preprocessing's resize, e.g. 256 for a 224 crop)")
    s.add_argument("--flip", action="store_true", help="also score each view's horizontal mirror")
    s.add_argument("--rotate", action="store_true", help="also score each view rotated by 90, 180 and 270 degrees")
    s.add_argument("--batch", type=int, default=32, metavar="B",
                   help="views per forward pass (default 32; larger dense views go fewer at a time)")
    s.add_argument("--max-images", type=int, metavar="N", help="only the first N images")
    s.add_argument("--on-error", choices=ON_ERROR, default="stop",
                   help="an unreadable image stops the run (default) or is reported and skipped")
    s.add_argument("--labels", metavar="FILE", help="class names, one per line or a JSON list")
    s.add_argument("--json", metavar="OUT.json", help="write every figure (and the skipped files) as JSON")
    s.add_argument("--png", metavar="CONFUSION.png", help="write the confusion matrix as a PNG")
    s.set_defaults(func=run_eval)
