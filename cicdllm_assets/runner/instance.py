"""The Dagster instance cicdllm runs against: the one ``dagster dev`` shows."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import DagsterInstance

from cicdllm_assets.config import Settings

logger = logging.getLogger(__name__)

DAGSTER_YAML_TEMPLATE = """\
# Written by cicdllm for a project-local Dagster instance (SQLite storage in this folder).
# For a cluster, point storage at Postgres and pick a run launcher here; no code changes.
telemetry:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: {max_runs}   # performance.max_parallel_repos: repo runs at once
run_monitoring:
  enabled: true
  start_timeout_seconds: 300   # a launched run whose process never starts is failed
  cancel_timeout_seconds: 300  # a cancel that never completes is forced to canceled
run_retries:
  enabled: true
  max_retries: 1                        # a run that died outside its steps is retried once
  retry_on_asset_or_op_failure: false   # step failures already had their step retries
"""


LOCK_FILE = ".cicdllm-instance.lock"
"""Held (``flock``) while a process creates, migrates or opens the instance in DAGSTER_HOME."""


class InstanceError(RuntimeError):
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
    with instance_lock(home):  # a concurrent process must never read a half-written file
        if not config.exists():
            max_runs = settings.config.performance.max_parallel_repos
            config.write_text(DAGSTER_YAML_TEMPLATE.format(max_runs=max_runs), encoding="utf-8")
            logger.info("wrote %s", config)
    return home


def open_instance(settings: Settings) -> DagsterInstance:
    """The persistent instance at ``settings.dagster_home`` (prepared first)."""
    home = ensure_dagster_home(settings)
    try:
        with instance_lock(home):
            instance = DagsterInstance.get()
            # Touch every storage now, under the lock: each creates/migrates its tables on first use.
            instance.get_runs_count()
            instance.event_log_storage.get_asset_records([])
            if instance.schedule_storage is not None:
                instance.schedule_storage.all_instigator_state()
            return instance
    except Exception as exc:  # dagster raises several types for a broken dagster.yaml
        raise InstanceError(f"cannot open the Dagster instance in {home}: {exc}") from exc
