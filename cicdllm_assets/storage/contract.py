"""The table contract: every asset table's Arrow schema and its typed row, in one place.

A row class is a ``TypedDict`` with the schema's columns in the schema's order (checked by
``tests/test_table_contract.py``): writers build rows of it and hand them to
``pa.Table.from_pylist(rows, schema=...)``; readers get it back from ``table.to_pylist()``.
A column that may be null in the schema is ``X | None`` in its row.

Line numbers are ``int64`` in every table. ``code_chunks`` wrote ``start_line``/``end_line``
as ``int32`` before: such a partition still loads (values read the same), the DuckDB views
read it beside new ones (``union_by_name``) and :meth:`TableStore.read_all` widens it when
partitions are concatenated; the next materialization rewrites it as ``int64``.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict

import pyarrow as pa

# ----------------------------------------------------------------------------- repositories
REPOSITORIES_SCHEMA = pa.schema(
    [
        pa.field("repo", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("ref", pa.string()),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("local_path", pa.string(), nullable=False),
        pa.field("head_commit", pa.string(), nullable=False),
        pa.field("default_branch", pa.string()),
        pa.field("resolved_ref", pa.string()),
        pa.field("license", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("head_changed", pa.bool_(), nullable=False),
        pa.field("previous_commit", pa.string()),
        pa.field("fetched_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


class RepositoryRow(TypedDict):
    """One synced repository (``repositories``)."""

    repo: str
    url: str
    ref: str | None
    kind: str
    local_path: str
    head_commit: str
    default_branch: str | None
    resolved_ref: str | None
    license: str
    size_bytes: int
    head_changed: bool
    previous_commit: str | None
    fetched_at: datetime


# ----------------------------------------------------------------------------- source_files
SOURCE_FILES_SCHEMA = pa.schema(
    [
        pa.field("repo", pa.string(), nullable=False),
        pa.field("commit", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("blob_sha", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("encoding", pa.string()),
        pa.field("line_count", pa.int64(), nullable=False),
        pa.field("token_count", pa.int64(), nullable=False),
        pa.field("chunk_count", pa.int32(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("skip_reason", pa.string()),
        pa.field("skip_category", pa.string()),
        pa.field("mode", pa.string(), nullable=False),
        pa.field("symlink_target", pa.string()),
    ]
)


class SourceFileRow(TypedDict):
    """One tracked file, kept or skipped with a reason (``source_files``)."""

    repo: str
    commit: str
    path: str
    blob_sha: str
    size_bytes: int
    language: str
    encoding: str | None
    line_count: int
    token_count: int
    chunk_count: int
    status: str
    skip_reason: str | None
    skip_category: str | None
    mode: str
    symlink_target: str | None


# ----------------------------------------------------------------------------- code_chunks
CODE_CHUNKS_SCHEMA = pa.schema(
    [
        pa.field("repo", pa.string(), nullable=False),
        pa.field("commit", pa.string(), nullable=False),
        pa.field("license", pa.string()),
        pa.field("path", pa.string(), nullable=False),
        pa.field("blob_sha", pa.string(), nullable=False),
        pa.field("language", pa.string()),
        pa.field("chunk_key", pa.string(), nullable=False),
        pa.field("start_line", pa.int64(), nullable=False),
        pa.field("end_line", pa.int64(), nullable=False),
        pa.field("symbol", pa.string()),
        pa.field("imports", pa.string()),
        pa.field("text", pa.string(), nullable=False),
        pa.field("token_count", pa.int32(), nullable=False),
        pa.field("redactions", pa.int32(), nullable=False),
        pa.field("chunk_index", pa.int32(), nullable=False),
    ]
)


class CodeChunkRow(TypedDict):
    """One redacted, token-bounded chunk of a kept file (``code_chunks``)."""

    repo: str
    commit: str
    license: str | None
    path: str
    blob_sha: str
    language: str | None
    chunk_key: str
    start_line: int
    end_line: int
    symbol: str | None
    imports: str | None
    text: str
    token_count: int
    redactions: int
    chunk_index: int


# ----------------------------------------------------------------------------- questions
QUESTIONS_SCHEMA = pa.schema(
    [
        ("repo", pa.string()),
        ("question_id", pa.string()),
        ("chunk_key", pa.string()),
        ("theme", pa.string()),
        ("template_hash", pa.string()),
        ("question", pa.string()),
        ("model_id", pa.string()),
        ("params", pa.string()),
        ("path", pa.string()),
        ("start_line", pa.int64()),
        ("end_line", pa.int64()),
        ("commit", pa.string()),
        ("license", pa.string()),
        ("language", pa.string()),
        ("question_index", pa.int32()),
        ("generation_key", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("latency_ms", pa.float64()),
        ("trimmed", pa.bool_()),
        ("finish_reason", pa.string()),
        ("seed_sent", pa.bool_()),
    ]
)


class QuestionRow(TypedDict):
    """One parsed question about a chunk (``questions``)."""

    repo: str
    question_id: str
    chunk_key: str
    theme: str
    template_hash: str
    question: str
    model_id: str
    params: str
    path: str
    start_line: int
    end_line: int
    commit: str
    license: str
    language: str
    question_index: int
    generation_key: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    trimmed: bool
    finish_reason: str | None
    seed_sent: bool | None


# ----------------------------------------------------------------------------- answers
ANSWERS_SCHEMA = pa.schema(
    [
        ("repo", pa.string()),
        ("answer_id", pa.string()),
        ("question_id", pa.string()),
        ("chunk_key", pa.string()),
        ("theme", pa.string()),
        ("template_hash", pa.string()),
        ("question_template_hash", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("model_id", pa.string()),
        ("params", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("cached_prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("latency_ms", pa.float64()),
        ("trimmed", pa.bool_()),
        ("max_tokens", pa.int64()),
        ("finish_reason", pa.string()),
        ("seed_sent", pa.bool_()),
        ("path", pa.string()),
        ("start_line", pa.int64()),
        ("end_line", pa.int64()),
        ("commit", pa.string()),
        ("license", pa.string()),
        ("language", pa.string()),
    ]
)


class AnswerRow(TypedDict):
    """One answer to one question (``answers``)."""

    repo: str
    answer_id: str
    question_id: str
    chunk_key: str
    theme: str
    template_hash: str
    question_template_hash: str
    question: str
    answer: str
    model_id: str
    params: str
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    trimmed: bool
    max_tokens: int
    finish_reason: str | None
    seed_sent: bool | None
    path: str
    start_line: int
    end_line: int
    commit: str
    license: str
    language: str


# ----------------------------------------------------------------------------- qa_pairs
QA_EXTRA_FIELDS = [
    pa.field("context", pa.string()),
    pa.field("accepted", pa.bool_(), nullable=False),
    pa.field("reject_reason", pa.string()),
    pa.field("reject_detail", pa.string()),
]
"""The columns ``qa_pairs`` adds to ``answers``."""
QA_PAIRS_SCHEMA = pa.schema([*ANSWERS_SCHEMA, *QA_EXTRA_FIELDS])


class QaPairRow(AnswerRow):
    """An answers row marked accepted or rejected, with the chunk's code (``qa_pairs``)."""

    context: str | None
    accepted: bool
    reject_reason: str | None
    reject_detail: str | None


# ----------------------------------------------------------------------------- training_dataset
EXPORT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("repo", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("start_line", pa.int64(), nullable=False),
        pa.field("end_line", pa.int64(), nullable=False),
        pa.field("commit", pa.string(), nullable=False),
        pa.field("license", pa.string(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("theme", pa.string(), nullable=False),
        pa.field("system", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("context", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("template_hash", pa.string(), nullable=False),
        pa.field("question_id", pa.string(), nullable=False),
        pa.field("chunk_key", pa.string(), nullable=False),
        pa.field("params", pa.string(), nullable=False),
    ]
)
"""The export record (``training_dataset`` and every exported file derive from it)."""


class ExportRow(TypedDict):
    """One accepted question/answer pair with its provenance, as exported."""

    id: str
    split: str
    repo: str
    path: str
    start_line: int
    end_line: int
    commit: str
    license: str
    language: str
    theme: str
    system: str
    question: str
    context: str
    prompt: str
    answer: str
    model_id: str
    template_hash: str
    question_id: str
    chunk_key: str
    params: str


TABLES: dict[str, tuple[pa.Schema, type]] = {
    "repositories": (REPOSITORIES_SCHEMA, RepositoryRow),
    "source_files": (SOURCE_FILES_SCHEMA, SourceFileRow),
    "code_chunks": (CODE_CHUNKS_SCHEMA, CodeChunkRow),
    "questions": (QUESTIONS_SCHEMA, QuestionRow),
    "answers": (ANSWERS_SCHEMA, AnswerRow),
    "qa_pairs": (QA_PAIRS_SCHEMA, QaPairRow),
    "training_dataset": (EXPORT_SCHEMA, ExportRow),
}
"""Every asset table: (Arrow schema, row class)."""
