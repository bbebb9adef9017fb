"""Inside a subprocess with ``KERAS_BACKEND`` set: the native Keras files of every family
written, or the other backends' files read (``test_keras_backends.py``). This module imports
no framework but Keras and its backend, so that the write step can also check that the port
runs without TensorFlow."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rosetta_cnn.verification.parity import parity_spec

from ..conftest import SMALL

#: one model per family, small (every op kept: LRN and groups, BatchNorm, aux heads)
FAMILIES = ["alexnet_paper", "vgg11_bn", "googlenet"]
FORMATS = [".keras", ".weights.h5"]


def _family_spec(model: str):
    return parity_spec(model, overrides=SMALL[model])


def files_child(action: str, root: str, backends: list[str]) -> None:
    """Inside a subprocess with ``KERAS_BACKEND`` set. ``write``: for every family, the model with
    ``random_canonical(spec, 7)`` saved as ``root/<backend>/<model><ending>`` and its eval logits
    as ``<model>.npy``. ``read``: every other backend's files loaded into one model per family
    (``load_native``) and with ``keras.saving.load_model`` (``.keras``); the results go to
    ``root/<backend>/read.json``."""
    import keras

    from rosetta_cnn import keras_impl
    from rosetta_cnn.core.canonical import random_canonical
    from rosetta_cnn.keras_impl import weights
    from rosetta_cnn.verification.parity import diff, make_input

    me = keras.backend.backend()
    here = Path(root) / me
    here.mkdir(parents=True, exist_ok=True)
    results = []
    for model in FAMILIES:
        spec = _family_spec(model)
        x = make_input(spec, 2, 0)
        tensors = random_canonical(spec, 7)
        net = keras_impl.build_model(spec, seed=0)
        keras_impl.import_weights(net, spec, tensors)
        own = keras_impl.forward(net, x)["logits"]
        if action == "write":
            np.save(here / f"{model}.npy", own)
            for ending in FORMATS:
                weights.save_native(net, spec, here / f"{model}{ending}")
            continue
        reader = keras_impl.build_model(spec, seed=1)  # other weights until a file is loaded
        for writer in backends:
            if writer == me:
                continue
            written = np.load(Path(root) / writer / f"{model}.npy")
            for ending in FORMATS:
                path = Path(root) / writer / f"{model}{ending}"
                weights.load_native(reader, spec, path)
                loaded = keras_impl.export_weights(reader, spec)
                got = keras_impl.forward(reader, x)["logits"]
                results.append({"model": model, "writer": writer, "reader": me, "file": ending, "how": "load_native",
                                "weights_bitwise": all(np.array_equal(loaded[k], tensors[k]) for k in tensors),
                                "max_rel_vs_writer": diff(written, got).max_rel,
                                "bitwise_vs_reader": bool(np.array_equal(own, got))})
                if ending == ".keras":  # a user's keras.saving.load_model: the whole model from the file
                    whole = keras.saving.load_model(path)
                    whole.spec = spec
                    got = keras_impl.forward(whole, x)["logits"]
                    loaded = keras_impl.export_weights(whole, spec)
                    results.append({"model": model, "writer": writer, "reader": me, "file": ending,
                                    "how": "load_model",
                                    "weights_bitwise": all(np.array_equal(loaded[k], tensors[k]) for k in tensors),
                                    "max_rel_vs_writer": diff(written, got).max_rel,
                                    "bitwise_vs_reader": bool(np.array_equal(own, got))})
    if action == "read":
        (here / "read.json").write_text(json.dumps(results, indent=1))
