"""Benchmarks of the gateway against bare baselines; run with ``python -m bench`` (see __main__)."""
