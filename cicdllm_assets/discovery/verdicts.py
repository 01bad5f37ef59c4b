"""Per-blob cache of content checks (binary, encoding, generated, minified, line count).

A blob's verdict depends only on its bytes, the checks' version and ``skip_generated``, so an
unchanged file is classified without reading it again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cicdllm_assets.storage.state import StateStore, upsert_sql

CHECKS_VERSION = "2"  # 2: a few bad bytes in UTF-8 are replaced, not read as a code page
VERDICTS_DDL = """
CREATE TABLE IF NOT EXISTS blob_verdicts (
    blob_sha TEXT NOT NULL,
    checks_version TEXT NOT NULL,
    skip_generated INTEGER NOT NULL,
    kept INTEGER NOT NULL,
    category TEXT,
    reason TEXT,
    encoding TEXT,
    line_count INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (blob_sha, checks_version, skip_generated)
) WITHOUT ROWID;
"""
_SQL_BATCH = 500
_KEY_COLUMNS = ("blob_sha", "checks_version", "skip_generated")
_UPSERT = upsert_sql(
    "blob_verdicts", (*_KEY_COLUMNS, "kept", "category", "reason", "encoding", "line_count", "created_at"), _KEY_COLUMNS
)


@dataclass(frozen=True)
class Verdict:
    """What the content checks decided about one blob."""

    kept: bool
    category: str | None
    reason: str | None
    encoding: str | None
    line_count: int


class VerdictCache:
    """``blob_verdicts`` in the state DB (shared by processes)."""

    def __init__(self, state: StateStore, skip_generated: bool) -> None:
        self.state = state
        self.skip_generated = int(skip_generated)
        state.ensure("blob_verdicts", VERDICTS_DDL)

    def get_many(self, shas: Sequence[str]) -> dict[str, Verdict]:
        """Cached verdicts by blob sha."""
        unique = sorted(set(shas))
        found: dict[str, Verdict] = {}
        con = self.state.connection()
        for i in range(0, len(unique), _SQL_BATCH):
            part = unique[i : i + _SQL_BATCH]
            marks = ",".join("?" * len(part))
            rows = con.execute(
                "SELECT blob_sha, kept, category, reason, encoding, line_count FROM blob_verdicts"  # noqa: S608
                f" WHERE checks_version = ? AND skip_generated = ? AND blob_sha IN ({marks})",
                (CHECKS_VERSION, self.skip_generated, *part),
            ).fetchall()
            for row in rows:
                found[row[0]] = Verdict(bool(row[1]), row[2], row[3], row[4], row[5])
        con.commit()
        return found

    def put_many(self, items: Iterable[tuple[str, Verdict]]) -> None:
        """Store verdicts (one transaction)."""
        now = time.time()
        rows = [
            (sha, CHECKS_VERSION, self.skip_generated, int(v.kept), v.category, v.reason, v.encoding, v.line_count, now)
            for sha, v in items
        ]
        if not rows:
            return
        with self.state.transaction() as con:
            con.executemany(_UPSERT, rows)
