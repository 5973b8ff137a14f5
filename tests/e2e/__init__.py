"""Whole journeys through real processes: whisper, upstreams, restarts, replicas, takeovers and chaos."""
