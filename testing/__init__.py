"""Test servers for mavail's tests, benchmarks and demo: not part of the engine's domain."""
