"""``rosetta train``: train a model on digits or MNIST-style IDX files (``training/loop.py``)."""
from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from ..images.augment import PCA_STD
from ..training.distributed import LAUNCHERS
from ..training.trainer import OPTIMIZERS
from .main import label_arg, label_help, run_as


def run_train(args: argparse.Namespace) -> int:
    from ..core.spec import parse_overrides
    from ..training import distributed
    from ..training.loop import CURVES, LOG, WEIGHTS, train

    plan = distributed.plan(args.framework, args.devices, args.batch, launcher=args.launcher, sync_bn=args.sync_bn)
    elsewhere = run_as(args, args.framework)
    if elsewhere is not None:
        return elsewhere
    if plan is not None and plan.starts_workers:  # torch on one machine: N processes, as torchrun would
        return distributed.launch_local(args.argv, plan)
    try:
        spec, history = train(args.model, args.framework, args.data, args.out, epochs=args.epochs, batch=args.batch,
                              optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                              augment=args.augment, seed=args.seed, overrides=parse_overrides(args.set),
                              preprocess=args.preprocess, pca_std=args.pca_noise, scale_jitter=args.scale_jitter,
                              parallel=plan)
    except distributed.FreshProcess as e:  # JAX or TensorFlow already started here with fewer devices
        if os.environ.get(distributed.FRESH_ENV):
            raise
        env = {**os.environ, **e.env, distributed.FRESH_ENV: "1"}
        return subprocess.call(distributed.rosetta_command(args.argv), env=env)
    if plan is not None and not plan.primary:
        return 0
    last = history.epochs[-1]
    out = Path(args.out)
    print(f"{spec.name} {args.framework}: test accuracy {100 * last['test_accuracy']:.2f}% after "
          f"{last['epoch']} epochs; wrote {out / WEIGHTS}, {out / LOG}, {out / CURVES}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("train", help="train a model on digits, MNIST-style IDX files or a folder of class folders",
                       description="Train MODEL on scikit-learn's digits, a directory of MNIST / Fashion-MNIST "
                       "IDX files or a folder of class folders (DIR/<class>/<image>, or DIR/train and DIR/val). "
                       "Writes OUT/checkpoint.safetensors (resumed automatically), "
                       "OUT/model.safetensors, OUT/log.json and OUT/curves.png after every epoch.")
    s.add_argument("model")
    s.add_argument("--framework", required=True, type=label_arg, metavar="LABEL", help=label_help())
    s.add_argument("--data", required=True, metavar="digits|PATH",
                   help="'digits', a directory with train-/t10k- images and labels IDX files (.gz or not), or a "
                        "folder of class folders (DIR/train and DIR/val if present, else 20%% of each class held out)")
    s.add_argument("--epochs", type=int, default=10, metavar="N")
    s.add_argument("--batch", type=int, default=64, metavar="B")
    s.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.01 for sgd, 1e-3 for adam)")
    s.add_argument("--optimizer", choices=list(OPTIMIZERS), default="sgd",
                   help="sgd (momentum 0.9), adam or adamw")
    s.add_argument("--weight-decay", type=float, default=5e-4, help="coupled L2 (sgd, adam) or decoupled (adamw)")
    s.add_argument("--augment", action="store_true", help="the AlexNet paper's random crops and horizontal flips")
    s.add_argument("--preprocess", metavar="NAME",
                   help="image folders: the input pipeline (torchvision, the default, or caffe); recorded in the "
                        "weight file")
    s.add_argument("--pca-noise", type=float, nargs="?", const=PCA_STD, default=0.0, metavar="SIGMA",
                   help=f"AlexNet's PCA colour augmentation, alpha ~ N(0, SIGMA^2) (default SIGMA {PCA_STD})")
    s.add_argument("--scale-jitter", type=int, nargs=2, metavar=("S_MIN", "S_MAX"),
                   help="VGG's scale jittering: the shorter side resized to S in [S_MIN, S_MAX], then a random crop "
                        "and flip (the paper: 256 512 for 224)")
    s.add_argument("--seed", type=int, default=0, help="initialisation, data order and augmentation seed")
    s.add_argument("--set", action="append", default=[], metavar="key=value",
                   help="override a spec parameter (default: num_classes of the data; digits and IDX: "
                        "in_channels=1 and the smallest input_size; image folders: 3 channels, the spec's input_size)")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--devices", type=int, default=None, metavar="N",
                   help="data-parallel training on N devices with the framework's own engine (torch: DDP, N "
                        "processes; flax: jax.sharding; keras/jax: keras.distribution.DataParallel; keras/tensorflow: "
                        "tf.distribute.MirroredStrategy); GPUs if present, else N CPU devices. --batch is the global "
                        "batch, split evenly (default: 1, or the launcher's count; docs/data-parallel.md)")
    s.add_argument("--sync-bn", action="store_true",
                   help="global BatchNorm statistics across devices: torch.nn.SyncBatchNorm (GPUs only), Keras' "
                        "synchronized BatchNormalization on TensorFlow; JAX engines always compute global statistics")
    s.add_argument("--launcher", choices=list(LAUNCHERS), default="auto",
                   help="how the processes of a run meet: torchrun (RANK, WORLD_SIZE, MASTER_ADDR/PORT), jax "
                        "(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, or KERAS_DISTRIBUTION_*), "
                        "tf-config (TF_CONFIG), local (this machine only); auto: the one the environment names")
    s.set_defaults(func=run_train)
