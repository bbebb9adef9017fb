"""``rosetta train``: train a model on digits or MNIST-style IDX files (``training/loop.py``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..training.trainer import OPTIMIZERS
from .main import label_arg, label_help, run_as


def run_train(args: argparse.Namespace) -> int:
    from ..core.spec import parse_overrides
    from ..training.loop import CURVES, LOG, WEIGHTS, train

    elsewhere = run_as(args, args.framework)
    if elsewhere is not None:
        return elsewhere
    spec, history = train(args.model, args.framework, args.data, args.out, epochs=args.epochs, batch=args.batch,
                          optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, augment=args.augment,
                          seed=args.seed, overrides=parse_overrides(args.set))
    last = history.epochs[-1]
    out = Path(args.out)
    print(f"{spec.name} {args.framework}: test accuracy {100 * last['test_accuracy']:.2f}% after "
          f"{last['epoch']} epochs; wrote {out / WEIGHTS}, {out / LOG}, {out / CURVES}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("train", help="train a model on digits or MNIST-style IDX files",
                       description="Train MODEL on scikit-learn's digits or a directory of MNIST / Fashion-MNIST "
                       "IDX files. Writes OUT/checkpoint.safetensors (resumed automatically), "
                       "OUT/model.safetensors, OUT/log.json and OUT/curves.png after every epoch.")
    s.add_argument("model")
    s.add_argument("--framework", required=True, type=label_arg, metavar="LABEL", help=label_help())
    s.add_argument("--data", required=True, metavar="digits|PATH",
                   help="'digits' or a directory with train-/t10k- images and labels IDX files (.gz or not)")
    s.add_argument("--epochs", type=int, default=10, metavar="N")
    s.add_argument("--batch", type=int, default=64, metavar="B")
    s.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.01 for sgd, 1e-3 for adam)")
    s.add_argument("--optimizer", choices=list(OPTIMIZERS), default="sgd",
                   help="sgd (momentum 0.9), adam or adamw")
    s.add_argument("--weight-decay", type=float, default=5e-4, help="coupled L2 (sgd, adam) or decoupled (adamw)")
    s.add_argument("--augment", action="store_true", help="the AlexNet paper's random crops and horizontal flips")
    s.add_argument("--seed", type=int, default=0, help="initialisation, data order and augmentation seed")
    s.add_argument("--set", action="append", default=[], metavar="key=value",
                   help="override a spec parameter (default: in_channels=1, the smallest input_size, "
                        "num_classes of the data)")
    s.add_argument("--out", required=True, metavar="DIR")
    s.set_defaults(func=run_train)
