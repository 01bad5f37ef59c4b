"""The Dagster instance cicdllm runs against: the one ``dagster dev`` shows."""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import DagsterInstance

from cicdllm_assets.config import Settings
from cicdllm_assets.errors import CicdllmError
from cicdllm_assets.partitions import REPOS_PARTITIONS_NAME
from cicdllm_assets.repos.sync import load_entries, plan_sync

logger = logging.getLogger(__name__)

LLM_POOL = "llm"
"""The pool of the generation assets (questions, answers)."""

DAGSTER_YAML_MARKER = "# Written by cicdllm"
DAGSTER_YAML_TEMPLATE = """\
# Written by cicdllm from cicdllm.yaml (storage, performance); rewritten when those change.
# Delete this first line to keep your own edits.
telemetry:
  enabled: false
{storage}concurrency:
  runs:
    max_concurrent_runs: {max_runs}   # performance.max_parallel_repos: repo runs at once
  pools:
    default_limit: {pool_limit}   # performance.llm_pool_limit: generation steps (pool 'llm') at once, all runs
run_monitoring:
  enabled: true
  start_timeout_seconds: 300   # a launched run whose process never starts is failed
  cancel_timeout_seconds: 300  # a cancel that never completes is forced to canceled
run_retries:
  enabled: true
  max_retries: 1                        # a run that died outside its steps is retried once
  retry_on_asset_or_op_failure: false   # step failures already had their step retries
"""
_POSTGRES_STORAGE = """\
storage:   # storage.dagster_instance: postgres (runs, event log, schedules)
  postgres:
    postgres_url: "{url}"
run_coordinator:   # runs queue, the daemon launches up to max_concurrent_runs
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 2   # default 5
    dequeue_use_threads: true     # launch queued runs side by side, not one after another
    dequeue_num_workers: {max_runs}
"""


def dagster_yaml(settings: Settings) -> str:
    """The dagster.yaml for ``settings``: SQLite storage in DAGSTER_HOME, or Postgres; run and pool limits."""
    storage = settings.config.storage
    section = ""
    if storage.dagster_instance == "postgres":
        url = str(storage.dagster_postgres_url or storage.state_url)
        # dagster-postgres is built on psycopg2; SQLAlchemy 2.1's default driver is psycopg 3.
        section = _POSTGRES_STORAGE.format(
            url=re.sub(r"^postgres(?:ql)?://", "postgresql+psycopg2://", url),
            max_runs=settings.config.performance.max_parallel_repos,
        )
    perf = settings.config.performance
    return DAGSTER_YAML_TEMPLATE.format(
        storage=section, max_runs=perf.max_parallel_repos, pool_limit=perf.llm_pool_limit
    )


LOCK_FILE = ".cicdllm-instance.lock"
"""Held (``flock``) while a process creates, migrates or opens the instance in DAGSTER_HOME."""


class InstanceError(CicdllmError, RuntimeError):
    """The Dagster instance could not be prepared or opened."""


@contextmanager
def instance_lock(home: Path) -> Iterator[None]:
    """Serialise instance creation and storage migration across processes sharing ``home``.

    Dagster creates and migrates its SQLite storage on first open with no lock of its own;
    two processes doing it at once leave two alembic heads behind. The lock is released as
    soon as the instance is open, so running commands never wait on each other.
    """
    try:
        handle = (home / LOCK_FILE).open("a")
    except OSError as exc:  # a read-only home: nothing here can be created or migrated anyway
        logger.debug("no instance lock in %s: %s", home, exc)
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_dagster_home(settings: Settings) -> Path:
    """Make ``DAGSTER_HOME`` point at an existing folder with a dagster.yaml.

    When ``DAGSTER_HOME`` is unset, the project-local ``storage.dagster_home`` is used and
    exported, so runs started here appear in ``dagster dev`` for the same project.
    """
    home = settings.dagster_home
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InstanceError(f"cannot create DAGSTER_HOME {home}: {exc.strerror}") from exc
    os.environ["DAGSTER_HOME"] = str(home)
    config = home / "dagster.yaml"
    wanted = dagster_yaml(settings)
    with instance_lock(home):  # a concurrent process must never read a half-written file
        current = config.read_text(encoding="utf-8") if config.exists() else None
        if current is None or (current.startswith(DAGSTER_YAML_MARKER) and current != wanted):
            tmp = config.with_name(f".dagster.yaml.{os.getpid()}.tmp")
            tmp.write_text(wanted, encoding="utf-8")
            tmp.replace(config)  # atomic: a concurrent reader sees the old or the new file
            logger.info("wrote %s", config)
    return home


def open_instance(settings: Settings) -> DagsterInstance:
    """The persistent instance at ``settings.dagster_home`` (prepared first), its pool ``llm``
    limited to ``performance.llm_pool_limit`` (also when the pool existed with another limit)."""
    home = ensure_dagster_home(settings)
    try:
        with instance_lock(home):
            instance = DagsterInstance.get()
            # Touch every storage now, under the lock: each creates/migrates its tables on first use.
            instance.get_runs_count()
            instance.event_log_storage.get_asset_records([])
            if instance.schedule_storage is not None:
                instance.schedule_storage.all_instigator_state()
            apply_pool_limit(instance, settings.config.performance.llm_pool_limit)
            return instance
    except Exception as exc:  # dagster raises several types for a broken dagster.yaml
        raise InstanceError(f"cannot open the Dagster instance in {home}: {exc}") from exc


def sync_partitions(instance: DagsterInstance, settings: Settings) -> tuple[list[str], list[str]]:
    """Apply repos.txt to the instance's "repos" partitions; return (added, removed).

    Raises :class:`~cicdllm_assets.repos.repos_file.ReposFileError` (nothing is changed) when
    repos.txt is invalid.
    """
    entries = load_entries(settings.repos_file)
    added, removed = plan_sync(instance.get_dynamic_partitions(REPOS_PARTITIONS_NAME), entries)
    if added:
        instance.add_dynamic_partitions(REPOS_PARTITIONS_NAME, added)
    for key in removed:
        instance.delete_dynamic_partition(REPOS_PARTITIONS_NAME, key)
    return added, removed


def apply_pool_limit(instance: DagsterInstance, limit: int, pool: str = LLM_POOL) -> None:
    """Set the instance's concurrency pool ``pool`` to ``limit`` slots (all runs share them)."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        logger.warning("the Dagster instance does not support pool limits; pool %r is not limited", pool)
        return
    if storage.get_concurrency_info(pool).slot_count != limit:
        storage.set_concurrency_slots(pool, limit)
