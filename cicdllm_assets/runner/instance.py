"""The Dagster instance cicdllm runs against: the one ``dagster dev`` shows."""

from __future__ import annotations

import logging
import os
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


class InstanceError(RuntimeError):
    """The Dagster instance could not be prepared or opened."""


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
    if not config.exists():
        max_runs = settings.config.performance.max_parallel_repos
        config.write_text(DAGSTER_YAML_TEMPLATE.format(max_runs=max_runs), encoding="utf-8")
        logger.info("wrote %s", config)
    return home


def open_instance(settings: Settings) -> DagsterInstance:
    """The persistent instance at ``settings.dagster_home`` (prepared first)."""
    home = ensure_dagster_home(settings)
    try:
        return DagsterInstance.get()
    except Exception as exc:  # dagster raises several types for a broken dagster.yaml
        raise InstanceError(f"cannot open the Dagster instance in {home}: {exc}") from exc
