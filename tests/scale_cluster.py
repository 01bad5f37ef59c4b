"""A scale-out cluster on the live services, as docs/scale-out.md describes it.

Postgres state and Dagster instance, ``dagster-webserver`` and ``dagster-daemon run`` as
separate processes, ``cicdllm workers start 1`` twice (two Celery workers on Redis), and the
OpenAI backend against a loopback server. Used by tests/test_scale_cluster.py and
benchmarks/scale.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
STARTUP_SECONDS = 240

SENSORS_QUERY = """
{ repositoriesOrError { ... on RepositoryConnection { nodes { sensors { id name sensorState { status } } } } } }
"""
STOP_SENSOR = """
mutation Stop($id: String!) { stopSensor(id: $id) { __typename } }
"""


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """One GraphQL call; an AssertionError on GraphQL errors."""
    response = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
    response.raise_for_status()
    payload = response.json()
    assert not payload.get("errors"), payload["errors"]
    data: dict[str, Any] = payload["data"]
    return data


def stop_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 30) -> None:
    """Signal a process group, then SIGKILL it if it does not exit."""
    for current, wait in ((sig, grace), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, current)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def write_cluster_config(
    project: Path,
    server_url: str,
    tokenizer: Path,
    state_url: str,
    dagster_url: str,
    broker_url: str,
    **overrides: dict[str, Any],
) -> None:
    """cicdllm.yaml of a cluster: Postgres state and instance, Celery executor, OpenAI backend."""
    from tests.generation_support import openai_config, write_project_config

    openai_config(
        project,
        server_url,
        tokenizer,
        generation={"themes": ["code_explanation"], "questions_per_chunk": 1, "batch_size": 1},
        openai={"max_concurrency": 2},
    )
    from ruamel.yaml import YAML

    data = YAML(typ="safe").load((project / "cicdllm.yaml").read_text(encoding="utf-8"))
    sections: dict[str, dict[str, Any]] = {
        "generation": data["generation"],
        "llm": data["llm"],
        "storage": {"state_url": state_url, "dagster_instance": "postgres", "dagster_postgres_url": dagster_url},
        "orchestration": {"executor": "celery", "celery": {"broker_url": broker_url}},
        "performance": {"max_parallel_repos": 4, "lease_seconds": 5},
    }
    for name, values in overrides.items():
        sections.setdefault(name, {}).update(values)
    write_project_config(project, **sections)


def make_repos(make_git_repo: Any, count: int, files: int = 2) -> list[Any]:
    """``count`` small real git repositories."""
    names = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"][:count]
    return [
        make_git_repo(name, {f"{name}/m{i}.py": f"def {name}_{i}(x):\n    return x * {i + 2}\n" for i in range(files)})
        for name in names
    ]


@dataclass
class Cluster:
    """Handles of a running cluster."""

    url: str
    project: Path
    env: dict[str, str]
    logs: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def backfill(self, partitions: list[str], timeout: float = 600) -> dict[str, Any]:
        """``cicdllm backfill --wait --json`` of the whole chain for ``partitions``."""
        args = [str(BIN / "cicdllm"), "backfill", "--url", self.url, "--wait", "--timeout", str(timeout), "--json"]
        for key in partitions:
            args += ["--repo", key]
        done = subprocess.run(
            args, cwd=self.project, env=self.env, capture_output=True, text=True, timeout=timeout + 120, check=False
        )
        if done.returncode != 0:
            raise AssertionError(
                f"backfill failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-4000:]}\n{self.tail_logs()}"
            )
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def tail_logs(self) -> str:
        """The last lines of every process log (for failure messages)."""
        logs = sorted(self.logs.glob("*.log"))
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)


def start_worker(cluster: Cluster, name: str) -> subprocess.Popen[bytes]:
    """``cicdllm workers start 1 --name NAME`` in its own process group."""
    log = (cluster.logs / f"worker-{name}.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "cicdllm"), "workers", "start", "1", "--name", name],
        cwd=cluster.project,
        env=cluster.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    cluster.workers.append(proc)
    return proc


@contextmanager
def running_cluster(project: Path, logs: Path, workers: int) -> Iterator[Cluster]:
    """Webserver, daemon and ``workers`` Celery workers for ``project``; all stopped on exit."""
    from cicdllm_assets.config import load_settings
    from cicdllm_assets.runner.instance import open_instance, sync_partitions

    logs.mkdir(parents=True, exist_ok=True)
    settings = load_settings()
    instance = open_instance(settings)
    sync_partitions(instance, settings)
    instance.dispose()
    port = free_port()
    env = {**os.environ, "CICDLLM_CONFIG": str(project / "cicdllm.yaml"), "DAGSTER_HOME": str(settings.dagster_home)}
    cluster = Cluster(f"http://127.0.0.1:{port}", project, env, logs)
    with ExitStack() as stack:

        def spawn(name: str, args: list[str]) -> subprocess.Popen[bytes]:
            log = stack.enter_context((logs / f"{name}.log").open("wb"))
            proc = subprocess.Popen(
                args, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            stack.callback(stop_group, proc)
            return proc

        web = spawn(
            "webserver",
            [str(BIN / "dagster-webserver"), "-m", "cicdllm_assets.definitions", "-h", "127.0.0.1", "-p", str(port)],
        )
        for i in range(workers):
            start_worker(cluster, f"w{i + 1}")

        def stop_workers() -> None:
            for proc in cluster.workers:
                stop_group(proc)

        stack.callback(stop_workers)
        deadline = time.monotonic() + STARTUP_SECONDS
        sensors: list[dict[str, Any]] = []
        while not sensors:
            if web.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the webserver did not come up\n{cluster.tail_logs()}")
            try:
                sensors = gql(cluster.url, SENSORS_QUERY)["repositoriesOrError"]["nodes"][0]["sensors"]
            except (httpx.HTTPError, AssertionError, KeyError, IndexError):
                time.sleep(2)
        for sensor in sensors:  # only the backfill runs: no automation on the side
            gql(cluster.url, STOP_SENSOR, {"id": sensor["id"]})
        spawn("daemon", [str(BIN / "dagster-daemon"), "run", "-m", "cicdllm_assets.definitions"])
        yield cluster
