"""The Textual status viewer (``cicdllm status``) and configuration editor (``cicdllm config edit``).

The dashboard refreshes every ``ui.refresh_seconds``: the config is re-read (hot reload)
and the status is collected in a worker thread, so slow reads never freeze the UI. All
reads are read-only and tolerate a run writing at the same time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Footer, Header, Static

from cicdllm_assets.config import ConfigError, Settings, load_settings
from cicdllm_assets.config.loader import find_config_path
from cicdllm_assets.performance.battery import BatteryReader
from cicdllm_assets.status.collect import collect_status
from cicdllm_assets.status.model import Status
from cicdllm_assets.tui.screens import ConfigScreen, FailuresScreen, HelpScreen, LogScreen
from cicdllm_assets.tui.widgets import ProgressPanel, ReposTable, ResourcesPanel, RunsTable, status_line

_logger = logging.getLogger(__name__)

Collector = Callable[..., Status]

NARROW_WIDTH = 140
"""Terminals narrower than this stack the progress, resources and runs panels."""

CSS = """
#repos { height: auto; max-height: 45%; min-height: 5; border: round $primary; }
#middle { height: 1fr; }
#progress { width: 1fr; height: 100%; border: round $primary; padding: 0 1; }
#side { width: 76; }
#resources { height: auto; border: round $primary; padding: 0 1; }
#runs { height: 1fr; border: round $primary; }
#statusline { height: 1; padding: 0 1; }
#failure-categories { height: auto; max-height: 12; padding: 0 1; }
#failures-table { height: 1fr; }
#failure-detail { height: auto; max-height: 8; border: round $error; padding: 0 1; }
#log { height: 1fr; }
.narrow #repos { max-height: 8; }
.narrow #middle { layout: vertical; overflow-y: auto; }
.narrow #progress { width: 1fr; height: auto; min-height: 4; }
.narrow #side { width: 1fr; height: auto; }
.narrow #runs { height: auto; min-height: 4; }
HelpScreen { align: center middle; }
#help-dialog { width: 72; height: auto; border: thick $primary; background: $surface; padding: 1 2; }
#config-tree { width: 2fr; }
#config-side { width: 3fr; padding: 0 1; }
#field-detail { height: auto; }
#field-input.invalid { border: tall $error; }
#field-message { height: auto; }
"""


@dataclass
class StatusReady(Message):
    """Posted by the collector thread with a new snapshot (or an error)."""

    status: Status | None
    settings: Settings | None
    error: str | None


class StatusApp(App[None]):
    """The live dashboard: repos, stage progress, resources, runs; screens for failures, logs,
    help and the configuration editor."""

    TITLE = "cicdllm status"
    CSS = CSS
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("r", "refresh_now", "Refresh"),
        Binding("f", "toggle_screen('failures')", "Failures"),
        Binding("l", "toggle_screen('logs')", "Logs"),
        Binding("c", "toggle_screen('config')", "Config"),
        Binding("question_mark", "toggle_screen('help')", "Help", key_display="?"),
    ]

    def __init__(
        self,
        config_path: str | Path | None = None,
        *,
        collector: Collector = collect_status,
        battery_reader: BatteryReader | None = None,
    ) -> None:
        super().__init__()
        self.config_path = Path(config_path) if config_path else None
        self.collector = collector
        self.battery_reader = battery_reader
        self.status: Status | None = None
        self.settings: Settings | None = None
        self.error: str | None = None
        self.refresh_count = 0
        self.refresh_seconds = 2.0
        self._timer: Timer | None = None
        self._collecting = False
        self._again = False

    # -- layout ----------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        """Repos on top; progress, resources and runs below; a status line."""
        yield Header()
        yield ReposTable(id="repos")
        with Horizontal(id="middle"):
            yield ProgressPanel(id="progress")
            with Vertical(id="side"):
                yield ResourcesPanel(id="resources")
                yield RunsTable(id="runs")
        yield Static(status_line(None, self.refresh_seconds), id="statusline")
        yield Footer()

    def on_resize(self, event: events.Resize) -> None:
        """Below :data:`NARROW_WIDTH` columns the panels stack instead of sitting side by side."""
        self.screen.set_class(event.size.width < NARROW_WIDTH, "narrow")

    def on_mount(self) -> None:
        """First refresh now, then on the configured interval."""
        self.query_one("#repos").border_title = "Repositories"
        self.query_one("#runs").border_title = "Recent Dagster runs"
        self.screen.set_class(self.size.width < NARROW_WIDTH, "narrow")
        try:
            self.settings = self._load_settings()
            self.refresh_seconds = self.settings.config.ui.refresh_seconds
        except ConfigError as exc:
            self.error = f"config: {exc.issues[0].render() if exc.issues else exc}"
        self._timer = self.set_interval(self.refresh_seconds, self.action_refresh_now)
        self.action_refresh_now()

    # -- refresh ---------------------------------------------------------------------
    def _load_settings(self) -> Settings:
        return load_settings(self.config_path)

    def action_refresh_now(self) -> None:
        """Collect a new snapshot in a worker thread (one at a time)."""
        if self._collecting:
            self._again = True
            return
        self._collecting = True
        self._collect()

    @work(thread=True, exclusive=False, group="collect", exit_on_error=False)
    def _collect(self) -> None:
        """Worker thread: re-read the config (hot reload) and collect the status."""
        settings: Settings | None = None
        try:
            try:
                settings = self._load_settings()
            except ConfigError as exc:
                settings = self.settings  # keep the last good config
                error = f"config invalid, using the previous one: {exc.issues[0].render() if exc.issues else exc}"
                if settings is None:
                    self.post_message(StatusReady(None, None, error))
                    return
                status = self.collector(settings, battery_reader=self.battery_reader)
                self.post_message(StatusReady(status, settings, error))
                return
            status = self.collector(settings, battery_reader=self.battery_reader)
            self.post_message(StatusReady(status, settings, None))
        except Exception as exc:  # never let a read problem kill the viewer
            _logger.exception("status collection failed")
            self.post_message(StatusReady(None, settings, f"status collection failed: {exc}"))

    def on_status_ready(self, message: StatusReady) -> None:
        """Apply a snapshot to every visible widget; adopt a changed refresh interval."""
        self._collecting = False
        self.error = message.error
        if message.settings is not None:
            self.settings = message.settings
            interval = message.settings.config.ui.refresh_seconds
            if interval != self.refresh_seconds:
                self.refresh_seconds = interval
                if self._timer is not None:
                    self._timer.stop()
                self._timer = self.set_interval(interval, self.action_refresh_now)
        if message.status is not None:
            self.status = message.status
            self.refresh_count += 1
            for widget_id in ("#repos", "#progress", "#resources", "#runs"):
                self.query_one(widget_id).update_status(message.status)  # type: ignore[attr-defined]
            for screen in self.screen_stack:
                update = getattr(screen, "update_status", None)
                if update is not None and screen.is_mounted:
                    update(message.status)
        self.query_one("#statusline", Static).update(status_line(self.status, self.refresh_seconds, self.error))
        if self._again:
            self._again = False
            self.action_refresh_now()

    # -- screens ---------------------------------------------------------------------
    def action_toggle_screen(self, name: str) -> None:
        """Open a screen; the same key again (or escape) returns to the dashboard."""
        current = self.screen
        if _screen_name(current) == name:
            self.pop_screen()
            return
        while len(self.screen_stack) > 1:
            self.pop_screen()
        self.push_screen(self._make_screen(name))

    def _make_screen(self, name: str) -> FailuresScreen | LogScreen | HelpScreen | ConfigScreen:
        if name == "failures":
            return FailuresScreen()
        if name == "logs":
            return LogScreen()
        if name == "help":
            return HelpScreen()
        if name == "config":
            return ConfigScreen(self.config_path or editor_path(self.settings))
        raise ValueError(f"unknown screen {name!r}")


def _screen_name(screen: object) -> str | None:
    names: dict[type, str] = {
        FailuresScreen: "failures",
        LogScreen: "logs",
        HelpScreen: "help",
        ConfigScreen: "config",
    }
    return names.get(type(screen))


def editor_path(settings: Settings | None = None) -> Path:
    """The file the editor writes: the loaded config's, else $CICDLLM_CONFIG / ./cicdllm.yaml."""
    if settings is not None and settings.path is not None:
        return settings.path
    return find_config_path() or Path.cwd() / "cicdllm.yaml"


class ConfigEditorApp(App[None]):
    """``cicdllm config edit``: the configuration editor screen on its own."""

    TITLE = "cicdllm config"
    CSS = CSS
    BINDINGS = [Binding("ctrl+q", "quit", "Quit")]

    def __init__(self, config_path: str | Path | None = None) -> None:
        super().__init__()
        self.config_path = Path(config_path) if config_path else editor_path()

    def on_mount(self) -> None:
        """Show the editor."""
        self.push_screen(ConfigScreen(self.config_path, standalone=True))


class _Quiet:
    """Route root logging away from the terminal while the full-screen app runs."""

    def __enter__(self) -> None:
        root = logging.getLogger()
        self._handlers = root.handlers[:]
        for handler in self._handlers:
            root.removeHandler(handler)
        root.addHandler(logging.NullHandler())

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in self._handlers:
            root.addHandler(handler)


def run_status_app(config_path: str | Path | None = None) -> None:
    """Run the status viewer until the user quits."""
    with _Quiet():
        StatusApp(config_path).run()


def run_config_editor(config_path: str | Path | None = None) -> None:
    """Run the configuration editor until the user quits."""
    with _Quiet():
        ConfigEditorApp(config_path).run()
