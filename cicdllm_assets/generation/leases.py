"""Per-item claims: a lease with an expiry in the state store, taken before a request is sent.

Concurrent runs and workers (two ``cicdllm run`` processes, Dagster steps on several Celery
workers) plan the same missing items. Before sending a request, a runner claims the item's
key; a key held by another live holder is not sent again but waited for, and its result
read from the ledger. A holder renews its leases from a background thread while it lives;
a process that dies (even by SIGKILL) stops renewing, and its items are claimable again
once the lease expires. Claims work the same on SQLite and Postgres (one ``INSERT … ON
CONFLICT … DO UPDATE … WHERE expired`` per key).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from types import TracebackType

from cicdllm_assets.lifecycle import BackgroundLoop
from cicdllm_assets.storage.state import STATE_ERRORS, StateStore

logger = logging.getLogger(__name__)

LEASES_TABLE = "item_leases"
LEASES_VERSION = 1
LEASES_DDL = f"""
CREATE TABLE IF NOT EXISTS {LEASES_TABLE} (
    key TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS {LEASES_TABLE}_holder ON {LEASES_TABLE}(holder);
"""
_CLAIM = (
    f"INSERT INTO {LEASES_TABLE} (key, holder, expires_at) VALUES (?, ?, ?)"  # noqa: S608 - constant
    " ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at"
    f" WHERE {LEASES_TABLE}.expires_at < ? OR {LEASES_TABLE}.holder = excluded.holder"
)
_BATCH = 500


def new_holder() -> str:
    """A holder id unique to this process and call: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leases:
    """Claims of one holder; a context manager that renews them in a thread and releases them on exit."""

    def __init__(self, state: StateStore, ttl_seconds: float, holder: str | None = None) -> None:
        self.state = state
        self.ttl = float(ttl_seconds)
        self.holder = holder or new_holder()
        self._renewal = BackgroundLoop(self._renew_quietly, max(0.2, self.ttl / 3), "cicdllm-leases")
        state.ensure(LEASES_TABLE, LEASES_DDL, LEASES_VERSION)

    def claim(self, keys: Sequence[str]) -> set[str]:
        """Take the leases of ``keys`` that are free, expired or already ours; return the keys now held."""
        wanted = list(dict.fromkeys(keys))
        held: set[str] = set()
        for start in range(0, len(wanted), _BATCH):
            part = wanted[start : start + _BATCH]
            now = time.time()
            with self.state.transaction() as con:
                con.executemany(_CLAIM, [(key, self.holder, now + self.ttl, now) for key in part])
            held |= self._held(part)
        return held

    def _held(self, keys: Sequence[str]) -> set[str]:
        marks = ",".join("?" * len(keys))
        rows = self.state.query(
            f"SELECT key FROM {LEASES_TABLE} WHERE holder = ? AND key IN ({marks})",  # noqa: S608 - placeholders
            (self.holder, *keys),
        )
        return {str(row[0]) for row in rows}

    def release(self, keys: Iterable[str]) -> None:
        """Drop our leases of ``keys`` (others' leases are untouched)."""
        wanted = list(keys)
        for start in range(0, len(wanted), _BATCH):
            part = wanted[start : start + _BATCH]
            marks = ",".join("?" * len(part))
            with self.state.transaction() as con:
                con.execute(
                    f"DELETE FROM {LEASES_TABLE} WHERE holder = ? AND key IN ({marks})",  # noqa: S608
                    (self.holder, *part),
                )

    def release_all(self) -> None:
        """Drop every lease of this holder."""
        with self.state.transaction() as con:
            con.execute(f"DELETE FROM {LEASES_TABLE} WHERE holder = ?", (self.holder,))  # noqa: S608

    def renew(self) -> None:
        """Push the expiry of all our leases ``ttl`` seconds ahead."""
        with self.state.transaction() as con:
            con.execute(
                f"UPDATE {LEASES_TABLE} SET expires_at = ? WHERE holder = ?",  # noqa: S608 - constant
                (time.time() + self.ttl, self.holder),
            )

    def _renew_quietly(self) -> None:
        try:
            self.renew()
        except STATE_ERRORS as exc:  # the next renewal may succeed before expiry
            logger.warning("lease renewal failed: %s", exc)

    def __enter__(self) -> Leases:
        self._renewal.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._renewal.stop()
        try:
            self.release_all()
        except STATE_ERRORS as err:  # they expire on their own
            logger.warning("could not release leases of %s: %s", self.holder, err)
