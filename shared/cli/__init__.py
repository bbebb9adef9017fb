"""The ``rosetta`` command line: thin commands over the library (one module per command group).

Commands and flags are a public contract: add, never rename.
"""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
