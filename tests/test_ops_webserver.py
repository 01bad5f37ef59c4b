"""End to end with ``dagster dev``: the asset graph over GraphQL, and a backfill of one chosen
repo launched by ``cicdllm backfill`` through the webserver and run by the daemon.

Only the ingest assets are backfilled (no model needed). The automation sensor is stopped
first (over GraphQL) so the daemon does not go on to generate questions.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cicdllm_assets.automation.jobs import ALL_PIPELINE_ASSETS
from cicdllm_assets.config import load_settings
from cicdllm_assets.runner.instance import open_instance, sync_partitions
from cicdllm_assets.storage.tables import TableStore
from tests.discovery_helpers import train_tokenizer
from tests.scale_cluster import free_port as _free_port
from tests.scale_cluster import gql as _gql

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
STARTUP_SECONDS = 240
BACKFILL_SECONDS = 300

GRAPH_QUERY = """
{
  assetNodes {
    assetKey { path }
    groupName
    dependencyKeys { path }
    isPartitioned
    partitionKeys
    partitionDefinition { name type }
  }
}
"""

REPOSITORY_QUERY = """
{
  repositoriesOrError {
    ... on RepositoryConnection {
      nodes {
        sensors { id name sensorState { status } }
        schedules { name cronSchedule }
        jobs { name }
      }
    }
  }
}
"""

STOP_SENSOR = """
mutation Stop($id: String!) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on Error { message }
  }
}
"""

MATERIALIZED = """
query Mat($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode { assetMaterializations(partitions: ["%s"]) { partition runId } }
  }
}
"""


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the whole process group (webserver, daemon, code server), then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            # children may outlive the leader for a moment
            os.killpg(proc.pid, 0)
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
        time.sleep(1)


@pytest.fixture
def dev_server(project: Path, make_git_repo, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``dagster dev`` on a free port over a temp project with one real git repo registered."""
    tokenizer = train_tokenizer(tmp_path / "tok" / "tokenizer.json")
    (project / "cicdllm.yaml").write_text(
        "storage:\n  data_dir: data\n  dagster_home: dagster_home\n"
        f"processing:\n  tokenizer: {tokenizer}\n  chunk_max_tokens: 96\n",
        encoding="utf-8",
    )
    repo = make_git_repo("webrepo", {"app.py": "def main():\n    return 'hi'\n", "LICENSE": "MIT License\n"})
    (project / "repos.txt").write_text(f"{repo.path}\n", encoding="utf-8")
    settings = load_settings()
    added, _ = sync_partitions(open_instance(settings), settings)
    assert added == ["local-webrepo"]

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "dagster-dev.log"
    env = {**os.environ, "CICDLLM_CONFIG": str(project / "cicdllm.yaml"), "DAGSTER_HOME": str(project / "dagster_home")}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "dagster"), "dev", "-m", "cicdllm_assets.definitions", "-h", "127.0.0.1", "-p", str(port)],
            cwd=project,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        nodes: list[Any] = []
        while time.monotonic() < deadline and not nodes:
            assert proc.poll() is None, log_path.read_text(errors="replace")[-4000:]
            try:
                nodes = _gql(url, GRAPH_QUERY)["assetNodes"]
            except (httpx.HTTPError, AssertionError, KeyError):
                nodes = []
            if not nodes:
                time.sleep(2)
        assert nodes, f"dagster dev did not serve the asset graph within {STARTUP_SECONDS}s"
        yield url, project
    finally:
        _stop_group(proc)


def test_graph_over_graphql_and_a_backfill_of_one_chosen_repo(dev_server: tuple[str, Path]) -> None:
    url, project = dev_server

    # The code location's automation would generate questions after ingest: stop it.
    repository = _gql(url, REPOSITORY_QUERY)["repositoriesOrError"]["nodes"][0]
    sensors = {s["name"]: s for s in repository["sensors"]}
    assert {"automation_condition_sensor", "repos_sync_sensor"} <= set(sensors)
    stopped = _gql(url, STOP_SENSOR, {"id": sensors["automation_condition_sensor"]["id"]})["stopSensor"]
    assert stopped["instigationState"]["status"] == "STOPPED"
    assert {"main_job", "dataset_job", "refresh_job"} <= {j["name"] for j in repository["jobs"]}
    assert [s["cronSchedule"] for s in repository["schedules"] if s["name"] == "refresh_repos_schedule"] == [
        "0 3 * * *"
    ]

    # The asset graph: every pipeline asset present, lineage edges, the repos partitions.
    nodes = {"/".join(n["assetKey"]["path"]): n for n in _gql(url, GRAPH_QUERY)["assetNodes"]}
    present = [name for name in ALL_PIPELINE_ASSETS if name in nodes]
    assert present == list(ALL_PIPELINE_ASSETS)  # generation and dataset assets included
    deps = {name: {"/".join(d["path"]) for d in nodes[name]["dependencyKeys"]} for name in present}
    for parent, child in itertools.pairwise(ALL_PIPELINE_ASSETS):
        assert parent in deps[child], f"missing lineage edge {parent} -> {child}"
    assert deps["repositories"] == set()
    for name in present:
        node = nodes[name]
        if name == "training_dataset":
            assert not node["isPartitioned"]
            continue
        assert node["isPartitioned"]
        assert node["partitionDefinition"] == {"name": "repos", "type": "DYNAMIC"}
        assert node["partitionKeys"] == ["local-webrepo"]
    assert nodes["repositories"]["groupName"] == "ingest"

    # A backfill of the chosen repo through the webserver, waited for by the CLI.
    env = {**os.environ, "CICDLLM_CONFIG": str(project / "cicdllm.yaml"), "DAGSTER_HOME": str(project / "dagster_home")}
    done = subprocess.run(
        [
            str(BIN / "cicdllm"),
            "backfill",
            "--repo",
            "local-webrepo",
            "--select",
            "group:ingest",
            "--url",
            url,
            "--wait",
            "--timeout",
            str(BACKFILL_SECONDS),
            "--json",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=BACKFILL_SECONDS + 120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    assert result["mode"] == "webserver"
    assert result["status"] == "COMPLETED_SUCCESS"
    assert result["partitions"] == ["local-webrepo"]
    assert result["assets"] == ["repositories", "source_files", "code_chunks"]
    assert result["url"] == f"{url}/runs/b/{result['backfill_id']}"

    for name in ("repositories", "source_files", "code_chunks"):
        node = _gql(url, MATERIALIZED % "local-webrepo", {"key": {"path": [name]}})["assetNodeOrError"]
        assert [m["partition"] for m in node["assetMaterializations"]] == ["local-webrepo"], name
    chunks = TableStore(load_settings().tables_dir).read("code_chunks", "local-webrepo")
    assert chunks is not None and chunks.num_rows >= 1
    # The stopped automation sensor did not go on to generation.
    node = _gql(url, MATERIALIZED % "local-webrepo", {"key": {"path": ["questions"]}})["assetNodeOrError"]
    assert node["assetMaterializations"] == []
