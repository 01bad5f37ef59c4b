"""Cache of secret-redaction results per (path, chunk text, detector version).

Redaction runs on every chunk of every materialization; when a repo moves to a new commit most
chunks are unchanged, so their results are reused. The detector version is a hash of the
redaction module's source and the detect-secrets version: changing the detector invalidates
every entry.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from cicdllm_assets.storage.state import StateStore, upsert_sql

REDACTION_DDL = """
CREATE TABLE IF NOT EXISTS redaction_cache (
    text_key TEXT NOT NULL,
    detector TEXT NOT NULL,
    redacted TEXT,
    total INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (text_key, detector)
) WITHOUT ROWID;
"""
_SQL_BATCH = 500
_UPSERT = upsert_sql(
    "redaction_cache", ("text_key", "detector", "redacted", "total", "created_at"), ("text_key", "detector")
)


@lru_cache(maxsize=1)
def detector_identity() -> str:
    """A hash of the redaction code (``quality/secrets.py``) and the detect-secrets version."""
    from cicdllm_assets.quality import secrets

    digest = hashlib.sha256(Path(secrets.__file__).read_bytes())
    try:
        import detect_secrets

        digest.update(str(getattr(detect_secrets, "__version__", "")).encode())
    except ImportError:  # pragma: no cover - a declared dependency
        pass
    return digest.hexdigest()[:16]


def text_key(path: str, text: str) -> str:
    """Content key of one chunk as the redactor sees it (the path is a file-type hint)."""
    digest = hashlib.sha256(path.encode("utf-8", "surrogatepass"))
    digest.update(b"\0")
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:32]


class RedactionCache:
    """``redaction_cache`` in the state DB; ``redacted`` is NULL when the text had no secret."""

    def __init__(self, state: StateStore, detector: str | None = None) -> None:
        self.state = state
        self.detector = detector or detector_identity()
        self.hits = 0
        self.misses = 0
        state.ensure("redaction_cache", REDACTION_DDL)

    def get_many(self, keys: Sequence[str]) -> dict[str, tuple[str | None, int]]:
        """Cached (redacted text or None, total) by text key."""
        unique = sorted(set(keys))
        found: dict[str, tuple[str | None, int]] = {}
        con = self.state.connection()
        for i in range(0, len(unique), _SQL_BATCH):
            part = unique[i : i + _SQL_BATCH]
            marks = ",".join("?" * len(part))
            rows = con.execute(
                f"SELECT text_key, redacted, total FROM redaction_cache WHERE detector = ? AND text_key IN ({marks})",  # noqa: S608
                (self.detector, *part),
            ).fetchall()
            for row in rows:
                found[row[0]] = (row[1], row[2])
        con.commit()
        self.hits += sum(1 for key in keys if key in found)
        self.misses += sum(1 for key in keys if key not in found)
        return found

    def put_many(self, items: Iterable[tuple[str, str | None, int]]) -> None:
        """Store (text key, redacted text or None, total) rows."""
        now = time.time()
        rows = [(key, self.detector, redacted, total, now) for key, redacted, total in items]
        if not rows:
            return
        with self.state.transaction() as con:
            con.executemany(_UPSERT, rows)
