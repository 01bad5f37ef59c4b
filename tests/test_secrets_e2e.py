"""End to end: a repository full of planted secrets goes through `cicdllm run` (discovery,
chunking, generation with the OpenAI backend against a loopback server, filtering, export);
not one planted value leaves the clone.

Checked everywhere a user's data can end up: every request body the server received, every
file under the data dir (tables, state DB with the ledger, exports), every file under
DAGSTER_HOME (event log and run storage, SQLite included), and everything logged. The
clone cache is the user's own repository and is exempt.

A custom theme whose question template carries a key pasted into it (a template edit no
redaction of our fields can catch) shows the last gate: those requests are never sent, and
the items fail with category ``secret`` in the ledger, `cicdllm status --json`, the viewer,
the Dagster metadata of the questions asset and the dataset card.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from dagster import AssetKey, DagsterInstance

from benchmarks.fault_server import FaultServer
from cicdllm_assets.cli.main import cli
from cicdllm_assets.config import load_settings
from cicdllm_assets.generation.ledger import Ledger
from cicdllm_assets.storage.state import StateStore
from cicdllm_assets.storage.tables import TableStore
from cicdllm_assets.tui.app import StatusApp
from cicdllm_assets.tui.screens import FailuresScreen
from cicdllm_assets.tui.widgets import StaticPanel
from tests.discovery_helpers import train_tokenizer
from tests.generation_support import write_project_config
from tests.secret_corpus import corpus_files, planted_values

pytestmark = pytest.mark.slow

# A Stripe-format key a user pasted into a prompt template (fake, generated for this test).
TEMPLATE_KEY = "sk_live_" + "Qm7Zx2Lp9Wv4Rt8Ny3Kb6Hd1"
LEAKY_THEME = (
    "description: A theme whose author pasted a key into the question template.\n"
    "question: |\n"
    "  Write {n_questions} questions about {symbol} in {path}; our billing key is " + TEMPLATE_KEY + ".\n"
    "  Reply with only a JSON array of strings.\n"
    "answer: |\n"
    "  {question}\n\n"
    "  Answer in 2 sentences.\n"
)


def _files_containing(root: Path, needles: list[bytes]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits = [n.decode()[:14] for n in needles if n in data]
            if hits:
                found[str(path.relative_to(root))] = hits
    return found


def _viewer_failure_categories() -> str:
    async def scenario() -> str:
        app = StatusApp()
        async with app.run_test(size=(170, 46)) as pilot:
            while app.refresh_count < 1:
                await pilot.pause(0.1)
            await pilot.press("f")
            while not isinstance(app.screen, FailuresScreen):
                await pilot.pause(0.1)
            await pilot.pause(0.3)
            return app.screen.query_one("#failure-categories", StaticPanel).plain_text

    return asyncio.run(scenario())


def test_planted_secrets_never_leave_the_machine(
    project: Path, make_git_repo, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    planted = planted_values()
    files = corpus_files()
    repo = make_git_repo("planted", files)
    tokenizer = train_tokenizer(tmp_path / "tok" / "tokenizer.json")
    runner = CliRunner()
    with FaultServer() as server:
        write_project_config(
            project,
            processing={"tokenizer": str(tokenizer), "chunk_max_tokens": 256},
            generation={
                "themes": ["code_explanation", "leaky"],
                "questions_per_chunk": 1,
                "question_max_tokens": 48,
                "answer_max_tokens": 64,
                "batch_size": 16,
                "max_attempts": 1,
            },
            llm={
                "backend": "openai",
                "model": "fake-model",
                "context_window": 4096,
                "openai": {
                    "base_url": server.base_url,
                    "model": "fake-model",
                    "tokenizer": str(tokenizer),
                    "max_concurrency": 8,
                    "max_retries": 1,
                    "backoff_base_seconds": 0.01,
                    "backoff_max_seconds": 0.05,
                    "timeout_seconds": 30.0,
                    "api_key_env": None,
                },
            },
            export={"allowed_licenses": ["MIT", "NOASSERTION"]},
        )
        (project / "prompts" / "leaky.yaml").write_text(LEAKY_THEME, encoding="utf-8")
        (project / "repos.txt").write_text(f"{repo.path}\n", encoding="utf-8")
        result = runner.invoke(cli, ["run", "--json"], catch_exceptions=False)
        bodies = [json.dumps(record.body) for record in server.chat_records]
    output = result.output
    settings = load_settings()

    # The pipeline really ran: chunks of every file kind, questions and answers generated.
    (summary,) = json.loads(result.stdout)["repos"]
    store = TableStore(settings.tables_dir)
    chunks = store.read("code_chunks", summary["name"]).to_pylist()
    assert {c["path"].split("/")[0] for c in chunks} >= {"src", "web", "names", "config", "gcp", "keys"}
    assert sum(c["redactions"] for c in chunks) > 100
    assert store.read("answers", summary["name"]).num_rows > 20
    assert len(bodies) > 40

    # 1. Nothing planted reached the model server, nor the gate's own test key.
    for needle in [*planted, TEMPLATE_KEY]:
        assert not [b for b in bodies if needle in b], f"sent to the server: {needle[:14]}"
    assert any("[REDACTED:" in b for b in bodies)

    # 2. Nor any table, the state DB / ledger, the exports (all under the data dir), nor
    #    Dagster's event log and run storage; the prompts dir holds only the template key.
    needles = [v.encode() for v in planted]
    clone_cache = settings.cache_dir
    assert clone_cache.is_relative_to(settings.data_dir)
    leaks = {
        path: hits
        for path, hits in _files_containing(project, [*needles, TEMPLATE_KEY.encode()]).items()
        if not (project / path).is_relative_to(clone_cache)
    }
    assert leaks == {"prompts/leaky.yaml": [TEMPLATE_KEY[:14]]}
    assert list((project / "dagster_home").rglob("*.db")), "Dagster's SQLite storage was checked"
    assert (settings.export_dir / "dataset.jsonl").is_file()

    # 3. Nor the log output or the command's own output.
    logged = caplog.text + output + "".join(capfd.readouterr())
    for needle in [*planted, TEMPLATE_KEY]:
        assert needle not in logged, f"logged: {needle[:14]}"

    # 4. The gate blocked every request of the leaky theme, and it shows everywhere.
    state = StateStore(settings.state_db)
    blocked = Ledger(state).failure_counts(kind="question").get("secret", 0)
    state.close()
    assert blocked == len({c["chunk_key"] for c in chunks})
    assert not [b for b in bodies if "billing key" in b]
    status = json.loads(runner.invoke(cli, ["status", "--once", "--json"], catch_exceptions=False).stdout)
    assert status["failure_categories"].get("secret") == blocked
    assert "secret" in _viewer_failure_categories()
    instance = DagsterInstance.get()
    event = instance.get_latest_materialization_event(AssetKey("questions"))
    assert event is not None and event.asset_materialization is not None
    by_category = event.asset_materialization.metadata["failures_by_category"].value
    assert by_category == {"secret": blocked}
    card = (settings.export_dir / "README.md").read_text(encoding="utf-8")
    assert f"Blocked items: {blocked}." in card
