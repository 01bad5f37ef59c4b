"""SIGKILL a run mid-generation and resume: every item exactly once, none lost, no duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from dagster import DagsterInstance

from benchmarks.fault_server import FaultServer
from cicdllm_assets.resources.llm.openai_resource import OpenAIResource
from cicdllm_assets.storage.tables import TableStore
from tests.generation_support import (
    REPO_ROOT,
    SAMPLE_FILES,
    chunk_rows,
    ledger_of,
    openai_config,
    read_table,
    run_generation,
    write_chunks,
)
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - session fixture

REPO = "acme-resume"


@pytest.mark.slow
def test_sigkill_and_resume_answers(project: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    with FaultServer(capacity=2) as server:
        settings = openai_config(
            project,
            server.base_url,
            tiny_model_dir,
            generation={"themes": ["code_explanation", "testing"], "questions_per_chunk": 3, "batch_size": 2},
            openai={"max_concurrency": 2},
        )
        rows = chunk_rows(REPO, SAMPLE_FILES)
        write_chunks(settings, REPO, rows)
        instance = DagsterInstance.get()
        assert run_generation(REPO, OpenAIResource(), selection=["questions"], instance=instance).success
        n_questions = read_table(settings, "questions", REPO).num_rows
        assert n_questions == len(rows) * 2 * 3

        # slow answers: at most 2 in flight, 0.3 s each
        server.latency = 0.3
        before = len(server.chat_records)
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.generation_worker", REPO, "answers"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ledger = ledger_of(settings)
        deadline = time.monotonic() + 120
        committed = 0
        while time.monotonic() < deadline and proc.poll() is None:
            committed = ledger.counts(kind="answer").get("ok", 0)
            if committed >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the worker finished before it could be killed; slow the server down"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        killed_at = ledger.counts(kind="answer").get("ok", 0)
        assert 4 <= killed_at < n_questions
        sent_before_kill = len(server.chat_records) - before
        assert TableStore(settings.tables_dir).read("answers", REPO) is None  # killed before its output

        # resume: only the missing answers are requested
        server.latency = 0.0
        resume_start = len(server.chat_records)
        assert run_generation(REPO, OpenAIResource(), selection=["answers"], instance=instance).success
        resumed = len(server.chat_records) - resume_start
        assert resumed == n_questions - killed_at
        assert sent_before_kill + resumed >= n_questions  # in-flight requests at the kill are asked again

        entries = ledger_of(settings).entries(kind="answer")
        assert len(entries) == n_questions
        assert Counter(e.status for e in entries) == Counter({"ok": n_questions})
        assert all(e.attempts == 1 for e in entries)
        answers = read_table(settings, "answers", REPO)
        assert answers.num_rows == n_questions
        ids = answers.column("answer_id").to_pylist()
        assert len(set(ids)) == len(ids)
        assert set(answers.column("question_id").to_pylist()) == set(
            read_table(settings, "questions", REPO).column("question_id").to_pylist()
        )
