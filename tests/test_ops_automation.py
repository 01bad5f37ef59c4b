"""The refresh schedule and the declarative automation conditions, on real Dagster.

The ``repositories`` asset is the real one (cloning real git repos made in temp dirs);
the downstream chain is stand-ins with the pipeline's keys, groups and partitioning, wired
through ``apply_automation_conditions`` exactly as definitions.py does.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from cicdllm_assets.assets.repositories import repositories
from cicdllm_assets.automation.conditions import (
    apply_automation_conditions,
    automation_condition_sensor,
    pipeline_conditions,
)
from cicdllm_assets.automation.executors import executor_for
from cicdllm_assets.automation.jobs import (
    ALL_PIPELINE_ASSETS,
    PARTITIONED_ASSETS,
    STEP_RETRY_POLICY,
    dataset_job,
    main_job,
    refresh_job,
)
from cicdllm_assets.automation.schedules import REFRESH_SCHEDULE_NAME, build_refresh_schedule, refresh_run_key
from cicdllm_assets.config import AppConfig, Settings
from cicdllm_assets.definitions import build_definitions
from cicdllm_assets.io_managers import PartitionedParquetIOManager
from cicdllm_assets.partitions import REPOS_PARTITIONS_NAME, repos_partitions
from cicdllm_assets.resources.config_resource import AppConfigResource
from cicdllm_assets.runner.instance import sync_partitions

RESOURCES = {"app_config": AppConfigResource(), "io_manager": PartitionedParquetIOManager()}


def _stand_in(name: str, parent: str, partitioned: bool = True) -> dg.AssetsDefinition:
    group = {"source_files": "ingest", "code_chunks": "ingest", "questions": "generation", "answers": "generation"}

    @dg.asset(
        name=name,
        deps=[parent],
        partitions_def=repos_partitions if partitioned else None,
        group_name=group.get(name, "dataset"),
    )
    def _asset() -> None:
        return None

    return _asset


def _pipeline() -> list[dg.AssetsDefinition]:
    chain: list[dg.AssetsDefinition] = [repositories]
    for parent, name in itertools.pairwise(PARTITIONED_ASSETS):
        chain.append(_stand_in(name, parent))
    chain.append(_stand_in("training_dataset", "qa_pairs", partitioned=False))
    return [apply_automation_conditions(a) for a in chain]


# -- jobs ----------------------------------------------------------------------------


def test_jobs_split_partitioned_chain_from_dataset_and_retry_transient_failures() -> None:
    # the code location's default executor: orchestration.executor of the default config
    defs = dg.Definitions(
        assets=_pipeline(),
        jobs=[main_job, dataset_job, refresh_job],
        resources=RESOURCES,
        executor=executor_for(Settings(config=AppConfig(), path=None, root=Path.cwd())),
    )
    main = defs.resolve_job_def("main_job")
    dataset = defs.resolve_job_def("dataset_job")
    refresh = defs.resolve_job_def("refresh_job")
    assert {k.to_user_string() for k in main.asset_layer.executable_asset_keys} == set(PARTITIONED_ASSETS)
    assert main.partitions_def == repos_partitions
    assert {k.to_user_string() for k in dataset.asset_layer.executable_asset_keys} == {"training_dataset"}
    assert dataset.partitions_def is None
    assert {k.to_user_string() for k in refresh.asset_layer.executable_asset_keys} == {"repositories"}
    for job in (main, dataset, refresh):
        assert job.executor_def.name == "in_process"
    policy = STEP_RETRY_POLICY
    assert policy.max_retries == 2
    assert policy.backoff == dg.Backoff.EXPONENTIAL
    assert policy.jitter == dg.Jitter.PLUS_MINUS
    assert set(ALL_PIPELINE_ASSETS) == {*PARTITIONED_ASSETS, "training_dataset"}


def test_retry_policy_heals_a_transient_step_failure() -> None:
    attempts: list[int] = []

    @dg.asset(partitions_def=repos_partitions, name="repositories", group_name="ingest")
    def flaky(context) -> None:  # type: ignore[no-untyped-def]
        attempts.append(context.retry_number)
        if context.retry_number == 0:
            raise RuntimeError("transient: connection reset")

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(REPOS_PARTITIONS_NAME, ["r"])
    defs = dg.Definitions(assets=[flaky], jobs=[refresh_job])
    result = defs.resolve_job_def("refresh_job").execute_in_process(instance=instance, partition_key="r")
    assert result.success
    assert attempts == [0, 1]


# -- schedule --------------------------------------------------------------------------


def _configured_schedule() -> dg.ScheduleDefinition:
    """The refresh schedule of the code location built from the project's config."""
    return build_definitions().resolve_schedule_def(REFRESH_SCHEDULE_NAME)


def test_schedule_requests_one_refresh_run_per_repo_partition(project: Path) -> None:
    refresh_repos_schedule = _configured_schedule()
    instance = dg.DagsterInstance.get()
    when = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when)
    assert isinstance(refresh_repos_schedule(context), dg.SkipReason)

    instance.add_dynamic_partitions(REPOS_PARTITIONS_NAME, ["local-a", "local-b", "github.com-x-y"])
    requests = refresh_repos_schedule(context)
    assert isinstance(requests, list)
    assert sorted(r.partition_key or "" for r in requests) == ["github.com-x-y", "local-a", "local-b"]
    assert {r.run_key for r in requests} == {refresh_run_key(k, when) for k in ("github.com-x-y", "local-a", "local-b")}
    assert all(r.run_key and r.run_key.endswith("2026-11-26") for r in requests)
    assert refresh_repos_schedule.job_name == "refresh_job"
    assert refresh_repos_schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_schedule_cron_comes_from_config(project: Path) -> None:
    assert _configured_schedule().cron_schedule == "0 3 * * *"
    (project / "cicdllm.yaml").write_text(
        "repos:\n  refresh_cron: '15 4 * * 1'\nstorage:\n  data_dir: data\n", encoding="utf-8"
    )
    assert _configured_schedule().cron_schedule == "15 4 * * 1"
    assert build_refresh_schedule("15 4 * * 1").cron_schedule == "15 4 * * 1"
    (project / "cicdllm.yaml").write_text("repos:\n  refresh_cron: 'not a cron'\n", encoding="utf-8")
    assert _configured_schedule().cron_schedule == "0 3 * * *"


# -- declarative automation ----------------------------------------------------------------


def test_conditions_attach_to_every_pipeline_asset_but_repositories() -> None:
    by_key = {}
    for assets_def in _pipeline():
        by_key.update(assets_def.automation_conditions_by_key)
    assert dg.AssetKey("repositories") not in by_key
    assert set(by_key) == set(pipeline_conditions())
    assert by_key[dg.AssetKey("source_files")].get_label() == "follow_head_commit"
    assert by_key[dg.AssetKey("training_dataset")].get_label() == "follow_any_repo"
    assert automation_condition_sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_an_asset_keeps_its_own_condition() -> None:
    own = dg.AutomationCondition.on_cron("0 * * * *")

    @dg.asset(name="questions", automation_condition=own)
    def questions() -> None:
        return None

    mapped = apply_automation_conditions(questions)
    assert mapped.automation_conditions_by_key[dg.AssetKey("questions")] == own


def _requested(result: dg.EvaluateAutomationConditionsResult, name: str) -> set[str | None]:
    return set(result.get_requested_partitions(dg.AssetKey(name)))


@pytest.mark.slow
def test_downstream_follows_only_repos_whose_head_commit_changed(project: Path, make_git_repo) -> None:
    same = make_git_repo("same", {"a.py": "print('a')\n"})
    moving = make_git_repo("moving", {"b.py": "print('b')\n"})
    (project / "repos.txt").write_text(f"{same.path}\n{moving.path}\n", encoding="utf-8")
    instance = dg.DagsterInstance.get()
    from cicdllm_assets.config import load_settings

    added, _ = sync_partitions(instance, load_settings())
    assert added == ["local-same", "local-moving"]
    assets = _pipeline()
    defs = dg.Definitions(assets=assets, resources=RESOURCES)

    def refresh(key: str) -> None:
        result = dg.materialize([assets[0]], partition_key=key, instance=instance, resources=RESOURCES)
        assert result.success

    for key in added:
        refresh(key)
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.total_requested == 0  # the first tick only records where things stand

    # A refresh that finds the same heads changes nothing downstream.
    for key in added:
        refresh(key)
    quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert quiet.total_requested == 0

    # One repo moves: its partition of the whole chain is requested in one tick.
    moving.write("c.py", "print('c')\n")
    moving.commit("new file")
    for key in added:
        refresh(key)
    moved = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=quiet.cursor)
    for name in PARTITIONED_ASSETS[1:]:
        assert _requested(moved, name) == {"local-moving"}, name
    assert _requested(moved, "repositories") == set()
    # The unpartitioned dataset cannot share a run with a repo partition: it waits for
    # the new qa_pairs to land, then follows on the next tick.
    assert _requested(moved, "training_dataset") == set()

    chain = dg.materialize(
        assets[:-1],
        partition_key="local-moving",
        instance=instance,
        resources=RESOURCES,
        selection=list(PARTITIONED_ASSETS[1:]),
    )
    assert chain.success
    landed = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=moved.cursor)
    assert _requested(landed, "training_dataset") == {None}
    assert landed.total_requested == 1

    # Handled: the next tick does not ask again.
    dataset = dg.materialize(assets, instance=instance, resources=RESOURCES, selection=["training_dataset"])
    assert dataset.success
    again = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=landed.cursor)
    assert again.total_requested == 0
