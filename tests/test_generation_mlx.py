"""questions and answers through the real mlx-lm path (MLXResource) with a tiny random model.

The model writes gibberish, so this checks mechanics: every item reaches the ledger,
unparseable replies are recorded as parse_error with their raw text, rows match the
ledger, and a re-run generates nothing.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from dagster import DagsterInstance

from cicdllm_assets.config import load_settings
from cicdllm_assets.generation.runner import QUESTIONS_SCHEMA
from cicdllm_assets.resources.llm.mlx_resource import MLXResource
from cicdllm_assets.storage.tables import TableStore
from tests.generation_support import (
    SAMPLE_FILES,
    chunk_rows,
    ledger_of,
    materialization_values,
    read_table,
    run_generation,
    write_chunks,
)
from tests.generation_support import write_project_config as write_config
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - session fixture

REPO = "acme-mlx"


@pytest.mark.slow
def test_mlx_questions_and_answers_mechanics(project: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    write_config(
        project,
        generation={"themes": ["code_explanation", "testing"], "questions_per_chunk": 2, "question_max_tokens": 24,
                    "answer_max_tokens": 16, "batch_size": 4, "max_chunks_per_repo": 3, "temperature": 0.8},
        llm={"backend": "mlx", "model": str(tiny_model_dir)},
    )
    settings = load_settings()
    rows = chunk_rows(REPO, SAMPLE_FILES)
    write_chunks(settings, REPO, rows)
    instance = DagsterInstance.ephemeral()

    result = run_generation(REPO, MLXResource(), selection=["questions"], instance=instance)
    assert result.success
    entries = ledger_of(settings).entries(kind="question")
    assert len(entries) == 3 * 2  # max_chunks_per_repo x themes, each recorded
    model_id = entries[0].model_id
    assert model_id.startswith("mlx:")
    for entry in entries:
        assert entry.attempts == 1 and entry.prompt_tokens > 0
        if entry.status == "failed":
            assert entry.error_category == "parse_error" and entry.output is not None  # raw text kept
        else:
            assert entry.parsed()
    questions = read_table(settings, "questions", REPO)
    assert questions.num_rows == sum(len(e.parsed()) for e in entries)
    meta = materialization_values(result, "questions")
    assert meta["generated"] + meta["failed"] == 6
    assert meta["completion_tokens"] > 0

    # answers for hand-written questions about the first two chunks
    chosen = sorted(rows, key=lambda r: (r["path"], r["start_line"]))[:2]
    hand = [{
        "repo": REPO, "question_id": f"q{i}", "chunk_key": r["chunk_key"], "theme": "testing",
        "template_hash": "manual", "question": f"How would you unit test the code in {r['path']} (part {i})?",
        "model_id": "manual", "params": "{}", "path": r["path"], "start_line": r["start_line"],
        "end_line": r["end_line"], "commit": r["commit"], "license": r["license"], "language": "python",
        "question_index": 0, "generation_key": "manual", "prompt_tokens": 0, "completion_tokens": 0,
        "latency_ms": 0.0, "trimmed": False,
    } for i, r in enumerate(chosen)]
    TableStore(settings.tables_dir).write("questions", REPO, pa.Table.from_pylist(hand, schema=QUESTIONS_SCHEMA))
    result = run_generation(REPO, MLXResource(), selection=["answers"], instance=instance)
    assert result.success
    answer_entries = ledger_of(settings).entries(kind="answer")
    assert len(answer_entries) == 2 and {e.input_text for e in answer_entries} == {q["question"] for q in hand}
    ok = [e for e in answer_entries if e.status == "ok"]
    assert all(e.error_category == "parse_error" for e in answer_entries if e.status == "failed")
    answers = read_table(settings, "answers", REPO)
    assert answers.num_rows == len(ok)
    assert set(answers.column("question_id").to_pylist()) <= {"q0", "q1"}
    if ok:
        assert answers.column("model_id").to_pylist()[0] == model_id

    # a re-run of both generates nothing (ok items reused; failures counted against max_attempts)
    before = {e.key: e.updated_at for e in ledger_of(settings).entries() if e.status == "ok"}
    result = run_generation(REPO, MLXResource(), selection=["answers"], instance=instance)
    assert result.success
    meta = materialization_values(result, "answers")
    assert meta["reused"] == len(ok)
    after = {e.key: e.updated_at for e in ledger_of(settings).entries() if e.status == "ok"}
    assert all(after[k] == v for k, v in before.items())
