"""The framework-free contract: the spec language (``spec``, ``ops``, JSON specs and schema),
the analysis, the one layout module, the canonical weight format, file helpers and the port
registry and contract (``ports``). Nothing here imports a framework, matplotlib or pygments."""
