"""Status readers over the storage APIs, all read-only and never blocking a writer.

- asset tables (one Parquet file per asset partition, replaced atomically, listed by
  :class:`~cicdllm_assets.storage.tables.TableStore`) through an in-memory DuckDB
  connection: per-repo files kept/skipped, chunks, questions, answers, accepted QA pairs;
- the state store: stage progress, failures, events, repo heads (its own methods) and the
  generation ledger (:class:`~cicdllm_assets.generation.ledger.Ledger`).

A missing file, table or column counts as zero; a lock or a file replaced mid-read is
retried briefly (:func:`retry_read`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from cicdllm_assets.generation.ledger import Ledger
from cicdllm_assets.status.model import EventInfo, FailureInfo, StageStatus, stage_key
from cicdllm_assets.storage.state import STATE_ERRORS, StateStore
from cicdllm_assets.storage.tables import TableStore, partition_key_of

_logger = logging.getLogger(__name__)

T = TypeVar("T")

#: A running stage with no progress for this long probably lost its process.
STALLED_AFTER_SECONDS = 600.0
READ_RETRIES = 5
RETRY_SLEEP_SECONDS = 0.1


def retry_read(what: str, func: Callable[[], T], retry_on: tuple[type[BaseException], ...]) -> T:
    """Run ``func``, retrying briefly on transient errors (locks, files replaced mid-read)."""
    for attempt in range(READ_RETRIES):
        try:
            return func()
        except retry_on as exc:
            if attempt == READ_RETRIES - 1:
                raise
            _logger.debug("%s: retrying after %s", what, exc)
            time.sleep(RETRY_SLEEP_SECONDS * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


# ----------------------------------------------------------------------------- Parquet
_ASSET_AGGREGATES: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {
    # asset: [(result name, SQL aggregate, columns it needs)]
    "repositories": [
        ("head_commit", "CAST(last(head_commit) AS VARCHAR)", ("head_commit",)),
        ("license", "CAST(last(license) AS VARCHAR)", ("license",)),
        ("size_bytes", "CAST(max(size_bytes) AS BIGINT)", ("size_bytes",)),
    ],
    "source_files": [
        ("files_kept", "count(*) FILTER (WHERE status = 'kept')", ("status",)),
        ("files_skipped", "count(*) FILTER (WHERE status <> 'kept')", ("status",)),
        (
            "kept_bytes",
            "CAST(coalesce(sum(size_bytes) FILTER (WHERE status = 'kept'), 0) AS BIGINT)",
            ("status", "size_bytes"),
        ),
    ],
    "code_chunks": [
        ("chunks", "count(*)", ()),
        ("chunk_tokens", "CAST(coalesce(sum(token_count), 0) AS BIGINT)", ("token_count",)),
    ],
    "questions": [("questions", "count(*)", ())],
    "answers": [
        ("answers", "count(*)", ()),
        ("completion_tokens", "CAST(coalesce(sum(completion_tokens), 0) AS BIGINT)", ("completion_tokens",)),
    ],
    "qa_pairs": [
        ("qa_pairs", "count(*)", ()),
        ("qa_accepted", "count(*) FILTER (WHERE accepted)", ("accepted",)),
    ],
}


def _aggregate_asset(con: duckdb.DuckDBPyConnection, files: list[Path], asset: str) -> dict[str, dict[str, Any]]:
    """Per-partition aggregates of one asset; missing columns are left out."""
    file_list = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in files) + "]"
    source = f"read_parquet({file_list}, union_by_name = true, filename = true)"
    columns = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}  # noqa: S608
    selects = []
    for name, expression, needs in _ASSET_AGGREGATES[asset]:
        if all(col in columns for col in needs):
            selects.append(f"{expression} AS {name}")
    if "repo" in columns:
        selects.append("CAST(last(repo) AS VARCHAR) AS repo_column")
    # file paths are quoted, expressions and names are constants of this module: no injection.
    sql = f"SELECT filename, {', '.join(selects)} FROM {source} GROUP BY filename"  # noqa: S608
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description or []]
    result: dict[str, dict[str, Any]] = {}
    for row in cursor.fetchall():
        values = dict(zip(names, row, strict=True))
        filename = values.pop("filename")
        repo = values.pop("repo_column", None) or partition_key_of(Path(filename).name)
        merged = result.setdefault(repo, {})
        for key, value in values.items():
            if isinstance(value, int) and isinstance(merged.get(key), int):
                merged[key] += value
            elif value is not None:
                merged[key] = value
    return result


def read_table_counts(tables_dir: Path, errors: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """``{repo: {counter: value}}`` from the asset Parquet files (missing tables: nothing)."""
    counts: dict[str, dict[str, Any]] = {}
    store = TableStore(tables_dir)
    for asset in _ASSET_AGGREGATES:

        def run(asset: str = asset) -> dict[str, dict[str, Any]]:
            files = store.files(asset)
            if not files:
                return {}
            con = duckdb.connect(":memory:")
            try:
                return _aggregate_asset(con, files, asset)
            finally:
                con.close()

        try:
            per_repo = retry_read(f"read {asset}", run, (duckdb.Error, OSError))
        except (duckdb.Error, OSError) as exc:
            if errors is not None:
                errors.append(f"{asset}: {exc}")
            continue
        for repo, values in per_repo.items():
            counts.setdefault(repo, {}).update(values)
    return counts


# ----------------------------------------------------------------------------- state store
def _read(func: Callable[[], T]) -> T:
    return retry_read("state read", func, STATE_ERRORS)


def _rate_and_eta(
    done: int, total: int, started: float | None, updated: float | None, status: str, now: float
) -> tuple[float | None, float | None]:
    """Items processed per minute and seconds left; ``done`` counts processed items (incl. failed)."""
    if started is None or done <= 0:
        return None, None
    end = (updated or now) if status != "running" else now
    elapsed = end - started
    if elapsed < 1.0:  # too short to give a meaningful rate
        return None, None
    rate = done / elapsed * 60.0
    eta = None
    if status == "running" and total > done and rate > 0:
        eta = (total - done) / (rate / 60.0)
    return rate, eta


def read_stage_progress(store: StateStore, now: float) -> list[StageStatus]:
    """Per-repo stage rows with rate (units/min) and ETA."""
    if "stage_progress" not in store.tables():
        return []
    stages = []
    for row in _read(store.progress):
        done, total, failed, status = row.done, row.total, row.failed, row.status
        started, updated = row.started_at, row.updated_at
        rate, eta = _rate_and_eta(done + failed, total, started, updated, status, now)
        stages.append(
            StageStatus(
                stage=row.stage,
                repo=row.repo,
                done=done,
                total=total,
                failed=failed,
                unit=row.unit,
                status=status,
                started_at=started,
                updated_at=updated,
                rate_per_minute=rate,
                eta_seconds=eta,
                stalled=status == "running" and updated is not None and now - updated > STALLED_AFTER_SECONDS,
            )
        )
    stages.sort(key=lambda s: (stage_key(s.stage), s.repo or ""))
    return stages


def summarize_stages(stages: list[StageStatus], now: float) -> list[StageStatus]:
    """One row per stage summed over repos (the top of the progress hierarchy)."""
    by_stage: dict[str, list[StageStatus]] = {}
    for stage in stages:
        by_stage.setdefault(stage.stage, []).append(stage)
    summary = []
    for name in sorted(by_stage, key=stage_key):
        rows = by_stage[name]
        running = [r for r in rows if r.status == "running"]
        status = "running" if running else ("failed" if any(r.status == "failed" for r in rows) else "done")
        done, total = sum(r.done for r in rows), sum(r.total for r in rows)
        failed = sum(r.failed for r in rows)
        started = min((r.started_at for r in rows if r.started_at is not None), default=None)
        updated = max((r.updated_at for r in rows if r.updated_at is not None), default=None)
        rate, eta = _rate_and_eta(done + failed, total, started, updated, status, now)
        if running:  # the ETA of the whole stage is the slowest running repo's
            etas = [r.eta_seconds for r in running if r.eta_seconds is not None]
            eta = max(etas) if etas else eta
        units = {r.unit for r in rows}
        summary.append(
            StageStatus(
                stage=name,
                repo=None,
                done=done,
                total=total,
                failed=failed,
                unit=units.pop() if len(units) == 1 else "items",
                status=status,
                started_at=started,
                updated_at=updated,
                rate_per_minute=rate,
                eta_seconds=eta,
                repos=len(rows),
                stalled=bool(running) and all(r.stalled for r in running),
            )
        )
    return summary


def read_failures(store: StateStore, limit: int) -> tuple[list[FailureInfo], dict[str, dict[str, int]]]:
    """Newest failures (up to ``limit``) and ``{repo: {category: count}}`` over all of them."""
    if "failures" not in store.tables():
        return [], {}
    counts = _read(store.failure_counts)
    return [FailureInfo(**row) for row in _read(lambda: store.recent_failures(limit))], counts


def read_events(store: StateStore, limit: int) -> list[EventInfo]:
    """The last ``limit`` events, oldest first (newest last, like a log tail)."""
    if "events" not in store.tables():
        return []
    return [EventInfo(**row) for row in _read(lambda: store.recent_events(limit))]


def read_repo_info(store: StateStore) -> dict[str, str | None]:
    """``{repo: head_commit}`` recorded by the repositories asset."""
    if "repo_info" not in store.tables():
        return {}
    return _read(store.repo_heads)


def read_ledger_counts(store: StateStore) -> dict[str, dict[str, int]]:
    """``{repo: {"questions": n, "answers": n}}`` generated so far, from the generation ledger
    (committed item by item, so it is current while a stage runs or after it was killed)."""
    ledger = Ledger.existing(store)
    return {} if ledger is None else _read(ledger.generated_counts)


def read_tokens_per_second(store: StateStore, window_seconds: float, now: float) -> float | None:
    """Generated tokens/s over the last ``window_seconds``, from the generation ledger's items
    recorded in that window; None if there are none."""
    ledger = Ledger.existing(store)
    if ledger is None:
        return None
    tokens, first = _read(lambda: ledger.completion_tokens_since(now - window_seconds))
    if not tokens or first is None:
        return None
    return float(tokens) / max(now - first, 1.0)
