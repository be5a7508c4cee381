"""mavail's domain: catalog, configuration, state, downloads, health, fallback and storage.

Nothing in this package imports `rpc` or `tui`; `tests/test_layering.py` proves it.
"""

__version__ = "0.1.0"
