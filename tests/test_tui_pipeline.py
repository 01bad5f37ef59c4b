"""The viewer and `status --once --json` on state written by a real pipeline run (ingest group)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cicdllm_assets.cli.main import cli
from cicdllm_assets.config import load_settings
from cicdllm_assets.storage.tables import TableStore
from cicdllm_assets.tui.app import StatusApp
from cicdllm_assets.tui.widgets import ProgressPanel, ReposTable, RunsTable
from tests.discovery_helpers import train_tokenizer


@pytest.mark.slow
def test_viewer_after_a_real_ingest_run(project: Path, tmp_path: Path, make_git_repo) -> None:
    tokenizer = train_tokenizer(tmp_path / "tok" / "tokenizer.json")
    (project / "cicdllm.yaml").write_text(
        "# project for the viewer test\n"
        "storage:\n  data_dir: data\n  dagster_home: dagster_home\n"
        f"processing:\n  tokenizer: {tokenizer}\n  chunk_max_tokens: 96\n",
        encoding="utf-8",
    )
    repo = make_git_repo(
        "alpha",
        {
            "a.py": "def a():\n    return 1\n",
            "pkg/b.py": "class B:\n    def run(self, x):\n        return x * 2\n",
            "LICENSE": "MIT License\n",
            "data.bin": b"\x00\x01" * 5000,
        },
    )
    (project / "repos.txt").write_text(f"{repo.path}\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["run", "--select", "group:ingest", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr[-3000:]

    settings = load_settings()
    tables = TableStore(settings.tables_dir)
    files = tables.read_all("source_files")
    chunks = tables.read_all("code_chunks")
    assert files is not None and chunks is not None
    kept = sum(1 for s in files.column("status").to_pylist() if s == "kept")

    out = CliRunner().invoke(cli, ["status", "--once", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    (entry,) = data["repos"]
    assert entry["head_commit"] == repo.git("rev-parse", "HEAD")
    assert entry["files_kept"] == kept and entry["files_skipped"] == files.num_rows - kept
    assert entry["chunks"] == chunks.num_rows > 0
    assert entry["last_run"]["status"] == "SUCCESS" and entry["last_run"]["partition"] == entry["repo"]
    assert {s["stage"] for s in entry["stages"]} >= {"repositories", "source_files", "code_chunks"}
    assert all(s["status"] == "done" for s in entry["stages"])

    async def scenario() -> None:
        app = StatusApp(battery_reader=lambda: None)
        async with app.run_test(size=(170, 46)) as pilot:
            deadline = time.monotonic() + 60
            while app.refresh_count < 1:
                assert time.monotonic() < deadline
                await pilot.pause(0.05)
            (row,) = app.query_one(ReposTable).row_texts()
            assert row[0] == entry["repo"] and row[1] == entry["head_commit"][:10]
            assert row[3].startswith(f"{kept} (") and row[5] == str(chunks.num_rows)
            assert row[11] == "SUCCESS"
            progress = app.query_one(ProgressPanel).plain_text
            assert "code_chunks" in progress and f"└ {entry['repo']}" in progress
            runs = app.query_one(RunsTable).row_texts()
            assert any(r[2] == entry["repo"] and r[3] == "SUCCESS" for r in runs)
            await pilot.press("q")

    asyncio.run(scenario())
