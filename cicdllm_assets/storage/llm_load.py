"""The model server's load as the generation stages see it: the adaptive concurrency limit,
requests in flight and the observed latency, per repo and stage, for the live displays.

The generation engine writes a row at most once a second (:func:`write_llm_load`); ``cicdllm
run``'s progress and the viewer read them (:func:`read_llm_load`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from cicdllm_assets.storage.state import StateStore, upsert_sql

TABLE = "llm_load"

_DDL = """
CREATE TABLE IF NOT EXISTS llm_load (
    repo TEXT NOT NULL,
    stage TEXT NOT NULL,
    concurrency_limit INTEGER NOT NULL,
    max_concurrency INTEGER NOT NULL,
    in_flight INTEGER NOT NULL,
    latency_ms REAL,
    server TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (repo, stage)
);
"""
_COLUMNS = ("repo", "stage", "concurrency_limit", "max_concurrency", "in_flight", "latency_ms", "server", "updated_at")
_UPSERT = upsert_sql(TABLE, _COLUMNS, ("repo", "stage"))


@dataclass(frozen=True)
class LLMLoad:
    """One stage's latest view of the model server."""

    repo: str
    stage: str
    concurrency_limit: int
    max_concurrency: int
    in_flight: int
    latency_ms: float | None
    server: str
    updated_at: float

    @property
    def label(self) -> str:
        """``limit 3/8, 420 ms`` (first-token latency)."""
        latency = "" if self.latency_ms is None else f", {self.latency_ms:,.0f} ms"
        return f"limit {self.concurrency_limit}/{self.max_concurrency}{latency}"


def write_llm_load(state: StateStore, repo: str, stage: str, status: Mapping[str, object]) -> None:
    """Store a backend's ``load_status()`` for ``repo``/``stage``."""
    state.ensure(TABLE, _DDL)
    latency = status.get("latency_ms")
    with state.transaction() as con:
        con.execute(
            _UPSERT,
            (
                repo,
                stage,
                int(str(status["limit"])),
                int(str(status["max_limit"])),
                int(str(status["in_flight"])),
                None if latency is None else float(str(latency)),
                str(status.get("server") or "unknown"),
                time.time(),
            ),
        )


def read_llm_load(state: StateStore) -> dict[tuple[str, str], LLMLoad]:
    """Every stored row by (repo, stage); empty when no stage has written one."""
    if TABLE not in state.tables():
        return {}
    rows = state.query(
        "SELECT repo, stage, concurrency_limit, max_concurrency, in_flight, latency_ms, server, updated_at"
        " FROM llm_load"
    )
    loads = [LLMLoad(*tuple(row)) for row in rows]
    return {(load.repo, load.stage): load for load in loads}
