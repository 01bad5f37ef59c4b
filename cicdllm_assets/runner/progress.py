"""Live progress of ``cicdllm run``: a thread polls the SQLite state store's ``stage_progress``.

The assets write per-stage counters (``start_stage`` / ``advance`` / ``finish_stage``) to the
WAL database; this display only reads it, so it never slows or blocks a run.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, TypeGuard

from rich.console import Console, Group
from rich.file_proxy import FileProxy
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from cicdllm_assets.generation.ledger import Ledger
from cicdllm_assets.lifecycle import BackgroundLoop, Closing
from cicdllm_assets.storage.llm_load import LLMLoad, read_llm_load
from cicdllm_assets.storage.state import STATE_ERRORS, StageProgress, StateStore, open_state_readonly

logger = logging.getLogger(__name__)

_STATUS_STYLE = {
    "running": "yellow",
    "done": "green",
    "incomplete": "yellow",
    "failed": "red",
    "skipped": "dim",
    "interrupted": "magenta",
}


class ProgressReader(Closing):
    """Stage progress and model-server load from one read-only state store, opened on the
    first read that finds the database and kept open across polls (closed by :meth:`close`).

    Read-only: it never creates or migrates anything, and on SQLite (WAL) it never blocks
    the run that writes. A failed read is logged and shows nothing.
    """

    def __init__(self, state: str | Path) -> None:
        self.state = state
        self._store: StateStore | None = None

    def _open(self) -> StateStore | None:
        if self._store is None:
            self._store = open_state_readonly(self.state)
        return self._store

    def progress(self, since: float) -> list[StageProgress]:
        """Stage rows updated at or after ``since`` (empty when the database does not exist yet)."""
        try:
            store = self._open()
            rows = store.progress() if store is not None else []
        except STATE_ERRORS as exc:
            logger.debug("progress read failed: %s", exc)
            return []
        return [row for row in rows if row.updated_at >= since]

    def loads(self) -> dict[tuple[str, str], LLMLoad]:
        """The model server's load per (repo, stage) as the generation stages last saw it."""
        try:
            store = self._open()
            return read_llm_load(store) if store is not None else {}
        except STATE_ERRORS as exc:
            logger.debug("llm load read failed: %s", exc)
            return {}

    def generated(self, since: float) -> tuple[int, int]:
        """(completion tokens, ok answers) the generation ledger recorded at or after ``since``."""
        try:
            store = self._open()
            ledger = Ledger.existing(store) if store is not None else None
            return ledger.generated_since(since) if ledger is not None else (0, 0)
        except STATE_ERRORS as exc:  # a locked database: the next poll reads again
            logger.debug("ledger read failed: %s", exc)
            return 0, 0

    def close(self) -> None:
        """Close the store's connections."""
        if self._store is not None:
            self._store.close()
            self._store = None


def read_progress(state: str | Path, since: float) -> list[StageProgress]:
    """One read of :meth:`ProgressReader.progress`."""
    with ProgressReader(state) as reader:
        return reader.progress(since)


def read_loads(state: str | Path) -> dict[tuple[str, str], LLMLoad]:
    """One read of :meth:`ProgressReader.loads`."""
    with ProgressReader(state) as reader:
        return reader.loads()


GENERATION_STAGES = ("questions", "answers")


def read_generated(state: str | Path, since: float) -> tuple[int, int]:
    """One read of :meth:`ProgressReader.generated`."""
    with ProgressReader(state) as reader:
        return reader.generated(since)


def generation_rates(rows: list[StageProgress], tokens: int, pairs: int, now: float) -> str:
    """``12.3 tokens/s, 4.5 pairs/min`` over the span of the question and answer stages
    shown (empty before generation starts)."""
    stages = [row for row in rows if row.stage in GENERATION_STAGES]
    if not stages:
        return ""
    start = min(row.started_at for row in stages)
    end = max(now if row.status == "running" else row.updated_at for row in stages)
    span = max(end - start, 1e-6)
    return f"generation: {tokens / span:.1f} tokens/s, {pairs * 60.0 / span:.1f} pairs/min"


def _elapsed(row: StageProgress, now: float) -> float:
    end = now if row.status == "running" else row.updated_at
    return max(0.0, end - row.started_at)


def _speed(row: StageProgress, now: float) -> str:
    """Units per second (``3.2 files/s``) over the stage so far; empty before the first unit."""
    elapsed = _elapsed(row, now)
    return f"{row.done / elapsed:.1f} {row.unit}/s" if row.done and elapsed > 0 else ""


COLUMNS = ("repo", "run", "stage", "done/total", "failed", "speed", "elapsed", "llm", "status")
_RIGHT = frozenset({"done/total", "failed", "speed", "elapsed"})


def render_progress(
    rows: list[StageProgress],
    runs: dict[str, str],
    now: float | None = None,
    loads: dict[tuple[str, str], LLMLoad] | None = None,
    rates: str = "",
) -> Table:
    """One line per repo and stage: done/total, failures, speed (units per second), elapsed
    time, the model server's concurrency limit and latency (generation stages), status; plus
    the run state per repo, and ``rates`` (:func:`generation_rates`) as the caption."""
    current = time.time() if now is None else now
    table = Table(title="cicdllm run", expand=False, caption=rates or None)
    loads = loads or {}
    for column in COLUMNS:
        table.add_column(column, justify="right" if column in _RIGHT else "left")
    by_repo: dict[str, list[StageProgress]] = {}
    for row in rows:
        by_repo.setdefault(row.repo, []).append(row)
    for repo, state in runs.items():
        stages = by_repo.pop(repo, [])
        if not stages:
            table.add_row(repo, state, *[""] * (len(COLUMNS) - 2))
        for i, row in enumerate(stages):
            total = f"{row.done}/{row.total} {row.unit}" if row.total else f"{row.done} {row.unit}"
            style = _STATUS_STYLE.get(row.status, "")
            table.add_row(
                repo if i == 0 else "",
                state if i == 0 else "",
                row.stage,
                total,
                str(row.failed) if row.failed else "",
                _speed(row, current),
                f"{_elapsed(row, current):.1f}s",
                load.label if (load := loads.get((row.repo, row.stage))) else "",
                Text(row.status, style=style),
            )
    return table


def _routable(handler: logging.Handler) -> TypeGuard[logging.StreamHandler[Any]]:
    """A terminal stream handler whose stream can be swapped (not a file, not logging's
    ``lastResort`` handler, whose ``stream`` is a read-only property)."""
    return (
        isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
        and not isinstance(getattr(type(handler), "stream", None), property)
    )


class ProgressDisplay:
    """Context manager: a rich Live view refreshed from the state store in a thread.

    When the console is not a terminal, it prints one line per repo event instead.
    """

    def __init__(self, state: str | Path, refresh_seconds: float, console: Console | None = None) -> None:
        self.state = state
        self.reader = ProgressReader(state)
        self.refresh_seconds = max(0.25, refresh_seconds)
        self.console = console or Console(stderr=True)
        self.runs: dict[str, str] = {}
        self.since = time.time()
        self._poller = BackgroundLoop(self._poll, self.refresh_seconds, "cicdllm-progress")
        self._live: Live | None = None
        self._lock = threading.Lock()
        self._swapped: list[logging.Handler] = []
        self._rich_handler: RichHandler | None = None
        self._streams: list[tuple[logging.StreamHandler[Any], Any]] = []

    def _renderable(self) -> Group:
        with self._lock:
            runs = dict(self.runs)
        reader = self.reader
        rows = reader.progress(self.since)
        tokens, pairs = reader.generated(self.since)
        rates = generation_rates(rows, tokens, pairs, time.time())
        return Group(render_progress(rows, runs, loads=reader.loads(), rates=rates))

    def _poll(self) -> None:
        if self._live is not None:
            self._live.update(self._renderable())

    def step(self, name: str, event: str) -> None:
        """Record a run event ("start" or a final status) for a repo or the dataset step."""
        with self._lock:
            self.runs[name] = "running" if event == "start" else event
        if self._live is None:
            self.console.print(f"{name}: {'started' if event == 'start' else event}")
        else:
            self._live.update(self._renderable())

    def _route_logging(self) -> None:
        """Send root-logger output through the live console so log lines print above the table."""
        root = logging.getLogger()
        self._swapped = [h for h in root.handlers if type(h) is logging.StreamHandler]
        if not self._swapped:
            return
        level = min(h.level for h in self._swapped)
        for handler in self._swapped:
            root.removeHandler(handler)
        self._rich_handler = RichHandler(console=self.console, level=level, show_path=False)
        root.addHandler(self._rich_handler)

    def _route_streams(self) -> None:
        """Point every other logger's terminal handler at the live console too, so no line
        is written past it (a line written directly to the terminal splits the table)."""
        terminal = {id(s) for s in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__, self.console.file)}
        loggers = [
            logging.getLogger(),
            *(item for item in logging.Logger.manager.loggerDict.values() if isinstance(item, logging.Logger)),
        ]
        for item in loggers:
            for handler in item.handlers:
                if _routable(handler):
                    stream = handler.stream
                    if id(stream) in terminal:
                        handler.setStream(FileProxy(self.console, stream))
                        self._streams.append((handler, stream))

    def _restore_logging(self) -> None:
        for routed, stream in self._streams:
            routed.setStream(stream)
        self._streams = []
        root = logging.getLogger()
        if self._rich_handler is not None:
            root.removeHandler(self._rich_handler)
            self._rich_handler = None
        for handler in self._swapped:
            root.addHandler(handler)
        self._swapped = []

    def __enter__(self) -> ProgressDisplay:
        if self.console.is_terminal:
            self._route_logging()
            self._route_streams()
            self._live = Live(self._renderable(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
            self._poller.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._poller.stop()
        if self._live is not None:
            self._live.update(self._renderable())
            self._live.__exit__(exc_type, exc, tb)
            self._live = None
        self.reader.close()
        self._restore_logging()
