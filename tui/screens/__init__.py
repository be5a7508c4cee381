"""Screens of the TUI: the main tabbed screen and its modal dialogs."""
