"""The table contract: every asset table's typed row and its Arrow schema, in one place.

A row class is a ``TypedDict`` listing the table's columns in order; the Arrow schema is
derived from it (:func:`arrow_schema`): ``str`` is ``string``, ``int`` is ``int64`` (the
columns named in ``int32`` excepted), ``float`` is ``double``, ``bool`` is ``bool``,
``datetime`` is a UTC microsecond timestamp, and ``X | None`` is nullable. Writers build rows
of the class and hand them to ``pa.Table.from_pylist(rows, schema=...)``; readers get it back
from ``table.to_pylist()``.

Line numbers are ``int64`` in every table. ``code_chunks`` wrote ``start_line``/``end_line``
as ``int32`` before: such a partition still loads (values read the same), the DuckDB views
read it beside new ones (``union_by_name``) and :meth:`TableStore.read_all` widens it when
partitions are concatenated; the next materialization rewrites it as ``int64``.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable
from datetime import datetime
from typing import TypedDict

import pyarrow as pa

_ARROW_TYPES: dict[object, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    datetime: pa.timestamp("us", tz="UTC"),
}


def split_optional(annotation: object) -> tuple[object, bool]:
    """``(X, True)`` for ``X | None``, ``(X, False)`` for ``X``."""
    if isinstance(annotation, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"a column is one type or that type | None, not {annotation}")
        return args[0], True
    return annotation, False


def arrow_schema(row: type, *, int32: Iterable[str] = (), all_nullable: bool = False) -> pa.Schema:
    """The Arrow schema of a row class (``all_nullable``: every column nullable, as the generated
    tables were first written, whatever the row type says)."""
    narrow = set(int32)
    fields = []
    for name, annotation in typing.get_type_hints(row).items():
        base, optional = split_optional(annotation)
        arrow_type = pa.int32() if name in narrow else _ARROW_TYPES[base]
        fields.append(pa.field(name, arrow_type, nullable=optional or all_nullable))
    return pa.schema(fields)


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


REPOSITORIES_SCHEMA = arrow_schema(RepositoryRow)


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


SOURCE_FILES_SCHEMA = arrow_schema(SourceFileRow, int32=["chunk_count"])


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


CODE_CHUNKS_SCHEMA = arrow_schema(CodeChunkRow, int32=["token_count", "redactions", "chunk_index"])


class ChunkProvenance(TypedDict):
    """The provenance columns every generated row copies from its code chunk."""

    path: str
    start_line: int
    end_line: int
    commit: str
    license: str
    language: str


class _QuestionHead(TypedDict):
    repo: str
    question_id: str
    chunk_key: str
    theme: str
    template_hash: str
    question: str
    model_id: str
    params: str


class QuestionRow(_QuestionHead, ChunkProvenance):
    """One parsed question about a chunk (``questions``)."""

    question_index: int
    generation_key: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    trimmed: bool
    finish_reason: str | None
    seed_sent: bool | None


QUESTIONS_SCHEMA = arrow_schema(QuestionRow, int32=["question_index"], all_nullable=True)


class _AnswerHead(TypedDict):
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


class AnswerRow(_AnswerHead, ChunkProvenance):
    """One answer to one question (``answers``)."""


ANSWERS_SCHEMA = arrow_schema(AnswerRow, all_nullable=True)


class QaVerdict(TypedDict):
    """The columns ``qa_pairs`` adds to an answers row."""

    context: str | None
    accepted: bool
    reject_reason: str | None
    reject_detail: str | None


class JudgeScores(TypedDict):
    """The opt-in judge's verdict (``quality.judge``): null unless the judge scored the pair."""

    judge_correctness: int | None
    judge_groundedness: int | None
    judge_usefulness: int | None
    judge_rationale: str | None
    judge_model: str | None


JUDGE_FIELDS: list[pa.Field] = list(arrow_schema(JudgeScores))


class QaPairRow(AnswerRow, QaVerdict, JudgeScores):
    """An answers row marked accepted or rejected, with the chunk's code (``qa_pairs``)."""


QA_EXTRA_FIELDS: list[pa.Field] = list(arrow_schema(QaVerdict))
QA_PAIRS_SCHEMA = pa.schema([*ANSWERS_SCHEMA, *QA_EXTRA_FIELDS, *JUDGE_FIELDS])


class _ExportHead(TypedDict):
    id: str
    split: str
    repo: str


class _ExportRecord(_ExportHead, ChunkProvenance):
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


class ExportRow(_ExportRecord, JudgeScores):
    """One accepted question/answer pair with its provenance and the judge's scores, if any:
    the export record (``training_dataset`` and every exported file derive from it)."""


EXPORT_SCHEMA = arrow_schema(ExportRow)


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
