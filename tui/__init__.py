"""The Textual TUI of mavail: attaches to the engine socket through rpc.client only."""
