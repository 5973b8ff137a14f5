"""Faithful fakes of hosted upstreams, each runnable as ``python -m harness.fakes.NAME``."""
