"""``rosetta bench``: throughput, compile time and memory per framework (``tools/bench``)."""
from __future__ import annotations

import argparse
import os

from ..core import ports
from ..core.errors import RosettaError, SpecError
from ..tools.bench.runner import DEFAULT_MODELS
from .main import label_arg, label_help, parse_input


def run_bench_command(args: argparse.Namespace) -> int:
    from ..core.spec import list_models, load_spec, parse_overrides
    from ..tools.bench.runner import run_bench

    unknown = [m for m in args.models if m not in list_models()]
    if unknown:
        raise SpecError(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(list_models())}")
    if args.repeats < 1 or args.warmup < 0 or any(b < 1 for b in args.batch):
        raise RosettaError("--repeats and --batch must be at least 1, --warmup at least 0")
    usable = len(os.sched_getaffinity(0))
    if not 1 <= args.threads <= usable:
        raise RosettaError(f"--threads must be between 1 and {usable} (the CPUs this process may use)")
    fws = list(dict.fromkeys(args.frameworks or ports.installed_implementations()))
    for label in fws:
        ports.require(label)  # names the extra to install
    overrides = parse_overrides(args.set)
    if args.input:
        overrides["input_size"] = list(parse_input(args.input, 2))
    for m in args.models:
        load_spec(m, overrides)  # bad overrides fail here, before any worker starts
    if args.devices:
        return run_scaling_command(args, fws, overrides)
    report = run_bench([{"name": m, "overrides": overrides} for m in args.models], fws, args.out,
                       batches=args.batch, device=args.device, repeats=args.repeats, warmup=args.warmup,
                       threads=args.threads, configs=args.configs, modes=args.modes)
    return 1 if report["failures"] or report["errors"] else 0


def run_scaling_command(args: argparse.Namespace, fws: list[str], overrides: dict) -> int:
    """``--devices``: data-parallel training throughput per engine and device count (``tools/bench/scaling.py``)."""
    from ..tools.bench import scaling
    from ..training import distributed

    if len(args.models) != 1 or len(args.batch) != 1:
        raise RosettaError("--devices measures one model at one global batch: give one --models and one --batch")
    if not args.frameworks:  # every installed implementation that has a data-parallel engine
        fws = [fw for fw in fws if fw in distributed.ENGINES]
    scaling.check(fws, sorted({1, *args.devices}), args.batch[0])  # clear errors before any worker starts
    report = scaling.run_scaling({"name": args.models[0], "overrides": overrides}, fws, args.devices, args.out,
                                 batch=args.batch[0], repeats=args.repeats, warmup=args.warmup,
                                 threads=args.threads, device=args.device)
    return 1 if report["failures"] else 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("bench", help="benchmark inference, training, compile time and memory per framework "
                                     "and recommend one")
    s.add_argument("--models", nargs="+", metavar="MODEL", default=list(DEFAULT_MODELS),
                   help=f"models to measure (default: {' '.join(DEFAULT_MODELS)})")
    s.add_argument("--frameworks", nargs="+", type=label_arg, metavar="LABEL",
                   help=label_help(many=True) + f"; default: every installed one ({', '.join(ports.IMPLEMENTATIONS)})")
    s.add_argument("--batch", nargs="+", type=int, default=[8], metavar="N", help="batch sizes (default: 8)")
    s.add_argument("--input", metavar="HxW", help="input size (default: each spec's, 224x224)")
    s.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    s.add_argument("--repeats", type=int, default=5, metavar="N", help="timed steps per measurement (default: 5)")
    s.add_argument("--out", default="bench", metavar="DIR", help="output folder (default: ./bench)")
    s.add_argument("--set", action="append", default=[], metavar="key=value",
                   help="override a spec parameter of every model, e.g. width_divisor=8")
    s.add_argument("--configs", nargs="+", metavar="NAME",
                   help="measure only these configurations, as labelled in the table (e.g. channels_last xla "
                        "jax_jit+onednn)")
    s.add_argument("--modes", nargs="+", choices=["infer", "train"], default=["infer", "train"])
    s.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), metavar="N",
                   help="CPU threads per framework (each worker is pinned to N CPUs; default: all usable)")
    s.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed steps after the first (default: 1)")
    s.add_argument("--devices", nargs="+", type=int, metavar="N",
                   help="data-parallel scaling instead: training throughput per engine (torch, flax, keras/jax, "
                        "keras/tensorflow) on each device count, e.g. --devices 1 2, and the scaling efficiency "
                        "(one model, one global --batch; docs/data-parallel.md)")
    s.set_defaults(func=run_bench_command)
