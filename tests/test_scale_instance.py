"""The dagster.yaml cicdllm writes: SQLite or Postgres storage, the run queue and the `llm` pool limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance

from cicdllm_assets.config import load_settings
from cicdllm_assets.runner.instance import LLM_POOL, ensure_dagster_home, open_instance
from tests.generation_support import write_project_config
from tests.services import fresh_database


@pytest.fixture(scope="module")
def dagster_pg_url() -> Iterator[str]:
    """A fresh database for Dagster's storage (created and dropped here)."""
    with fresh_database("cicdllm_dagster") as url:
        yield url


def test_sqlite_instance_gets_the_pool_limit_and_follows_config_changes(project: Path) -> None:
    write_project_config(project, performance={"llm_pool_limit": 3, "max_parallel_repos": 5})
    instance = open_instance(load_settings())
    try:
        assert instance.event_log_storage.get_concurrency_info(LLM_POOL).slot_count == 3
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 5
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
    finally:
        instance.dispose()
    write_project_config(project, performance={"llm_pool_limit": 1})
    instance = open_instance(load_settings())  # the pool existed with 3 slots: now 1
    try:
        assert instance.event_log_storage.get_concurrency_info(LLM_POOL).slot_count == 1
        assert "default_limit: 1" in (project / "dagster_home" / "dagster.yaml").read_text()
    finally:
        instance.dispose()


def test_own_dagster_yaml_is_left_alone(project: Path) -> None:
    own = "telemetry:\n  enabled: false\n"
    (project / "dagster_home" / "dagster.yaml").write_text(own, encoding="utf-8")
    ensure_dagster_home(load_settings())
    assert (project / "dagster_home" / "dagster.yaml").read_text() == own


def test_postgres_instance_uses_postgres_storage_and_the_run_queue(project: Path, dagster_pg_url: str) -> None:
    write_project_config(
        project,
        storage={"dagster_instance": "postgres", "dagster_postgres_url": dagster_pg_url},
        performance={"llm_pool_limit": 2, "max_parallel_repos": 4},
    )
    instance = open_instance(load_settings())
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 4
        # queued runs are launched side by side (threads), every 2 s
        coordinator = instance.run_coordinator
        assert coordinator.dequeue_interval_seconds == 2
        assert (coordinator.dequeue_use_threads, coordinator.dequeue_num_workers) == (True, 4)
        assert instance.event_log_storage.get_concurrency_info(LLM_POOL).slot_count == 2
    finally:
        instance.dispose()
    # a second instance (another machine with the same config) sees the same runs and pool
    with DagsterInstance.get() as other:
        assert other.event_log_storage.get_concurrency_info(LLM_POOL).slot_count == 2


def test_postgres_instance_needs_a_url(project: Path) -> None:
    from cicdllm_assets.config import ConfigError

    write_project_config(project, storage={"dagster_instance": "postgres"})
    with pytest.raises(ConfigError, match="dagster_postgres_url"):
        load_settings()


def test_a_missing_service_skips_or_fails_when_services_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests import services

    monkeypatch.setattr(services, "answers", lambda service: False)
    monkeypatch.delenv("CICDLLM_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"postgres does not answer on 127\.0\.0\.1:5432"):
        services.require("postgres")
    monkeypatch.setenv("CICDLLM_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="CICDLLM_REQUIRE_SERVICES=1"):
        services.require("postgres")


def test_the_executor_follows_orchestration_executor(project: Path) -> None:
    """The pipeline jobs carry no executor of their own (importing them reads no config): they
    run on the one the code location builds from the settings it was given."""
    from cicdllm_assets.automation.executors import executor_for
    from cicdllm_assets.code_location import build_definitions

    assert executor_for(load_settings()).name == "in_process"  # the default
    for name, expected in (("multiprocess", "cicdllm_multiprocess"), ("celery", "cicdllm_celery")):
        write_project_config(project, orchestration={"executor": name, "celery": {"broker_url": "amqp://b//"}})
        settings = load_settings()
        assert executor_for(settings).name == expected
        defs = build_definitions(settings=settings)
        assert {defs.resolve_job_def(job).executor_def.name for job in ("main_job", "refresh_job")} == {expected}


def test_each_deployment_has_its_own_celery_queue(project: Path) -> None:
    """Runs send steps to, and `cicdllm workers start` listens on, a queue derived from the state
    store (or ``orchestration.celery.queue``): two deployments on one broker never share one."""
    from cicdllm_assets.automation.executors import celery_app_config, celery_queue
    from cicdllm_assets.cli.workers_cmd import worker_command, write_worker_config
    from cicdllm_assets.config import ConfigError, load_settings

    celery = {"executor": "celery", "celery": {"broker_url": "amqp://b//"}}
    write_project_config(project, orchestration=celery)
    first = celery_queue(load_settings())
    write_project_config(project, storage={"data_dir": "other"}, orchestration=celery)
    settings = load_settings()
    second = celery_queue(settings)
    assert first.startswith("cicdllm-") and second.startswith("cicdllm-") and first != second
    assert celery_app_config(settings)["config_source"]["task_default_queue"] == second
    config_yaml = write_worker_config(settings)
    assert f"task_default_queue: {second}" in config_yaml.read_text(encoding="utf-8")
    command = worker_command(config_yaml, second, "w", 1)
    assert command[command.index("-q") + 1] == second

    write_project_config(project, orchestration={**celery, "celery": {"broker_url": "amqp://b//", "queue": "team-a"}})
    assert celery_queue(load_settings()) == "team-a"
    write_project_config(project, orchestration={**celery, "celery": {"broker_url": "amqp://b//", "queue": "a b"}})
    with pytest.raises(ConfigError, match="queue"):
        load_settings()
