"""mavail's socket layer: NDJSON JSON-RPC 2.0 server, the method table, a client library and the CLI."""

PROTOCOL_VERSION = "1.0"
