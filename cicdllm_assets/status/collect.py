"""Collect the status of a cicdllm project without ever blocking a writer.

Sources, all read-only:

- asset tables (one Parquet file per asset partition, replaced atomically) through an
  in-memory DuckDB connection: per-repo files kept/skipped, chunks, questions, answers,
  accepted QA pairs;
- the SQLite (WAL) StateStore: stage progress, failures, events, repo info, battery pauses;
- the Dagster instance at ``settings.dagster_home``: recent runs and each repo's last run
  (runs carry the ``dagster/partition`` tag);
- psutil: CPU, memory, battery.

Every source is optional: a missing file, table or column counts as zero, a lock is
retried briefly, and a source that still fails is reported in ``Status.errors`` rather
than raised.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import psutil

from cicdllm_assets.config import Settings
from cicdllm_assets.discovery.discover import no_files_kept_warning
from cicdllm_assets.finetune.history import HistoryRow, read_history
from cicdllm_assets.performance.battery import BatteryReader, BatteryStatus, battery_status
from cicdllm_assets.runner.liveness import DEAD_STATUS, dead_process
from cicdllm_assets.storage.llm_load import LLMLoad, read_llm_load
from cicdllm_assets.storage.state import STATE_ERRORS, StateStore, open_state_readonly

_logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Stage order in the pipeline (unknown stages sort after these, by name).
STAGE_ORDER = (
    "repositories",
    "source_files",
    "code_chunks",
    "questions",
    "answers",
    "qa_pairs",
    "training_dataset",
    "adapter",
    "evaluation",
)
PARTITION_TAG = "dagster/partition"
#: Repo names unpartitioned assets report progress under; shown as stages, not as repos.
PSEUDO_REPOS = frozenset({"*", "__all__", ""})
#: Recorded evaluations a status snapshot keeps (the most recent).
EVALUATIONS_SHOWN = 10
#: A running stage with no progress for this long probably lost its process.
STALLED_AFTER_SECONDS = 600.0
#: Repos whose last run is looked up one by one when not among the recent runs.
MAX_PER_REPO_RUN_LOOKUPS = 50
READ_RETRIES = 5
RETRY_SLEEP_SECONDS = 0.1
SQLITE_TIMEOUT_SECONDS = 2.0


# ----------------------------------------------------------------------------- model
@dataclass
class StageStatus:
    """Progress of one stage, for one repo or summed over all repos."""

    stage: str
    repo: str | None
    done: int
    total: int
    failed: int
    unit: str
    status: str
    started_at: float | None
    updated_at: float | None
    rate_per_minute: float | None = None
    eta_seconds: float | None = None
    repos: int = 1
    stalled: bool = False

    @property
    def processed(self) -> int:
        """Items handled so far, successfully or not."""
        return self.done + self.failed

    @property
    def fraction(self) -> float:
        """processed / total in [0, 1] (1 when the total is 0 and the stage is finished)."""
        if self.total <= 0:
            return 1.0 if self.status != "running" else 0.0
        return max(0.0, min(1.0, self.processed / self.total))


@dataclass
class RunInfo:
    """One Dagster run."""

    run_id: str
    job_name: str
    status: str
    partition: str | None
    created_at: float | None
    start_time: float | None
    end_time: float | None

    @property
    def duration_seconds(self) -> float | None:
        """Wall time so far (or in total, once finished)."""
        if self.start_time is None:
            return None
        return (self.end_time or time.time()) - self.start_time


@dataclass
class FailureInfo:
    """One failed item (already free of secrets)."""

    repo: str
    stage: str
    item: str
    category: str
    message: str
    created_at: float


@dataclass
class EventInfo:
    """One line of the event log."""

    ts: float
    repo: str | None
    level: str
    message: str


@dataclass
class RepoStatus:
    """Everything known about one repo partition."""

    repo: str
    head_commit: str | None = None
    license: str | None = None
    size_bytes: int | None = None
    files_kept: int = 0
    files_skipped: int = 0
    kept_bytes: int = 0
    chunks: int = 0
    chunk_tokens: int = 0
    questions: int = 0
    answers: int = 0
    completion_tokens: int = 0
    qa_pairs: int = 0
    qa_accepted: int = 0
    failures: int = 0
    failures_by_category: dict[str, int] = field(default_factory=dict)
    last_run: RunInfo | None = None
    stages: list[StageStatus] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class ResourceInfo:
    """Machine resources."""

    cpu_percent: float
    cpu_count: int
    memory_percent: float
    memory_used: int
    memory_total: int
    battery: BatteryStatus


@dataclass
class Status:
    """The whole status snapshot."""

    generated_at: float
    config_path: str | None
    data_dir: str
    dagster_home: str
    repos: list[RepoStatus]
    stages: list[StageStatus]
    failures: list[FailureInfo]
    failure_categories: dict[str, int]
    events: list[EventInfo]
    runs: list[RunInfo]
    resources: ResourceInfo
    tokens_per_second: float | None = None
    errors: list[str] = field(default_factory=list)
    run_failures: list[FailureInfo] = field(default_factory=list)
    evaluations: list[HistoryRow] = field(default_factory=list)
    """The most recent recorded fine-tuning evaluations (at most ``EVALUATIONS_SHOWN``), oldest first."""
    llm_load: list[LLMLoad] = field(default_factory=list)
    """The model server's concurrency limit and latency per running generation stage."""

    def totals(self) -> dict[str, int]:
        """Sums of the per-repo counters."""
        keys = ("files_kept", "files_skipped", "chunks", "questions", "answers", "qa_pairs", "qa_accepted", "failures")
        return {key: sum(int(getattr(repo, key)) for repo in self.repos) for key in keys}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (the schema of ``cicdllm status --once --json``)."""
        resources = asdict(self.resources)
        resources["battery"] = self.resources.battery.to_dict()

        def stage_dict(stage: StageStatus) -> dict[str, Any]:
            data = asdict(stage)
            data["fraction"] = round(stage.fraction, 4)
            return data

        def run_dict(run: RunInfo | None) -> dict[str, Any] | None:
            if run is None:
                return None
            data = asdict(run)
            data["duration_seconds"] = run.duration_seconds
            return data

        repos = []
        for repo in self.repos:
            data = asdict(repo)
            data["last_run"] = run_dict(repo.last_run)
            data["stages"] = [stage_dict(stage) for stage in repo.stages]
            repos.append(data)
        return {
            "generated_at": self.generated_at,
            "config_path": self.config_path,
            "data_dir": self.data_dir,
            "dagster_home": self.dagster_home,
            "totals": self.totals(),
            "repos": repos,
            "stages": [stage_dict(stage) for stage in self.stages],
            "failure_categories": self.failure_categories,
            "failures": [asdict(item) for item in self.failures],
            "events": [asdict(item) for item in self.events],
            "runs": [run_dict(run) for run in self.runs],
            "run_failures": [asdict(item) for item in self.run_failures],
            "resources": resources,
            "tokens_per_second": self.tokens_per_second,
            "llm_load": [asdict(load) for load in self.llm_load],
            "errors": self.errors,
            "evaluations": [row.to_dict() for row in self.evaluations],
        }


# ----------------------------------------------------------------------------- helpers
def human_bytes(size: float | None) -> str:
    """1234 -> '1.2 KB' (B, KB, MB, GB, TB; powers of 1024)."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def human_duration(seconds: float | None) -> str:
    """75 -> '1m15s'; None -> '-'."""
    if seconds is None:
        return "-"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _retry(what: str, func: Callable[[], T], retry_on: tuple[type[BaseException], ...]) -> T:
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


def _unescape_partition(file_name: str) -> str:
    """Invert TableStore.partition_file_name (``%XX`` escapes) for a ``<key>.parquet`` name."""
    stem = file_name[: -len(".parquet")] if file_name.endswith(".parquet") else file_name
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), stem)


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


def _parquet_files(tables_dir: Path, asset: str) -> list[Path]:
    directory = tables_dir / asset
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.parquet") if not p.name.startswith("."))


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
        repo = values.pop("repo_column", None) or _unescape_partition(Path(filename).name)
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
    for asset in _ASSET_AGGREGATES:

        def run(asset: str = asset) -> dict[str, dict[str, Any]]:
            files = _parquet_files(tables_dir, asset)
            if not files:
                return {}
            con = duckdb.connect(":memory:")
            try:
                return _aggregate_asset(con, files, asset)
            finally:
                con.close()

        try:
            per_repo = _retry(f"read {asset}", run, (duckdb.Error, OSError))
        except (duckdb.Error, OSError) as exc:
            if errors is not None:
                errors.append(f"{asset}: {exc}")
            continue
        for repo, values in per_repo.items():
            counts.setdefault(repo, {}).update(values)
    return counts


# ----------------------------------------------------------------------------- state store
def _tables(con: StateStore) -> set[str]:
    return con.tables()


def _columns(con: StateStore, table: str) -> set[str]:
    return con.columns(table)


def _query(con: StateStore, sql: str, args: Iterable[Any] = ()) -> list[Any]:
    return _retry("state read", lambda: con.query(sql, tuple(args)), STATE_ERRORS)


def _stage_key(stage: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage)


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


def read_stage_progress(con: StateStore, now: float) -> list[StageStatus]:
    """Per-repo stage rows with rate (units/min) and ETA."""
    if "stage_progress" not in _tables(con):
        return []
    stages = []
    for row in _query(con, "SELECT * FROM stage_progress"):
        data = dict(row)
        done, total = int(data.get("done") or 0), int(data.get("total") or 0)
        status = str(data.get("status") or "running")
        started, updated = data.get("started_at"), data.get("updated_at")
        failed = int(data.get("failed") or 0)
        rate, eta = _rate_and_eta(done + failed, total, started, updated, status, now)
        stages.append(
            StageStatus(
                stage=str(data["stage"]),
                repo=str(data["repo"]),
                done=done,
                total=total,
                failed=failed,
                unit=str(data.get("unit") or "items"),
                status=status,
                started_at=started,
                updated_at=updated,
                rate_per_minute=rate,
                eta_seconds=eta,
                stalled=status == "running" and updated is not None and now - updated > STALLED_AFTER_SECONDS,
            )
        )
    stages.sort(key=lambda s: (_stage_key(s.stage), s.repo or ""))
    return stages


def _finished_status(statuses: set[str]) -> str:
    """The status of a stage over repos none of which runs: failed, incomplete (some items have no
    result), or done only when every repo's is."""
    for status in ("failed", "incomplete"):
        if status in statuses:
            return status
    return "done"


def summarize_stages(stages: list[StageStatus], now: float) -> list[StageStatus]:
    """One row per stage summed over repos (the top of the progress hierarchy)."""
    by_stage: dict[str, list[StageStatus]] = {}
    for stage in stages:
        by_stage.setdefault(stage.stage, []).append(stage)
    summary = []
    for name in sorted(by_stage, key=_stage_key):
        rows = by_stage[name]
        running = [r for r in rows if r.status == "running"]
        status = "running" if running else _finished_status({r.status for r in rows})
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


def read_failures(con: StateStore, limit: int) -> tuple[list[FailureInfo], dict[str, dict[str, int]]]:
    """Newest failures (up to ``limit``) and ``{repo: {category: count}}`` over all of them."""
    if "failures" not in _tables(con):
        return [], {}
    counts: dict[str, dict[str, int]] = {}
    for row in _query(con, "SELECT repo, category, count(*) AS n FROM failures GROUP BY repo, category"):
        counts.setdefault(str(row["repo"]), {})[str(row["category"])] = int(row["n"])
    rows = _query(
        con,
        "SELECT repo, stage, item, category, message, created_at FROM failures ORDER BY id DESC LIMIT ?",
        (limit,),
    )
    return [FailureInfo(**dict(row)) for row in rows], counts


def read_events(con: StateStore, limit: int) -> list[EventInfo]:
    """The last ``limit`` events, oldest first (newest last, like a log tail)."""
    if "events" not in _tables(con):
        return []
    rows = _query(con, "SELECT ts, repo, level, message FROM events ORDER BY id DESC LIMIT ?", (limit,))
    return [EventInfo(**dict(row)) for row in reversed(rows)]


def read_repo_info(con: StateStore) -> dict[str, str | None]:
    """``{repo: head_commit}`` recorded by the repositories asset."""
    if "repo_info" not in _tables(con):
        return {}
    return {str(row["repo"]): row["head_commit"] for row in _query(con, "SELECT repo, head_commit FROM repo_info")}


def read_ledger_counts(con: StateStore) -> dict[str, dict[str, int]]:
    """``{repo: {"questions": n, "answers": n}}`` generated so far, from the generation ledger
    (committed item by item, so it is current while a stage runs or after it was killed)."""
    if "generation_ledger" not in _tables(con):
        return {}
    length = "json_array_length(parsed_json::json)" if con.postgres else "json_array_length(parsed_json)"
    rows = _query(
        con,
        f"SELECT repo, kind, sum(CASE WHEN kind = 'question' THEN coalesce({length}, 0)"  # noqa: S608 - constant
        " ELSE 1 END) AS n FROM generation_ledger WHERE status = 'ok' GROUP BY repo, kind",
    )
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        counts.setdefault(str(row["repo"]), {})[f"{row['kind']}s"] = int(row["n"] or 0)
    return counts


_TOKEN_TIME_COLUMNS = ("finished_at", "completed_at", "updated_at", "created_at", "ts")


def read_tokens_per_second(con: StateStore, window_seconds: float, now: float) -> float | None:
    """Generated tokens/s over the last ``window_seconds``, from any ledger table that records
    ``completion_tokens`` with a timestamp (the generation ledger); None if there is none."""
    best: float | None = None
    for table in sorted(_tables(con)):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table):
            continue
        columns = _columns(con, table)
        if "completion_tokens" not in columns:
            continue
        time_column = next((c for c in _TOKEN_TIME_COLUMNS if c in columns), None)
        if time_column is None:
            continue
        # table and column names come from sqlite_master and are checked identifiers.
        sql = (
            f"SELECT coalesce(sum(completion_tokens), 0), min({time_column}), count(*) "  # noqa: S608
            f"FROM {table} WHERE {time_column} >= ?"
        )
        tokens, first, count = _query(con, sql, (now - window_seconds,))[0]
        if not count or not tokens:
            continue
        span = max(now - float(first), 1.0)
        rate = float(tokens) / span
        best = rate if best is None else max(best, rate)
    return best


# ----------------------------------------------------------------------------- Dagster
_instances: dict[str, Any] = {}


def _no_missing_yaml_warning(record: logging.LogRecord) -> bool:
    """Drop Dagster's 'no dagster.yaml' warning: a project-local home without one is normal."""
    return "No dagster instance configuration file" not in record.getMessage()


def instance_storage_exists(dagster_home: Path) -> bool:
    """True when the instance's storage was already created by Dagster.

    The viewer must never be the one to create it: two processes initialising a fresh
    SQLite run storage at once can both stamp its schema version, which breaks the
    instance for everyone. A database server configured in dagster.yaml is always used.
    """
    if not dagster_home.is_dir():
        return False
    config = dagster_home / "dagster.yaml"
    try:
        text = config.read_text(encoding="utf-8") if config.is_file() else ""
    except OSError:
        text = ""
    if any(server in text for server in ("postgres", "mysql")):
        return True
    return any((dagster_home / sub / "runs.db").exists() for sub in ("storage", "history"))


def _dagster_instance(dagster_home: Path) -> Any | None:
    """A cached DagsterInstance for ``dagster_home`` (None until Dagster created its storage)."""
    if not instance_storage_exists(dagster_home):
        return None
    key = str(dagster_home.resolve())
    instance = _instances.get(key)
    if instance is None:
        from dagster import DagsterInstance

        dagster_logger = logging.getLogger("dagster")
        from cicdllm_assets.runner.instance import instance_lock

        dagster_logger.addFilter(_no_missing_yaml_warning)
        try:
            with instance_lock(dagster_home):  # never read a storage another process is migrating
                instance = DagsterInstance.from_config(key)
        finally:
            dagster_logger.removeFilter(_no_missing_yaml_warning)
        _instances[key] = instance
    return instance


def _run_info(record: Any) -> RunInfo:
    run = record.dagster_run
    created = record.create_timestamp.timestamp() if record.create_timestamp is not None else None
    status = str(run.status.value)
    if status in ("STARTED", "STARTING") and dead_process(run.tags) is not None:
        status = DEAD_STATUS  # its cicdllm process is gone; the next `cicdllm run` marks it failed
    return RunInfo(
        run_id=str(run.run_id),
        job_name=str(run.job_name),
        status=status,
        partition=run.tags.get(PARTITION_TAG),
        created_at=created,
        start_time=record.start_time,
        end_time=record.end_time,
    )


def read_runs(dagster_home: Path, limit: int, repos: Iterable[str]) -> tuple[list[RunInfo], dict[str, RunInfo]]:
    """Recent runs (newest first) and each repo's last run, from the Dagster instance."""
    instance = _dagster_instance(dagster_home)
    if instance is None:
        return [], {}
    from dagster import RunsFilter

    recent = [_run_info(r) for r in instance.get_run_records(limit=limit)]
    last: dict[str, RunInfo] = {}
    for run in instance.get_run_records(limit=max(limit, 200)):
        info = _run_info(run)
        if info.partition and info.partition not in last:
            last[info.partition] = info
    missing = [repo for repo in repos if repo not in last][:MAX_PER_REPO_RUN_LOOKUPS]
    for repo in missing:
        records = instance.get_run_records(filters=RunsFilter(tags={PARTITION_TAG: repo}), limit=1)
        if records:
            last[repo] = _run_info(records[0])
    return recent, last


#: Failed runs whose error messages are read for the failures view.
MAX_FAILED_RUNS_EXPLAINED = 5


def _root_error(error: Any) -> str:
    """The innermost cause of a Dagster SerializableErrorInfo, as one trimmed message."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return str(getattr(error, "message", error)).strip()


def read_run_failures(dagster_home: Path, runs: Iterable[RunInfo]) -> list[FailureInfo]:
    """Why the most recent failed runs failed (step errors, else the run error)."""
    instance = _dagster_instance(dagster_home)
    if instance is None:
        return []
    from dagster import DagsterEventType

    failures: list[FailureInfo] = []
    failed = [run for run in runs if run.status == "FAILURE"][:MAX_FAILED_RUNS_EXPLAINED]
    for run in failed:
        entries = instance.all_logs(run.run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE})
        step_entries = [e for e in entries if e.dagster_event and e.dagster_event.step_key]
        for entry in step_entries or entries[:1]:
            event = entry.dagster_event
            error = getattr(event.event_specific_data, "error", None) if event else None
            message = _root_error(error) if error is not None else (entry.message or "run failed")
            failures.append(
                FailureInfo(
                    repo=run.partition or "-",
                    stage=(event.step_key if event and event.step_key else run.job_name),
                    item=f"run {run.run_id[:8]}",
                    category="run_failure",
                    message=message,
                    created_at=float(entry.timestamp),
                )
            )
    return failures


def read_dynamic_partitions(dagster_home: Path) -> list[str]:
    """Repos registered as dynamic partitions "repos" in the Dagster instance."""
    instance = _dagster_instance(dagster_home)
    if instance is None:
        return []
    from cicdllm_assets.partitions import REPOS_PARTITIONS_NAME

    return list(instance.get_dynamic_partitions(REPOS_PARTITIONS_NAME))


# ----------------------------------------------------------------------------- resources
def read_resources(
    settings: Settings, con: StateStore | None, battery_reader: BatteryReader | None = None
) -> ResourceInfo:
    """CPU, memory and battery (with the pause state recorded by runs)."""
    memory = psutil.virtual_memory()
    return ResourceInfo(
        cpu_percent=float(psutil.cpu_percent(interval=None)),
        cpu_count=os.cpu_count() or 1,
        memory_percent=float(memory.percent),
        memory_used=int(memory.used),
        memory_total=int(memory.total),
        battery=battery_status(settings, con, battery_reader),
    )


# ----------------------------------------------------------------------------- entry point
def collect_status(
    settings: Settings,
    *,
    include_runs: bool = True,
    battery_reader: BatteryReader | None = None,
    failures_limit: int = 500,
) -> Status:
    """A full status snapshot. Never raises for missing or busy sources: see ``errors``."""
    now = time.time()
    errors: list[str] = []
    ui = settings.config.ui
    counts = read_table_counts(settings.tables_dir, errors)

    stages: list[StageStatus] = []
    failures: list[FailureInfo] = []
    failure_counts: dict[str, dict[str, int]] = {}
    events: list[EventInfo] = []
    heads: dict[str, str | None] = {}
    ledger_counts: dict[str, dict[str, int]] = {}
    tokens_per_second: float | None = None
    evaluations: list[HistoryRow] = []
    llm_load: list[LLMLoad] = []
    con: StateStore | None = None
    try:
        con = open_state_readonly(settings.state_target, int(SQLITE_TIMEOUT_SECONDS * 1000))
        if con is not None:
            stages = read_stage_progress(con, now)
            failures, failure_counts = read_failures(con, failures_limit)
            events = read_events(con, ui.log_tail_lines)
            heads = read_repo_info(con)
            ledger_counts = read_ledger_counts(con)
            tokens_per_second = read_tokens_per_second(con, 300.0, now)
            evaluations = read_history(con)[-EVALUATIONS_SHOWN:]
            running = {(s.repo, s.stage) for s in stages if s.status == "running"}
            llm_load = [load for key, load in sorted(read_llm_load(con).items()) if key in running]
    except STATE_ERRORS as exc:
        errors.append(f"state store: {exc}")

    partitions: list[str] = []
    runs: list[RunInfo] = []
    run_failures: list[FailureInfo] = []
    last_runs: dict[str, RunInfo] = {}
    if include_runs:
        try:
            partitions = read_dynamic_partitions(settings.dagster_home)
        except Exception as exc:  # Dagster storage may be mid-migration or locked
            errors.append(f"dagster partitions: {exc}")

    names = set(counts) | {s.repo for s in stages if s.repo} | set(heads) | set(failure_counts) | set(partitions)
    names -= PSEUDO_REPOS  # unpartitioned stages (training_dataset) are not repos
    if include_runs:
        try:
            runs, last_runs = read_runs(settings.dagster_home, ui.recent_runs, sorted(names))
            run_failures = read_run_failures(settings.dagster_home, runs)
        except Exception as exc:
            errors.append(f"dagster runs: {exc}")

    repos = []
    for name in sorted(names):
        repo = RepoStatus(repo=name)
        for key, value in counts.get(name, {}).items():
            setattr(repo, key, value)
        if heads.get(name) and not repo.head_commit:
            repo.head_commit = heads[name]
        repo.failures_by_category = dict(sorted(failure_counts.get(name, {}).items()))
        repo.failures = sum(repo.failures_by_category.values())
        repo.last_run = last_runs.get(name)
        repo.stages = [s for s in stages if s.repo == name]
        for stage in repo.stages:
            # Until a generation stage finishes, its table lags behind: count from the ledger.
            if stage.stage in ("questions", "answers") and stage.status != "done":
                generated = ledger_counts.get(name, {}).get(stage.stage, 0)
                setattr(repo, stage.stage, max(getattr(repo, stage.stage), generated))
        discovered = any(s.stage == "source_files" and s.status == "done" for s in repo.stages)
        if discovered and repo.files_kept == 0:
            repo.warnings.append(no_files_kept_warning(repo.files_skipped))
        repos.append(repo)

    categories: dict[str, int] = {}
    for per_repo in failure_counts.values():
        for category, n in per_repo.items():
            categories[category] = categories.get(category, 0) + n

    try:
        resources = read_resources(settings, con, battery_reader)
    finally:
        if con is not None:
            con.close()
    return Status(
        generated_at=now,
        config_path=str(settings.path) if settings.path else None,
        data_dir=str(settings.data_dir),
        dagster_home=str(settings.dagster_home),
        repos=repos,
        stages=summarize_stages(stages, now),
        failures=failures,
        failure_categories=dict(sorted(categories.items(), key=lambda kv: (-kv[1], kv[0]))),
        events=events,
        runs=runs,
        run_failures=run_failures,
        resources=resources,
        tokens_per_second=tokens_per_second,
        errors=errors,
        evaluations=evaluations,
        llm_load=llm_load,
    )
