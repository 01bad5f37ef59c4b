"""Screens of the status viewer: failures, logs, help and the configuration editor."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Input, RichLog, Static, Tree
from textual.widgets.tree import TreeNode

from cicdllm_assets.config import ConfigError, load_settings
from cicdllm_assets.config.editor import (
    FieldSpec,
    format_value,
    get_value,
    iter_fields,
    iter_sections,
    parse_value,
    preview,
    reset_value,
    set_value,
)
from cicdllm_assets.config.models import AppConfig
from cicdllm_assets.status.model import Status
from cicdllm_assets.tui.widgets import StaticPanel, clock

KEYS_HELP = [
    ("q", "quit"),
    ("r", "refresh now"),
    ("f", "failures: categories and messages"),
    ("l", "log tail (newest last)"),
    ("c", "configuration editor"),
    ("?", "this help"),
    ("escape", "back to the dashboard"),
    ("enter", "config editor: save the edited value (validated first)"),
    ("ctrl+d", "config editor: reset the field to its default"),
]


class FailuresScreen(Screen[None]):
    """Failures by category, then every recorded failure with its message."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self) -> None:
        super().__init__()
        self._messages: list[str] = []  # full message of each table row

    def compose(self) -> ComposeResult:
        """Categories on top, the failures table, the selected message below."""
        yield Header()
        yield StaticPanel(id="failure-categories")
        yield DataTable(id="failures-table", cursor_type="row", zebra_stripes=True)
        yield StaticPanel(id="failure-detail")
        yield Footer()

    def on_mount(self) -> None:
        """Columns, then the current status."""
        self.title = "cicdllm status — failures"
        table = self.query_one("#failures-table", DataTable)
        table.add_columns("Time", "Repo", "Stage", "Category", "Item", "Message")
        status = getattr(self.app, "status", None)
        if status is not None:
            self.update_status(status)

    def update_status(self, status: Status) -> None:
        """Show the categories and the newest failures."""
        categories = self.query_one("#failure-categories", StaticPanel)
        counts = dict(status.failure_categories)
        if status.run_failures:
            counts["run_failure"] = len(status.run_failures)
        if counts:
            table = Table(title="Failures by category", title_justify="left", box=None, pad_edge=False, min_width=40)
            table.add_column("Category")
            table.add_column("Count", justify="right")
            for category, count in counts.items():
                table.add_row(category, str(count))
            categories.show(table)
        else:
            categories.show(Text("No failures recorded.", style="green"))
        rows = self.query_one("#failures-table", DataTable)
        cursor = rows.cursor_row
        rows.clear()
        failures = sorted([*status.run_failures, *status.failures], key=lambda f: f.created_at, reverse=True)
        self._messages = [f.message for f in failures]
        for failure in failures:
            message = failure.message.splitlines()[0] if failure.message else ""
            rows.add_row(
                clock(failure.created_at), failure.repo, failure.stage, failure.category, failure.item, message[:120]
            )
        if rows.row_count:
            rows.move_cursor(row=min(cursor, rows.row_count - 1))
            self._show_detail(rows.cursor_row)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """Show the whole message of the highlighted failure."""
        self._show_detail(event.cursor_row)

    def _show_detail(self, row: int) -> None:
        if 0 <= row < len(self._messages):
            self.query_one("#failure-detail", StaticPanel).show(Text(self._messages[row]))


class LogScreen(Screen[None]):
    """The tail of the StateStore event log, newest last."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []  # what the log shows, oldest first

    def compose(self) -> ComposeResult:
        """A scrolling log."""
        yield Header()
        yield RichLog(id="log", wrap=True, markup=False, highlight=False)
        yield Footer()

    def on_mount(self) -> None:
        """Fill from the current status."""
        self.title = "cicdllm status — log"
        status = getattr(self.app, "status", None)
        if status is not None:
            self.update_status(status)

    def update_status(self, status: Status) -> None:
        """Append new lines (or rewrite when the tail moved past what is shown)."""
        lines = [
            f"{clock(e.ts)} {e.level.upper():<7} {(e.repo + ': ') if e.repo else ''}{e.message}" for e in status.events
        ]
        log = self.query_one("#log", RichLog)
        shown = self.lines
        if lines == shown:
            return
        overlap = 0
        for size in range(min(len(shown), len(lines)), 0, -1):  # longest suffix of shown == prefix of lines
            if shown[-size:] == lines[:size]:
                overlap = size
                break
        if overlap == 0 and shown:
            log.clear()
            new = lines
        else:
            new = lines[overlap:]
        for line in new:
            log.write(_styled_log_line(line))
        self.lines = lines


def _styled_log_line(line: str) -> Text:
    style = "red" if " ERROR " in line else "yellow" if " WARNING " in line else ""
    return Text(line, style=style)


class HelpScreen(ModalScreen[None]):
    """The keys."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Close"), Binding("question_mark", "app.pop_screen", "Close")]

    def compose(self) -> ComposeResult:
        """A key table."""
        table = Table(title="cicdllm status — keys", box=None, pad_edge=False)
        table.add_column("Key", style="bold cyan")
        table.add_column("Action")
        for key, action in KEYS_HELP:
            table.add_row(key, action)
        panel = StaticPanel(id="help-body")
        panel.show(table)
        with Vertical(id="help-dialog"):
            yield panel
            yield Static(Text("escape or ? closes", style="dim"))

    def on_click(self) -> None:
        """A click anywhere closes the help."""
        self.app.pop_screen()


class ConfigScreen(Screen[None]):
    """Browse and edit every field of cicdllm.yaml, validated by the Pydantic models."""

    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("ctrl+d", "reset_default", "Reset to default"),
    ]

    def __init__(self, config_path: Path, standalone: bool = False) -> None:
        super().__init__()
        self.config_path = config_path
        self.standalone = standalone
        self.fields = {spec.path: spec for spec in iter_fields()}
        self.selected: FieldSpec | None = None
        self.pending: Any = None
        self.valid = False
        self.config: AppConfig = AppConfig()
        self.load_error: str | None = None

    def compose(self) -> ComposeResult:
        """Tree of sections and fields on the left, the field and its editor on the right."""
        yield Header()
        with Horizontal(id="config-body"):
            yield Tree("cicdllm.yaml", id="config-tree")
            with Vertical(id="config-side"):
                yield StaticPanel(id="field-detail")
                yield Input(placeholder="new value (YAML: 8, true, [a, b], null)", id="field-input")
                yield StaticPanel(id="field-message")
        yield Footer()

    def on_mount(self) -> None:
        """Load the config, build the tree, focus it."""
        self.title = f"cicdllm config — {self.config_path}"
        self._reload_config()
        tree = self.query_one("#config-tree", Tree)
        tree.root.expand()
        nodes: dict[str, TreeNode[Any]] = {"": tree.root}
        for section in iter_sections():
            parent_path = section.path.rpartition(".")[0]
            nodes[section.path] = nodes[parent_path].add(
                Text(section.path.rpartition(".")[2], style="bold"), data=section.path, expand=True
            )
        for spec in self.fields.values():
            parent = nodes.get(spec.path) if spec.path in nodes else None
            if parent is not None:  # a section editable as one mapping: the section node edits it
                parent.data = spec
                continue
            nodes[spec.section].add_leaf(self._label(spec), data=spec)
        tree.focus()
        hint = "Select a field; type a value; enter saves."
        self.query_one("#field-message", StaticPanel).show(
            Text(self.load_error or hint, style="red" if self.load_error else "dim")
        )

    def _reload_config(self) -> None:
        try:
            self.config = load_settings(self.config_path if self.config_path.exists() else None, environ={}).config
            self.load_error = None
        except ConfigError as exc:
            self.config = AppConfig()
            self.load_error = f"the file is invalid now (showing defaults): {exc}"

    def _label(self, spec: FieldSpec) -> Text:
        value = get_value(self.config, spec.path)
        label = Text(spec.name)
        label.append(" = ")
        shown = spec.display(value)
        label.append(shown if len(shown) < 40 else shown[:37] + "...", style="green" if value != spec.default else "")
        return label

    def _refresh_labels(self) -> None:
        tree = self.query_one("#config-tree", Tree)

        def walk(node: TreeNode[Any]) -> None:
            for child in node.children:
                if isinstance(child.data, FieldSpec) and not child.children:
                    child.set_label(self._label(child.data))
                walk(child)

        walk(tree.root)

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted[Any]) -> None:
        """Show the highlighted field and put its value in the input."""
        data = event.node.data
        if isinstance(data, FieldSpec) and (self.selected is None or self.selected.path != data.path):
            self.select_field(data.path)

    def on_tree_node_selected(self, event: Tree.NodeSelected[Any]) -> None:
        """Enter on a field: edit it."""
        if isinstance(event.node.data, FieldSpec):
            self.select_field(event.node.data.path)
            self.query_one("#field-input", Input).focus()

    def select_field(self, dotted_key: str) -> None:
        """Show one field (type, current, default, description) and load it into the input."""
        spec = self.fields[dotted_key]
        self.selected = spec
        self._move_tree_cursor(spec.path)
        value = get_value(self.config, spec.path)
        table = Table(box=None, show_header=False, pad_edge=False, title=spec.path, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        table.add_row("type", spec.type_name)
        table.add_row("current", spec.display(value))
        table.add_row("default", spec.display(spec.default))
        table.add_row("description", spec.description or "-")
        env = "CICDLLM_" + spec.path.upper().replace(".", "__")
        if env in os.environ:
            table.add_row("environment", Text(f"{env} overrides this value at run time", style="yellow"))
        table.add_row("file", str(self.config_path))
        self.query_one("#field-detail", StaticPanel).show(table)
        field_input = self.query_one("#field-input", Input)
        field_input.value = "" if spec.secret else format_value(value)
        self.query_one("#field-message", StaticPanel).show(Text("enter saves · ctrl+d resets to default", style="dim"))

    def _move_tree_cursor(self, dotted_key: str) -> None:
        tree = self.query_one("#config-tree", Tree)
        cursor = tree.cursor_node
        if cursor is not None and isinstance(cursor.data, FieldSpec) and cursor.data.path == dotted_key:
            return
        stack = list(tree.root.children)
        while stack:
            node = stack.pop(0)
            if isinstance(node.data, FieldSpec) and node.data.path == dotted_key:
                tree.move_cursor(node)
                return
            stack.extend(node.children)

    def on_input_changed(self, event: Input.Changed) -> None:
        """Inline validation of what is typed, against the whole config."""
        if self.selected is None:
            return
        self.valid = False
        message = self.query_one("#field-message", StaticPanel)
        try:
            self.pending = parse_value(self.selected.path, event.value)
            preview(self.config_path, self.selected.path, self.pending)
        except ConfigError as exc:
            message.show(_issues_text(exc))
            event.input.add_class("invalid")
            return
        except KeyError as exc:
            message.show(Text(str(exc), style="red"))
            return
        self.valid = True
        event.input.remove_class("invalid")
        message.show(Text("valid — enter saves", style="green"))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Save the value if it is valid (atomic write, comments and order kept)."""
        self.save(event.value)

    def save(self, text: str) -> bool:
        """Validate and write ``text`` as the selected field's value; True if saved."""
        if self.selected is None:
            return False
        message = self.query_one("#field-message", StaticPanel)
        try:
            value = parse_value(self.selected.path, text)
            set_value(self.config_path, self.selected.path, value)
        except ConfigError as exc:
            message.show(_issues_text(exc, prefix="not saved: "))
            self.notify("Not saved: invalid value", severity="error")
            return False
        self._after_write(f"saved {self.selected.path} = {self.selected.display(value)}")
        return True

    def action_reset_default(self) -> None:
        """Remove the field from the file so its default applies."""
        if self.selected is None:
            return
        try:
            reset_value(self.config_path, self.selected.path)
        except ConfigError as exc:
            self.query_one("#field-message", StaticPanel).show(_issues_text(exc, prefix="not reset: "))
            return
        self._after_write(f"reset {self.selected.path} to its default")

    def _after_write(self, what: str) -> None:
        self._reload_config()
        self._refresh_labels()
        if self.selected is not None:
            self.select_field(self.selected.path)
        self.query_one("#field-message", StaticPanel).show(Text(f"{what} (applies on the next step)", style="green"))
        self.notify(what)
        refresh = getattr(self.app, "action_refresh_now", None)
        if refresh is not None:
            refresh()

    def action_close(self) -> None:
        """Back to the dashboard (or quit the standalone editor)."""
        if self.standalone:
            self.app.exit()
        else:
            self.app.pop_screen()


def _issues_text(exc: ConfigError, prefix: str = "") -> RenderableType:
    text = Text(prefix + "invalid:", style="bold red")
    for issue in exc.issues:
        text.append(f"\n  {issue.path}: {issue.message}", style="red")
    return text
