"""The "Data parallel in three frameworks" page of ``rosetta docs``: each engine's code side by
side from the live source (a stale location fails the build), linked from every page, with the
BatchNorm behaviour and the measured 2-vs-1-device table."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from rosetta_cnn.core.errors import RosettaError
from rosetta_cnn.tools.docs import site as docs


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dp-docs")
    docs.build_site(root / "site")
    return root / "site"


def test_page_shows_each_engine_from_the_source(built):
    page = (built / docs.DP_PAGE).read_text()
    refs = re.findall(r'data-ref="([^"]+)"', page)
    for symbol in ("TorchEngine.__init__", "ShardedEngine.__init__", "DataParallelEngine.__init__",
                   "MirroredEngine.__init__", "layers.py:batch_stats", "distributed.py:replica_rows"):
        assert any(symbol in r for r in refs), symbol
    source = Path(docs.source_file("torch_impl/distributed.py")).read_text()
    assert "dist.init_process_group(self.backend" in source and "init_process_group" in page
    for section in docs.load_blocks()["data_parallel"]["sections"]:
        assert f'id="{section["id"]}"' in page, section["id"]
    for engine in docs.DP_ENGINES:
        assert engine in page
    assert "Measured: 2 devices against 1" in page and "SyncBatchNorm" in page
    for other in ("index.html", docs.KERAS_PAGE):
        assert f'href="{docs.DP_PAGE}"' in (built / other).read_text(), other


def test_stale_location_fails_the_build(tmp_path):
    table = copy.deepcopy(docs.load_blocks())
    table["data_parallel"]["sections"][0]["snippets"]["flax"] = ["flax_impl/distributed.py:ShardedEngine.no_such"]
    with pytest.raises(RosettaError, match=r"data_parallel section 'devices' \(flax\).*no_such"):
        docs.build_site(tmp_path / "site", table=table)
    assert not (tmp_path / "site").exists()


def test_malformed_entry_names_its_json_path():
    table = copy.deepcopy(docs.load_blocks())
    del table["data_parallel"]["engines"]["keras/tensorflow"]
    with pytest.raises(RosettaError, match=r"\$\.data_parallel\.engines: expected an object with exactly torch"):
        docs.check_data_parallel(table)
