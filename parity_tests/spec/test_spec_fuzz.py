"""Property test: no mutation of a valid spec makes the loader raise anything but SpecError."""
from __future__ import annotations

import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rosetta_cnn import SpecError, analyze, load_spec_dict
from rosetta_cnn.core.spec import SPEC_DIR

DOCS = {p.stem: json.loads(p.read_text()) for p in sorted(SPEC_DIR.glob("*.json"))}


def _paths(node, prefix=()):
    """Every location in a JSON document, as a tuple of keys/indices."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


PATHS = {name: _paths(doc) for name, doc in DOCS.items()}

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.lists(st.integers(-3, 600), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(-2, 5), max_size=2),
    st.sampled_from(["$cfg", "$nope", "$num_classes", "@input", "conv1", "inception4a", "block{i}", "{i}",
                     "conv2d", "concat", "inception", "relu", [[64]], [], {}]),
)


def _apply(doc, path, action, value):
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "replace":
        parent[last] = value
    elif action == "negate" and isinstance(parent[last], int) and not isinstance(parent[last], bool):
        parent[last] = -parent[last]
    elif action == "insert" and isinstance(parent, list):
        parent.insert(last, value)
    elif action == "rename" and isinstance(parent, dict):
        parent[f"{last}_x"] = parent.pop(last)


@st.composite
def mutated_specs(draw):
    name = draw(st.sampled_from(sorted(DOCS)))
    doc = copy.deepcopy(DOCS[name])
    model = draw(st.sampled_from(sorted(DOCS[name]["models"])))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["delete", "replace", "replace", "negate", "insert", "rename"]))
        _apply(doc, path, action, draw(junk))
    overrides = draw(st.one_of(st.just({}), st.dictionaries(
        st.sampled_from(["num_classes", "in_channels", "input_size", "width_divisor", "dropout", "aux_logits", "x"]),
        junk, max_size=2)))
    return name, doc, model, overrides


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_specs())
def test_mutated_specs_raise_only_spec_errors(case):
    name, doc, model, overrides = case
    try:
        spec = load_spec_dict(doc, model, overrides, file=f"{name}.json")
    except SpecError as e:
        msg = str(e)
        assert msg.startswith(f"{name}.json"), msg
        assert e.path is None or e.path.startswith("$"), msg
        return
    summary = analyze(spec)  # a spec that loads must also analyse
    assert summary.total_params >= 0
