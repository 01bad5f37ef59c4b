"""The generation ledger: one state-store row per generated item, keyed by content.

A key hashes what determines the output (kind, chunk key, theme, template hash,
model id, generation params and, for answers, the question), never run ids or
timestamps. Each result is committed in its own short transaction as it arrives,
so a killed run loses at most the in-flight requests and a re-run asks only for
keys that are missing or failed with attempts left. ``ok`` rows are never
overwritten, so two processes racing on the same key keep the first answer.

Attempts count only failures that are the item's own (unparseable or empty output,
a context overflow, a 4xx): an outage (connection error, timeout, 5xx, 429, an open
circuit) is recorded but leaves the item pending for the next run.
"""

from __future__ import annotations

import hashlib
import json
import time
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from cicdllm_assets.storage.contract import split_optional
from cicdllm_assets.storage.state import StateStore

Kind = Literal["question", "answer", "judge"]
Status = Literal["ok", "failed"]

LEDGER_TABLE = "generation_ledger"
LEDGER_VERSION = 3
_SQLITE_MAX_VARS = 500

OUTAGE_CATEGORIES = frozenset({"connection", "timeout", "circuit_open"})
"""Failure categories caused by the server or network, never by the item: no attempt is used."""


def is_outage(category: str | None, status_code: int | None = None) -> bool:
    """True for a failure that is not the item's fault (``http_status`` counts when 5xx or 429)."""
    if category == "http_status":
        return status_code is None or status_code >= 500 or status_code == 429
    return category in OUTAGE_CATEGORIES


def params_json(params: Mapping[str, Any]) -> str:
    """Canonical JSON of generation params (sorted keys, no spaces)."""
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"))


def item_key(
    kind: Kind,
    chunk_key: str,
    theme: str,
    template_hash: str,
    model_id: str,
    params: Mapping[str, Any],
    question: str | None = None,
) -> str:
    """Content key of one generated item."""
    payload = json.dumps(
        [kind, chunk_key, theme, template_hash, model_id, params_json(params), question],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class _Identity:
    """The columns that identify an item, shared by :class:`LedgerItem` and :class:`LedgerEntry`."""

    key: str
    kind: str
    repo: str
    chunk_key: str
    theme: str
    template_hash: str
    model_id: str
    params_json: str


@dataclass(frozen=True)
class LedgerItem(_Identity):
    """The identity of one item to generate (what its key was computed from)."""

    kind: Kind
    input_text: str | None = None


@dataclass(frozen=True)
class LedgerEntry(_Identity):
    """A stored ledger row: its fields are the table's columns (:data:`LEDGER_COLUMNS`), in order."""

    input_text: str | None
    status: str
    output: str | None
    parsed_json: str | None
    error_category: str | None
    error_message: str | None
    attempts: int
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    trimmed: int
    max_tokens: int
    finish_reason: str | None
    seed_sent: int | None
    created_at: float
    updated_at: float

    @property
    def ok(self) -> bool:
        """True when the item was generated successfully."""
        return self.status == "ok"

    def parsed(self) -> list[str]:
        """Parsed questions of a question item (empty otherwise)."""
        if not self.parsed_json:
            return []
        value = json.loads(self.parsed_json)
        return [str(v) for v in value] if isinstance(value, list) else []

    def needs_attempt(self, max_attempts: int) -> bool:
        """Failed with attempts left, or last failed by an outage (which never exhausts an item)."""
        return self.status != "ok" and (self.attempts < max_attempts or self.error_category in OUTAGE_CATEGORIES)


_SQL_TYPES = {str: "TEXT NOT NULL", int: "INTEGER NOT NULL DEFAULT 0", float: "REAL NOT NULL DEFAULT 0"}
_SQL_NULLABLE_TYPES = {str: "TEXT", int: "INTEGER"}
_SQL_OVERRIDES = {"key": "TEXT PRIMARY KEY", "created_at": "REAL NOT NULL", "updated_at": "REAL NOT NULL"}


def _sql_columns(row: type) -> tuple[tuple[str, str], ...]:
    """(column, SQLite type) of each field of ``row``: ``X | None`` is nullable, the rest is
    NOT NULL with a zero default for numbers (the key and the two timestamps excepted)."""
    columns = []
    for name, annotation in typing.get_type_hints(row).items():
        base, optional = split_optional(annotation)
        sql = _SQL_OVERRIDES.get(name) or (_SQL_NULLABLE_TYPES if optional else _SQL_TYPES)[base]  # type: ignore[index]
        columns.append((name, sql))
    return tuple(columns)


LEDGER_COLUMNS = _sql_columns(LedgerEntry)
"""(column, SQLite type) of the ledger table: the fields of :class:`LedgerEntry`, in order."""
_COLUMNS = tuple(name for name, _ in LEDGER_COLUMNS)
_COLUMN_LIST = ", ".join(_COLUMNS)
_DDL = (
    f"CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (\n"
    + ",\n".join(f"    {name} {sql_type}" for name, sql_type in LEDGER_COLUMNS)
    + "\n);\n"
    f"CREATE INDEX IF NOT EXISTS {LEDGER_TABLE}_chunk ON {LEDGER_TABLE}(chunk_key, kind);\n"
    f"CREATE INDEX IF NOT EXISTS {LEDGER_TABLE}_repo ON {LEDGER_TABLE}(repo, kind, status);\n"
)
_ADDED_COLUMNS = {
    name: sql_type for name, sql_type in LEDGER_COLUMNS if name in ("max_tokens", "finish_reason", "seed_sent")
}
"""Columns added after version 1 (max_tokens, finish_reason in 2; seed_sent in 3): an older
database gets them when a :class:`Ledger` opens it."""


@dataclass(frozen=True)
class Outcome:
    """What to record for one finished item."""

    status: Status
    output: str | None = None
    parsed: Sequence[str] | None = None
    error_category: str | None = None
    error_message: str | None = None
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    trimmed: bool = False
    max_tokens: int = 0
    finish_reason: str | None = None
    seed_sent: bool | None = None
    """Whether a sampling seed went with the request (OpenAI backend); None when not applicable."""
    uses_attempt: bool = True
    """False for an outage (see :func:`is_outage`): recorded, but the item keeps its attempts."""


_ITEM_COLUMNS = frozenset(f.name for f in fields(LedgerItem))
_RECORD_SQL = (
    f"INSERT INTO {LEDGER_TABLE} ({_COLUMN_LIST}) VALUES ({', '.join('?' * len(_COLUMNS))})"  # noqa: S608
    " ON CONFLICT(key) DO UPDATE SET "
    + ", ".join(
        f"{name} = {LEDGER_TABLE}.attempts + excluded.attempts" if name == "attempts" else f"{name} = excluded.{name}"
        for name in _COLUMNS
        if name not in _ITEM_COLUMNS and name != "created_at"
    )
    + f" WHERE {LEDGER_TABLE}.status != 'ok'"
)
"""Insert a result, or update a stored failure with it (the item's identity and first time stay;
attempts add up); an ``ok`` row is never overwritten."""


def _conditions(filters: Mapping[str, str | None]) -> tuple[str, list[str]]:
    """`` AND column = ?`` for each filter that is set (column names are constants), and the values."""
    where = "".join(f" AND {column} = ?" for column, value in filters.items() if value is not None)
    return where, [value for value in filters.values() if value is not None]


class Ledger:
    """Reads and writes the ledger table in the state store (SQLite or Postgres)."""

    def __init__(self, state: StateStore, *, create: bool = True) -> None:
        self.state = state
        if create:
            state.ensure(LEDGER_TABLE, _DDL, LEDGER_VERSION, {LEDGER_TABLE: _ADDED_COLUMNS})

    @classmethod
    def existing(cls, state: StateStore) -> Ledger | None:
        """The ledger of ``state`` for reading, without creating or migrating anything (a
        read-only store works); None when no run ever created it."""
        return cls(state, create=False) if LEDGER_TABLE in state.tables() else None

    def get_many(self, keys: Iterable[str]) -> dict[str, LedgerEntry]:
        """Stored entries for the given keys (absent keys are left out)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, LedgerEntry] = {}
        for start in range(0, len(wanted), _SQLITE_MAX_VARS):
            batch = wanted[start : start + _SQLITE_MAX_VARS]
            marks = ",".join("?" * len(batch))
            # marks is only "?" placeholders; values are bound parameters.
            rows = self.state.query(
                f"SELECT {_COLUMN_LIST} FROM {LEDGER_TABLE} WHERE key IN ({marks})",  # noqa: S608
                batch,
            )
            for row in rows:
                found[row["key"]] = LedgerEntry(**dict(row))
        return found

    def get(self, key: str) -> LedgerEntry | None:
        """One entry, or None."""
        return self.get_many([key]).get(key)

    def record(self, item: LedgerItem, outcome: Outcome) -> None:
        """Commit one result (one short transaction). ``ok`` rows are never overwritten."""
        now = time.time()
        parsed = json.dumps(list(outcome.parsed), ensure_ascii=False) if outcome.parsed is not None else None
        row = LedgerEntry(
            **asdict(item),
            status=outcome.status,
            output=outcome.output,
            parsed_json=parsed,
            error_category=outcome.error_category,
            error_message=outcome.error_message[:4000] if outcome.error_message else None,
            attempts=int(outcome.uses_attempt),
            prompt_tokens=int(outcome.prompt_tokens),
            cached_prompt_tokens=int(outcome.cached_prompt_tokens),
            completion_tokens=int(outcome.completion_tokens),
            latency_ms=float(outcome.latency_ms),
            trimmed=int(outcome.trimmed),
            max_tokens=int(outcome.max_tokens),
            finish_reason=outcome.finish_reason,
            seed_sent=None if outcome.seed_sent is None else int(outcome.seed_sent),
            created_at=now,
            updated_at=now,
        )
        with self.state.transaction() as con:
            con.execute(_RECORD_SQL, tuple(getattr(row, name) for name in _COLUMNS))

    def reset_failed(self, repo: str | None = None, category: str | None = None) -> int:
        """Give failed items (of ``repo`` / ``category``; None: any) their attempts back; returns how many."""
        where, args = _conditions({"repo": repo, "error_category": category})
        sql = f"UPDATE {LEDGER_TABLE} SET attempts = 0 WHERE status != 'ok' AND attempts > 0{where}"  # noqa: S608
        with self.state.transaction() as con:
            return int(con.execute(sql, args).rowcount)

    def _select(self, columns: str, repo: str | None, kind: str | None, tail: str) -> list[Any]:
        """``SELECT columns`` of the ledger rows of ``repo`` and/or ``kind`` (None: any), then ``tail``."""
        where, args = _conditions({"repo": repo, "kind": kind})
        sql = f"SELECT {columns} FROM {LEDGER_TABLE} WHERE 1 = 1{where}"  # noqa: S608 - constant identifiers
        return self.state.query(f"{sql} {tail}", args)

    def counts(self, repo: str | None = None, kind: str | None = None) -> dict[str, int]:
        """Rows by status, optionally for one repo and/or kind."""
        rows = self._select("status, COUNT(*) AS n", repo, kind, "GROUP BY status")
        return {row["status"]: int(row["n"]) for row in rows}

    def failure_counts(self, repo: str | None = None, kind: str | None = None) -> dict[str, int]:
        """Failed rows by error category, optionally for one repo and/or kind."""
        rows = self._select("error_category, COUNT(*) AS n", repo, kind, "AND status != 'ok' GROUP BY error_category")
        return {str(row["error_category"] or "unknown"): int(row["n"]) for row in rows}

    def entries(self, repo: str | None = None, kind: str | None = None) -> list[LedgerEntry]:
        """All rows (optionally filtered), oldest first; for tests, the viewer and the CLI."""
        rows = self._select(_COLUMN_LIST, repo, kind, "ORDER BY created_at, key")
        return [LedgerEntry(**dict(row)) for row in rows]

    def generated_counts(self) -> dict[str, dict[str, int]]:
        """``{repo: {"questions": n, "answers": n}}`` generated so far: parsed questions of the ok
        question items, ok answer items (committed item by item, so current while a stage runs)."""
        length = "json_array_length(parsed_json::json)" if self.state.postgres else "json_array_length(parsed_json)"
        rows = self.state.query(
            f"SELECT repo, kind, sum(CASE WHEN kind = 'question' THEN coalesce({length}, 0)"  # noqa: S608 - constant
            f" ELSE 1 END) AS n FROM {LEDGER_TABLE} WHERE status = 'ok' GROUP BY repo, kind",
        )
        counts: dict[str, dict[str, int]] = {}
        for row in rows:
            counts.setdefault(str(row["repo"]), {})[f"{row['kind']}s"] = int(row["n"] or 0)
        return counts

    def completion_tokens_since(self, since: float) -> tuple[int, float | None]:
        """Completion tokens of the items recorded (or updated) at or after ``since``, and the
        earliest such time (None when there is none)."""
        tokens, _, first = self._totals_since(since)
        return tokens, first

    def generated_since(self, since: float) -> tuple[int, int]:
        """(completion tokens, ok answers) of the items recorded (or updated) at or after ``since``."""
        tokens, answers, _ = self._totals_since(since)
        return tokens, answers

    def _totals_since(self, since: float) -> tuple[int, int, float | None]:
        """(completion tokens, ok answers, earliest update) of the items updated at or after ``since``."""
        rows = self.state.query(
            "SELECT coalesce(sum(completion_tokens), 0),"  # noqa: S608 - a constant table name
            " coalesce(sum(CASE WHEN kind = 'answer' AND status = 'ok' THEN 1 ELSE 0 END), 0), min(updated_at)"
            f" FROM {LEDGER_TABLE} WHERE updated_at >= ?",
            (since,),
        )
        tokens, answers, first = rows[0]
        return int(tokens or 0), int(answers or 0), None if first is None else float(first)
