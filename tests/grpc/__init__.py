"""The gRPC API of a real gateway process: its contract, refusals, limits, TLS and fuzzing."""
