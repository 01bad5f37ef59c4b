"""`cicdllm status` right after `kill -9` of `cicdllm run`: the answers already committed to the
ledger are counted, and the dead run is shown ``DEAD``, not ``STARTED``.

A real `cicdllm run` process, generation through the OpenAI backend against a loopback
FaultServer that answers slowly, killed while the ``answers`` step runs.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks.fault_server import FaultServer
from cicdllm_assets.cli.main import cli
from tests.generation_support import SAMPLE_FILES, openai_config, spawn_cli_run
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - session fixture


def _ok_answers(state_db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute("SELECT count(*) FROM generation_ledger WHERE kind = 'answer' AND status = 'ok'")
            return int(row.fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_status_after_kill_counts_the_ledger_and_shows_the_run_dead(
    project: Path,
    make_git_repo,
    tiny_model_dir: Path,  # noqa: F811
) -> None:
    with FaultServer(capacity=1, latency=0.4) as server:
        settings = openai_config(
            project,
            server.base_url,
            tiny_model_dir,
            generation={"themes": ["code_explanation"], "questions_per_chunk": 2, "batch_size": 1},
            openai={"max_concurrency": 1},
        )
        repo = make_git_repo("calc", SAMPLE_FILES)
        (project / "repos.txt").write_text(f"{repo.path}\n", encoding="utf-8")
        proc = spawn_cli_run(project)
        try:
            deadline = time.monotonic() + 240
            while _ok_answers(settings.state_db) < 3:
                assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "answers never started"
                time.sleep(0.2)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    committed = _ok_answers(settings.state_db)
    result = CliRunner().invoke(cli, ["status", "--once", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    [entry] = status["repos"]
    assert entry["answers"] == committed >= 3
    assert entry["questions"] >= committed
    assert entry["last_run"]["status"] == "DEAD"
    assert [run["status"] for run in status["runs"] if run["job_name"] == "main_job"] == ["DEAD"]
