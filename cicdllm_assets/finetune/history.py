"""Every evaluation, with its dataset version, in the state store (table ``evaluations``).

One row per distinct evaluation (adapter key + sample settings): a no-op re-run finds its
row and reuses the stored result instead of evaluating again. ``cicdllm eval --compare``
and ``cicdllm status`` read the rows; the asset's metadata carries the same numbers, so
Dagster's metadata plots show the trend over dataset versions.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cicdllm_assets.config.models import FinetuneConfig
from cicdllm_assets.finetune.evaluate import EvaluationResult
from cicdllm_assets.storage.state import StateStore

TABLE = "evaluations"
_DDL = """
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    eval_key TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    dataset_version TEXT NOT NULL,
    adapter_key TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    test_examples INTEGER NOT NULL,
    test_base_loss REAL,
    test_adapter_loss REAL,
    valid_base_loss REAL,
    valid_adapter_loss REAL,
    result_json TEXT NOT NULL
);
"""


def evaluation_key(adapter_key: str, config: FinetuneConfig) -> str:
    """Identity of an evaluation: the adapter and the settings that change its output."""
    payload = json.dumps(
        {"adapter": adapter_key, "samples": config.samples, "sample_max_tokens": config.sample_max_tokens},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class HistoryRow:
    """One recorded evaluation (the columns ``eval --compare`` prints)."""

    created_at: float
    dataset_version: str
    adapter_key: str
    model: str
    status: str
    test_examples: int
    test_base_loss: float | None
    test_adapter_loss: float | None
    valid_base_loss: float | None
    valid_adapter_loss: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dict(self.__dict__)


class EvaluationHistory:
    """The ``evaluations`` table of a state database."""

    def __init__(self, state: StateStore) -> None:
        self.state = state
        state.ensure(TABLE, _DDL)

    def find(self, eval_key: str) -> EvaluationResult | None:
        """The stored result of ``eval_key`` (None if never evaluated)."""
        row = (
            self.state.connection()
            .execute(
                "SELECT result_json FROM evaluations WHERE eval_key = ?",
                (eval_key,),
            )
            .fetchone()
        )
        return EvaluationResult.from_dict(json.loads(row[0])) if row else None

    def record(self, eval_key: str, result: EvaluationResult) -> None:
        """Add (or replace) the row of ``eval_key``."""
        test, valid = result.splits["test"], result.splits["valid"]
        with self.state.transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO evaluations (eval_key, created_at, dataset_version, adapter_key, model,"
                " status, test_examples, test_base_loss, test_adapter_loss, valid_base_loss, valid_adapter_loss,"
                " result_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    eval_key,
                    time.time(),
                    result.dataset_version,
                    result.adapter_key,
                    result.model,
                    result.status,
                    test.examples,
                    test.base_loss,
                    test.adapter_loss,
                    valid.base_loss,
                    valid.adapter_loss,
                    json.dumps(result.to_dict()),
                ),
            )


def read_history(state: StateStore) -> list[HistoryRow]:
    """Every recorded evaluation, oldest first ([] when the table does not exist yet)."""
    if TABLE not in state.tables():
        return []
    rows = state.query(
        "SELECT created_at, dataset_version, adapter_key, model, status, test_examples,"
        " test_base_loss, test_adapter_loss, valid_base_loss, valid_adapter_loss FROM evaluations ORDER BY id"
    )
    return [HistoryRow(*tuple(row)) for row in rows]


def read_history_file(state_db: Path) -> list[HistoryRow]:
    """:func:`read_history` of the state database at ``state_db`` ([] if it does not exist)."""
    if not Path(state_db).exists():
        return []
    with StateStore(state_db) as state:
        return read_history(state)
