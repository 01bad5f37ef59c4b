"""Status readers over the Dagster instance at ``settings.dagster_home``: recent runs, each
repo's last run (runs carry the ``dagster/partition`` tag), why failed runs failed, the
registered repo partitions. The instance is opened only once Dagster created its storage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cicdllm_assets.runner.liveness import DEAD_STATUS, dead_process
from cicdllm_assets.status.model import FailureInfo, RunInfo

PARTITION_TAG = "dagster/partition"
#: Repos whose last run is looked up one by one when not among the recent runs.
MAX_PER_REPO_RUN_LOOKUPS = 50

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
