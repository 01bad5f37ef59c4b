"""Server outages never use up an item's attempts; exhausted items can be retried; a run with
items still missing is ``incomplete``, never plain ``done`` (in ``cicdllm run`` and ``cicdllm status``).

Real ``cicdllm run`` (CliRunner) over real git repos, generation through the OpenAI backend
against a real loopback server (FaultServer) that drops connections or answers 503.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks.fault_server import Fault, FaultServer
from cicdllm_assets.cli.main import cli
from cicdllm_assets.config import Settings
from cicdllm_assets.generation.ledger import Ledger
from cicdllm_assets.storage.state import StateStore
from cicdllm_assets.storage.tables import TableStore
from tests.generation_support import SAMPLE_FILES, openai_config
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - session fixture

pytestmark = pytest.mark.slow

REPO = "local-calc"
GENERATION = {"themes": ["code_explanation"], "questions_per_chunk": 1, "max_chunks_per_repo": 3, "max_attempts": 2}


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer(capacity=8) as srv:
        yield srv


def _run() -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["run", "--json"], catch_exceptions=False)
    assert result.stdout.strip().startswith("{"), result.stderr[-3000:]
    return result.exit_code, json.loads(result.stdout)


def _ledger(settings: Settings) -> list[tuple[str, str, str | None, int]]:
    state = StateStore(settings.state_db)
    try:
        return sorted((e.kind, e.status, e.error_category, e.attempts) for e in Ledger(state).entries())
    finally:
        state.close()


def _stage_status(settings: Settings, stage: str) -> tuple[str, str]:
    """(the repo's row, the stage total) status of ``stage`` as ``cicdllm status`` shows them."""
    from cicdllm_assets.status.collect import collect_status

    status = collect_status(settings, include_runs=False)
    [repo] = [r for r in status.repos if r.repo == REPO]
    [row] = [s for s in repo.stages if s.stage == stage]
    [total] = [s for s in status.stages if s.stage == stage]
    return row.status, total.status


def _setup(project: Path, make_git_repo, server: FaultServer, model: Path, **generation: object) -> Settings:
    settings = openai_config(project, server.base_url, model, generation={**GENERATION, **generation})
    repo = make_git_repo("calc", SAMPLE_FILES)
    (project / "repos.txt").write_text(f"{repo.path}\n", encoding="utf-8")
    return settings


def test_outages_keep_items_pending_and_the_run_is_incomplete_until_they_are_generated(
    project: Path,
    make_git_repo,
    server: FaultServer,
    tiny_model_dir: Path,  # noqa: F811
) -> None:
    settings = _setup(project, make_git_repo, server, tiny_model_dir)

    # Down: connections dropped, then 503s; more runs than max_attempts (2).
    for fault, category in [(Fault.drop, "connection"), (Fault.drop, "connection"), (Fault.http, "http_status")]:
        server.clear_faults()
        server.add_fault(fault(times=None))
        code, data = _run()
        [repo] = data["repos"]
        assert (code, repo["status"], repo["missing_items"]) == (0, "incomplete", 3), data
        assert _ledger(settings) == [("question", "failed", category, 0)] * 3
        assert _stage_status(settings, "questions") == ("incomplete", "incomplete")

    # Back up: every item is generated, the run is done and nothing is missing.
    server.clear_faults()
    code, data = _run()
    [repo] = data["repos"]
    assert (code, repo["status"], repo["missing_items"]) == (0, "done", 0), data
    assert _stage_status(settings, "questions") == ("done", "done")
    entries = _ledger(settings)
    assert [e for e in entries if e[1] != "ok"] == []
    assert sum(1 for e in entries if e[0] == "question") == 3
    answers = sum(1 for e in entries if e[0] == "answer")
    assert answers == 3
    assert TableStore(settings.tables_dir).read("qa_pairs", REPO).num_rows == answers


def test_exhausted_items_are_reported_and_retry_failed_resets_them(
    project: Path,
    make_git_repo,
    server: FaultServer,
    tiny_model_dir: Path,  # noqa: F811
) -> None:
    settings = _setup(project, make_git_repo, server, tiny_model_dir, max_attempts=1)
    good = server.responder
    server.responder = lambda body: "I would rather not."  # no question can be parsed from this

    code, data = _run()
    assert (code, data["repos"][0]["status"], data["repos"][0]["missing_items"]) == (0, "incomplete", 3), data
    assert _ledger(settings) == [("question", "failed", "parse_error", 1)] * 3

    # The model is fixed, but the items are out of attempts: not sent again, still incomplete.
    server.responder = good
    sent = len(server.chat_records)
    code, data = _run()
    assert (code, data["repos"][0]["status"], data["repos"][0]["missing_items"]) == (0, "incomplete", 3), data
    assert len(server.chat_records) == sent

    other = CliRunner().invoke(cli, ["retry-failed", "--category", "connection", "--json"])
    assert (other.exit_code, json.loads(other.stdout)["reset"]) == (0, 0)
    reset = CliRunner().invoke(cli, ["retry-failed", "--category", "parse_error", "--repo", REPO, "--json"])
    assert (reset.exit_code, json.loads(reset.stdout)["reset"]) == (0, 3), reset.output
    assert _ledger(settings) == [("question", "failed", "parse_error", 0)] * 3

    code, data = _run()
    assert (code, data["repos"][0]["status"], data["repos"][0]["missing_items"]) == (0, "done", 0), data
    assert [e for e in _ledger(settings) if e[1] != "ok"] == []
