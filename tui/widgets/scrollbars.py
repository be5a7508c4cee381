"""Scrollbars drawn in whole cells: a thumb never ends in an eighth-block glyph that reads like a chart beside a row."""

from __future__ import annotations

from typing import ClassVar

from textual.scrollbar import ScrollBarRender
from textual.widget import Widget


class WholeCellScrollBarRender(ScrollBarRender):
    """Textual's scrollbar with its thumb rounded to whole cells.

    Textual draws the ends of a thumb that start or stop inside a cell as
    eighth blocks (▂▂ on a two-cell bar); where the thumb's colour is close to
    the track's, as in the dark theme, only those glyphs stand out and read as
    a fragment of a sparkline at the end of a row. With one glyph per cell the
    thumb's position is rounded to the cell and drawn as blank cells in its
    colour."""

    VERTICAL_BARS: ClassVar[list[str]] = [" "]
    HORIZONTAL_BARS: ClassVar[list[str]] = [" "]


def use_whole_cell_scrollbars(widget: Widget) -> None:
    """Draw `widget`'s scrollbars in whole cells (each widget owns its scrollbars; this sets theirs only)."""
    widget.vertical_scrollbar.renderer = WholeCellScrollBarRender
    widget.horizontal_scrollbar.renderer = WholeCellScrollBarRender
