"""The jobs' step retry policy: permanent failures fail at once, transient ones are retried.

Attempts are counted from the run's own events (STEP_START per attempt, STEP_UP_FOR_RETRY
per retry) of a job that carries the pipeline's :data:`STEP_RETRY_POLICY`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from dagster import (
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    Failure,
    define_asset_job,
    in_process_executor,
)

from cicdllm_assets.assets._step import step_settings
from cicdllm_assets.assets.repositories import repositories
from cicdllm_assets.automation.jobs import STEP_RETRY_POLICY
from cicdllm_assets.io_managers import PartitionedParquetIOManager
from cicdllm_assets.partitions import REPOS_PARTITIONS_NAME
from cicdllm_assets.resources.config_resource import AppConfigResource

JOB = define_asset_job(
    "repositories_with_retries",
    selection="key:repositories",
    executor_def=in_process_executor,
    op_retry_policy=STEP_RETRY_POLICY,
)


def _run(key: str) -> tuple[ExecuteInProcessResult, Counter[str]]:
    defs = Definitions(
        assets=[repositories],
        jobs=[JOB],
        resources={"app_config": AppConfigResource(), "io_manager": PartitionedParquetIOManager()},
    )
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(REPOS_PARTITIONS_NAME, [key])
        result = defs.resolve_job_def(JOB.name).execute_in_process(
            partition_key=key, instance=instance, raise_on_error=False
        )
    events = Counter(event.event_type_value for event in result.all_events)
    return result, events


def _failure_description(result: ExecuteInProcessResult) -> str:
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    data = event.step_failure_data
    return data.user_failure_data.description if data.user_failure_data else ""


def test_repo_not_in_repos_file_is_not_retried(project: Path) -> None:
    (project / "repos.txt").write_text("", encoding="utf-8")
    result, events = _run("github.com-gone-repo")
    assert not result.success
    assert events["STEP_START"] == 1
    assert events["STEP_UP_FOR_RETRY"] == 0
    assert "'github.com-gone-repo' is not in" in _failure_description(result)


def test_local_source_that_is_not_a_repository_is_not_retried(project: Path) -> None:
    broken = project.parent / "broken"
    broken.mkdir()  # exists, but is not a git repository
    (project / "repos.txt").write_text(f"{broken}\n", encoding="utf-8")
    result, events = _run("local-broken")
    assert not result.success
    assert events["STEP_START"] == 1
    assert events["STEP_UP_FOR_RETRY"] == 0
    assert "does not exist" in _failure_description(result)


def test_unreachable_server_is_retried(project: Path) -> None:
    # Nothing listens on port 1: a network failure, which a later attempt may get past.
    (project / "repos.txt").write_text("https://127.0.0.1:1/acme/calc\n", encoding="utf-8")
    result, events = _run("127.0.0.1-1-acme-calc")
    assert not result.success
    assert events["STEP_UP_FOR_RETRY"] == STEP_RETRY_POLICY.max_retries
    assert events["STEP_START"] + events["STEP_RESTARTED"] == 1 + STEP_RETRY_POLICY.max_retries


def test_invalid_config_is_a_permanent_failure(project: Path) -> None:
    (project / "cicdllm.yaml").write_text("generation:\n  batch_size: -1\n", encoding="utf-8")
    with pytest.raises(Failure) as raised:
        step_settings(AppConfigResource())
    assert raised.value.allow_retries is False
    assert "generation.batch_size" in (raised.value.description or "")


def test_unprepared_model_fails_generation_at_once(project: Path) -> None:
    from cicdllm_assets.assets.questions import questions
    from cicdllm_assets.resources.llm.mlx_resource import MLXResource

    (project / "cicdllm.yaml").write_text(
        "storage:\n  data_dir: data\n  dagster_home: dagster_home\nllm:\n  model: embedded\n", encoding="utf-8"
    )
    job = define_asset_job(
        "questions_with_retries",
        selection="key:questions",
        executor_def=in_process_executor,
        op_retry_policy=STEP_RETRY_POLICY,
    )
    from dagster import AssetSpec

    from cicdllm_assets.partitions import repos_partitions

    defs = Definitions(
        assets=[questions, AssetSpec("code_chunks", partitions_def=repos_partitions)],
        jobs=[job],
        resources={
            "app_config": AppConfigResource(),
            "io_manager": PartitionedParquetIOManager(),
            "llm": MLXResource(),
        },
    )
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(REPOS_PARTITIONS_NAME, ["local-x"])
        from cicdllm_assets.config import load_settings
        from tests.generation_support import SAMPLE_FILES, chunk_rows, write_chunks

        write_chunks(load_settings(), "local-x", chunk_rows("local-x", SAMPLE_FILES))
        result = defs.resolve_job_def(job.name).execute_in_process(
            partition_key="local-x", instance=instance, raise_on_error=False
        )
    events = Counter(event.event_type_value for event in result.all_events)
    assert not result.success
    assert events["STEP_START"] == 1 and events["STEP_UP_FOR_RETRY"] == 0
    assert "cicdllm model prepare" in _failure_description(result)
