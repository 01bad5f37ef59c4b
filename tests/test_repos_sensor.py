"""repos_sync_sensor with build_sensor_context on a real (temp) Dagster instance, and sync_partitions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import (
    AddDynamicPartitionsRequest,
    AssetKey,
    DagsterInstance,
    Definitions,
    DeleteDynamicPartitionsRequest,
    SensorResult,
    SkipReason,
    asset,
    build_sensor_context,
    instance_for_test,
)

from cicdllm_assets.assets.repositories import repositories
from cicdllm_assets.automation.repos_sensor import build_repos_sync_sensor, ingest_new_repo_job
from cicdllm_assets.partitions import REPOS_PARTITIONS_NAME
from cicdllm_assets.repos.repos_file import ReposFileError
from cicdllm_assets.resources.config_resource import AppConfigResource
from cicdllm_assets.runner.instance import sync_partitions

repos_sync_sensor = build_repos_sync_sensor(30)


@pytest.fixture
def instance(project: Path) -> Iterator[DagsterInstance]:
    with instance_for_test() as inst:
        yield inst


def tick(instance: DagsterInstance) -> SensorResult | SkipReason:
    context = build_sensor_context(instance=instance, resources={"app_config": AppConfigResource()})
    result = repos_sync_sensor(context)
    assert isinstance(result, (SensorResult, SkipReason))
    return result


def apply(instance: DagsterInstance, result: SensorResult) -> None:
    """What the sensor daemon does with the dynamic partition requests."""
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        elif isinstance(request, DeleteDynamicPartitionsRequest):
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)


def write_repos(project: Path, *lines: str) -> None:
    (project / "repos.txt").write_text("# managed by the test\n" + "".join(f"{line}\n" for line in lines))


def test_sensor_adds_removes_and_requests_runs_once(project: Path, make_git_repo, instance) -> None:
    one = make_git_repo("one")
    two = make_git_repo("two")
    write_repos(project, str(one.path), str(two.path))

    first = tick(instance)
    assert isinstance(first, SensorResult)
    [add] = first.dynamic_partitions_requests
    assert isinstance(add, AddDynamicPartitionsRequest)
    assert add.partitions_def_name == REPOS_PARTITIONS_NAME
    assert list(add.partition_keys) == ["local-one", "local-two"]
    assert [(r.partition_key, r.run_key) for r in first.run_requests] == [
        ("local-one", "new-repo:local-one"),
        ("local-two", "new-repo:local-two"),
    ]
    apply(instance, first)
    assert sorted(instance.get_dynamic_partitions(REPOS_PARTITIONS_NAME)) == ["local-one", "local-two"]

    # nothing changed: skip, and no repeated run request for the same repos
    again = tick(instance)
    assert isinstance(again, SkipReason)
    assert "unchanged (2 repositories)" in (again.skip_message or "")

    three = make_git_repo("three")
    write_repos(project, str(two.path), str(three.path))
    changed = tick(instance)
    assert isinstance(changed, SensorResult)
    kinds = {type(r).__name__: list(r.partition_keys) for r in changed.dynamic_partitions_requests}
    assert kinds == {
        "AddDynamicPartitionsRequest": ["local-three"],
        "DeleteDynamicPartitionsRequest": ["local-one"],
    }
    assert [r.run_key for r in changed.run_requests] == ["new-repo:local-three"]
    apply(instance, changed)
    assert sorted(instance.get_dynamic_partitions(REPOS_PARTITIONS_NAME)) == ["local-three", "local-two"]


def test_sensor_skips_on_invalid_repos_file(project: Path, instance) -> None:
    instance.add_dynamic_partitions(REPOS_PARTITIONS_NAME, ["keep-me"])
    write_repos(project, "ext::sh -c evil", "https://u:sekret@github.com/a/b", "missing/dir")
    result = tick(instance)
    assert isinstance(result, SkipReason)
    message = result.skip_message or ""
    assert "repos.txt:2:" in message and "repos.txt:3:" in message and "repos.txt:4:" in message
    assert "sekret" not in message
    assert instance.get_dynamic_partitions(REPOS_PARTITIONS_NAME) == ["keep-me"]


def test_sensor_skips_on_invalid_config(project: Path, instance) -> None:
    (project / "cicdllm.yaml").write_text("repos:\n  nonsense: 1\n", encoding="utf-8")
    result = tick(instance)
    assert isinstance(result, SkipReason)
    assert "unknown key" in (result.skip_message or "")


def test_run_requests_resolve_against_the_job(project: Path, make_git_repo, instance) -> None:
    """The job selects every repo-partitioned asset and leaves unpartitioned ones out."""

    @asset(deps=[repositories])
    def unpartitioned_summary() -> None:
        return None

    defs = Definitions(
        assets=[repositories, unpartitioned_summary],
        jobs=[ingest_new_repo_job],
        sensors=[repos_sync_sensor],
        resources={"app_config": AppConfigResource()},
    )
    job = defs.resolve_job_def("ingest_new_repo_job")
    assert job.asset_layer.executable_asset_keys == {AssetKey("repositories")}
    assert defs.resolve_sensor_def("repos_sync_sensor").job_name == "ingest_new_repo_job"


def test_sync_partitions(project: Path, settings, make_git_repo, instance) -> None:
    one = make_git_repo("one")
    instance.add_dynamic_partitions(REPOS_PARTITIONS_NAME, ["stale"])
    write_repos(project, str(one.path), f"{one.path}@main")
    assert sync_partitions(instance, settings) == (["local-one", "local-one@main"], ["stale"])
    assert sync_partitions(instance, settings) == ([], [])
    write_repos(project, "ftp://nope/a/b")
    with pytest.raises(ReposFileError):
        sync_partitions(instance, settings)
    assert sorted(instance.get_dynamic_partitions(REPOS_PARTITIONS_NAME)) == ["local-one", "local-one@main"]
