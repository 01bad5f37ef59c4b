"""Live training progress (step, loss, tokens/s) in the state store, for progress bars.

The ``adapter`` asset writes one row per report; ``cicdllm finetune`` polls it from another
thread (or process) and draws steps, loss and ETA. Stage counters (``stage_progress``) carry
the steps for ``cicdllm status``; this table adds what they cannot hold: the loss.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from cicdllm_assets.storage.state import StateStore

TABLE = "finetune_live"
_DDL = """
CREATE TABLE IF NOT EXISTS finetune_live (
    adapter_key TEXT PRIMARY KEY,
    step INTEGER NOT NULL,
    total INTEGER NOT NULL,
    loss REAL,
    tokens_per_second REAL,
    started_step INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class LiveTraining:
    """The latest report of one training."""

    adapter_key: str
    step: int
    total: int
    loss: float | None
    tokens_per_second: float | None
    started_step: int
    updated_at: float


class LiveBoard:
    """Read and write the ``finetune_live`` table."""

    def __init__(self, state: StateStore) -> None:
        self.state = state
        state.ensure(TABLE, _DDL)

    def report(
        self, key: str, step: int, total: int, loss: float | None, tokens_per_second: float | None, started_step: int
    ) -> None:
        """Replace the row of ``key``."""
        with self.state.transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO finetune_live VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, step, total, loss, tokens_per_second, started_step, time.time()),
            )

    def latest(self, since: float = 0.0) -> LiveTraining | None:
        """The most recently updated training at or after ``since``."""
        try:
            row = (
                self.state.connection()
                .execute(
                    "SELECT * FROM finetune_live WHERE updated_at >= ? ORDER BY updated_at DESC LIMIT 1",
                    (since,),
                )
                .fetchone()
            )
        except sqlite3.OperationalError:
            return None
        return LiveTraining(**dict(row)) if row else None
