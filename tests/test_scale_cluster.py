"""Scale-out end to end on the live services (docs/scale-out.md): Postgres state, Dagster on
Postgres, dagster-webserver + dagster-daemon, two Celery workers (RabbitMQ) in separate
processes, and the OpenAI backend against a loopback server with a fixed latency.

One backfill of 4 repos, with ``llm_pool_limit: 1``; one worker is SIGKILLed while it
generates. The backfill completes, no two generation steps ever ran at once, nothing
finished was generated twice, nothing is lost, and the pairs equal those of an in-process
``cicdllm run`` on SQLite.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.fault_server import FaultServer
from cicdllm_assets.storage.state import StateStore
from cicdllm_assets.storage.tables import TableStore
from tests.conftest import GitRepo
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - session fixture
from tests.scale_cluster import (
    cli_run,
    make_repos,
    running_cluster,
    spawn_worker,
    stop_group,
    write_cluster_config,
    write_local_variant,
)
from tests.services import RABBITMQ_URL, fresh_database, require, schema_url

pytestmark = pytest.mark.slow

GENERATION_STEPS = ("questions", "answers")


def _step_windows(instance, run_ids: list[str]) -> tuple[list[tuple[float, float]], Counter[tuple[str, str]]]:
    """(start, end) of every finished generation step execution, and STEP_STARTs per (run, step)."""
    from dagster import DagsterEventType

    windows: list[tuple[float, float]] = []
    starts: Counter[tuple[str, str]] = Counter()
    for run_id in run_ids:
        open_at: dict[str, float] = {}
        for record in instance.all_logs(run_id):
            event = record.dagster_event
            if event is None or event.step_key not in GENERATION_STEPS:
                continue
            if event.event_type == DagsterEventType.STEP_START:
                open_at[event.step_key] = record.timestamp  # a killed attempt's start is superseded
                starts[(run_id, event.step_key)] += 1
            elif event.event_type in (
                DagsterEventType.STEP_SUCCESS,
                DagsterEventType.STEP_FAILURE,
                DagsterEventType.STEP_UP_FOR_RETRY,
            ):
                windows.append((open_at.pop(event.step_key), record.timestamp))
    return windows, starts


def _max_overlap(windows: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in windows] + [(e, -1) for _, e in windows], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, delta in edges:
        running += delta
        peak = max(peak, running)
    return peak


def _kill_the_generating_worker(state_url: str, deadline: float, stop: threading.Event) -> int:
    """SIGKILL the process group of the worker that holds item leases (it is generating).

    Polls until a lease appears, the backfill ends (``stop``) or ``deadline`` (a slow machine may
    take minutes to reach generation: the bound is generous, the backfill's end is the real limit)."""
    with StateStore(state_url) as state:
        while time.monotonic() < deadline and not stop.is_set():
            if "item_leases" in state.tables():
                holders = state.query("SELECT holder FROM item_leases")
                if holders:
                    pid = int(str(holders[0][0]).split(":")[1])
                    group = os.getpgid(pid)
                    os.killpg(group, signal.SIGKILL)
                    return group
            time.sleep(0.2)
    raise AssertionError("no worker took a lease in time")


def test_backfill_on_two_celery_workers_survives_a_killed_worker_and_matches_in_process(
    project: Path,
    make_git_repo,
    tiny_model_dir: Path,  # noqa: F811
    tmp_path: Path,
    pg_database: str,
) -> None:
    require("rabbitmq")
    from dagster import DagsterInstance, RunsFilter

    from cicdllm_assets.config import load_settings

    state_url = schema_url(pg_database, f"cluster_{uuid.uuid4().hex[:8]}")
    repos = make_repos(make_git_repo, 4)
    with (
        fresh_database("cicdllm_dagster") as dagster_url,
        FaultServer(latency=1.0, capacity=16, max_lifetime=3600) as server,
    ):
        write_cluster_config(
            project,
            server.base_url,
            tiny_model_dir,
            state_url,
            dagster_url,
            RABBITMQ_URL,
            performance={"llm_pool_limit": 1},
            generation={"questions_per_chunk": 2},
        )
        (project / "repos.txt").write_text("".join(f"{r.path}\n" for r in repos), encoding="utf-8")
        settings = load_settings()
        with running_cluster(project, tmp_path / "logs", workers=2) as cluster:
            killed: list[int] = []
            backfill_over = threading.Event()
            killer = threading.Thread(
                target=lambda: killed.append(
                    _kill_the_generating_worker(state_url, time.monotonic() + 1800, backfill_over)
                )
            )
            killer.start()
            keys = [f"local-{r.path.name}" for r in repos]
            try:
                result = cluster.backfill(keys)
            finally:
                backfill_over.set()
                killer.join()
            assert result["status"] == "COMPLETED_SUCCESS", cluster.tail_logs()
            assert sorted(result["partitions"]) == sorted(keys)
            assert killed and sum(p.poll() is None for p in cluster.workers) == 1  # one worker left

        prompts = Counter(json.dumps(r.body["messages"], sort_keys=True) for r in server.chat_records)
        with DagsterInstance.get() as instance:
            runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": result["backfill_id"]}))
            run_ids = [r.run_id for r in runs]
            windows, starts = _step_windows(instance, run_ids)

        # llm_pool_limit 1: never two generation steps at once, across the 4 runs
        assert len(run_ids) == 4
        assert len(windows) >= 8 and _max_overlap(windows) == 1
        # the killed step started again (on the surviving worker)
        assert max(starts.values()) >= 2, starts

        # nothing finished generated twice, nothing lost
        with StateStore(state_url) as state:
            from cicdllm_assets.generation.ledger import Ledger

            entries = Ledger(state).entries()
        expected = 4 * 2 * (1 + 2)  # repos x chunks x (question item + 2 answers)
        assert len(entries) == expected and {e.status for e in entries} == {"ok"}
        assert {e.attempts for e in entries} == {1}
        assert len(prompts) == expected
        resent = [n for n in prompts.values() if n > 1]
        assert len(resent) <= 2 and set(resent) <= {2}  # only what was in flight when the worker died
        cluster_pairs = TableStore(settings.tables_dir).read_all("qa_pairs", keys)

        # the same repos in process on SQLite state
        other = tmp_path / "inproc"
        cli_run(other, write_local_variant(other, project, repos))
    local_pairs = TableStore(other / "data" / "tables").read_all("qa_pairs", keys)
    assert cluster_pairs is not None and local_pairs is not None
    cluster_ids = cluster_pairs.column("answer_id").to_pylist()
    local_ids = local_pairs.column("answer_id").to_pylist()
    assert len(cluster_ids) == len(set(cluster_ids)) == 4 * 2 * 2  # no duplicates
    assert sorted(cluster_ids) == sorted(local_ids)


def test_a_worker_of_another_deployment_on_the_same_broker_never_runs_this_deployments_steps(
    project: Path,
    make_git_repo,
    tiny_model_dir: Path,  # noqa: F811
    tmp_path: Path,
    pg_database: str,
) -> None:
    """Two deployments share one broker: this cluster (Postgres state, one worker) and another
    project whose worker runs steps with its own config (SQLite state, its own data dir), and
    which already holds tables of repos with the same partition names.

    Each deployment's steps go to its own queue: the backfill completes with every pair in
    this deployment's tables and ledger, and the other project's worker runs none of its steps.
    (On one shared queue, steps ran on the foreign worker and wrote their results into the other
    project: the backfill succeeded with pairs missing.)
    """
    require("rabbitmq")
    from cicdllm_assets.config import load_settings
    from cicdllm_assets.generation.ledger import Ledger

    state_url = schema_url(pg_database, f"xdeploy_{uuid.uuid4().hex[:8]}")
    repos = make_repos(make_git_repo, 2)
    keys = [f"local-{r.path.name}" for r in repos]
    logs = tmp_path / "logs"
    logs.mkdir()
    with (
        fresh_database("cicdllm_dagster") as dagster_url,
        FaultServer(latency=0.2, capacity=16, max_lifetime=3600) as server,
    ):
        write_cluster_config(project, server.base_url, tiny_model_dir, state_url, dagster_url, RABBITMQ_URL)
        (project / "repos.txt").write_text("".join(f"{r.path}\n" for r in repos), encoding="utf-8")
        settings = load_settings()

        # the other deployment: same broker, repos of the same names (other content), tables made
        other_repos = []
        for i, repo in enumerate(repos):
            other_repo = GitRepo(tmp_path / "other-repos" / repo.path.name)
            other_repo.write("other.py", f"def other_{i}():\n    return {i}\n")
            other_repo.commit("initial")
            other_repos.append(other_repo)
        other = tmp_path / "other"
        other_env = write_local_variant(other, project, other_repos)
        cli_run(other, other_env)
        with StateStore(other / "data" / "state.db") as state:
            other_ledger = Ledger(state).counts()
        foreign = spawn_worker(other, other_env, logs, "foreign")
        try:
            with running_cluster(project, logs, workers=1) as cluster:
                result = cluster.backfill(keys)
        finally:
            stop_group(foreign)
        foreign_log = (logs / "worker-foreign.log").read_text(errors="replace")
        assert result["status"] == "COMPLETED_SUCCESS", foreign_log[-3000:]

        with StateStore(state_url) as state:
            entries = Ledger(state).entries()
        expected = 2 * 2 * (1 + 1)  # repos x chunks x (question item + 1 answer)
        assert len(entries) == expected and {e.status for e in entries} == {"ok"}
        pairs = TableStore(settings.tables_dir).read_all("qa_pairs", keys)
        assert pairs is not None and sorted(set(pairs.column("repo").to_pylist())) == sorted(keys)
        assert pairs.num_rows == 2 * 2
        with StateStore(other / "data" / "state.db") as state:
            assert Ledger(state).counts() == other_ledger  # the other project generated nothing more
        assert "Task execute_plan[" not in foreign_log
