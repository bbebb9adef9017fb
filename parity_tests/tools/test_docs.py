"""``rosetta docs``: the generated guide opened in headless Chromium, and the block table
checked against the live source so that the guide cannot go stale silently."""
from __future__ import annotations

import copy
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rosetta_cnn.cli import main
from rosetta_cnn.core.errors import RosettaError
from rosetta_cnn.core.spec import list_models, load_spec
from rosetta_cnn.tools.docs import site as docs

from ..conftest import AVAILABLE

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# one of each kind of source location: function, class method, dict entry, JSON member
STALE_CASES = {
    "function": ("lrn", "torch", "torch_impl/layers.py:lrn", "torch_impl/layers.py:local_response_norm"),
    "method": ("max_pool", "keras", "keras_impl/layers.py:ConstantPadding2D.call",
               "keras_impl/layers.py:ConstantPadding2D.forward"),
    "dict_entry": ("batch_norm", "keras", 'keras_impl/weights.py:VARIABLES["batch_norm"]',
                   'keras_impl/weights.py:VARIABLES["bn"]'),
    "json_member": ("inception", "shared", "shared/core/specs/googlenet.json:blocks.inception",
                    "shared/core/specs/googlenet.json:blocks.inception_v1"),
}


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return found or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)


@pytest.fixture(scope="module")
def parity_dir(tmp_path_factory) -> Path:
    """``rosetta parity --out`` on the smallest real run: alexnet at 64x64, two frameworks."""
    if len(AVAILABLE) < 2:
        pytest.skip(f"parity needs two frameworks; installed: {', '.join(AVAILABLE) or 'none'}")
    fws = ["torch", "keras"] if {"torch", "keras"} <= set(AVAILABLE) else AVAILABLE[:2]  # the quickest pair
    out = tmp_path_factory.mktemp("parity")
    assert main(["parity", "--models", "alexnet", "--frameworks", *fws, "--input", "64x64", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    """A synthetic ``rosetta bench --out`` directory: bench.json with arbitrary figures, a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = tmp_path_factory.mktemp("bench")
    doc = {"meta": {"machine": "test", "threads": 2},
           "records": [{"model": "alexnet", "framework": "torch", "config": "eager", "batch": 4,
                        "images_per_s": 101.5, "peak_mb": 812},
                       {"model": "alexnet", "framework": "flax", "config": "jit", "batch": 4,
                        "images_per_s": 150.25, "compile_s": 2.5},
                       {"model": "vgg11", "framework": "torch", "config": "eager", "batch": 4, "images_per_s": 9.0}],
           "recommendation": {"cpu_inference": "flax", "why": "most images/s at batch 4"}}
    (out / "bench.json").write_text(json.dumps(doc))
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar(["torch", "flax"], [101.5, 150.25])
    fig.savefig(out / "bench.png")
    plt.close(fig)
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory, parity_dir, bench_dir) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    assert main(["docs", "--out", str(out), "--parity", str(parity_dir), "--bench", str(bench_dir)]) == 0
    return out


def test_parity_out_writes_json_markdown_and_png(parity_dir):
    records = json.loads((parity_dir / "parity.json").read_text())
    assert records and {r["model"] for r in records} == {"alexnet"}
    md = (parity_dir / "parity.md").read_text()
    assert md.startswith("| model | source -> target |") and f"{len(records)} passed, 0 failed" in md
    assert (parity_dir / "parity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _browse(site: Path, visit) -> dict[str, list[str]]:
    """Serve ``site`` on 127.0.0.1, open it in headless Chromium and run ``visit(page, origin)``.

    Every request is routed: those to the local server go through, any other is recorded and
    aborted. Returns the requests, those that would have left the machine, HTTP errors and
    page (JavaScript) errors.
    """
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    handler = functools.partial(type("Quiet", (http.server.SimpleHTTPRequestHandler,),
                                     {"log_message": lambda self, *a: None}), directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_address[1]}/"
    log: dict[str, list[str]] = {"seen": [], "outside": [], "http_errors": [], "page_errors": []}

    def route(r):
        url = r.request.url
        log["seen"].append(url)
        if url.startswith(origin):
            r.continue_()
        else:
            log["outside"].append(url)
            r.abort()

    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
            try:
                context = browser.new_context(viewport={"width": 1600, "height": 1000})
                context.route("**/*", route)
                page = context.new_page()
                page.on("pageerror", lambda e: log["page_errors"].append(str(e)))
                page.on("response", lambda r: log["http_errors"].append(f"{r.status} {r.url}") if r.status >= 400
                        else None)
                visit(page, origin)
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return log


def test_site_in_headless_chromium(site, parity_dir):
    table = docs.load_blocks()
    records = json.loads((parity_dir / "parity.json").read_text())

    def visit(page, origin):
        page.goto(origin + "index.html")
        assert page.locator("table.models tbody tr").count() == len(list_models())
        assert page.locator(".fw-card").count() == 3
        assert "cpu_inference" in page.locator(".recommendation").inner_text()

        for block in table["blocks"]:
            page.goto(origin + f"blocks/{block['id']}.html")
            for fw in docs.COLUMNS:
                code = page.locator(f'.fw-col[data-fw="{fw}"] figure.snippet pre')
                assert code.count() == len(block["snippets"][fw]), (block["id"], fw)
                assert code.first.is_visible() and code.first.inner_text().strip(), (block["id"], fw)
        # the code shown is the source's: PyTorch's LRN gets alpha * size
        page.goto(origin + "blocks/lrn.html")
        assert "return alpha * size" in page.locator('.fw-col[data-fw="torch"]').inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "docs.png"), full_page=True)
        # each snippet links to its file and line
        link = page.locator('.fw-col[data-fw="torch"] figcaption a').first
        target = link.get_attribute("href")
        link.click()
        page.wait_for_load_state()
        assert page.url.endswith(target.split("/")[-1])
        assert page.locator(f"#{target.split('#')[1]}").count() == 1
        assert "def lrn_alpha" in page.locator(".source").inner_text()

        page.goto(origin + "models/alexnet.html")
        rows = page.locator("table.parity tbody tr")
        assert rows.count() == len(records)
        assert all(rows.nth(i).locator("td").last.inner_text() == "pass" for i in range(rows.count()))
        assert page.locator("table.trace tbody tr").count() == len(load_spec("alexnet").layers) + 1
        assert "images_per_s" in page.locator("table.records").inner_text()

        for name, img, rows, n in (("parity.html", "images/parity.png", "table.parity tbody tr", len(records)),
                                   ("bench.html", "images/bench.png", "table.records tbody tr", 3)):
            page.goto(origin + name)
            assert page.locator(f'img[src="{img}"]').evaluate("i => i.complete && i.naturalWidth > 0"), name
            assert page.locator(rows).count() == n, name

    log = _browse(site, visit)
    assert log["seen"] and log["outside"] == [], f"requests left the machine: {log['outside']}"
    assert log["http_errors"] == [] and log["page_errors"] == [], log


def test_offline_checks_catch_an_external_asset(site, tmp_path):
    broken = tmp_path / "site"
    shutil.copytree(site, broken)
    index = broken / "index.html"
    url = "https://cdn.example.com/style.css"
    index.write_text(index.read_text().replace("</head>", f'<link rel="stylesheet" href="{url}"></head>'))
    assert _external_references(broken) == [("index.html", f'href="{url}"')]
    log = _browse(broken, lambda page, origin: page.goto(origin + "index.html"))
    assert log["outside"] == [url]


def _external_references(site: Path) -> list[tuple[str, str]]:
    """(page, attribute) for every src/href/url() in the site's HTML and CSS that points off the site."""
    pattern = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:|//)[^"'\s>]*["']?"""
                         r"""|url\(\s*["']?\s*(?:[a-z]+:|//)[^)]*\)""", re.I)
    return [(str(p.relative_to(site)), hit) for p in sorted(site.rglob("*")) if p.suffix in (".html", ".css")
            for hit in pattern.findall(p.read_text())]


def test_site_references_nothing_outside(site):
    assert len([p for p in site.rglob("*.html")]) > 30
    assert _external_references(site) == []


def test_block_table_resolves_against_the_source():
    table = docs.load_blocks()
    snippets = docs.extract_all(table)
    for block in table["blocks"]:
        for fw in docs.COLUMNS:
            assert all(s.code.strip() for s in snippets[block["id"]][fw]), (block["id"], fw)
    used = {layer.op for name in list_models() for layer in load_spec(name).layers}
    covered = {op for block in table["blocks"] for op in block["ops"]}
    assert used <= covered, f"spec ops without a building block: {sorted(used - covered)}"


@pytest.mark.parametrize("case", list(STALE_CASES))
def test_renamed_symbol_fails_the_build(case, monkeypatch, tmp_path, capsys):
    block_id, column, ref, renamed = STALE_CASES[case]
    table = copy.deepcopy(docs.load_blocks())
    refs = next(b for b in table["blocks"] if b["id"] == block_id)["snippets"][column]
    assert ref in refs  # the real location resolves (test_block_table_resolves_against_the_source)
    refs[refs.index(ref)] = renamed
    with pytest.raises(RosettaError, match=re.escape(renamed)):
        docs.extract_all(table)
    monkeypatch.setattr(docs, "load_blocks", lambda path=None: table)
    out = tmp_path / "site"
    assert main(["docs", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "stale source location" in err and renamed in err and block_id in err
    assert not out.exists()


def test_optional_block_waits_for_its_files_then_must_resolve(monkeypatch, tmp_path):
    table = copy.deepcopy(docs.load_blocks())
    block = copy.deepcopy(table["blocks"][0])
    block.update(id="future", optional=True)
    block["snippets"] = {fw: [f"{pkg}/not_written_yet.py:make_trainer"]
                         for fw, pkg in (("torch", "torch_impl"), ("keras", "keras_impl"), ("flax", "flax_impl"))}
    table["blocks"].append(block)
    assert "future" not in docs.extract_all(table)
    monkeypatch.setattr(docs, "load_blocks", lambda path=None: table)
    pages = docs.build_site(tmp_path / "site")
    assert "blocks/future.html" not in pages and "blocks/lrn.html" in pages
    block["snippets"]["torch"] = ["torch_impl/layers.py:no_such_function"]
    block["snippets"]["keras"] = ["keras_impl/layers.py:lrn"]
    block["snippets"]["flax"] = ["flax_impl/layers.py:lrn_window"]
    with pytest.raises(RosettaError, match="no_such_function"):
        docs.extract_all(table)


def test_snippet_extraction_kinds():
    conv = docs.extract("keras_impl/layout.py:conv_kernel_to_framework")
    assert conv.code.startswith("# Conv2D kernel: [O, I/groups, kH, kW]")  # the layout comment above it
    entry = docs.extract('keras_impl/weights.py:VARIABLES["batch_norm"]')
    assert entry.code.startswith('"batch_norm": {') and "moving_variance" in entry.code
    method = docs.extract({"ref": "keras_impl/layers.py:BatchNorm.call", "mark": "running_var_correction"})
    assert method.code.startswith("def call(") and len(method.marks) == 1
    member = docs.extract("shared/core/specs/googlenet.json:blocks.inception")
    spec_doc = json.loads(Path(load_spec("googlenet").file).read_text())
    assert json.loads("{" + member.code.rstrip().rstrip(",") + "}") == {"inception": spec_doc["blocks"]["inception"]}
    with pytest.raises(RosettaError, match="no line of the snippet contains"):
        docs.extract({"ref": "torch_impl/layers.py:lrn", "mark": "no such text"})
    with pytest.raises(RosettaError, match="no installed package"):
        docs.extract("not_a_package/x.py:f")


def test_docs_imports_no_framework(tmp_path):
    code = ("import sys; from rosetta_cnn.tools.docs.site import build_site; build_site(sys.argv[1]); "
            "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'tensorflow', 'keras', 'jax', 'flax'}); "
            "assert not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "index.html").is_file() and not (tmp_path / "site" / "parity.html").exists()


def test_bad_inputs_are_clear_errors(tmp_path, capsys):
    (tmp_path / "parity.json").write_text(json.dumps([{"model": "alexnet"}]))
    assert main(["docs", "--out", str(tmp_path / "a"), "--parity", str(tmp_path / "parity.json")]) == 2
    assert "record [0] lacks source" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bench.json").write_text(json.dumps({"records": {}}))
    assert main(["docs", "--out", str(tmp_path / "a"), "--bench", str(tmp_path / "b")]) == 2
    assert "expected {\"meta\"" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["docs", "--out", str(mine)]) == 2
    assert "is not a site written by rosetta docs" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me"


def test_rebuild_replaces_an_earlier_site(site, tmp_path):
    out = tmp_path / "site"
    shutil.copytree(site, out)
    (out / "stale.html").write_text("from an earlier build")
    docs.build_site(out)
    assert (out / "index.html").is_file() and not (out / "stale.html").exists()
    assert not (out / "parity.html").exists()  # replaced as a whole: this build had no --parity
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no temporary directory left behind
