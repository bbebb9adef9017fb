"""Rosetta CNN's framework-free core: specs, spec loader, analysis, canonical weights, CLI.

Importing this package imports no deep-learning framework; the framework packages
(``torch_impl``, ``keras_impl``, ``flax_impl``) are loaded on demand by ``shared.frameworks``.
"""
from .analysis import Summary, analyze, format_table
from .errors import RosettaError, SpecError, WeightError
from .spec import Layer, ModelSpec, describe, list_models, load_spec, load_spec_dict, load_spec_file, parse_overrides

__all__ = [
    "Layer", "ModelSpec", "RosettaError", "SpecError", "Summary", "WeightError", "analyze", "describe",
    "format_table", "list_models", "load_spec", "load_spec_dict", "load_spec_file", "parse_overrides",
]
