"""LiveTable: a DataTable kept in step with engine data by row key (update changed cells, add new, remove gone)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.geometry import Region
from textual.strip import Strip
from textual.widgets import DataTable
from textual import events
from textual.widgets.data_table import CellDoesNotExist, CellKey, ColumnKey, RowDoesNotExist, RowKey

from mavail.tui.widgets.scrollbars import use_whole_cell_scrollbars

Cell = str | Text


class KeyedText(Text):
    """The text of a row's first cell, carrying the row's key (sorting reads it: two rows may show the same text)."""

    row_key: str = ""


def _cell_len(cell: Cell) -> int:
    """Terminal cells the text of a cell takes (its widest line)."""
    text = cell if isinstance(cell, Text) else Text(cell)
    return max((line.cell_len for line in text.split()), default=0)


def _keyed(text: Cell, key: str) -> Cell:
    cell = KeyedText(text.plain if isinstance(text, Text) else text)
    cell.row_key = key
    return cell


def _shown(cell: Cell) -> Cell:
    """A cell as the table is given it: text, never a string, which DataTable would read as markup (and emoji
    codes) each time it draws the cell: slower, and a model id with brackets would lose them."""
    return Text(cell) if isinstance(cell, str) else cell


def _row_key(cell: Any) -> str:
    return getattr(cell, "row_key", None) or str(cell)


@dataclass(frozen=True)
class Column:
    """One column: its key, its header, and how to sort rows by it (from the row's raw record)."""

    key: str
    label: str
    sort: Callable[[dict[str, Any]], Any] | None = None
    width: int | None = None
    min_screen: int = 0
    """Shown only on a terminal at least this wide (0: always)."""
    max_screen: int = 0
    """Shown only on a terminal narrower than this (0: always); a wider twin can take its place."""

    def fits(self, screen_width: int) -> bool:
        """Whether the column is shown on a terminal `screen_width` wide."""
        return screen_width >= self.min_screen and (not self.max_screen or screen_width < self.max_screen)


class LiveTable(DataTable[Cell]):
    """A table whose rows follow a keyed source without being cleared and refilled.

    `sync(rows)` makes the shown rows equal to `rows` (key -> (cells, raw)):
    cells that changed are updated in place, new rows added, gone rows removed,
    all inside one `batch_update`. `upsert` does the same for some rows only
    (live events). A text filter hides rows whose key does not contain it, and
    `cycle_sort` orders rows by one column after another. The first column is
    the row's label (its key, or what the key is named by where rows share it).
    """

    DEFAULT_CSS = """
    LiveTable { height: 1fr; }
    """

    def __init__(self, columns: list[Column], **kw: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kw)
        self.spec = columns
        self._cells: dict[str, tuple[Cell, ...]] = {}
        """Every row the source has, shown or filtered out."""
        self._raw: dict[str, dict[str, Any]] = {}
        """The record each row was built from (used for sorting and actions)."""
        self.filter_text = ""
        """Rows whose key contains this (case-insensitive) are shown."""
        self.sort_index: int | None = None
        """Column the rows are sorted by, None for source order."""
        self.sort_reverse = False
        self.updates = 0
        """Cells updated in place so far (tests and benchmarks read it)."""
        self._shown_cells: dict[str, tuple[Cell, ...]] = {}
        """The cells of the rows now in the DataTable."""
        self._cols: list[int] = []
        """Indexes into `spec` of the columns shown at this terminal width."""
        self._drawn_widths: tuple[int, ...] = ()
        """The table's width and its columns' widths when lines were last drawn."""
        self._changed: dict[str, set[str]] = {}
        """Cells that changed since they were last drawn, by row (drawn again at the end of the update)."""
        self._drawn: dict[str, dict[tuple[Any, ...], tuple[Any, int]]] = {}
        """Cells drawn, by row key, then by column, width and styles: their lines and the row index they were drawn at."""
        self._drawn_count = 0
        self._restyled = False
        """Styles were applied again since the last lines drawn."""
        self._looks: dict[Any, tuple[Any, ...]] = {}
        """The styles cells were drawn with, by the focus and hover state they were drawn in."""

    def on_mount(self) -> None:
        use_whole_cell_scrollbars(self)
        self._layout_columns()

    def on_resize(self, event: events.Resize) -> None:
        # DataTable's own handler forgets every line it drew, and a table is resized each time its tab is shown or
        # the filter box opens, which drew every visible row again; what is drawn depends on the table's width only,
        # which render_lines watches
        event.prevent_default()
        if [i for i, c in enumerate(self.spec) if c.fits(self.app.size.width)] != self._cols:
            self._layout_columns()

    def _layout_columns(self) -> None:
        """(Re)build the columns that fit the terminal, keeping rows, order and the cursor's row."""
        selected = self.selected_key
        self._cols = [i for i, c in enumerate(self.spec) if c.fits(self.app.size.width)]
        with self.app.batch_update():
            self.clear(columns=True)
            self._shown_cells.clear()
            for i in self._cols:
                c = self.spec[i]
                self.add_column(c.label, key=c.key, width=c.width)
            self._reapply_all()
        if selected is not None:
            self.select(selected)

    def render_lines(self, crop: Region) -> list[Strip]:
        """The table's lines; drawn afresh when a column's width (or the table's) changed since the last lines drawn.

        DataTable measures its columns when its message queue is idle, while the
        screen draws on a timer of its own that may come first; the lines it
        keeps are not keyed by the column widths, so a row drawn in between
        would keep the widths from before (until the row changes). A row's line
        also fills the table's width (the cursor's colour runs to the edge)."""
        widths = (self.size.width, *(column.get_render_width(self) for column in self.ordered_columns))
        if widths != self._drawn_widths:
            self._drawn_widths = widths
            self._clear_caches()
        if self._restyled:
            self._restyled = False
            state = self.get_pseudo_class_state()
            looks = (self.rich_style, tuple(self.get_component_rich_style(c) for c in sorted(self.COMPONENT_CLASSES)))
            if self._looks.get(state, looks) != looks:  # the theme or the CSS changed: nothing drawn is right
                self._looks.clear()
                self._clear_caches()
            self._looks[state] = looks
        return super().render_lines(crop)

    DRAWN_CELLS_MAX = 30_000
    """Cells kept drawn (1,000 rows of 8 columns in two focus states); past this every one is forgotten."""

    def _render_cell(self, row_index: int, column_index: int, base_style: Style, width: int, cursor: bool = False,
                     hover: bool = False) -> Any:
        """One cell's lines (`_draw_cell`, else DataTable's), kept by row key rather than by DataTable's update
        counter, which sorting (and every added or removed row) moves on: a sort drew every visible cell again. A
        cell kept from another row index gets that index in its mouse data again (a click selects the row it is on)."""
        if row_index < 0 or column_index < 0:  # the header and row labels: DataTable's own
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        row_key = self._row_locations.get_key(row_index)
        column_key = self._column_locations.get_key(column_index)
        if row_key is None or row_key.value is None:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        key = (column_key, column_index, base_style, width, cursor, hover, self._show_hover_cursor, self._pseudo_class_state)
        got = self._drawn.get(row_key.value, {}).get(key)
        if got is not None:
            lines, at = got
            if at == row_index:
                return lines
            meta = Style.from_meta({"row": row_index, "column": column_index})
            lines = [[Segment(text, style + meta if style else meta, control) for text, style, control in line]
                     for line in lines]
        else:
            lines = self._draw_cell(row_index, column_index, base_style, width, cursor, hover)
            if lines is None:
                lines = super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
            self._drawn_count += 1
            if self._drawn_count > self.DRAWN_CELLS_MAX:
                self._drawn.clear()
                self._drawn_count = 0
        self._drawn.setdefault(row_key.value, {})[key] = (lines, row_index)
        return lines

    def _draw_cell(self, row_index: int, column_index: int, base_style: Style, width: int, cursor: bool,
                   hover: bool) -> list[list[Segment]] | None:
        """A one-line cell of text drawn as DataTable draws it (the same segments), a third of the time: DataTable
        sends it through Rich's padding and console rendering; here its text is cut to the column and padded.
        None for what it does not cover (a taller row, a cell that is not text): DataTable draws those."""
        row_key = self._row_locations.get_key(row_index)
        row = self.rows.get(row_key) if row_key is not None else None
        if row is None or row.height != 1:
            return None
        cell = self._get_row_renderables(row_index).cells[column_index]
        if not isinstance(cell, Text):
            return None
        fixed = row_index < self.fixed_rows or column_index < self.fixed_columns
        component_style, post_style = self._get_styles_to_render_cell(
            False, False, fixed, hover, cursor, self.show_cursor, self._show_hover_cursor,
            self.cursor_foreground_priority == "css", self.cursor_background_priority == "css")
        pre_style = base_style + Style.from_meta({"row": row_index, "column": column_index}) + component_style
        console, options = self.app.console, self.app.console_options
        pad = self.cell_padding
        inner = max(0, width - 2 * pad)
        # what Text.__rich_console__ does at this width, one line high, without wrapping unless the text asks for it
        lines = cell.wrap(console, inner, justify=cell.justify or options.justify or "default",
                          overflow=cell.overflow or options.overflow or "fold",
                          tab_size=(console.tab_size if cell.tab_size is None else cell.tab_size) or 8,
                          no_wrap=True if cell.no_wrap is None else cell.no_wrap)
        text = list(Text("\n").join(lines[:1]).render(console, end="")) if lines else []
        blank = Style.null()
        segments = Segment.adjust_line_length(text, inner, style=blank, pad=True)
        if pad:
            segments = [Segment(" " * pad, blank), *segments, Segment(" " * pad, blank)]
        return [list(Segment.apply_style(segments, style=pre_style, post_style=post_style))]

    def _clear_caches(self) -> None:
        super()._clear_caches()
        self._drawn.clear()
        self._drawn_count = 0

    def notify_style_update(self) -> None:
        """Styles were applied again: the table's focus came or went, or its theme changed.

        DataTable forgets every cell it drew then, and focus moves at each tab
        switch, so showing a tab drew all its rows again. What it draws is kept
        by the focus and hover state it was drawn in; here it is kept, and
        `render_lines` forgets it only when the styles of that state are not
        the ones it was drawn with."""
        super(DataTable, self).notify_style_update()  # the widget's own style caches, without DataTable's forgetting
        self._get_styles_to_render_cell.cache_clear()  # component styles (cursor, hover) for the new state
        self._styles_cache.clear()
        self._restyled = True
        self.refresh()

    # --- data --------------------------------------------------------------
    def _visible(self, key: str) -> bool:
        return not self.filter_text or self.filter_text.lower() in key.lower()

    def _apply(self, key: str, cells: tuple[Cell, ...]) -> bool:
        """Show `cells` for `key`; return True when a row was added (order may need sorting)."""
        if not self._visible(key):
            self._drop(key)
            return False
        if key in self.rows:
            old = self._shown_cells.get(key)
            for i in self._cols:
                col, new = self.spec[i], cells[i]
                if old is None or new != old[i]:
                    try:
                        # widths are measured again over every row only when a cell outgrows its column: a table of
                        # 1,000 rows updated several times a second would spend its time measuring otherwise
                        grow = col.width is None and _cell_len(new) > self.columns[col.key].content_width
                        self._put_cell(key, col.key, _keyed(new, key) if i == 0 else _shown(new), grow)
                        self.updates += 1
                    except CellDoesNotExist:
                        pass
            self._shown_cells[key] = cells
            return False
        self._drawn.pop(key, None)  # a row shown again (the filter) may have other cells than when it was drawn
        self.add_row(*(_keyed(cells[i], key) if i == 0 else _shown(cells[i]) for i in self._cols), key=key)
        self._shown_cells[key] = cells
        return True

    # DataTable keys what it draws by one counter that every update_cell moves on, so one changed cell drew every
    # visible row again (with 1,000 rows and 8 downloads, twice a second, in front of any key press); these two
    # put the value in and forget only the changed rows' drawn lines. They read DataTable's caches (textual is
    # pinned); the tests that draw updated rows fail if those change.
    def _put_cell(self, key: str, column: str, value: Cell, grow: bool) -> None:
        """DataTable.update_cell, drawing only row `key` again (when the update ends: `_redraw_changed`)."""
        if key not in self._row_locations or column not in self._column_locations:
            raise CellDoesNotExist(f"no cell for row {key!r}, column {column!r}")
        self._data[RowKey(key)][ColumnKey(column)] = value
        if grow:
            self._updated_cells.add(CellKey(RowKey(key), ColumnKey(column)))
            self._require_update_dimensions = True
        self._changed.setdefault(key, set()).add(column)

    def _redraw_changed(self) -> None:
        """Forget what was drawn of the cells that changed and of their rows' lines, and draw those rows again; as
        many rows as fill the table: the whole table again."""
        changed, self._changed = self._changed, {}
        if not changed:
            return
        if self._require_update_dimensions:
            self.check_idle()  # DataTable measures the grown columns when idle
        if len(changed) >= max(32, self.size.height):
            self._clear_caches()
            self.refresh()
            return
        indexes = {i for i in (self._row_locations.get(RowKey(k)) for k in changed) if i is not None}
        # rows are one line high (add_row's default), so a row's line is its index below the header
        lines = {i + (self.header_height if self.show_header else 0) for i in indexes}
        caches: list[tuple[Any, Callable[[Any], bool]]] = [
            (self._cell_render_cache, lambda d: d[0] in changed and d[1] in changed[d[0]]),
            (self._row_render_cache, lambda d: d[0] in changed),
            (self._row_renderable_cache, lambda d: d[1] in indexes),
            (self._line_cache, lambda d: d[0] in lines),
        ]
        for cache, stale in caches:
            for drawn in [d for d in cache.keys() if stale(d)]:
                cache.discard(drawn)
        for key, columns in changed.items():
            row = self._drawn.get(key, {})
            for drawn in [d for d in row if d[0] in columns]:
                del row[drawn]
        for i in indexes:
            self.refresh_row(i)

    def _drop(self, key: str) -> None:
        if key in self.rows:
            try:
                self.remove_row(key)
            except RowDoesNotExist:
                pass
        self._shown_cells.pop(key, None)

    def sync(self, rows: dict[str, tuple[tuple[Cell, ...], dict[str, Any]]]) -> None:
        """Make the table show exactly `rows` (key -> (cells, raw record))."""
        with self.app.batch_update():
            for key in [k for k in self._cells if k not in rows]:
                self._cells.pop(key, None)
                self._raw.pop(key, None)
                self._drop(key)
            added = False
            for key, (cells, raw) in rows.items():
                self._cells[key] = cells
                self._raw[key] = raw
                added |= self._apply(key, cells)
            if added and self.sort_index is not None:
                self._sort()
            self._redraw_changed()

    def upsert(self, key: str, cells: tuple[Cell, ...], raw: dict[str, Any]) -> None:
        """Add or update one row."""
        with self.app.batch_update():
            self._cells[key] = cells
            self._raw[key] = raw
            if self._apply(key, cells) and self.sort_index is not None:
                self._sort()
            self._redraw_changed()

    def remove(self, key: str) -> None:
        """Forget one row."""
        self._cells.pop(key, None)
        self._raw.pop(key, None)
        self._drop(key)

    def raw(self, key: str) -> dict[str, Any] | None:
        """The record behind row `key`."""
        return self._raw.get(key)

    def keys(self) -> list[str]:
        """Every row key the source has (shown or not)."""
        return list(self._cells)

    def cell(self, key: str, column: str) -> Cell | None:
        """The shown value of one cell, or None."""
        cells = self._cells.get(key)
        if cells is None:
            return None
        for col, value in zip(self.spec, cells):
            if col.key == column:
                return value
        return None

    @property
    def selected_key(self) -> str | None:
        """The key of the row under the cursor, or None in an empty table."""
        if self.row_count == 0:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except (CellDoesNotExist, RowDoesNotExist):
            return None

    def select(self, key: str) -> bool:
        """Move the cursor to row `key`; False if it is not shown."""
        try:
            self.move_cursor(row=self.get_row_index(key))
        except RowDoesNotExist:
            return False
        return True

    def _reapply_all(self) -> None:
        """Show or hide every known row for the current columns and filter, sort when rows came in, draw what changed."""
        added = False
        for key, cells in self._cells.items():
            added |= self._apply(key, cells)
        if added and self.sort_index is not None:
            self._sort()
        self._redraw_changed()

    # --- filter and sort ---------------------------------------------------
    def set_filter(self, text: str) -> None:
        """Show only rows whose key contains `text`."""
        self.filter_text = text.strip()
        with self.app.batch_update():
            self._reapply_all()

    def cycle_sort(self) -> str:
        """Sort by the next sortable column (then reverse, then source order); return a description."""
        sortable = [i for i, c in enumerate(self.spec) if c.sort is not None or i == 0]
        if self.sort_index is None:
            self.sort_index, self.sort_reverse = sortable[0], False
        elif not self.sort_reverse:
            self.sort_reverse = True
        else:
            pos = sortable.index(self.sort_index) if self.sort_index in sortable else -1
            if pos + 1 >= len(sortable):
                self.sort_index = None
            else:
                self.sort_index, self.sort_reverse = sortable[pos + 1], False
        if self.sort_index is None:
            order = {k: i for i, k in enumerate(self._cells)}
            self.sort(self.spec[0].key, key=lambda k: order.get(_row_key(k), len(order)))
            return "source order"
        self._sort()
        col = self.spec[self.sort_index]
        return f"{col.label} {'descending' if self.sort_reverse else 'ascending'}"

    def _sort(self) -> None:
        assert self.sort_index is not None
        col = self.spec[self.sort_index]
        if col.sort is None:
            self.sort(self.spec[0].key, key=str, reverse=self.sort_reverse)
            return

        def value(cell: Any) -> Any:
            raw = self._raw.get(_row_key(cell), {})
            v = col.sort(raw)  # type: ignore[misc]
            return (v is None, v if v is not None else 0)

        self.sort(self.spec[0].key, key=value, reverse=self.sort_reverse)
