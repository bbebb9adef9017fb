"""The ``rosetta`` command line.

    rosetta list
    rosetta summary MODEL [--input CxHxW] [--set key=value ...] [--json]
    rosetta parity [--models ...] [--frameworks ...] [--input HxW] [--device cpu|gpu|all]
                   [--per-layer] [--targets onnx] [--json FILE] [--png FILE] [--out DIR]
    rosetta init MODEL --framework torch|keras|flax [--seed S] [--set key=value ...] --out FILE.safetensors
    rosetta predict --model M --weights FILE.safetensors --framework torch|keras|flax
                    --input X.npy [--layout nchw|nhwc] [--tta] --output Y.npy

Commands and flags are a public contract: add, never rename.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .errors import RosettaError, SpecError


#: modules of ``shared`` that define further commands (imported without any framework)
COMMAND_MODULES: tuple[str, ...] = ("convert", "bench", "docs", "train")


def _parse_input(text: str, parts: int) -> tuple[int, ...]:
    fields = re.split(r"[x,]", text.lower())
    if len(fields) == 1 and parts == 2:
        fields = fields * 2
    try:
        dims = tuple(int(f) for f in fields)
    except ValueError:
        dims = ()
    if len(dims) != parts or any(d < 1 for d in dims):
        shape = "CxHxW, e.g. 3x224x224" if parts == 3 else "HxW, e.g. 224x224"
        raise SpecError(f"--input expects {shape}, got {text!r}")
    return dims


def _spec_from_args(model: str, sets: Sequence[str], input_chw: str | None = None):
    from .spec import load_spec, parse_overrides

    overrides = parse_overrides(sets or [])
    if input_chw:
        c, h, w = _parse_input(input_chw, 3)
        overrides.setdefault("in_channels", c)
        overrides.setdefault("input_size", [h, w])
    return load_spec(model, overrides)


def cmd_list(args: argparse.Namespace) -> int:
    from .analysis import analyze, human
    from .spec import describe, list_models, load_spec

    print(f"{'model':<16} {'family':<10} {'params':>13} {'MACs@224':>10}  description")
    for name in list_models():
        spec = load_spec(name)
        s = analyze(spec)
        print(f"{name:<16} {spec.family:<10} {s.total_params:>13,} {human(s.total_macs):>10}  "
              f"{describe(name)}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from .analysis import analyze, format_table

    spec = _spec_from_args(args.model, args.set, args.input)
    summary = analyze(spec)
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(f"{spec.name} ({spec.family}), input {'x'.join(map(str, spec.input_shape))}")
        print(format_table(summary))
    return 0


def _parity_markdown(records: Sequence[Any]) -> str:
    """The parity records as a Markdown table (``parity.md`` of ``rosetta parity --out``)."""
    lines = ["| model | source -> target | mode | device | max_abs | max_rel | tolerance | result |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        res = "pass" if r.passed else f"FAIL (first divergence: {r.first_divergence})"
        lines.append(f"| {r.model} | {r.source} -> {r.target} | {r.mode} | {r.device} | {r.max_abs:.2e} | "
                     f"{r.max_rel:.2e} | {r.tolerance:.0e} | {res} |")
    n_fail = sum(not r.passed for r in records)
    return "\n".join(lines) + f"\n\n{len(records) - n_fail} passed, {n_fail} failed\n"


def cmd_parity(args: argparse.Namespace) -> int:
    from . import frameworks as reg
    from .parity import format_layers, format_matrix, gpu_frameworks, model_parity, plot_matrix
    from .spec import list_models
    from .weights import atomic_path

    models = args.models or list_models()
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise SpecError(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(list_models())}")
    fws = args.frameworks or reg.available()
    for f in fws:
        reg.load(f)
    if len(fws) < 2:
        print(f"parity needs at least two frameworks; available here: {', '.join(fws) or 'none'}", file=sys.stderr)
        return 2
    size = _parse_input(args.input, 2) if args.input else None
    devices = {"cpu": ["cpu"], "gpu": ["gpu"], "all": ["cpu", "gpu"]}[args.device]
    if "gpu" in devices:
        gpu_fws = gpu_frameworks(fws)
        if len(gpu_fws) < len(fws):
            missing = sorted(set(fws) - set(gpu_fws))
            msg = f"no GPU visible to: {', '.join(missing)}"
            if args.device == "gpu":
                print(f"rosetta parity: {msg}", file=sys.stderr)
                return 2
            print(f"{msg}; running on the CPU only", file=sys.stderr)
            devices = ["cpu"]
    t0 = time.perf_counter()
    records = []
    for i, model in enumerate(models, 1):
        print(f"[{i}/{len(models)}] {model}", file=sys.stderr, flush=True)
        records += model_parity(model, fws, input_size=size, devices=devices, per_layer=args.per_layer,
                                targets=args.targets,
                                progress=lambda m: print("  " + m, file=sys.stderr, flush=True))
    print(format_matrix(records))
    for r in records:
        if r.layers is not None and (args.per_layer or not r.passed):
            print()
            print(format_layers(r))
    print(f"\n{len(models)} model(s), {len(fws)} frameworks, {time.perf_counter() - t0:.0f} s")
    as_json = json.dumps([r.to_json() for r in records], indent=2)
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(as_json)
    if args.png:
        plot_matrix(records, args.png)
    if args.out:
        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RosettaError(f"--out {out}: cannot create the directory: {e}") from None
        with atomic_path(out / "parity.json") as tmp:
            tmp.write_text(as_json)
        with atomic_path(out / "parity.md") as tmp:
            tmp.write_text(_parity_markdown(records))
        plot_matrix(records, str(out / "parity.png"))
        print(f"wrote {out / 'parity.json'}, parity.md and parity.png (rosetta docs --parity {out})")
    return 0 if all(r.passed for r in records) else 1


def cmd_init(args: argparse.Namespace) -> int:
    from . import frameworks as reg
    from .weights import random_canonical

    spec = _spec_from_args(args.model, args.set)
    mod = reg.load(args.framework)
    model = mod.build_model(spec, seed=args.seed)
    # non-trivial BatchNorm statistics (and weights) so a later parity check means something
    mod.import_weights(model, spec, random_canonical(spec, args.seed))
    mod.save_weights(model, spec, args.out)
    print(f"wrote {args.out}: {spec.name} built in {args.framework} (seed {args.seed})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from . import frameworks as reg
    from .weights import atomic_path, load_canonical, spec_from_file

    spec = spec_from_file(args.weights)
    if spec.name != args.model:
        raise RosettaError(f"{args.weights} holds weights of {spec.name!r}, not {args.model!r}")
    spec, tensors = load_canonical(args.weights, spec)
    try:
        x = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise RosettaError(f"cannot read --input {args.input}: {e}") from None
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise RosettaError(f"--input must be a batch of images (N, C, H, W) or (N, H, W, C), got shape {x.shape}")
    if args.layout == "nhwc":
        x = x.transpose(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
    if x.shape[1:] != spec.input_shape:
        raise RosettaError(f"--input has shape {x.shape[1:]} ({args.layout}: as NCHW), model {spec.name} expects "
                           f"{spec.input_shape}")
    mod = reg.load(args.framework)
    model = mod.build_model(spec)
    mod.import_weights(model, spec, tensors)
    x = x.astype(np.float32)
    logits = mod.forward(model, x, train=False)["logits"]
    if args.tta:
        # the AlexNet paper's test-time averaging over horizontal reflections: flip W of NCHW
        flipped = np.ascontiguousarray(x[..., ::-1])
        logits = (logits + mod.forward(model, flipped, train=False)["logits"]) / 2
    with atomic_path(args.output) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, logits)
    print(f"wrote {args.output}: logits {logits.shape} from {args.framework}"
          + (" (averaged with the horizontally flipped input)" if args.tta else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import frameworks as reg

    p = argparse.ArgumentParser(prog="rosetta", description="AlexNet, VGG and GoogLeNet in PyTorch, Keras and "
                                "Flax from one spec, with cross-framework parity checks.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="every model with parameters and MACs at 224x224")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("summary", help="per-layer shape trace, parameters, MACs, receptive field")
    s.add_argument("model")
    s.add_argument("--input", metavar="CxHxW", help="input shape, e.g. 1x32x32 (sets in_channels and input_size)")
    s.add_argument("--set", action="append", default=[], metavar="key=value", help="override a spec parameter")
    s.add_argument("--json", action="store_true", help="print a machine-readable object")
    s.set_defaults(func=cmd_summary)

    s = sub.add_parser("parity", help="cross-framework parity matrix")
    s.add_argument("--models", nargs="+", metavar="MODEL")
    s.add_argument("--frameworks", nargs="+", choices=list(reg.FRAMEWORKS))
    s.add_argument("--input", metavar="HxW", help="input size (default: each spec's, 224x224)")
    s.add_argument("--device", choices=["cpu", "gpu", "all"], default="cpu")
    s.add_argument("--per-layer", action="store_true", help="print every layer's difference for every pair")
    s.add_argument("--targets", nargs="+", default=[], choices=list(reg.TARGETS), metavar="TARGET",
                   help=f"also run each framework's export in these runtimes, eval mode, CPU "
                        f"({', '.join(reg.TARGETS)}: exported by the torch port, so torch must be installed)")
    s.add_argument("--json", metavar="FILE", help="write the records as JSON")
    s.add_argument("--png", metavar="FILE", help="write a heat map")
    s.add_argument("--out", metavar="DIR", help="write parity.json, parity.md and parity.png into DIR")
    s.set_defaults(func=cmd_parity)

    s = sub.add_parser("init", help="build a model and write its canonical weights")
    s.add_argument("model")
    s.add_argument("--framework", required=True, choices=list(reg.FRAMEWORKS))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--set", action="append", default=[], metavar="key=value")
    s.add_argument("--out", required=True, metavar="FILE.safetensors")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("predict", help="eval-mode logits of canonical weights in one framework")
    s.add_argument("--model", required=True)
    s.add_argument("--weights", required=True, metavar="FILE.safetensors")
    s.add_argument("--framework", required=True, choices=list(reg.FRAMEWORKS))
    s.add_argument("--input", required=True, metavar="X.npy")
    s.add_argument("--layout", choices=["nchw", "nhwc"], default="nchw")
    s.add_argument("--tta", action="store_true",
                   help="average the logits of the input and its horizontal flip (the AlexNet paper's test time)")
    s.add_argument("--output", required=True, metavar="Y.npy")
    s.set_defaults(func=cmd_predict)

    # larger commands live in their own modules; each adds its sub-parser with ``register(sub)``
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # keep TensorFlow's C++ start-up banners (CPU features, XLA service) out of the tables
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RosettaError, ImportError) as e:
        print(f"rosetta {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
