"""Rosetta CNN: AlexNet, the VGG family and GoogLeNet in PyTorch, Keras 3 and Flax NNX, built
from one JSON layer spec, with weights that port between the frameworks and parity checks that
prove the ports compute the same numbers.

    import rosetta_cnn as rc
    net = rc.build_model("vgg16", "torch", weights="vgg16-397923af.pth")
    logits = rc.forward(net, x_nchw)["logits"]

One import namespace, by role: ``core`` (specs, ops, layout, canonical weights, the port
contract), ``formats`` (torchvision, keras.applications, ONNX Runtime, conversion, VGG's
fully-convolutional head), ``verification`` (forward and training parity, tolerances),
``training`` (trainer contract, loop, resume, data), ``tools`` (benchmark, docs site, plots),
``cli``, and the three ports ``torch_impl``, ``keras_impl``, ``flax_impl``. Importing this
package imports no deep-learning framework; a port is imported when it is first used.
"""
from .api import build_model, forward, framework_of
from .core.analysis import Summary, analyze, format_table
from .core.errors import RosettaError, SpecError, WeightError
from .core.spec import (
    Layer,
    ModelSpec,
    describe,
    list_models,
    load_spec,
    load_spec_dict,
    load_spec_file,
    parse_overrides,
)

__all__ = [
    "Layer", "ModelSpec", "RosettaError", "SpecError", "Summary", "WeightError", "analyze", "build_model", "describe",
    "format_table", "forward", "framework_of", "list_models", "load_spec", "load_spec_dict", "load_spec_file",
    "parse_overrides",
]
