"""``rosetta docs``: a static, offline HTML guide that compares the three ports side by side.

    rosetta docs --out DIR [--parity FILE.json|DIR] [--bench DIR]

Every code snippet in the guide is read from the live source when the site is built, never
pasted: ``shared/tools/docs/blocks.json`` names, for each building block (conv + activation,
ceil-mode max pooling, LRN, BatchNorm, ...), the source location of each framework's code as
``<package>/<file>.py:<qualified symbol>`` (``torch_impl/layers.py:lrn``,
``keras_impl/layers.py:LocalResponseNorm.call``, ``flax_impl/layers.py:OPS["dropout"]`` for one entry of a
dict literal) or ``<file>.json:<key>.<key>`` for a JSON subtree (``shared/core/specs/googlenet.json:
blocks.inception``). Locations are resolved with :mod:`ast` (and a position-aware JSON walk), so
building the site imports no framework; a location that no longer exists is an error
(``parity_tests/tools/test_docs.py`` checks the table), so the guide cannot go stale silently.

The site has a landing page (models, framework-choice summary, blocks), one page per building
block (the three frameworks' code in columns, the framework-free helpers they share, each
framework's pitfalls; every snippet links to its file and line in a highlighted copy of the
source), one page per model (spec, shape trace with receptive fields, parameters, MACs, the
worked port of its first conv and first FC layer, and, when given, parity records from
``rosetta parity --out`` / ``--json`` and benchmark records from ``rosetta bench --out``), and
parity / benchmark pages with their plots copied in. It needs no network: no asset comes from
outside the output directory.
"""
from __future__ import annotations

import ast
import html
import importlib.util
import json
import os
import posixpath
import re
import shutil
import tempfile
import textwrap
from dataclasses import dataclass
from json.decoder import scanstring
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import JsonLexer, PythonLexer

from ...core import layout, ops
from ...core.analysis import analyze, human
from ...core.canonical import expected_tensors
from ...core.errors import FileError, RosettaError
from ...core.files import TEMP_SUFFIX, remove_stale_temporaries
from ...core.layout import flatten_inputs
from ...core.spec import ModelSpec, describe, list_models, load_spec

BLOCKS_PATH = Path(__file__).with_name("blocks.json")
ASSETS_DIR = Path(__file__).with_name("assets")
#: the repository's top-level folders (the first part of a snippet location) -> installed packages
PACKAGES = {"shared": "rosetta_cnn", "torch_impl": "rosetta_cnn.torch_impl", "keras_impl": "rosetta_cnn.keras_impl",
            "flax_impl": "rosetta_cnn.flax_impl"}
#: the framework columns of a block, in order; ``shared`` snippets span the row below them
COLUMNS: tuple[str, ...] = ("torch", "keras", "flax")
SHARED = "shared"
#: a file in the output directory that marks it as a site this command wrote (and may replace)
MARKER = ".rosetta-docs"
PARITY_KEYS = ("model", "source", "target", "mode", "device", "max_rel", "tolerance", "passed")

Say = Callable[[str], None]


# ---------------------------------------------------------------------------
# the block table and snippet extraction


@dataclass(frozen=True)
class Snippet:
    """The code at one source location, as it is in the file now."""

    ref: str  # as written in the table: "torch_impl/layers.py:lrn"
    file: str  # path relative to the project root: "torch_impl/layers.py"
    symbol: str
    start: int  # first line (1-based), comments directly above a definition included
    end: int  # last line
    code: str  # the lines, dedented
    marks: tuple[int, ...] = ()  # lines (1-based, relative to ``start``) to highlight

    @property
    def language(self) -> str:
        return "json" if self.file.endswith(".json") else "python"


def load_blocks(path: str | Path | None = None) -> dict[str, Any]:
    """The block table (``shared/tools/docs/blocks.json`` by default), with its structure checked."""
    path = Path(path) if path is not None else BLOCKS_PATH
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RosettaError(f"cannot read the docs block table {path}: {e}") from None

    def need(cond: bool, where: str, what: str) -> None:
        if not cond:
            raise RosettaError(f"{path.name}: {where}: expected {what}")

    need(isinstance(table, dict), "$", "an object with 'frameworks' and 'blocks'")
    need(isinstance(table.get("frameworks"), dict), "$.frameworks", "an object")
    for fw in COLUMNS:
        info = table["frameworks"].get(fw)
        need(isinstance(info, dict) and all(isinstance(info.get(k), str) for k in ("name", "layout", "summary")),
             f"$.frameworks.{fw}", "an object with string 'name', 'layout' and 'summary'")
    need(isinstance(table.get("blocks"), list), "$.blocks", "a list")
    seen: set[str] = set()
    for i, block in enumerate(table["blocks"]):
        at = f"$.blocks[{i}]"
        need(isinstance(block, dict), at, "an object")
        for key in ("id", "title", "summary"):
            need(isinstance(block.get(key), str) and block[key] != "", f"{at}.{key}", "a non-empty string")
        need(re.fullmatch(r"[a-z][a-z0-9_]*", block["id"]) is not None, f"{at}.id", "a lower-case identifier")
        need(block["id"] not in seen, f"{at}.id", f"a unique id ({block['id']!r} is repeated)")
        seen.add(block["id"])
        need(isinstance(block.get("optional", False), bool), f"{at}.optional", "true or false")
        need(isinstance(block.get("ops"), list) and all(_known_feature(o) for o in block["ops"]),
             f"{at}.ops", "a list of spec ops ('conv2d'), or 'op:attr' for layers whose attr is not the "
             "default ('conv2d:groups'), from shared/core/ops.py")
        snippets = block.get("snippets")
        need(isinstance(snippets, dict) and set(snippets) <= {*COLUMNS, SHARED}, f"{at}.snippets",
             f"an object with keys among {', '.join((*COLUMNS, SHARED))}")
        for col in COLUMNS:
            need(bool(snippets.get(col)), f"{at}.snippets.{col}", "a non-empty list of source locations")
        for col, refs in snippets.items():
            need(isinstance(refs, list), f"{at}.snippets.{col}", "a list")
            for j, ref in enumerate(refs):
                need(isinstance(ref, str) or (isinstance(ref, dict) and isinstance(ref.get("ref"), str)
                                              and isinstance(ref.get("mark", ""), str)),
                     f"{at}.snippets.{col}[{j}]", "'file:symbol' or {\"ref\": \"file:symbol\", \"mark\": \"text\"}")
        pitfalls = block.get("pitfalls", {})
        need(isinstance(pitfalls, dict) and set(pitfalls) <= set(COLUMNS) and all(
            isinstance(p, list) and all(isinstance(s, str) for s in p) for p in pitfalls.values()),
             f"{at}.pitfalls", f"an object from {', '.join(COLUMNS)} to lists of strings")
    return table


def _known_feature(feature: Any) -> bool:
    op, _, attr = str(feature).partition(":")
    return isinstance(feature, str) and op in ops.OPS and (not attr or attr in ops.OPS[op].attrs)


def spec_features(spec: ModelSpec) -> set[str]:
    """The ops a spec uses, and ``op:attr`` for each attribute some layer sets to other than
    its default (``conv2d:groups`` for grouped convolutions): what a block's ``ops`` match."""
    out = set()
    for layer in spec.layers:
        out.add(layer.op)
        for attr, value in layer.attrs.items():
            default = ops.OPS[layer.op].attrs[attr].default if attr in ops.OPS[layer.op].attrs else None
            if default is not None and value != default:
                out.add(f"{layer.op}:{attr}")
    return out


def source_file(rel: str) -> Path:
    """The file ``rel`` (``torch_impl/layers.py``) of an installed package, found without
    importing the package (so no framework is imported)."""
    folder, _, rest = rel.partition("/")
    package = PACKAGES.get(folder)
    try:
        found = importlib.util.find_spec(package) if package else None
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations or not rest:
        raise RosettaError(f"{rel}: no installed package holds this file (snippet locations start with one of "
                           f"{', '.join(PACKAGES)})")
    return Path(next(iter(found.submodule_search_locations))) / rest


_SYMBOL = re.compile(r"""([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?:\[(?:"([^"]*)"|'([^']*)')\])?""")


def _defined(body: Sequence[ast.stmt], name: str) -> ast.stmt | None:
    """The last statement of ``body`` that defines ``name`` (def, class or assignment)."""
    found = None
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            found = node
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            found = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            found = node
    return found


def _python_span(text: str, symbol: str) -> tuple[int, int]:
    """(first, last) line of ``symbol`` in Python source: ``name``, ``Class.method`` or
    ``NAME["key"]`` (one entry of a dict literal); raises LookupError when it is not there."""
    m = _SYMBOL.fullmatch(symbol)
    if m is None:
        raise LookupError(f"{symbol!r} is not a qualified name (a.b.c) or NAME[\"key\"]")
    dotted, key = m.group(1), m.group(2) if m.group(2) is not None else m.group(3)
    body: Sequence[ast.stmt] = ast.parse(text).body
    node: ast.stmt | None = None
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        node = _defined(body, part)
        if node is None:
            raise LookupError(f"no definition of {'.'.join(parts[:i + 1])!r}")
        body = node.body if isinstance(node, ast.ClassDef) else []
    assert node is not None
    if key is not None:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if not isinstance(value, ast.Dict):
            raise LookupError(f"{dotted!r} is not assigned a dict literal")
        for k, v in zip(value.keys, value.values):
            if isinstance(k, ast.Constant) and k.value == key:
                return k.lineno, v.end_lineno or v.lineno
        raise LookupError(f"the dict {dotted!r} has no entry {key!r}")
    decorators = getattr(node, "decorator_list", [])
    start = min([node.lineno, *(d.lineno for d in decorators)])
    lines = text.splitlines()
    while start > 1 and lines[start - 2].lstrip().startswith("#"):
        start -= 1  # the comment right above belongs to the definition (layout comments)
    return start, node.end_lineno or node.lineno


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _json_span(text: str, dotted: str) -> tuple[int, int]:
    """(first, last) line of the member ``a.b.c`` of a JSON document, from the key's line to
    the end of its value; raises LookupError when it is not there."""
    decoder = json.JSONDecoder()
    start = pos = _skip_ws(text, 0)
    for part in dotted.split("."):
        if not text.startswith("{", pos):
            raise LookupError(f"{dotted!r}: the value before {part!r} is not an object")
        i = _skip_ws(text, pos + 1)
        while True:
            if i >= len(text) or text[i] != '"':
                raise LookupError(f"no key {part!r} in {dotted!r}")
            key_at = i
            key, i = scanstring(text, i + 1)
            i = _skip_ws(text, i)
            if text[i] != ":":
                raise LookupError(f"malformed JSON near character {i}")
            value_at = _skip_ws(text, i + 1)
            _, end = decoder.raw_decode(text, value_at)
            if key == part:
                start, pos = key_at, value_at
                break
            i = _skip_ws(text, end)
            i = _skip_ws(text, i + 1) if text.startswith(",", i) else i
    _, end = decoder.raw_decode(text, pos)
    return text.count("\n", 0, start) + 1, text.count("\n", 0, end) + 1


def extract(ref: str | Mapping[str, str]) -> Snippet:
    """The snippet at one table entry (``"file:symbol"`` or ``{"ref": ..., "mark": ...}``)."""
    spec = _ref_text(ref)
    mark = "" if isinstance(ref, str) else ref.get("mark", "")
    rel, sep, symbol = spec.partition(":")
    if not sep or not symbol:
        raise RosettaError(f"{spec!r}: a source location is 'path/to/file.py:symbol'")
    path = source_file(rel)
    try:
        text = path.read_text()
    except OSError as e:
        raise RosettaError(f"{spec}: cannot read {path}: {e}") from None
    try:
        first, last = (_json_span if rel.endswith(".json") else _python_span)(text, symbol)
    except (LookupError, SyntaxError, ValueError) as e:
        raise RosettaError(f"{spec}: {e} in {path}") from None
    lines = text.splitlines()[first - 1:last]
    marks = tuple(i for i, line in enumerate(lines, 1) if mark and mark in line)
    if mark and not marks:
        raise RosettaError(f"{spec}: no line of the snippet contains the mark {mark!r}")
    return Snippet(spec, rel, symbol, first, last, textwrap.dedent("\n".join(lines)), marks)


def _ref_text(ref: str | Mapping[str, str]) -> str:
    return ref if isinstance(ref, str) else ref["ref"]


def _files_present(block: Mapping[str, Any]) -> bool:
    try:
        return all(source_file(_ref_text(r).partition(":")[0]).is_file()
                   for refs in block["snippets"].values() for r in refs)
    except RosettaError:
        return False


def extract_all(table: Mapping[str, Any]) -> dict[str, dict[str, list[Snippet]]]:
    """Block id -> column -> snippets; every location that does not resolve is reported at once.

    A block marked ``optional`` is left out (absent from the result) while one of its files
    does not exist; once they all exist, its symbols must resolve like any other's.
    """
    out: dict[str, dict[str, list[Snippet]]] = {}
    problems = []
    for block in table["blocks"]:
        if block.get("optional") and not _files_present(block):
            continue
        cols = out.setdefault(block["id"], {})
        for col, refs in block["snippets"].items():
            for ref in refs:
                try:
                    cols.setdefault(col, []).append(extract(ref))
                except RosettaError as e:
                    problems.append(f"block {block['id']!r} ({col}): {e}")
    if problems:
        raise RosettaError("stale source location(s) in the docs block table:\n  " + "\n  ".join(problems))
    return out


# ---------------------------------------------------------------------------
# parity and benchmark inputs


#: parity record fields and the JSON types each must have (``rosetta parity --json``)
PARITY_SCHEMA: dict[str, tuple[type, ...]] = {
    "model": (str,), "source": (str,), "target": (str,), "mode": (str,), "device": (str,),
    "max_abs": (int, float, type(None)), "max_rel": (int, float, type(None)), "tolerance": (int, float),
    "passed": (bool,), "first_divergence": (str, type(None)), "seconds": (int, float),
    "outputs": (dict,), "layers": (list, type(None)),
}


def _inside(path: Path, folder: Path, flag: str) -> Path | None:
    """``path`` if it is a regular file inside ``folder`` after resolving links, else None
    (a link out of the input folder is never followed: a site copies what it finds there)."""
    if not path.is_file():
        return None
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        raise RosettaError(f"{flag}: {path} links outside {folder}; files beside the records must be in that "
                           "folder (a link out of it is not followed)") from None
    return path


def _png(path: Path | None, flag: str) -> Path | None:
    if path is not None and path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise RosettaError(f"{flag}: {path} is not a PNG image")
    return path


def _read_output(path: str | Path, flag: str, name: str) -> tuple[Path, Any]:
    """The JSON document at ``path``, or at ``path/name`` when ``path`` is a directory."""
    from ...core import limits
    from ...core.files import file_problem

    path = Path(path)
    if path.is_dir():
        path = path / name
    problem = file_problem(path)
    if problem:
        raise RosettaError(f"{flag}: {path}: {problem}")
    try:
        limits.get().check("max_json_bytes", path.stat().st_size, f"{flag}: the size of {path}")
        return path, json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:
        raise RosettaError(f"{flag}: cannot read {path}: {e}") from None
    except RecursionError:
        raise RosettaError(f"{flag}: {path}: the JSON nests too deeply") from None


def check_parity_records(records: Any, where: str) -> list[dict[str, Any]]:
    """RosettaError unless ``records`` is a list of parity records whose fields have the
    types ``rosetta parity --json`` writes (``"passed": "false"`` is not a pass)."""
    if not isinstance(records, list):
        raise RosettaError(f"{where}: expected a list of records (rosetta parity --json), got {type(records).__name__}")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise RosettaError(f"{where}: record [{i}] is a {type(r).__name__}, not an object")
        missing = [k for k in PARITY_KEYS if k not in r]
        if missing:
            raise RosettaError(f"{where}: record [{i}] lacks {', '.join(missing)}")
        for key, types in PARITY_SCHEMA.items():
            if key in r and (not isinstance(r[key], types) or (bool not in types and isinstance(r[key], bool))):
                names = " or ".join("null" if t is type(None) else {"str": "a string", "bool": "true or false",
                                                                     "int": "a number", "float": "a number",
                                                                     "dict": "an object", "list": "a list"}[t.__name__]
                                    for t in types)
                raise RosettaError(f"{where}: record [{i}].{key} is {json.dumps(r[key])[:60]}; expected {names}")
    return records


def load_parity(path: str | Path) -> tuple[list[dict[str, Any]], Path | None]:
    """Records of ``rosetta parity --json FILE`` (or ``--out DIR``: pass the DIR or its
    parity.json) and the heat map next to them, if there is one."""
    path, records = _read_output(path, "--parity", "parity.json")
    records = check_parity_records(records, f"--parity: {path}")
    png = next((p for p in (path.with_suffix(".png"), path.parent / "parity.png")
                if _inside(p, path.parent, "--parity")), None)
    return records, _png(png, "--parity")


def load_bench(path: str | Path) -> tuple[dict[str, Any], Path | None, Path | None]:
    """``bench.json`` of ``rosetta bench --out DIR`` (pass the DIR or the file), and the
    bench.png and bench.md next to it when present."""
    path, doc = _read_output(path, "--bench", "bench.json")
    if not isinstance(doc, dict) or not isinstance(doc.get("records"), list) or not all(
            isinstance(r, dict) for r in doc["records"]):
        raise RosettaError(f"--bench: {path}: expected {{\"meta\": {{...}}, \"records\": [{{...}}, ...], "
                           "\"recommendation\": {...}} (rosetta bench --out)")
    for key in ("meta", "recommendation"):
        if not isinstance(doc.get(key, {}), dict):
            raise RosettaError(f"--bench: {path}: {key!r} must be an object")
    for i, r in enumerate(doc["records"]):
        if "model" in r and not isinstance(r["model"], str):
            raise RosettaError(f"--bench: {path}: records[{i}].model must be a string")
    png = _inside(path.with_suffix(".png"), path.parent, "--bench")
    md = _inside(path.with_suffix(".md"), path.parent, "--bench")
    return doc, _png(png, "--bench"), md


def check_out(out: Path) -> Path:
    """``--out`` as an absolute path, or a RosettaError: a file, a directory that holds the
    current directory, or a non-empty directory that is not an earlier site."""
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise RosettaError(f"--out {out}: is the current directory or holds it; give a new directory")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise RosettaError(f"--out {out}: exists and is not a site written by rosetta docs; "
                           "give a new or empty directory")
    return resolved


# ---------------------------------------------------------------------------
# HTML


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def inline(text: str) -> str:
    """Escape prose and turn `backticked` spans into <code>."""
    parts = text.split("`")
    return "".join(f"<code>{_e(p)}</code>" if i % 2 else _e(p) for i, p in enumerate(parts))


def _cell(value: Any) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _e(f"{value:.4g}")
    if isinstance(value, int):
        return _e(f"{value:,}") if abs(value) >= 10_000 else _e(value)
    if isinstance(value, (dict, list)):
        return f"<code>{_e(json.dumps(value, separators=(', ', ': ')))}</code>"
    return _e(value)


def record_table(records: Sequence[Mapping[str, Any]], css: str = "records") -> str:
    """A table of arbitrary records: one column per key, in the order keys first appear."""
    keys = list(dict.fromkeys(k for r in records for k in r))
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    rows = "".join("<tr>" + "".join(f"<td>{_cell(r.get(k))}</td>" for k in keys) + "</tr>" for r in records)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _definitions(obj: Mapping[str, Any]) -> str:
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_definitions(v) if isinstance(v, dict) else _cell(v)}</dd>"
                    for k, v in obj.items())
    return f"<dl>{items}</dl>"


class Site:
    """Collects pages (path relative to the site root -> HTML) and copied files."""

    def __init__(self, table: Mapping[str, Any], snippets: Mapping[str, Mapping[str, list[Snippet]]]):
        self.table = table
        self.snippets = snippets
        self.pages: dict[str, str] = {}
        self.files: dict[str, Path] = {}
        self.nav: list[tuple[str, str]] = [("index.html", "Home"), ("blocks/index.html", "Building blocks")]
        self.source_fmt = HtmlFormatter(linenos="inline", lineanchors="L", anchorlinenos=True, cssclass="hl",
                                        wrapcode=True)
        self.plain_fmt = HtmlFormatter(cssclass="hl", wrapcode=True)
        self.pygments_css = HtmlFormatter(cssclass="hl").get_style_defs(".hl")
        self.extra_sources: set[str] = set()  # files shown whole besides those of the snippets

    @staticmethod
    def rel(page: str, target: str) -> str:
        """Link from ``page`` to ``target`` (both relative to the site root)."""
        base, _, anchor = target.partition("#")
        link = posixpath.relpath(base, posixpath.dirname(page) or ".")
        return link + (f"#{anchor}" if anchor else "")

    def add(self, path: str, title: str, body: str) -> None:
        nav = " ".join(f'<a href="{self.rel(path, p)}">{_e(t)}</a>' for p, t in self.nav)
        self.pages[path] = (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)} · Rosetta CNN</title>"
            f'<link rel="stylesheet" href="{self.rel(path, "assets/style.css")}">'
            f'<link rel="stylesheet" href="{self.rel(path, "assets/pygments.css")}"></head>'
            f'<body><header><span class="brand">Rosetta CNN</span><nav>{nav}</nav></header>'
            f"<main><h1>{_e(title)}</h1>\n{body}\n</main>"
            f"<footer>Generated by <code>rosetta docs</code> from the source it shows.</footer></body></html>\n")

    def highlight(self, code: str, language: str, formatter: Any) -> str:
        return highlight(code, JsonLexer() if language == "json" else PythonLexer(), formatter)

    @staticmethod
    def snippet_formatter(s: Snippet) -> HtmlFormatter:
        """Line numbers as in the file, the marked lines highlighted."""
        return HtmlFormatter(linenos="inline", linenostart=s.start, hl_lines=list(s.marks), cssclass="hl",
                             wrapcode=True)

    def source_page(self, rel_file: str) -> str:
        return f"source/{rel_file}.html"

    def snippet_html(self, page: str, s: Snippet) -> str:
        where = f"{s.file}:{s.start}" + (f"-{s.end}" if s.end != s.start else "")
        link = self.rel(page, f"{self.source_page(s.file)}#L-{s.start}")
        return (f'<figure class="snippet" data-ref="{_e(s.ref)}"><figcaption><a href="{link}">{_e(where)}</a> '
                f"<code>{_e(s.symbol)}</code></figcaption>"
                f"{self.highlight(s.code, s.language, self.snippet_formatter(s))}</figure>")

    def source_pages(self) -> None:
        files = sorted({s.file for cols in self.snippets.values() for ss in cols.values() for s in ss}
                       | self.extra_sources)
        for rel_file in files:
            text = source_file(rel_file).read_text()
            lang = "json" if rel_file.endswith(".json") else "python"
            self.add(self.source_page(rel_file), rel_file,
                     f'<div class="source">{self.highlight(text, lang, self.source_fmt)}</div>')


def _models_using(ops_: Iterable[str], model_ops: Mapping[str, set[str]]) -> list[str]:
    wanted = set(ops_)
    return [m for m, used in model_ops.items() if used & wanted]


def _block_page(site: Site, block: Mapping[str, Any], model_ops: Mapping[str, set[str]]) -> None:
    page = f"blocks/{block['id']}.html"
    fws = site.table["frameworks"]
    cols = []
    for fw in COLUMNS:
        code = "".join(site.snippet_html(page, s) for s in site.snippets[block["id"]][fw])
        pits = "".join(f"<li>{inline(p)}</li>" for p in block.get("pitfalls", {}).get(fw, []))
        pits = f'<div class="pitfalls"><h3>Pitfalls</h3><ul>{pits}</ul></div>' if pits else ""
        cols.append(f'<section class="fw-col" data-fw="{fw}"><h2>{_e(fws[fw]["name"])} '
                    f'<span class="layout">{_e(fws[fw]["layout"])}</span></h2>{code}{pits}</section>')
    body = [f'<p class="summary">{inline(block["summary"])}</p>']
    users = _models_using(block["ops"], model_ops)
    if block["ops"]:
        links = ", ".join(f'<a href="{site.rel(page, f"models/{m}.html")}">{_e(m)}</a>' for m in users)
        body.append(f'<p class="ops">Spec op(s): {", ".join(f"<code>{_e(o)}</code>" for o in block["ops"])}'
                    f"; used by {links or 'no model'}.</p>")
    body.append(f'<div class="columns">{"".join(cols)}</div>')
    shared = site.snippets[block["id"]].get(SHARED, [])
    if shared:
        body.append('<section class="shared-row"><h2>Framework-free pieces they share</h2>'
                    f'<div class="shared-grid">{"".join(site.snippet_html(page, s) for s in shared)}</div></section>')
    site.add(page, block["title"], "\n".join(body))


def _parity_table(records: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for r in records:
        ok = bool(r["passed"])
        result = "pass" if ok else f"FAIL (first divergence: {r.get('first_divergence') or '?'})"
        rows.append(f'<tr class="{"pass" if ok else "fail"}"><td>{_e(r["model"])}</td><td>{_e(r["source"])} &rarr; '
                    f'{_e(r["target"])}</td><td>{_e(r["mode"])}</td><td>{_e(r["device"])}</td>'
                    f'<td>{_cell(r.get("max_abs"))}</td><td>{_cell(r["max_rel"])}</td><td>{_cell(r["tolerance"])}</td>'
                    f"<td>{_e(result)}</td></tr>")
    n_fail = sum(not r["passed"] for r in records)
    return ('<table class="parity"><thead><tr><th>model</th><th>pair</th><th>mode</th><th>device</th>'
            "<th>max_abs</th><th>max_rel</th><th>tolerance</th><th>result</th></tr></thead>"
            f'<tbody>{"".join(rows)}</tbody></table><p class="tally">{len(records) - n_fail} passed, '
            f"{n_fail} failed</p>")


def _trace_table(summary: Any) -> str:
    def pair(p: Any) -> str:
        return "full" if p is None else str(p[0]) if p[0] == p[1] else f"{p[0]}x{p[1]}"

    rows = [f'<tr><td>input</td><td></td><td>{"x".join(map(str, summary.input_shape))}</td><td></td><td></td>'
            "<td>1</td><td>1</td></tr>"]
    for l in summary.layers:
        op = l.op + (f"+{l.activation}" if l.activation else "")
        rows.append(f'<tr{" class=aux" if l.training_only else ""}><td>{_e(l.name)}'
                    f'{" *" if l.training_only else ""}</td><td>{_e(op)}</td>'
                    f'<td>{"x".join(map(str, l.output_shape))}</td><td>{l.params:,}</td>'
                    f'<td>{human(l.macs) if l.macs else "-"}</td><td>{pair(l.receptive_field)}</td>'
                    f"<td>{pair(l.jump)}</td></tr>")
    totals = (f"<p>Total parameters: <b>{summary.total_params:,}</b>"
              + (f" ({summary.inference_params:,} without the training-only layers marked *)"
                 if summary.inference_params != summary.total_params else "")
              + f". MACs per image, eval mode: <b>{summary.total_macs:,}</b> ({human(summary.total_macs)}).</p>")
    return ('<table class="trace"><thead><tr><th>layer</th><th>op</th><th>output (CxHxW)</th><th>params</th>'
            f'<th>MACs</th><th>RF</th><th>jump</th></tr></thead><tbody>{"".join(rows)}</tbody></table>{totals}')


def _port_example(spec: Any) -> str:
    """The first conv's and the first flattened FC's canonical and NHWC weight shapes."""
    tensors = expected_tensors(spec)
    items = []
    conv = next((l for l in spec.layers if l.op == "conv2d"), None)
    if conv is not None:
        shape = tensors[f"{conv.name}.weight"]
        hwio = layout.conv_kernel_to_hwio(np.zeros(shape, np.float32)).shape
        items.append(f"<li><code>{_e(conv.name)}.weight</code>: canonical / PyTorch <code>{list(shape)}</code> "
                     f"[O, I/groups, kH, kW] &rarr; Keras <code>kernel</code> and Flax <code>kernel</code> "
                     f"<code>{list(hwio)}</code> [kH, kW, I/groups, O].</li>")
    flat = flatten_inputs(spec)
    if flat:
        name, chw = next(iter(flat.items()))
        out_f, in_f = tensors[f"{name}.weight"]
        perm = layout.flatten_permutation(chw)
        how = ("a map of 1x1 pixels flattens the same in both orders: the rows are not permuted"
               if chw[1] * chw[2] == 1 else
               f"their row j is canonical column <code>perm[j]</code> = <code>{', '.join(map(str, perm[:6]))}, "
               "&hellip;</code> (<code>flatten_permutation</code>)")
        items.append(f"<li><code>{_e(name)}.weight</code>: canonical <code>[{out_f}, {in_f}]</code> reads a flattened "
                     f"(C, H, W) = {tuple(chw)} map channel-first; Keras and Flax flatten (H, W, C) and store the "
                     f"kernel <code>[{in_f}, {out_f}]</code>: {how}.</li>")
    return f"<ul>{''.join(items)}</ul>" if items else ""


def _model_page(site: Site, name: str, parity: Sequence[Mapping[str, Any]] | None,
                bench: Mapping[str, Any] | None, model_ops: Mapping[str, set[str]]) -> None:

    page = f"models/{name}.html"
    spec = load_spec(name)
    doc = json.loads(Path(spec.file).read_text())
    body = [f'<p class="summary">{_e(describe(name))}. Family <code>{_e(spec.family)}</code>, input '
            f'{"x".join(map(str, spec.input_shape))}.</p>']
    if spec.references:
        body.append("<p>References: " + ", ".join(f"<code>{_e(r)}</code>" for r in spec.references) + "</p>")
    notes = doc.get("notes", [])
    if notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    def links(blocks: Iterable[Mapping[str, Any]]) -> str:
        return ", ".join(f'<a href="{site.rel(page, "blocks/" + b["id"] + ".html")}">{_e(b["title"])}</a>'
                         for b in blocks)

    own = [b for b in site.table["blocks"] if set(b["ops"]) & model_ops[name]]
    common = [b for b in site.table["blocks"] if not b["ops"]]
    body.append(f"<h2>Building blocks</h2><p>Its layers: {links(own)}.</p><p>Every model: {links(common)}.</p>")
    model_parity = [r for r in parity or [] if r["model"] == name]
    if model_parity:
        body.append(f'<h2 id="parity">Parity</h2><p>From <code>rosetta parity</code> '
                    f'(<a href="{site.rel(page, "parity.html")}">all models</a>).</p>'
                    f"{implementations_line(page, model_parity, site)}{_parity_table(model_parity)}")
    model_bench = [r for r in (bench or {}).get("records", []) if r.get("model") == name]
    if model_bench:
        body.append(f'<h2 id="bench">Benchmarks</h2><p>From <code>rosetta bench</code> '
                    f'(<a href="{site.rel(page, "bench.html")}">all models</a>).</p>{record_table(model_bench)}')
    body.append(f"<h2>Porting the weights</h2>{_port_example(spec)}")
    body.append(f"<h2>Shape trace</h2>{_trace_table(analyze(spec))}")
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in spec.params.items()}
    variant = doc.get("models", {}).get(name, {})
    body.append("<h2>Spec</h2><p>Resolved parameters (override with <code>--set key=value</code>): "
                f"<code>{_e(json.dumps(params))}</code>. Variant entry: <code>{_e(json.dumps(variant))}</code>.</p>")
    spec_rel = f"shared/core/specs/{Path(spec.file).name}"
    site.extra_sources.add(spec_rel)
    link = site.rel(page, site.source_page(spec_rel))
    body.append(f'<details class="spec"><summary>{_e(spec_rel)} (the whole family file; '
                f'<a href="{link}">with line numbers</a>)</summary>'
                f'{site.highlight(Path(spec.file).read_text(), "json", site.plain_fmt)}</details>')
    site.add(page, name, "\n".join(body))


def _index_page(site: Site, names: Sequence[str], parity: Sequence[Mapping[str, Any]] | None,
                bench: Mapping[str, Any] | None) -> None:

    fws = site.table["frameworks"]
    rows = []
    for name in names:
        spec = load_spec(name)
        s = analyze(spec)
        recs = [r for r in parity or [] if r["model"] == name]
        status = (("all pass" if all(r["passed"] for r in recs) else f"{sum(not r['passed'] for r in recs)} fail")
                  if recs else "&ndash;")
        rows.append(f'<tr><td><a href="models/{_e(name)}.html">{_e(name)}</a></td><td>{_e(spec.family)}</td>'
                    f"<td>{s.total_params:,}</td><td>{human(s.total_macs)}</td><td>{status}</td>"
                    f"<td>{_e(describe(name))}</td></tr>")
    choice = "".join(f'<section class="fw-card" data-fw="{fw}"><h3>{_e(fws[fw]["name"])} '
                     f'<span class="layout">{_e(fws[fw]["layout"])}</span></h3><p>{inline(fws[fw]["summary"])}</p>'
                     "</section>" for fw in COLUMNS)
    measured = ""
    if bench and bench.get("recommendation"):
        measured = (f'<div class="recommendation"><h3>Measured (<a href="bench.html">benchmarks</a>)</h3>'
                    f'{_definitions(bench["recommendation"])}</div>')
    blocks = "".join(f'<li><a href="blocks/{_e(b["id"])}.html">{_e(b["title"])}</a>: {inline(b["summary"])}</li>'
                     for b in site.table["blocks"])
    body = (
        "<p>AlexNet, VGG and GoogLeNet written three times, in PyTorch, Keras 3 and Flax NNX, from one JSON "
        "spec. Every snippet below is read from the source when this site is generated, and that source is "
        "what the cross-framework parity tests run.</p>"
        f'<h2 id="choice">Choosing a framework</h2>{measured}<div class="fw-cards">{choice}</div>'
        f'<h2 id="models">Models</h2><table class="models"><thead><tr><th>model</th><th>family</th><th>params</th>'
        f'<th>MACs@224</th><th>parity</th><th>description</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
        f'<h2 id="blocks">Building blocks</h2><ul class="blocks">{blocks}</ul>')
    site.add("index.html", "Rosetta CNN: one network, three frameworks", body)


# ---------------------------------------------------------------------------
# "Keras on three backends" (blocks.json: keras_backends)

#: the Keras backends, the columns of the Keras page; ``shared`` snippets span the row below
KERAS_BACKENDS: tuple[str, ...] = ("tensorflow", "jax", "torch")
KERAS_PAGE = "keras-backends.html"


def check_keras_backends(table: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``keras_backends`` entry of the block table with its structure checked (None if the
    table has none): ``title``, ``summary``, ``backends`` (name and install line per backend),
    ``sections`` (id, title, summary, snippets per backend or ``shared``, notes per backend) and
    ``measured`` (tables: title, caption, columns, rows)."""
    return check_column_page(table, "keras_backends", "backends", KERAS_BACKENDS)


def check_column_page(table: Mapping[str, Any], key: str, columns_key: str,
                      columns: Sequence[str]) -> dict[str, Any] | None:
    """A side-by-side page of the block table (``key``: ``keras_backends``, ``data_parallel``)
    with its structure checked, None if the table has none: ``title``, ``summary``,
    ``columns_key`` (name and install line per column), ``sections`` and ``measured``."""
    page = table.get(key)
    if page is None:
        return None

    def need(cond: bool, where: str, what: str) -> None:
        if not cond:
            raise RosettaError(f"{BLOCKS_PATH.name}: $.{key}{where}: expected {what}")

    def text(value: Any) -> bool:
        return isinstance(value, str) and value != ""

    need(isinstance(page, dict), "", "an object")
    for field in ("title", "summary"):
        need(text(page.get(field)), f".{field}", "a non-empty string")
    heads = page.get(columns_key)
    need(isinstance(heads, dict) and set(heads) == set(columns), f".{columns_key}",
         f"an object with exactly {', '.join(columns)}")
    for b in columns:
        need(isinstance(heads[b], dict) and all(text(heads[b].get(k)) for k in ("name", "install")),
             f".{columns_key}.{b}", "an object with string 'name' and 'install'")
    need(isinstance(page.get("sections"), list) and page["sections"], ".sections", "a non-empty list")
    for i, section in enumerate(page["sections"]):
        at = f".sections[{i}]"
        need(isinstance(section, dict), at, "an object")
        for field in ("id", "title", "summary"):
            need(text(section.get(field)), f"{at}.{field}", "a non-empty string")
        snippets, notes = section.get("snippets"), section.get("notes", {})
        need(isinstance(snippets, dict) and snippets and set(snippets) <= {*columns, SHARED}
             and all(isinstance(refs, list) and refs and all(isinstance(r, str) for r in refs)
                     for refs in snippets.values()),
             f"{at}.snippets", f"an object from {', '.join((*columns, SHARED))} to lists of 'file:symbol'")
        need(isinstance(notes, dict) and set(notes) <= set(columns) and all(
            isinstance(n, list) and all(isinstance(x, str) for x in n) for n in notes.values()),
             f"{at}.notes", f"an object from {', '.join(columns)} to lists of strings")
    for i, measured in enumerate(page.get("measured", [])):
        at = f".measured[{i}]"
        need(isinstance(measured, dict) and text(measured.get("title")) and text(measured.get("caption")),
             at, "an object with string 'title' and 'caption'")
        cols, rows = measured.get("columns"), measured.get("rows")
        need(isinstance(cols, list) and cols and all(isinstance(c, str) for c in cols), f"{at}.columns",
             "a list of column names")
        need(isinstance(rows, list) and all(isinstance(r, list) and len(r) == len(cols) for r in rows),
             f"{at}.rows", f"a list of rows of {len(cols)} cells")
    return page


def keras_snippets(page: Mapping[str, Any]) -> dict[str, dict[str, list[Snippet]]]:
    """Section id -> column -> snippets of the Keras page; every stale location reported at once."""
    return column_snippets(page, "keras_backends")


def column_snippets(page: Mapping[str, Any], key: str) -> dict[str, dict[str, list[Snippet]]]:
    """Section id -> column -> snippets of a side-by-side page; every stale location reported at once."""
    out: dict[str, dict[str, list[Snippet]]] = {}
    problems = []
    for section in page["sections"]:
        for col, refs in section["snippets"].items():
            for ref in refs:
                try:
                    out.setdefault(section["id"], {}).setdefault(col, []).append(extract(ref))
                except RosettaError as e:
                    problems.append(f"{key} section {section['id']!r} ({col}): {e}")
    if problems:
        raise RosettaError("stale source location(s) in the docs block table:\n  " + "\n  ".join(problems))
    return out


def _column_sections(site: Site, page: str, page_doc: Mapping[str, Any], columns_key: str, columns: Sequence[str],
                     snippets: Mapping[str, Mapping[str, list[Snippet]]], css: Callable[[str], str],
                     install: str = "Install") -> list[str]:
    """The body of a side-by-side page: its summary and ``install`` lines, each section's code
    and notes in one column per ``columns`` entry (``css``: the column's ``data-fw``) with the
    ``shared`` snippets below, and the ``measured`` tables."""
    names = page_doc[columns_key]
    body = [f'<p class="summary">{inline(page_doc["summary"])}</p>',
            f"<p>{_e(install)}: " + "; ".join(f"{_e(names[b]['name'])} <code>{_e(names[b]['install'])}</code>"
                                      for b in columns) + ".</p>"]
    for section in page_doc["sections"]:
        body.append(f'<h2 id="{_e(section["id"])}">{_e(section["title"])}</h2>'
                    f'<p class="summary">{inline(section["summary"])}</p>')
        got = snippets[section["id"]]
        cols = []
        for b in columns:
            code = "".join(site.snippet_html(page, s) for s in got.get(b, []))
            notes = "".join(f"<li>{inline(n)}</li>" for n in section.get("notes", {}).get(b, []))
            notes = f'<div class="pitfalls"><ul>{notes}</ul></div>' if notes else ""
            if code or notes:
                cols.append(f'<section class="fw-col" data-fw="{_e(css(b))}"><h3>{_e(names[b]["name"])}</h3>'
                            f"{code}{notes}</section>")
        if cols:
            body.append(f'<div class="columns cols-{len(cols)}">{"".join(cols)}</div>')
        shared = got.get(SHARED, [])
        if shared:
            body.append('<div class="shared-grid">' + "".join(site.snippet_html(page, s) for s in shared) + "</div>")
    for measured in page_doc.get("measured", []):
        head = "".join(f"<th>{_e(c)}</th>" for c in measured["columns"])
        rows = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in measured["rows"])
        body.append(f'<h2>{_e(measured["title"])}</h2><p>{inline(measured["caption"])}</p>'
                    f'<table class="records"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')
    return body


def _keras_backends_page(site: Site, page_doc: Mapping[str, Any], snippets: Mapping[str, Mapping[str, list[Snippet]]],
                         parity: Sequence[Mapping[str, Any]] | None) -> None:
    page = KERAS_PAGE
    body = _column_sections(site, page, page_doc, "backends", KERAS_BACKENDS, snippets, lambda b: f"keras-{b}")
    keras_records = [r for r in parity or [] if "keras/" in f"{r['source']} {r['target']}"]
    if keras_records:
        body.append(f'<h2 id="parity">Parity of this run</h2><p>The records of <code>rosetta parity</code> given to '
                    f"<code>rosetta docs --parity</code> that involve a Keras backend.</p>{_parity_table(keras_records)}")
    site.add(page, page_doc["title"], "\n".join(body))


# ---------------------------------------------------------------------------
# "Data parallel in three frameworks" (blocks.json: data_parallel)

#: the data-parallel engines, the columns of the page (``training/distributed.py`` ENGINES)
DP_ENGINES: tuple[str, ...] = ("torch", "flax", "keras/jax", "keras/tensorflow")
DP_PAGE = "data-parallel.html"


def check_data_parallel(table: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``data_parallel`` entry of the block table with its structure checked (None if the
    table has none): as the Keras page, with ``engines`` (name and launch line per engine)."""
    return check_column_page(table, "data_parallel", "engines", DP_ENGINES)


def _data_parallel_page(site: Site, page_doc: Mapping[str, Any],
                        snippets: Mapping[str, Mapping[str, list[Snippet]]]) -> None:
    body = _column_sections(site, DP_PAGE, page_doc, "engines", DP_ENGINES, snippets,
                            lambda e: e.split("/")[0],  # keras/jax, keras/tensorflow: the Keras colour
                            install="Several machines")
    site.add(DP_PAGE, page_doc["title"], "\n".join(body))


def implementations_line(page: str, records: Sequence[Mapping[str, Any]], site: Site) -> str:
    """Which implementations (``torch``, ``keras/jax``, ...) the records compare, each Keras
    label linked to the Keras page when the site has one."""
    labels = sorted({r[k] for r in records for k in ("source", "target")})
    link = site.rel(page, KERAS_PAGE) if any(p == KERAS_PAGE for p, _ in site.nav) else None
    shown = [f'<a href="{link}"><code>{_e(x)}</code></a>' if link and x.startswith("keras") else f"<code>{_e(x)}</code>"
             for x in labels]
    return f'<p class="implementations">Implementations compared: {", ".join(shown)}.</p>'


def _blocks_index(site: Site) -> None:
    items = "".join(f'<li><a href="{_e(b["id"])}.html">{_e(b["title"])}</a>: {inline(b["summary"])}</li>'
                    for b in site.table["blocks"])
    site.add("blocks/index.html", "Building blocks", f'<ul class="blocks">{items}</ul>')


def build_site(out: str | Path, *, parity: str | Path | None = None, bench: str | Path | None = None,
               table: Mapping[str, Any] | None = None, progress: Say | None = None) -> list[str]:
    """Write the guide into ``out`` (whole or not at all) and return its page paths.

    ``out`` must be absent, empty, or a site this function wrote before (it is replaced).
    """

    say = progress or (lambda msg: None)
    out = check_out(Path(out))
    table = table if table is not None else load_blocks()
    say("extracting snippets from the source")
    snippets = extract_all(table)
    for block in table["blocks"]:
        if block["id"] not in snippets:
            say(f"leaving out the optional block {block['id']!r}: a file it shows does not exist")
    table = {**table, "blocks": [b for b in table["blocks"] if b["id"] in snippets]}
    parity_records, parity_png = load_parity(parity) if parity is not None else (None, None)
    bench_doc, bench_png, bench_md = load_bench(bench) if bench is not None else (None, None, None)

    keras_page = check_keras_backends(table)
    keras_code = keras_snippets(keras_page) if keras_page is not None else {}
    dp_page = check_data_parallel(table)
    dp_code = column_snippets(dp_page, "data_parallel") if dp_page is not None else {}

    site = Site(table, snippets)
    if keras_page is not None:
        site.nav.append((KERAS_PAGE, "Keras backends"))
    if dp_page is not None:
        site.nav.append((DP_PAGE, "Data parallel"))
    if parity_records is not None:
        site.nav.append(("parity.html", "Parity"))
    if bench_doc is not None:
        site.nav.append(("bench.html", "Benchmarks"))
    names = list_models()
    model_ops = {n: spec_features(load_spec(n)) for n in names}
    _index_page(site, names, parity_records, bench_doc)
    _blocks_index(site)
    if keras_page is not None:
        _keras_backends_page(site, keras_page, keras_code, parity_records)
        site.extra_sources.update(s.file for cols in keras_code.values() for ss in cols.values() for s in ss)
    if dp_page is not None:
        _data_parallel_page(site, dp_page, dp_code)
        site.extra_sources.update(s.file for cols in dp_code.values() for ss in cols.values() for s in ss)
    for block in table["blocks"]:
        _block_page(site, block, model_ops)
    for i, name in enumerate(names, 1):
        say(f"[{i}/{len(names)}] model page {name}")
        _model_page(site, name, parity_records, bench_doc, model_ops)
    if parity_records is not None:
        body = "<p>Largest differences of the outputs for every ordered pair of frameworks (rosetta parity).</p>"
        if parity_png is not None:
            site.files["images/parity.png"] = parity_png
            body += '<figure><img src="images/parity.png" alt="parity heat map"></figure>'
        site.add("parity.html", "Cross-framework parity", body + _parity_table(parity_records))
    if bench_doc is not None:
        body = ""
        if bench_doc.get("recommendation"):
            body += f'<h2>Recommendation</h2>{_definitions(bench_doc["recommendation"])}'
        if bench_doc.get("meta"):
            body += f'<h2>Set-up</h2>{_definitions(bench_doc["meta"])}'
        if bench_png is not None:
            site.files["images/bench.png"] = bench_png
            body += '<figure><img src="images/bench.png" alt="benchmark plot"></figure>'
        if bench_md is not None:
            site.files["bench.md"] = bench_md
            body += '<p><a href="bench.md">bench.md</a> (the same figures as Markdown).</p>'
        site.add("bench.html", "Benchmarks", body + "<h2>Records</h2>" + record_table(bench_doc["records"]))
    say("highlighting the source files")
    site.source_pages()
    _write(site, out)
    return sorted(site.pages)


def _write(site: Site, out: Path) -> None:
    """Write every page and file into a temporary directory beside ``out``, then swap it in."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out.parent)  # what a killed run left (.NAME.PID-RANDOM.rosetta-tmp)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}-", suffix=TEMP_SUFFIX, dir=out.parent))
    except OSError as e:
        raise FileError(f"--out {out}: cannot write in {out.parent}: {e.strerror}") from None
    try:
        for rel_path, text in site.pages.items():
            target = tmp / rel_path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        (tmp / "assets").mkdir(exist_ok=True)
        shutil.copyfile(ASSETS_DIR / "style.css", tmp / "assets" / "style.css")
        (tmp / "assets" / "pygments.css").write_text(site.pygments_css)
        for rel_path, src in site.files.items():
            (tmp / rel_path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel_path)
        (tmp / MARKER).write_text("written by rosetta docs; the directory is replaced on the next run\n")
        tmp.chmod(0o755)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.{os.getpid()}-old{TEMP_SUFFIX}")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise FileError(f"--out {out}: cannot write: {e.strerror}") from None
        raise
