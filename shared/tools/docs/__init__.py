"""``rosetta docs``: the static site generator (``site``), its block table (``blocks.json``)
and assets."""
