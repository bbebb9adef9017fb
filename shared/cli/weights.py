"""``rosetta init``, ``rosetta predict`` and ``rosetta convert``: weight files in and out."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..core import ports
from ..core.errors import RosettaError
from ..formats.convert import FORMATS
from ..images.preprocess import NAMES as PREPROCESSINGS
from .main import label_arg, label_help, one_line, run_as, spec_from_args


def run_init(args: argparse.Namespace) -> int:
    from ..core.canonical import random_canonical, save_canonical
    from ..core.files import output_path
    from ..formats.convert import check_ending
    from ..images.preprocess import named

    check_ending(args.out, "canonical", "--out")
    output_path(args.out)
    spec = spec_from_args(args.model, args.set)
    elsewhere = run_as(args, args.framework)
    if elsewhere is not None:
        return elsewhere
    # the preprocessing the file records: --preprocess, else torchvision's for a 3-channel model
    name = args.preprocess or ("torchvision" if spec.input_shape[0] == 3 else None)
    prep = named(name, spec.input_shape) if name else None
    mod = ports.load(args.framework)
    model = mod.build_model(spec, seed=args.seed, initialize=False)  # the draw below sets every weight
    # non-trivial BatchNorm statistics (and weights) so a later parity check means something
    mod.import_weights(model, spec, random_canonical(spec, args.seed))
    save_canonical(args.out, spec, mod.export_weights(model, spec),
                   framework=ports.module(args.framework, "weights").FRAMEWORK, preprocess=prep and prep.to_json())
    print(f"wrote {args.out}: {spec.name} built in {args.framework} (seed {args.seed})")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from ..core.canonical import load_canonical, spec_from_file
    from ..core.files import atomic_path, output_path

    if args.output is not None:
        if not str(args.output).endswith(".npy"):
            raise RosettaError(f"--output {args.output}: the logits are written as .npy; give a name ending in .npy")
        output_path(args.output)
    elif args.top < 1:
        raise RosettaError(f"--top must be at least 1, got {args.top}")
    spec = spec_from_file(args.weights, args.model)
    spec, tensors = load_canonical(args.weights, spec, allow_nonfinite=args.allow_nonfinite)
    prep, names = None, None
    if args.image:
        from ..images.preprocess import load_batch

        prep = _preprocessing(args, spec)
        x = load_batch(args.image, prep)
    else:
        x = read_npy(args.input, allow_integer=args.allow_integer_input, allow_nonfinite=args.allow_nonfinite)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise RosettaError(f"--input must be a batch of images (N, C, H, W) or (N, H, W, C), got shape {x.shape}")
    if args.layout == "nhwc" and not args.image:
        x = x.transpose(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
    if x.shape[1:] != spec.input_shape:
        raise RosettaError(f"--input has shape {x.shape[1:]} ({args.layout}: as NCHW), model {spec.name} expects "
                           f"{spec.input_shape}")
    if args.output is None:
        names = _class_names(args, spec)  # a bad --labels file fails before the model is built
    elsewhere = run_as(args, args.framework)
    if elsewhere is not None:
        return elsewhere
    mod = ports.load(args.framework)
    model = mod.build_model(spec)
    mod.import_weights(model, spec, tensors)
    x = x.astype(np.float32)
    logits = mod.forward(model, x, train=False)["logits"]
    if args.tta:
        # the AlexNet paper's test-time averaging over horizontal reflections: flip W of NCHW
        flipped = np.ascontiguousarray(x[..., ::-1])
        logits = (logits + mod.forward(model, flipped, train=False)["logits"]) / 2
    bad = int(logits.size - np.count_nonzero(np.isfinite(logits)))
    if bad:
        print(f"warning: {bad} of {logits.size} logits are not finite (NaN or Inf)", file=sys.stderr)
    if args.output is None:
        return _print_top(args, logits, names, prep)
    with atomic_path(args.output) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, logits)
    print(f"wrote {args.output}: logits {logits.shape} from {args.framework}"
          + (" (averaged with the horizontally flipped input)" if args.tta else ""))
    return 0


def read_npy(path: str, *, allow_integer: bool = False, allow_nonfinite: bool = False) -> Any:
    """An input batch from an ``.npy`` file, checked before numpy reads it: the format (not an
    ``.npz``, a pickle or text), a float dtype (integers only with ``allow_integer``; never
    booleans, complex numbers or objects), the declared size (``max_data_bytes``) against the
    file's, and finite values (unless ``allow_nonfinite``)."""
    import math

    import numpy as np

    from ..core import limits
    from ..core.files import existing_file

    p = existing_file(path, "--input")
    with open(p, "rb") as f:
        magic = f.read(6)
        if magic != b"\x93NUMPY":
            what = ("an .npz archive (np.savez); save one array with np.save" if magic.startswith(b"PK") else
                    f"it starts with the bytes {magic.hex() or '(none: an empty file)'}")
            raise RosettaError(f"--input {p}: not an .npy file ({what})")
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
        except Exception as e:  # numpy's header parser raises ValueError, SyntaxError, tokenize errors...
            raise RosettaError(f"--input {p}: corrupted .npy header ({type(e).__name__}: {one_line(e)[:200]})") from None
        offset = f.tell()
    kinds = "fiu" if allow_integer else "f"
    if dtype.hasobject or dtype.kind not in kinds or dtype.names:
        hint = " (pass --allow-integer-input to cast integers)" if dtype.kind in "iu" else ""
        raise RosettaError(f"--input {p}: dtype {dtype} ({'Python objects, never unpickled' if dtype.hasobject else 'not a float'})"
                           f"; images are float arrays{hint}")
    count = math.prod(shape)
    limits.get().check("max_data_bytes", count * 4, f"the float32 size of --input {p} (shape {shape})")
    if p.stat().st_size - offset != count * dtype.itemsize:
        raise RosettaError(f"--input {p}: the header declares shape {shape} of {dtype} ({count * dtype.itemsize:,} "
                           f"bytes), the file holds {p.stat().st_size - offset:,}")
    x = np.load(p, allow_pickle=False)
    if count == 0:
        raise RosettaError(f"--input {p}: an empty array (shape {shape})")
    if x.dtype.kind == "f" and not allow_nonfinite and not np.isfinite(x).all():
        raise RosettaError(f"--input {p}: holds NaN or infinite values; pass --allow-nonfinite to use them")
    return x


def _preprocessing(args: argparse.Namespace, spec: Any) -> Any:
    """The preprocessing of ``--image``: ``--preprocess`` or the one the weight file records."""
    from ..core.canonical import read_metadata
    from ..images.preprocess import recorded, resolve

    return resolve(args.preprocess, recorded(read_metadata(args.weights), source=args.weights), spec.input_shape,
                   source=args.weights)


def _class_names(args: argparse.Namespace, spec: Any) -> list[str]:
    from ..core.canonical import read_metadata
    from ..images.classes import class_names, read_labels, recorded_classes

    return class_names(spec.params.get("num_classes", 0), labels=read_labels(args.labels) if args.labels else None,
                       recorded=recorded_classes(read_metadata(args.weights), source=args.weights),
                       source=f"--labels {args.labels}")


def _print_top(args: argparse.Namespace, logits: Any, names: list[str], prep: Any) -> int:
    """Print each input's top-K classes with their softmax probabilities (text or JSON)."""
    import json

    from ..images.classes import softmax, top_k

    if logits.ndim != 2 or logits.shape[1] != len(names):
        raise RosettaError(f"the model's output has shape {logits.shape}; top-K needs (N, classes)")
    items = args.image or [f"{args.input}[{i}]" for i in range(len(logits))]
    tops = top_k(softmax(logits), names, args.top)
    if args.json:
        print(json.dumps({"model": args.model, "weights": args.weights, "framework": args.framework,
                          "preprocess": json.loads(prep.to_json()) if prep else None, "tta": args.tta,
                          "predictions": [{"input": item, "top": top} for item, top in zip(items, tops)]}, indent=1))
        return 0
    if prep is not None:
        print(f"preprocessing {prep.describe()}")
    for item, top in zip(items, tops):
        print(f"{item}:")
        for rank, t in enumerate(top, 1):
            print(f"  {rank}. {100 * t['probability']:6.2f}%  {t['label']} ({t['index']})")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from ..core.spec import parse_overrides
    from ..formats.convert import convert

    src_format, dst_format = getattr(args, "from"), args.to
    backends = {fmt for fmt in (src_format, dst_format) if fmt in KERAS_LABELS}
    if len(backends) > 1:
        raise RosettaError(f"--from {src_format} and --to {dst_format}: one process runs Keras on one backend; "
                           "convert through a canonical .safetensors file in two steps")
    if backends:
        elsewhere = run_as(args, backends.pop())
        if elsewhere is not None:
            return elsewhere
    src_format = "keras" if src_format in KERAS_LABELS else src_format
    dst_format = "keras" if dst_format in KERAS_LABELS else dst_format
    spec, fmt_in, fmt_out = convert(args.src, args.dst, model=args.model, src_format=src_format,
                                    dst_format=dst_format, sets=parse_overrides(args.set),
                                    allow_nonfinite=args.allow_nonfinite)
    print(f"wrote {args.dst}: {spec.name} ({fmt_in} -> {fmt_out})")
    return 0


#: ``--from`` / ``--to`` may name the Keras port's own format under a given backend
KERAS_LABELS = tuple(label for label in ports.LABELS if label.startswith("keras/"))


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("init", help="build a model and write its canonical weights")
    s.add_argument("model")
    s.add_argument("--framework", required=True, type=label_arg, metavar="LABEL", help=label_help())
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--set", action="append", default=[], metavar="key=value")
    s.add_argument("--out", required=True, metavar="FILE.safetensors")
    s.add_argument("--preprocess", metavar="NAME",
                   help="the input preprocessing the file records: torchvision (default for 3-channel models) or caffe")
    s.set_defaults(func=run_init)

    s = sub.add_parser("predict", help="eval-mode logits or top-K classes of canonical weights in one framework, "
                       "on a .npy batch or image files")
    s.add_argument("--model", required=True, help="a bundled model, or path/to/spec.json:model (checked against the "
                   "file's spec_hash)")
    s.add_argument("--weights", required=True, metavar="FILE.safetensors")
    s.add_argument("--framework", required=True, type=label_arg, metavar="LABEL", help=label_help())
    given = s.add_mutually_exclusive_group(required=True)
    given.add_argument("--input", metavar="X.npy", help="a preprocessed batch (N, C, H, W) or, with --layout nhwc, "
                       "(N, H, W, C)")
    given.add_argument("--image", nargs="+", metavar="FILE",
                       help="image files (JPEG, PNG, WebP, ...; any Pillow mode), preprocessed as the weight file "
                            "records (or as --preprocess says)")
    s.add_argument("--layout", choices=["nchw", "nhwc"], default="nchw")
    s.add_argument("--preprocess", metavar="NAME",
                   help=f"override the recorded preprocessing of --image: {', '.join(PREPROCESSINGS)}")
    s.add_argument("--tta", action="store_true",
                   help="average the logits of the input and its horizontal flip (the AlexNet paper's test time)")
    s.add_argument("--output", metavar="Y.npy", help="write the logits here (default: print the top-K classes)")
    s.add_argument("--top", type=int, default=5, metavar="K", help="classes printed per image (default 5)")
    s.add_argument("--labels", metavar="FILE", help="class names, one per line or a JSON list (default: the names "
                   "the file records, ImageNet's for 1000 classes, else the indices)")
    s.add_argument("--json", action="store_true", help="print the top-K classes as JSON")
    s.add_argument("--allow-nonfinite", action="store_true", help="accept NaN or infinite weights and inputs")
    s.add_argument("--allow-integer-input", action="store_true", help="accept an integer --input (cast to float32)")
    s.set_defaults(func=run_predict)

    table = "\n".join(f"  {f:<19} {s:<13} {d}" for f, (s, d) in FORMATS.items())
    s = sub.add_parser("convert", help="convert weights between torchvision, keras.applications, canonical, "
                       "each framework's own format and ONNX",
                       description="Convert a checkpoint between formats (inferred from file names):\n" + table,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("src", metavar="SRC")
    s.add_argument("dst", metavar="DST")
    s.add_argument("--model", metavar="M", help="the model (needed for the ports' own formats)")
    s.add_argument("--from", choices=[*FORMATS, *KERAS_LABELS], metavar="FORMAT",
                   help="format of SRC (keras/tensorflow, keras/jax, keras/torch: the Keras port's own format read "
                        "under that backend)")
    s.add_argument("--to", choices=[*FORMATS, *KERAS_LABELS], metavar="FORMAT",
                   help="format of DST (keras/BACKEND: the Keras port's own format written under that backend)")
    s.add_argument("--set", action="append", default=[], metavar="key=value",
                   help="spec override the file cannot hold, e.g. transform_input=true")
    s.add_argument("--allow-nonfinite", action="store_true", help="convert weights that hold NaN or infinite values")
    s.set_defaults(func=run_convert)
