"""``rosetta list`` and ``rosetta summary``: the bundled models and one model's shape trace."""
from __future__ import annotations

import argparse
import json

from .main import spec_from_args


def run_list(args: argparse.Namespace) -> int:
    from ..core.analysis import analyze, human
    from ..core.spec import describe, list_models, load_spec

    print(f"{'model':<16} {'family':<10} {'params':>13} {'MACs@224':>10}  description")
    for name in list_models():
        spec = load_spec(name)
        s = analyze(spec)
        print(f"{name:<16} {spec.family:<10} {s.total_params:>13,} {human(s.total_macs):>10}  {describe(name)}")
    return 0


def run_summary(args: argparse.Namespace) -> int:
    from ..core.analysis import analyze, format_table

    spec = spec_from_args(args.model, args.set, args.input)
    summary = analyze(spec)
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(f"{spec.name} ({spec.family}), input {'x'.join(map(str, spec.input_shape))}")
        print(format_table(summary))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("list", help="every model with parameters and MACs at 224x224")
    s.set_defaults(func=run_list)

    s = sub.add_parser("summary", help="per-layer shape trace, parameters, MACs, receptive field")
    s.add_argument("model")
    s.add_argument("--input", metavar="CxHxW", help="input shape, e.g. 1x32x32 (sets in_channels and input_size)")
    s.add_argument("--set", action="append", default=[], metavar="key=value", help="override a spec parameter")
    s.add_argument("--json", action="store_true", help="print a machine-readable object")
    s.set_defaults(func=run_summary)
