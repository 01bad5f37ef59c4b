"""Per-blob cache of token counts and chunk plans: an in-memory LRU over a SQLite table."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cicdllm_assets.chunking.plan import CHUNKER_VERSION, ChunkSpan, FilePlan
from cicdllm_assets.quality.secrets import redact_field
from cicdllm_assets.storage.state import StateStore, upsert_sql

CACHE_TABLE_DDL = """
CREATE TABLE IF NOT EXISTS chunk_cache (
    blob_sha TEXT NOT NULL,
    language TEXT NOT NULL,
    tokenizer_id TEXT NOT NULL,
    budget INTEGER NOT NULL,
    chunker_version TEXT NOT NULL,
    token_count INTEGER NOT NULL,
    line_count INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    plan_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (blob_sha, language, tokenizer_id, budget, chunker_version)
) WITHOUT ROWID;
"""
_SQL_BATCH = 500
_KEY_COLUMNS = ("blob_sha", "language", "tokenizer_id", "budget", "chunker_version")
_UPSERT = upsert_sql(
    "chunk_cache", (*_KEY_COLUMNS, "token_count", "line_count", "chunk_count", "plan_json", "created_at"), _KEY_COLUMNS
)


@dataclass(frozen=True)
class PlanSummary:
    """What source_files needs from a plan."""

    token_count: int
    chunk_count: int


@dataclass(frozen=True)
class CacheKey:
    """What a plan depends on: the blob, how it is chunked, and by which tokenizer and budget."""

    blob_sha: str
    language: str
    tokenizer_id: str
    budget: int
    chunker_version: str = CHUNKER_VERSION


def plan_to_json(plan: FilePlan) -> str:
    """Serialise a plan's imports and chunks; the state DB never holds a secret, so imports and
    symbol names (copied from the file) are stored redacted."""
    chunks = [c.to_list() for c in plan.chunks]
    for row in chunks:
        row[4] = redact_field(row[4])  # type: ignore[arg-type]
    return json.dumps({"i": redact_field(plan.imports), "c": chunks}, separators=(",", ":"))


def plan_from_json(token_count: int, line_count: int, raw: str) -> FilePlan:
    """Inverse of :func:`plan_to_json`."""
    data = json.loads(raw)
    return FilePlan(token_count, line_count, data["i"], tuple(ChunkSpan.from_list(c) for c in data["c"]))


class PlanCache:
    """LRU of ``lru_size`` plans in front of the ``chunk_cache`` table (shared by processes)."""

    def __init__(self, state: StateStore | None, lru_size: int = 256) -> None:
        self.state = state
        self.lru_size = lru_size
        self._lru: OrderedDict[CacheKey, FilePlan] = OrderedDict()
        self._lock = threading.Lock()
        if state is not None:
            state.ensure("chunk_cache", CACHE_TABLE_DDL)

    def _remember(self, key: CacheKey, plan: FilePlan) -> None:
        if self.lru_size <= 0:
            return
        with self._lock:
            self._lru[key] = plan
            self._lru.move_to_end(key)
            while len(self._lru) > self.lru_size:
                self._lru.popitem(last=False)

    def get_many(self, keys: Sequence[CacheKey]) -> dict[CacheKey, FilePlan]:
        """Cached plans for those keys that have one."""
        found: dict[CacheKey, FilePlan] = {}
        missing = self._from_lru(keys, found)
        for key, row in self._select(missing, "token_count, line_count, plan_json").items():
            plan = plan_from_json(row[0], row[1], row[2])
            found[key] = plan
            self._remember(key, plan)
        return found

    def get_summaries(self, keys: Sequence[CacheKey]) -> dict[CacheKey, PlanSummary]:
        """(token count, chunk count) for cached keys, without decoding the chunk lists."""
        plans: dict[CacheKey, FilePlan] = {}
        missing = self._from_lru(keys, plans)
        found = {key: PlanSummary(p.token_count, len(p.chunks)) for key, p in plans.items()}
        for key, row in self._select(missing, "token_count, chunk_count").items():
            found[key] = PlanSummary(row[0], row[1])
        return found

    def _from_lru(self, keys: Sequence[CacheKey], found: dict[CacheKey, FilePlan]) -> list[CacheKey]:
        missing: list[CacheKey] = []
        with self._lock:
            for key in keys:
                plan = self._lru.get(key)
                if plan is None:
                    missing.append(key)
                else:
                    self._lru.move_to_end(key)
                    found[key] = plan
        return missing

    def _select(self, keys: Sequence[CacheKey], columns: str) -> dict[CacheKey, tuple[Any, ...]]:
        if not keys or self.state is None:
            return {}
        groups: dict[tuple[str, int, str], list[CacheKey]] = {}
        for key in keys:
            groups.setdefault((key.tokenizer_id, key.budget, key.chunker_version), []).append(key)
        con = self.state.connection()
        out: dict[CacheKey, tuple[Any, ...]] = {}
        for (tokenizer_id, budget, version), group in groups.items():
            wanted = {(k.blob_sha, k.language): k for k in group}
            shas = sorted({k.blob_sha for k in group})
            for i in range(0, len(shas), _SQL_BATCH):
                part = shas[i : i + _SQL_BATCH]
                marks = ",".join("?" * len(part))
                rows = con.execute(
                    f"SELECT blob_sha, language, {columns} FROM chunk_cache"  # noqa: S608 - fixed column lists
                    f" WHERE tokenizer_id = ? AND budget = ? AND chunker_version = ? AND blob_sha IN ({marks})",
                    (tokenizer_id, budget, version, *part),
                ).fetchall()
                for row in rows:
                    hit = wanted.get((row[0], row[1]))
                    if hit is not None:
                        out[hit] = tuple(row[2:])
        con.commit()  # end the read transaction so WAL checkpoints are not held back
        return out

    def put_many(self, items: Iterable[tuple[CacheKey, FilePlan]]) -> None:
        """Store plans (LRU and SQLite, one transaction)."""
        rows = []
        now = time.time()
        for key, plan in items:
            self._remember(key, plan)
            rows.append(
                (
                    key.blob_sha,
                    key.language,
                    key.tokenizer_id,
                    key.budget,
                    key.chunker_version,
                    plan.token_count,
                    plan.line_count,
                    len(plan.chunks),
                    plan_to_json(plan),
                    now,
                )
            )
        if not rows or self.state is None:
            return
        with self.state.transaction() as con:
            con.executemany(_UPSERT, rows)

    def clear_memory(self) -> None:
        """Forget the in-memory LRU (the SQLite table stays)."""
        with self._lock:
            self._lru.clear()
