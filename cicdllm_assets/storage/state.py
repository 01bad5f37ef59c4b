"""Live state outside the Parquet tables: one interface, two backends.

Stage progress, failures and events the viewer reads, plus the tables other modules add
with :meth:`StateStore.ensure` (generation ledger, item leases, chunk-plan, verdict and
redaction caches) live in one database:

- **SQLite** (the default, ``<data_dir>/state.db``, WAL): one writer and any number of
  readers at once; ``busy_timeout`` makes concurrent writers from parallel run processes on
  one machine wait instead of failing. Not for a network filesystem (its locks do not hold).
- **PostgreSQL** (``storage.state_url: postgresql://…``, psycopg 3): for several machines.

SQL is written once with ``?`` placeholders and portable statements (``INSERT … ON
CONFLICT``, see :func:`upsert_sql`); DDL is written for SQLite and translated for Postgres
(:func:`pg_ddl`). Every component's schema is versioned in ``schema_versions``: an older
database is migrated (tables created, added columns added), a newer one is refused with
:class:`StateSchemaError`. Use a store as a context manager so its connections are closed.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from cicdllm_assets.errors import CicdllmError
from cicdllm_assets.lifecycle import Closing

BUSY_TIMEOUT_MS = 60_000

STATE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)
"""What a state operation raises on a database error, on either backend."""

CORE_VERSION = 1
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
_VERSIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_versions ("
    " component TEXT PRIMARY KEY, version INTEGER NOT NULL, updated_at REAL NOT NULL)"
)
_PROGRESS_COLUMNS = ("repo", "stage", "done", "total", "failed", "unit", "status", "started_at", "updated_at")
_PG_LOCK_ID = zlib.crc32(b"cicdllm-state-schema")


class StateSchemaError(CicdllmError, RuntimeError):
    """The state database was written by a newer cicdllm (an unknown schema version)."""


def is_postgres_url(target: str | Path) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) URL."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """``url`` without its password, for messages."""
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def upsert_sql(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """``INSERT … ON CONFLICT (key) DO UPDATE`` of every other column (SQLite and Postgres)."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    marks = ", ".join("?" * len(columns))
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608 - constant identifiers
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


def pg_ddl(ddl: str) -> str:
    """SQLite DDL as Postgres DDL (64-bit integers, double timestamps, serial ids)."""
    out = re.sub(r"INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY", ddl)
    out = re.sub(r"\bINTEGER\b", "BIGINT", out)
    out = re.sub(r"\bREAL\b", "DOUBLE PRECISION", out)
    out = re.sub(r"\bBLOB\b", "BYTEA", out)
    return re.sub(r"\)\s*WITHOUT ROWID", ")", out)


def _statements(ddl: str) -> list[str]:
    return [part.strip() for part in ddl.split(";") if part.strip()]


def connect_sqlite(path: Path, *, readonly: bool = False, timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """A connection in WAL mode with a long busy timeout (autocommit off)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if readonly:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout_ms / 1000, check_same_thread=False)
    else:
        con = sqlite3.connect(path, timeout=timeout_ms / 1000, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
    con.execute(f"PRAGMA busy_timeout={timeout_ms}")
    con.row_factory = sqlite3.Row
    return con


class PgRow(tuple[Any, ...]):
    """A Postgres row readable like :class:`sqlite3.Row`: by index, by name, ``dict(row)``."""

    _names: tuple[str, ...] = ()

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names.index(key))
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        """Column names (so ``dict(row)`` works)."""
        return list(self._names)


def _pg_row_factory(cursor: Any) -> Any:
    names = tuple(d.name for d in cursor.description or ())
    row_type = type("Row", (PgRow,), {"_names": names})

    def make(values: Sequence[Any]) -> PgRow:
        return row_type(values)

    return make


def _pg_sql(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class PgConnection:
    """A psycopg connection with the ``sqlite3.Connection`` calls the state modules use.

    Autocommit: a read is its own statement; :meth:`StateStore.transaction` opens a real
    transaction for writes, so ``commit``/``rollback`` here have nothing to do.
    """

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.url = url
        self.raw = psycopg.connect(url, autocommit=True, row_factory=_pg_row_factory, connect_timeout=10)
        if readonly:
            self.raw.read_only = True

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """Run one statement (``?`` placeholders) and return its cursor."""
        if args:
            return self.raw.execute(_pg_sql(sql), tuple(args))
        return self.raw.execute(sql)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement per row."""
        with self.raw.cursor() as cur:
            cur.executemany(_pg_sql(sql), [tuple(r) for r in rows])

    def commit(self) -> None:
        """Nothing to do (autocommit, or inside a transaction block)."""

    def rollback(self) -> None:
        """Nothing to do (see :meth:`commit`)."""

    def close(self) -> None:
        """Close the connection."""
        self.raw.close()


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


class StateStore(Closing):
    """Thread-safe access to the state database; one connection per thread.

    ``target`` is a SQLite file path or a ``postgresql://`` URL. ``readonly`` opens without
    creating anything (for viewers); ``timeout_ms`` bounds SQLite lock waits.
    """

    def __init__(self, target: str | Path, *, readonly: bool = False, timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.postgres = is_postgres_url(target)
        self.target: str | Path = target if self.postgres else Path(target)
        self.readonly = readonly
        self.timeout_ms = timeout_ms
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[Any] = []
        self._ensured: set[str] = set()
        if not readonly:
            self.ensure("core", _SCHEMA, CORE_VERSION)

    @property
    def path(self) -> Path:
        """The SQLite file (a SQLite store only)."""
        if self.postgres:
            raise TypeError("a Postgres state store has no file path")
        return Path(self.target)

    def describe(self) -> str:
        """The store for messages (a Postgres URL without its password)."""
        return redact_url(str(self.target)) if self.postgres else str(self.target)

    def connection(self) -> Any:
        """This thread's connection (created on first use): ``sqlite3.Connection`` or :class:`PgConnection`."""
        con = getattr(self._local, "con", None)
        if con is None:
            if self.postgres:
                con = PgConnection(str(self.target), readonly=self.readonly)
            else:
                con = connect_sqlite(self.path, readonly=self.readonly, timeout_ms=self.timeout_ms)
            self._local.con = con
            with self._lock:
                self._open.append(con)
        return con

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """One write transaction (``BEGIN IMMEDIATE`` on SQLite) … commit, or roll back on error."""
        con = self.connection()
        if isinstance(con, PgConnection):
            with con.raw.transaction():
                yield con
            return
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.rollback()
            raise
        con.commit()

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """All rows of one read (rows index by position and by name), then end the read."""
        con = self.connection()
        rows = con.execute(sql, tuple(args)).fetchall()
        con.commit()  # end the implicit read transaction so WAL checkpoints are not held back
        return list(rows)

    def tables(self) -> set[str]:
        """Names of the tables in the database."""
        if self.postgres:
            sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        else:
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
        return {str(row[0]) for row in self.query(sql)}

    def columns(self, table: str) -> set[str]:
        """Column names of ``table`` (empty when it does not exist)."""
        if self.postgres:
            rows = self.query(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = ?",
                (table,),
            )
            return {str(row[0]) for row in rows}
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table):
            raise ValueError(f"not a table name: {table!r}")
        return {str(row[1]) for row in self.query(f"PRAGMA table_info({table})")}

    def schema_version(self, component: str) -> int | None:
        """The stored schema version of a component, or None (never created, or a pre-versioning database)."""
        if "schema_versions" not in self.tables():
            return None
        rows = self.query("SELECT version FROM schema_versions WHERE component = ?", (component,))
        return int(rows[0][0]) if rows else None

    def ensure(
        self,
        name: str,
        ddl: str,
        version: int = 1,
        added_columns: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        """Create or migrate a component's tables to ``version`` (once per process).

        ``ddl`` is idempotent ``CREATE … IF NOT EXISTS`` SQLite DDL; ``added_columns`` maps a
        table to the columns (name → SQLite type) added after its first version, which an
        older database gets with ``ALTER TABLE``. A stored version newer than ``version``
        raises :class:`StateSchemaError`: this cicdllm does not know that schema.
        """
        if name in self._ensured:
            return
        stored = self._stored_version(name)
        if stored != version:
            with self.transaction() as con:
                if self.postgres:
                    con.execute("SELECT pg_advisory_xact_lock(?)", (_PG_LOCK_ID,))
                    con.execute(pg_ddl(_VERSIONS_DDL))
                else:
                    con.execute(_VERSIONS_DDL)
                row = con.execute("SELECT version FROM schema_versions WHERE component = ?", (name,)).fetchone()
                stored = None if row is None else int(row[0])
                self._check_version(name, stored, version)
                if stored != version:
                    for statement in _statements(pg_ddl(ddl) if self.postgres else ddl):
                        con.execute(statement)
                    for table, columns in (added_columns or {}).items():
                        self._add_columns(con, table, columns)
                    con.execute(
                        upsert_sql("schema_versions", ("component", "version", "updated_at"), ("component",)),
                        (name, version, time.time()),
                    )
        self._ensured.add(name)

    def _stored_version(self, name: str) -> int | None:
        try:
            stored = self.schema_version(name)
        except STATE_ERRORS:
            return None
        self._check_version(name, stored, None)
        return stored

    def _check_version(self, name: str, stored: int | None, known: int | None) -> None:
        if stored is not None and known is not None and stored > known:
            raise StateSchemaError(
                f"the state database {self.describe()} has schema version {stored} of {name!r}, newer than"
                f" this cicdllm knows ({known}); upgrade cicdllm (or point storage at another database)"
            )

    def _add_columns(self, con: Any, table: str, columns: Mapping[str, str]) -> None:
        if self.postgres:
            present = {
                str(row[0])
                for row in con.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = ?",
                    (table,),
                ).fetchall()
            }
        else:
            present = {str(row[1]) for row in con.execute(f"PRAGMA table_info({table})").fetchall()}
        for column, sql_type in columns.items():
            if column not in present:
                column_type = pg_ddl(sql_type) if self.postgres else sql_type
                con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {column_type}")

    def close(self) -> None:
        """Close every connection this store opened (in any thread)."""
        with self._lock:
            opened, self._open = self._open, []
        for con in opened:
            with suppress(*STATE_ERRORS):
                con.close()
        self._local = threading.local()

    # -- progress -----------------------------------------------------------------
    def start_stage(self, repo: str, stage: str, total: int, unit: str = "items") -> None:
        """Reset a stage's counters at the start of a materialization."""
        now = time.time()
        with self.transaction() as con:
            con.execute(
                upsert_sql("stage_progress", _PROGRESS_COLUMNS, ("repo", "stage")),
                (repo, stage, 0, total, 0, unit, "running", now, now),
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
        rows = self.query(sql + " ORDER BY repo, started_at", args)
        return [StageProgress(**dict(row)) for row in rows]

    # -- failures and events --------------------------------------------------------
    def record_failure(self, repo: str, stage: str, item: str, category: str, message: str) -> None:
        """Keep one failure (already free of secrets) for the viewer and `status`."""
        with self.transaction() as con:
            con.execute(
                "INSERT INTO failures (repo, stage, item, category, message, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (repo, stage, item, category, message[:4000], time.time()),
            )

    def clear_failures(self, repo: str, stage: str) -> None:
        """Drop a stage's old failures before it runs again."""
        with self.transaction() as con:
            con.execute("DELETE FROM failures WHERE repo = ? AND stage = ?", (repo, stage))

    def forget_failures(self, repo: str, stage: str, items: Sequence[str]) -> None:
        """Drop the kept failures of ``items`` (they are being tried again)."""
        with self.transaction() as con:
            con.executemany(
                "DELETE FROM failures WHERE repo = ? AND stage = ? AND item = ?", [(repo, stage, i) for i in items]
            )

    def failure_counts(self) -> dict[str, dict[str, int]]:
        """``{repo: {category: count}}`` over every kept failure."""
        counts: dict[str, dict[str, int]] = {}
        for row in self.query("SELECT repo, category, count(*) AS n FROM failures GROUP BY repo, category"):
            counts.setdefault(str(row["repo"]), {})[str(row["category"])] = int(row["n"])
        return counts

    def recent_failures(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` failures, newest first (repo, stage, item, category, message, created_at)."""
        rows = self.query(
            "SELECT repo, stage, item, category, message, created_at FROM failures ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [dict(row) for row in rows]

    def log_event(self, level: str, message: str, repo: str | None = None) -> None:
        """Append a line to the event log the viewer tails."""
        with self.transaction() as con:
            con.execute(
                "INSERT INTO events (ts, repo, level, message) VALUES (?, ?, ?, ?)",
                (time.time(), repo, level, message[:4000]),
            )

    def recent_events(self, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` events, oldest first (ts, repo, level, message), like a log tail."""
        rows = self.query("SELECT ts, repo, level, message FROM events ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(row) for row in reversed(rows)]

    def set_repo_info(self, repo: str, head_commit: str | None, info_json: str) -> None:
        """Remember what the repositories asset found for a repo."""
        with self.transaction() as con:
            con.execute(
                upsert_sql("repo_info", ("repo", "head_commit", "info_json", "updated_at"), ("repo",)),
                (repo, head_commit, info_json, time.time()),
            )

    def repo_heads(self) -> dict[str, str | None]:
        """``{repo: head_commit}`` as the repositories asset last recorded them."""
        return {str(row["repo"]): row["head_commit"] for row in self.query("SELECT repo, head_commit FROM repo_info")}


def open_existing_state(
    target: str | Path, *, readonly: bool = False, timeout_ms: int = BUSY_TIMEOUT_MS
) -> StateStore | None:
    """The store at ``target``, or None when it is a SQLite file that does not exist yet
    (a Postgres URL always opens)."""
    if not is_postgres_url(target) and not Path(target).exists():
        return None
    return StateStore(target, readonly=readonly, timeout_ms=timeout_ms)


def open_state_readonly(target: str | Path, timeout_ms: int = 2_000) -> StateStore | None:
    """A read-only store for viewers (see :func:`open_existing_state`); it never creates anything,
    and on SQLite (WAL) its reads never block a writer."""
    return open_existing_state(target, readonly=True, timeout_ms=timeout_ms)
