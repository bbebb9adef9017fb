"""Tools around the models: the benchmark (``bench``), the side-by-side docs site (``docs``)
and the project's plots (``plots``). matplotlib and pygments are needed here only."""
