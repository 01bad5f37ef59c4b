"""The whole chain on a real git repo: repositories -> source_files -> code_chunks -> questions -> answers.

The OpenAI backend talks to the fault server over HTTP; a new commit touching one
file regenerates only that file's chunks, and an unchanged re-run sends no request.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from benchmarks.fault_server import FaultServer
from tests.generation_support import SAMPLE_FILES, chain_assets, chain_project, chain_resources, ledger_of, read_table
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - session fixture


def _run(repo: str, instance: DagsterInstance) -> None:
    result = materialize(chain_assets("answers"), partition_key=repo, instance=instance, resources=chain_resources())
    assert result.success


@pytest.mark.slow
def test_chain_incremental_on_a_real_repo(project: Path, make_git_repo, tiny_model_dir: Path) -> None:  # noqa: F811
    repo = make_git_repo("calc", {**SAMPLE_FILES, "LICENSE": "MIT License\n\nPermission is hereby granted"})
    with FaultServer(capacity=4) as server:
        settings, key, instance = chain_project(project, repo.path, server.base_url, tiny_model_dir, 64)

        _run(key, instance)
        chunks = read_table(settings, "code_chunks", key).to_pylist()
        answers = read_table(settings, "answers", key).to_pylist()
        assert chunks and len(answers) == 2 * len({c["chunk_key"] for c in chunks})
        head = repo.git("rev-parse", "HEAD")
        assert {a["commit"] for a in answers} == {head}
        assert all(a["path"] in SAMPLE_FILES and a["start_line"] >= 1 for a in answers)
        first = len(server.chat_records)

        _run(key, instance)  # unchanged repo: no LLM request
        assert len(server.chat_records) == first

        extra = "\n\ndef exists(path):\n    return os.path.exists(path)\n"
        repo.write("util/io.py", SAMPLE_FILES["util/io.py"] + extra)
        repo.commit("add exists")
        _run(key, instance)
        new = server.chat_records[first:]
        assert new and all("File: util/io.py" in r.prompt_text for r in new)
        answers = read_table(settings, "answers", key).to_pylist()
        assert {a["commit"] for a in answers} == {repo.git("rev-parse", "HEAD")}
        ok = ledger_of(settings).counts(kind="answer")
        assert ok == {"ok": len(ledger_of(settings).entries(kind="answer"))}
