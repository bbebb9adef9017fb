"""The "Keras on three backends" page of ``rosetta docs``: built from the live source (a stale
location fails the build), linked from every page, and parity records labelled with a Keras
backend (``keras/jax``) shown on the model pages and on the Keras page."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from rosetta_cnn.core.errors import RosettaError
from rosetta_cnn.tools.docs import site as docs

RECORDS = [
    {"model": "alexnet", "source": src, "target": dst, "mode": "eval", "device": "cpu", "max_abs": 1e-6,
     "max_rel": 2e-7, "tolerance": 1e-5, "passed": True}
    for src, dst in [("torch", "keras/jax"), ("keras/jax", "torch"), ("keras/torch", "flax"), ("torch", "flax")]
]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("keras-docs")
    (root / "parity.json").write_text(json.dumps(RECORDS))
    docs.build_site(root / "site", parity=root / "parity.json")
    return root / "site"


def test_page_shows_each_backends_step_from_the_source(built):
    page = (built / docs.KERAS_PAGE).read_text()
    refs = re.findall(r'data-ref="([^"]+)"', page)
    for step in ("TensorFlowStep._step", "JaxStep.__init__", "TorchStep._step", "runtime.py:_compile_jax"):
        assert any(step in r for r in refs), step
    # the snippet is the code as it is in the file now
    source = (Path(docs.source_file("keras_impl/train.py"))).read_text()
    assert "jax.jit(train_step, donate_argnums=0)" in source and "donate_argnums=0" in page
    for section in docs.load_blocks()["keras_backends"]["sections"]:
        assert f'id="{section["id"]}"' in page, section["id"]
    assert f'href="{docs.KERAS_PAGE}"' in (built / "index.html").read_text()


def test_parity_labels_show_the_keras_backend(built):
    model_page = (built / "models" / "alexnet.html").read_text()
    assert "keras/jax" in model_page and "keras/torch" in model_page
    assert f'<a href="../{docs.KERAS_PAGE}"><code>keras/jax</code></a>' in model_page
    keras_page = (built / docs.KERAS_PAGE).read_text()
    table = keras_page[keras_page.index('id="parity"'):]
    assert "keras/jax" in table and "3 passed, 0 failed" in table  # torch -> flax is not a Keras record


def test_stale_location_fails_the_build(tmp_path):
    table = copy.deepcopy(docs.load_blocks())
    table["keras_backends"]["sections"][0]["snippets"]["jax"] = ["keras_impl/train.py:JaxStep.no_such_method"]
    with pytest.raises(RosettaError, match=r"keras_backends section 'step' \(jax\).*no_such_method"):
        docs.build_site(tmp_path / "site", table=table)
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize("path, value, where", [
    (("backends",), {"tensorflow": {"name": "TF", "install": "x"}}, r"\$\.keras_backends\.backends"),
    (("sections", 0, "snippets"), {"mxnet": ["keras_impl/train.py:STEPS"]}, r"\.sections\[0\]\.snippets"),
    (("measured",), [{"title": "t", "caption": "c", "columns": ["a", "b"], "rows": [[1]]}], r"\.measured\[0\]\.rows"),
])
def test_malformed_page_entry_names_its_json_path(path, value, where):
    table = copy.deepcopy(docs.load_blocks())
    node = table["keras_backends"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(RosettaError, match=where):
        docs.check_keras_backends(table)
