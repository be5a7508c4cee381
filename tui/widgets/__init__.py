"""Widgets of the TUI: the live table, the status line and one pane per tab."""
