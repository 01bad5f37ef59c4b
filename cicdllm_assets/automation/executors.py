"""The executor of the pipeline jobs, chosen by ``orchestration.executor`` (no code change).

- ``in_process`` (default): every step of a run in the run's process. Each repo's chain is
  linear, so this loses no parallelism inside a run; runs of different repos run side by side.
- ``multiprocess``: one process per step, up to ``orchestration.max_concurrent_steps``.
- ``celery``: steps are sent to Celery workers (``cicdllm workers start N``) through the
  broker in ``orchestration.celery.broker_url`` (Redis or RabbitMQ), on this deployment's own
  queue (:func:`celery_queue`); the workers need the same code, config, DAGSTER_HOME (a
  Postgres instance) and shared data dir as the webserver.

``cicdllm run`` always executes in process (``execute_in_process``) whatever is set here.
"""

from __future__ import annotations

import hashlib
from typing import Any

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor

from cicdllm_assets.config import Settings

CELERY_SETTINGS: dict[str, Any] = {
    "task_acks_late": True,  # a step's message is acknowledged when it finishes, not when it starts,
    "task_reject_on_worker_lost": True,  # so a step of a killed worker is delivered to another one
    "worker_prefetch_multiplier": 1,  # a worker takes one step at a time; the rest stay queued
    "broker_connection_retry_on_startup": True,
}


def celery_queue(settings: Settings) -> str:
    """The Celery queue of this deployment's steps: ``orchestration.celery.queue``, or
    ``cicdllm-<hash of the state store>``.

    A worker runs a step with its own config (state store, data dir), whatever run sent it. Two
    deployments on one broker and one queue would run each other's steps against the wrong state
    and tables: steps that succeed while their results land in another project. A queue per state
    store keeps each deployment's steps on its own workers.
    """
    celery = settings.config.orchestration.celery
    if celery.queue:
        return celery.queue
    return "cicdllm-" + hashlib.sha256(str(settings.state_target).encode("utf-8")).hexdigest()[:12]


def celery_app_config(settings: Settings) -> dict[str, Any]:
    """The dagster-celery executor config (broker, result backend, queue, settings) shared by runs and workers."""
    celery = settings.config.orchestration.celery
    backend = celery.backend_url or (celery.broker_url if celery.broker_url.startswith("redis") else "rpc://")
    config_source = {**CELERY_SETTINGS, "task_default_queue": celery_queue(settings)}
    return {"broker": celery.broker_url, "backend": backend, "config_source": config_source}


def executor_for(settings: Settings) -> ExecutorDefinition:
    """The executor ``orchestration.executor`` names, configured from ``settings``."""
    orchestration = settings.config.orchestration
    if orchestration.executor == "multiprocess":
        return multiprocess_executor.configured(
            {"max_concurrent": orchestration.max_concurrent_steps}, name="cicdllm_multiprocess"
        )
    if orchestration.executor == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(celery_app_config(settings), name="cicdllm_celery")
    return in_process_executor
