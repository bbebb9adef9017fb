"""``rosetta docs``: the static, offline side-by-side guide (``tools/docs/site.py``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run_docs(args: argparse.Namespace) -> int:
    from ..tools.docs.site import build_site

    pages = build_site(args.out, parity=args.parity, bench=args.bench,
                       progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"wrote {args.out}: {len(pages)} pages; open {Path(args.out) / 'index.html'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("docs", help="write the static, offline HTML guide (the three ports side by side)")
    s.add_argument("--out", required=True, metavar="DIR", help="output directory (new, empty, or an earlier site)")
    s.add_argument("--parity", metavar="FILE.json",
                   help="parity records (rosetta parity --json FILE, or the --out DIR holding parity.json/png)")
    s.add_argument("--bench", metavar="DIR", help="output directory of rosetta bench --out (bench.json/png/md)")
    s.set_defaults(func=run_docs)
