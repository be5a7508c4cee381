"""Prometheus metrics: an opt-in HTTP listener serving `/metrics` from figures the engine's parts report (docs/metrics.md)."""
