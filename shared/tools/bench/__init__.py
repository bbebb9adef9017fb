"""``rosetta bench``: the runner (one worker process per framework, model and variant), the
worker, the report (roof, goals, recommendation) and the hand-written baselines' tables."""
