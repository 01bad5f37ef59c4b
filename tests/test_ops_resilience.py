"""Run-level resilience of `cicdllm run`: Ctrl-C cancels promptly (no retry of the
interrupted step), a killed CLI's runs are reaped, and the next run resumes.

The LLM is a real OpenAI-compatible loopback server (FaultServer) that answers slowly,
so the interrupt lands while the ``questions`` step waits on HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun

from benchmarks.fault_server import Fault, FaultServer
from cicdllm_assets.runner.pipeline import HOST_TAG, PID_TAG, TRIGGER_TAG, reap_orphaned_runs
from tests.generation_support import openai_config, spawn_cli_run
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - session fixture

BIN = Path(sys.executable).parent


def _stage_status(state_db: Path, stage: str) -> str | None:
    if not state_db.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=5)
        row = con.execute("SELECT status FROM stage_progress WHERE stage = ?", (stage,)).fetchone()
        con.close()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


@pytest.mark.slow
def test_ctrl_c_cancels_the_run_at_once_and_the_next_run_resumes(
    project: Path,
    make_git_repo,
    tiny_model_dir: Path,  # noqa: F811
) -> None:
    with FaultServer(faults=[Fault.slow(60, times=None)], capacity=8) as server:
        settings = openai_config(
            project,
            server.base_url,
            tiny_model_dir,
            generation={"themes": ["code_explanation"], "questions_per_chunk": 1, "max_chunks_per_repo": 2},
            openai={"timeout_seconds": 120.0},
        )
        repo = make_git_repo("slow", {"m.py": "def m(x):\n    return x - 1\n"})
        (project / "repos.txt").write_text(f"{repo.path}\n", encoding="utf-8")
        env = {
            **os.environ,
            "CICDLLM_CONFIG": str(project / "cicdllm.yaml"),
            "DAGSTER_HOME": str(project / "dagster_home"),
        }
        proc = spawn_cli_run(project)
        try:
            deadline = time.monotonic() + 180
            while _stage_status(settings.state_db, "questions") != "running":
                assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "questions never started"
                time.sleep(0.5)
            time.sleep(1.0)  # the step is now waiting on the slow server
            interrupted_at = time.monotonic()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=45)
            stopped_after = time.monotonic() - interrupted_at
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

        assert proc.returncode == 130, err.decode(errors="replace")[-3000:]
        assert stopped_after < 30  # not after the 60 s answer, nor a retried step
        summary = json.loads(out)
        assert summary["interrupted"] is True and summary["ok"] is False
        assert summary["repos"] == [{**summary["repos"][0], "name": "local-slow", "status": "not_run"}]
        assert summary["dataset"]["status"] == "not_run"
        instance = dg.DagsterInstance.get()
        [run] = instance.get_runs(dg.RunsFilter(job_name="main_job"))
        assert run.status == dg.DagsterRunStatus.CANCELED
        events = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
        assert events == []  # the interrupt was not turned into a step retry
        assert _stage_status(settings.state_db, "questions") == "interrupted"

        # The server answers normally again: the same command finishes the job.
        server.clear_faults()
        done = subprocess.run(
            [str(BIN / "cicdllm"), "run", "--json"],
            cwd=project,
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
        summary = json.loads(done.stdout)
        assert [r["status"] for r in summary["repos"]] == ["done"]
        assert summary["repos"][0]["rows"]["questions"] >= 1


def test_runs_of_a_dead_cli_process_are_marked_failed(project: Path) -> None:
    instance = dg.DagsterInstance.get()
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()

    def add(run_id: str, pid: int, run_host: str, status: dg.DagsterRunStatus) -> None:
        instance.add_run(
            DagsterRun(
                job_name="main_job",
                run_id=run_id,
                status=status,
                tags={TRIGGER_TAG: "cli", PID_TAG: str(pid), HOST_TAG: run_host},
            )
        )

    add("orphan0-0000-0000-0000-000000000000", dead.pid, host, dg.DagsterRunStatus.STARTED)
    add("alive00-0000-0000-0000-000000000000", os.getpid(), host, dg.DagsterRunStatus.STARTED)
    add("elsewhe-0000-0000-0000-000000000000", dead.pid, "another-host", dg.DagsterRunStatus.STARTED)
    add("finishd-0000-0000-0000-000000000000", dead.pid, host, dg.DagsterRunStatus.SUCCESS)

    assert reap_orphaned_runs(instance) == ["orphan0-0000-0000-0000-000000000000"]
    statuses = {r.run_id[:7]: r.status for r in instance.get_runs()}
    assert statuses == {
        "orphan0": dg.DagsterRunStatus.FAILURE,
        "alive00": dg.DagsterRunStatus.STARTED,
        "elsewhe": dg.DagsterRunStatus.STARTED,
        "finishd": dg.DagsterRunStatus.SUCCESS,
    }
    assert reap_orphaned_runs(instance) == []
