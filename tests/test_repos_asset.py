"""The `repositories` asset materialized with Dagster's testing API on real git repos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagster import DagsterInstance, ExecuteInProcessResult, materialize

from cicdllm_assets.assets.repositories import repositories
from cicdllm_assets.io_managers import PartitionedParquetIOManager
from cicdllm_assets.partitions import REPOS_PARTITIONS_NAME
from cicdllm_assets.resources.config_resource import AppConfigResource
from cicdllm_assets.storage.state import StateStore
from cicdllm_assets.storage.tables import TableStore
from tests.test_repos_git import MIT


def run(instance: DagsterInstance, key: str) -> ExecuteInProcessResult:
    return materialize(
        [repositories],
        partition_key=key,
        instance=instance,
        resources={"app_config": AppConfigResource(), "io_manager": PartitionedParquetIOManager()},
        raise_on_error=False,
    )


def data_version(result: ExecuteInProcessResult) -> str:
    [event] = result.get_asset_materialization_events()
    materialization = event.event_specific_data.materialization  # type: ignore[union-attr]
    return materialization.tags["dagster/data_version"]


def failure_text(result: ExecuteInProcessResult) -> str:
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    data = event.step_failure_data
    parts = [data.error.message if data.error else ""]
    if data.user_failure_data is not None:
        parts.append(data.user_failure_data.description or "")
    return "\n".join(parts)


@pytest.fixture
def instance() -> DagsterInstance:
    with DagsterInstance.ephemeral() as inst:
        yield inst


def test_materialize_good_and_bad_partitions(project: Path, settings, make_git_repo, instance) -> None:
    good = make_git_repo("good", {"LICENSE": MIT, "app.py": "print('hi')\n"})
    broken = project.parent / "broken"
    broken.mkdir()  # exists, but is not a git repository
    (project / "repos.txt").write_text(f"# test\n{good.path}\n{broken}\n", encoding="utf-8")
    instance.add_dynamic_partitions(REPOS_PARTITIONS_NAME, ["local-good", "local-broken"])

    ok = run(instance, "local-good")
    assert ok.success
    head = good.git("rev-parse", "HEAD")
    assert data_version(ok) == head
    table = TableStore(settings.tables_dir).read("repositories", "local-good")
    assert table is not None and table.num_rows == 1
    row = table.to_pylist()[0]
    assert row["repo"] == "local-good"
    assert row["url"] == str(good.path.resolve())
    assert row["ref"] is None
    assert row["head_commit"] == head
    assert row["default_branch"] == "main"
    assert row["license"] == "MIT"
    assert row["size_bytes"] > 0
    assert row["head_changed"] is True and row["previous_commit"] is None
    assert Path(row["local_path"]) == settings.cache_dir / "local-good"
    assert (Path(row["local_path"]) / "app.py").is_file()
    [event] = ok.get_asset_materialization_events()
    metadata = event.event_specific_data.materialization.metadata  # type: ignore[union-attr]
    assert metadata["license"].value == "MIT"
    assert metadata["head_commit"].value == head

    bad = run(instance, "local-broken")
    assert not bad.success
    text = failure_text(bad)
    assert "clone of" in text and "broken" in text and "does not exist" in text

    # the good partition is unaffected by the bad one
    assert TableStore(settings.tables_dir).read("repositories", "local-good") is not None
    assert TableStore(settings.tables_dir).read("repositories", "local-broken") is None

    state = StateStore(settings.state_db)
    progress = {(p.repo, p.stage): p for p in state.progress()}
    assert progress[("local-good", "repositories")].status == "done"
    assert progress[("local-good", "repositories")].done == 1
    assert progress[("local-broken", "repositories")].status == "failed"
    failures = state.connection().execute("SELECT repo, category FROM failures").fetchall()
    assert [tuple(f) for f in failures] == [("local-broken", "git")]
    info = state.connection().execute("SELECT head_commit, info_json FROM repo_info").fetchall()
    assert [r["head_commit"] for r in info] == [head]
    assert json.loads(info[0]["info_json"])["license"] == "MIT"


def test_new_commit_changes_data_version(project: Path, settings, make_git_repo, instance) -> None:
    upstream = make_git_repo("upstream")
    (project / "repos.txt").write_text(f"{upstream.path}\n", encoding="utf-8")
    instance.add_dynamic_partitions(REPOS_PARTITIONS_NAME, ["local-upstream"])

    first = run(instance, "local-upstream")
    same = run(instance, "local-upstream")
    assert data_version(first) == data_version(same) == upstream.git("rev-parse", "HEAD")
    row = TableStore(settings.tables_dir).read("repositories", "local-upstream").to_pylist()[0]
    assert row["head_changed"] is False

    new_head = (upstream.write("new.py", "x = 1\n"), upstream.commit("new"))[1]
    moved = run(instance, "local-upstream")
    assert data_version(moved) == new_head != data_version(first)
    row = TableStore(settings.tables_dir).read("repositories", "local-upstream").to_pylist()[0]
    assert row["head_changed"] is True
    assert row["previous_commit"] == data_version(first)


def test_partition_removed_from_repos_file_fails_clearly(project: Path, make_git_repo, instance) -> None:
    (project / "repos.txt").write_text("", encoding="utf-8")
    instance.add_dynamic_partitions(REPOS_PARTITIONS_NAME, ["github.com-gone-repo"])
    result = run(instance, "github.com-gone-repo")
    assert not result.success
    assert "'github.com-gone-repo' is not in" in failure_text(result)


def test_invalid_repos_file_fails_with_line_numbers(project: Path, instance) -> None:
    (project / "repos.txt").write_text("https://user:hunter2@github.com/a/b\n", encoding="utf-8")
    instance.add_dynamic_partitions(REPOS_PARTITIONS_NAME, ["github.com-a-b"])
    result = run(instance, "github.com-a-b")
    assert not result.success
    text = failure_text(result)
    assert "repos.txt:1:" in text and "credentials" in text
    assert "hunter2" not in text


def test_bad_line_elsewhere_does_not_stop_a_valid_repo(project: Path, make_git_repo, instance) -> None:
    good = make_git_repo("good")
    (project / "repos.txt").write_text(f"ext::sh\n{good.path}\n", encoding="utf-8")
    instance.add_dynamic_partitions(REPOS_PARTITIONS_NAME, ["local-good"])
    result = run(instance, "local-good")
    assert result.success
    assert data_version(result) == good.git("rev-parse", "HEAD")
