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
from cicdllm_assets.resources.llm.mlx_resource import MLXResource
from cicdllm_assets.storage.contract import QUESTIONS_SCHEMA
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
from tests.llm_fixtures import SCRIPTED_REPLY, make_scripted_model_dir, tiny_model_dir  # noqa: F401 - session fixture

REPO = "acme-mlx"


@pytest.mark.slow
def test_mlx_questions_and_answers_mechanics(project: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    write_config(
        project,
        generation={
            "themes": ["code_explanation", "testing"],
            "questions_per_chunk": 2,
            "question_max_tokens": 24,
            "answer_max_tokens": 16,
            "batch_size": 4,
            "max_chunks_per_repo": 3,
            "temperature": 0.8,
        },
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
    # The random model's 24 tokens of gibberish never parse (sampling is seeded: deterministic).
    # Questions that parse are the scripted model's test below. Each unparseable reply is sent
    # again in the run with the next seeds (generation.retries_in_run: 2, max_attempts: 3), and fails.
    for entry in entries:
        assert (entry.status, entry.error_category, entry.attempts) == ("failed", "parse_error", 3)
        assert entry.prompt_tokens > 0
        # raw text kept whenever the model wrote any (it may also end its reply at once: eos first)
        assert bool(entry.output) == (entry.completion_tokens > 0)
    assert sum(entry.completion_tokens > 0 for entry in entries) >= 4
    assert read_table(settings, "questions", REPO).num_rows == 0
    meta = materialization_values(result, "questions")
    assert (meta["generated"], meta["failed"], meta["llm_requests"], meta["retried_in_run"]) == (0, 6, 18, 12)
    assert meta["completion_tokens"] > 0

    # answers for hand-written questions about the first two chunks
    chosen = sorted(rows, key=lambda r: (r["path"], r["start_line"]))[:2]
    hand = [
        {
            "repo": REPO,
            "question_id": f"q{i}",
            "chunk_key": r["chunk_key"],
            "theme": "testing",
            "template_hash": "manual",
            "question": f"How would you unit test the code in {r['path']} (part {i})?",
            "model_id": "manual",
            "params": "{}",
            "path": r["path"],
            "start_line": r["start_line"],
            "end_line": r["end_line"],
            "commit": r["commit"],
            "license": r["license"],
            "language": "python",
            "question_index": 0,
            "generation_key": "manual",
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "latency_ms": 0.0,
            "trimmed": False,
        }
        for i, r in enumerate(chosen)
    ]
    TableStore(settings.tables_dir).write("questions", REPO, pa.Table.from_pylist(hand, schema=QUESTIONS_SCHEMA))
    result = run_generation(REPO, MLXResource(), selection=["answers"], instance=instance)
    assert result.success
    answer_entries = ledger_of(settings).entries(kind="answer")
    assert len(answer_entries) == 2 and {e.input_text for e in answer_entries} == {q["question"] for q in hand}
    assert [e.status for e in answer_entries] == ["ok", "ok"]  # any non-empty answer is accepted
    answers = read_table(settings, "answers", REPO)
    assert answers.num_rows == 2
    assert sorted(answers.column("question_id").to_pylist()) == ["q0", "q1"]
    assert set(answers.column("model_id").to_pylist()) == {model_id}
    assert all(text.strip() for text in answers.column("answer").to_pylist())

    # a re-run of the answers generates nothing: both are reused, the model is not called
    before = {e.key: e.updated_at for e in ledger_of(settings).entries()}
    result = run_generation(REPO, MLXResource(), selection=["answers"], instance=instance)
    assert result.success
    meta = materialization_values(result, "answers")
    assert (meta["reused"], meta["generated"], meta["failed"], meta["llm_requests"]) == (2, 0, 0, 0)
    assert {e.key: e.updated_at for e in ledger_of(settings).entries()} == before


@pytest.mark.slow
def test_mlx_questions_parse_answers_follow_and_a_rerun_generates_nothing(project: Path, tmp_path: Path) -> None:
    scripted_model_dir = make_scripted_model_dir(tmp_path / "scripted")
    write_config(
        project,
        generation={
            "themes": ["code_explanation"],
            "questions_per_chunk": 2,
            "question_max_tokens": 24,
            "answer_max_tokens": 24,
            "batch_size": 4,
            "max_chunks_per_repo": 3,
        },
        llm={"backend": "mlx", "model": str(scripted_model_dir)},
    )
    settings = load_settings()
    write_chunks(settings, REPO, chunk_rows(REPO, SAMPLE_FILES))
    instance = DagsterInstance.ephemeral()

    result = run_generation(REPO, MLXResource(), instance=instance)
    assert result.success
    questions = ledger_of(settings).entries(kind="question")
    assert [(e.status, e.parsed()) for e in questions] == [("ok", [SCRIPTED_REPLY])] * 3
    assert read_table(settings, "questions", REPO).column("question").to_pylist() == [SCRIPTED_REPLY] * 3
    answers = read_table(settings, "answers", REPO)
    assert answers.column("answer").to_pylist() == [SCRIPTED_REPLY] * 3
    assert set(answers.column("finish_reason").to_pylist()) == {"stop"}
    # the answers went out in the questions step's batch (answers ahead); the answers step reused them
    assert materialization_values(result, "questions")["answers_ahead"] == 3
    assert (
        materialization_values(result, "answers")["generated"],
        materialization_values(result, "answers")["reused"],
    ) == (0, 3)

    result = run_generation(REPO, MLXResource(), instance=instance)
    assert result.success
    for stage in ("questions", "answers"):
        meta = materialization_values(result, stage)
        assert (meta["generated"], meta["reused"], meta["llm_requests"]) == (0, 3, 0), stage
