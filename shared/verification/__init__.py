"""Where "the same numbers" is decided: forward parity and its first-divergence report
(``parity``), training-step parity (``training``) and the one table of tolerances
(``tolerances``)."""
