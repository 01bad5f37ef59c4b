"""The whole pipeline on a real git repo with planted secrets, through to the export files.

repositories -> source_files -> code_chunks -> questions -> answers (OpenAI backend against
the local fault server) -> qa_pairs -> training_dataset (+ blocking checks). No planted
secret may appear in a prompt the server received, in any asset table, in the ledger or
in any export file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, materialize

from benchmarks.fault_server import FaultServer
from tests.export_fixtures import CHECKS, assert_table_metadata
from tests.generation_support import SAMPLE_FILES, chain_assets, chain_project, chain_resources
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - session fixture
from tests.test_quality_secrets import FILES as SECRET_FILES
from tests.test_quality_secrets import PLANTED
from tests.test_repos_git import MIT


def _leaks(text: str) -> list[str]:
    return [secret[:12] for secret in PLANTED if secret in text]


@pytest.mark.slow
def test_chain_to_export_leaks_no_secret(project: Path, make_git_repo, tiny_model_dir: Path) -> None:  # noqa: F811
    files = {**SAMPLE_FILES, **SECRET_FILES, "LICENSE": MIT}
    repo = make_git_repo("leaky", files)
    with FaultServer(capacity=4) as server:
        settings, key, instance = chain_project(project, repo.path, server.base_url, tiny_model_dir, 96)
        resources = chain_resources()
        assets = chain_assets()
        result = materialize(assets[:-1], partition_key=key, instance=instance, resources=resources)
        assert result.success
        result = materialize([*assets, *CHECKS], selection=[assets[-1]], instance=instance, resources=resources)
        assert result.success
        prompts = [record.prompt_text for record in server.chat_records]

    assert prompts
    for prompt in prompts:
        assert not _leaks(prompt), "a planted secret reached the LLM"
    for table_file in sorted(settings.tables_dir.rglob("*.parquet")):
        text = "\n".join(str(v) for row in pq.read_table(table_file).to_pylist() for v in row.values())
        assert not _leaks(text), f"leak in {table_file.relative_to(settings.tables_dir)}"
    with sqlite3.connect(settings.state_db) as con:
        for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            rows = con.execute(f'SELECT * FROM "{name}"').fetchall()  # noqa: S608 - names from sqlite_master
            assert not _leaks("\n".join(map(str, rows))), f"leak in state table {name}"
    out = settings.export_dir
    # the card's PNG plots draw only counts and labels (repo, theme, question kind, reason)
    exported = [p for p in out.rglob("*") if p.is_file() and p.suffix != ".png"]
    assert (out / "dataset.parquet") in exported and (out / "README.md") in exported
    for path in exported:
        text = (
            "\n".join(str(v) for row in pq.read_table(path).to_pylist() for v in row.values())
            if path.suffix == ".parquet"
            else path.read_text(encoding="utf-8")
        )
        assert not _leaks(text), f"leak in export file {path.relative_to(out)}"
    records = pq.read_table(out / "dataset.parquet")
    assert records.num_rows > 0 and set(records.column("license").to_pylist()) == {"MIT"}
    for check in CHECKS:
        for check_key in check.check_keys:
            record = instance.event_log_storage.get_latest_asset_check_execution_by_key([check_key])[check_key]
            assert record.event.asset_check_evaluation.passed, check_key  # type: ignore[union-attr]
    event = instance.get_latest_materialization_event(AssetKey("training_dataset"))
    assert event is not None
    # Dagster table conventions on every asset of a real run: true row counts, location, columns
    partitioned = ["repositories", "source_files", "code_chunks", "questions", "answers", "qa_pairs"]
    assert_table_metadata(instance, settings.tables_dir, out, partitioned, [key])
