"""Live state in SQLite (WAL): stage progress, failures and events the viewer reads.

WAL lets one writer and any number of readers work at once; ``busy_timeout`` makes
concurrent writers from parallel run processes wait instead of failing. Other modules
(the generation ledger, the token cache) add their tables with :meth:`StateStore.ensure`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BUSY_TIMEOUT_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stage_progress (
    repo TEXT NOT NULL,
    stage TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    unit TEXT NOT NULL DEFAULT 'items',
    status TEXT NOT NULL DEFAULT 'running',
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (repo, stage)
);
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repo TEXT NOT NULL,
    stage TEXT NOT NULL,
    item TEXT NOT NULL,
    category TEXT NOT NULL,
    message TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS failures_repo ON failures(repo, stage);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    repo TEXT,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS repo_info (
    repo TEXT PRIMARY KEY,
    head_commit TEXT,
    info_json TEXT NOT NULL DEFAULT '{}',
    updated_at REAL NOT NULL
);
"""


def connect_sqlite(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode with a long busy timeout (autocommit off)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if readonly:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    else:
        con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
    con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    con.row_factory = sqlite3.Row
    return con


@dataclass(frozen=True)
class StageProgress:
    """Progress of one stage of one repo."""

    repo: str
    stage: str
    done: int
    total: int
    failed: int
    unit: str
    status: str
    started_at: float
    updated_at: float


class StateStore:
    """Thread-safe access to the live-state database; one connection per thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._ensured: set[str] = set()
        self.ensure("core", _SCHEMA)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (created on first use)."""
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            con = connect_sqlite(self.path)
            self._local.con = con
        return con

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … commit, or roll back on error."""
        con = self.connection()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.rollback()
            raise
        con.commit()

    def ensure(self, name: str, ddl: str) -> None:
        """Create a module's tables once per process (``CREATE … IF NOT EXISTS`` DDL)."""
        if name in self._ensured:
            return
        con = self.connection()
        con.executescript(ddl)
        con.commit()
        self._ensured.add(name)

    def close(self) -> None:
        """Close this thread's connection."""
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    # -- progress -----------------------------------------------------------------
    def start_stage(self, repo: str, stage: str, total: int, unit: str = "items") -> None:
        """Reset a stage's counters at the start of a materialization."""
        now = time.time()
        with self.transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO stage_progress VALUES (?, ?, 0, ?, 0, ?, 'running', ?, ?)",
                (repo, stage, total, unit, now, now),
            )

    def advance(self, repo: str, stage: str, done: int = 1, failed: int = 0, total: int | None = None) -> None:
        """Add to a stage's done/failed counters (and optionally move its total)."""
        with self.transaction() as con:
            con.execute(
                "UPDATE stage_progress SET done = done + ?, failed = failed + ?,"
                " total = COALESCE(?, total), updated_at = ? WHERE repo = ? AND stage = ?",
                (done, failed, total, time.time(), repo, stage),
            )

    def finish_stage(self, repo: str, stage: str, status: str = "done") -> None:
        """Mark a stage done, failed or skipped."""
        with self.transaction() as con:
            con.execute(
                "UPDATE stage_progress SET status = ?, updated_at = ? WHERE repo = ? AND stage = ?",
                (status, time.time(), repo, stage),
            )

    def progress(self, repo: str | None = None) -> list[StageProgress]:
        """Stage progress rows, for one repo or all."""
        sql = "SELECT * FROM stage_progress"
        args: tuple[str, ...] = ()
        if repo is not None:
            sql += " WHERE repo = ?"
            args = (repo,)
        rows = self.connection().execute(sql + " ORDER BY repo, started_at", args).fetchall()
        return [StageProgress(**dict(row)) for row in rows]

    # -- failures and events --------------------------------------------------------
    def record_failure(self, repo: str, stage: str, item: str, category: str, message: str) -> None:
        """Keep one failure (already free of secrets) for the viewer and `status`."""
        with self.transaction() as con:
            con.execute(
                "INSERT INTO failures (repo, stage, item, category, message, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (repo, stage, item, category, message[:4000], time.time()),
            )

    def clear_failures(self, repo: str, stage: str) -> None:
        """Drop a stage's old failures before it runs again."""
        with self.transaction() as con:
            con.execute("DELETE FROM failures WHERE repo = ? AND stage = ?", (repo, stage))

    def log_event(self, level: str, message: str, repo: str | None = None) -> None:
        """Append a line to the event log the viewer tails."""
        with self.transaction() as con:
            con.execute(
                "INSERT INTO events (ts, repo, level, message) VALUES (?, ?, ?, ?)",
                (time.time(), repo, level, message[:4000]),
            )

    def set_repo_info(self, repo: str, head_commit: str | None, info_json: str) -> None:
        """Remember what the repositories asset found for a repo."""
        with self.transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO repo_info VALUES (?, ?, ?, ?)",
                (repo, head_commit, info_json, time.time()),
            )
