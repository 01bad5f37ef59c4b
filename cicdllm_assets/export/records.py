"""The export record: one accepted question/answer pair with its provenance, flat columns only.

Every format is derived from these records: ``jsonl``/``csv``/``parquet`` hold them
as they are; the chat and completion formats render the prompt built here.

The user prompt carries the question and the code it is about, so a fine-tuned model
learns to answer from the code it is shown (alpaca keeps the code in ``input``).
"""

from __future__ import annotations

import pyarrow as pa

SPLITS: tuple[str, ...] = ("train", "valid", "test")

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
        # every file the answer prompt drew on (its chunk's file, then repo context), comma-separated
        pa.field("context_files", pa.string(), nullable=False),
    ]
)
EXPORT_COLUMNS: tuple[str, ...] = tuple(EXPORT_SCHEMA.names)
# Fields that must never be empty in an export (checked by the blocking asset check).
REQUIRED_TEXT_FIELDS: tuple[str, ...] = ("id", "split", "repo", "path", "question", "prompt", "answer")


def context_block(path: str, start_line: int, end_line: int, language: str, context: str) -> str:
    """The code a question is about, as a fenced block with its location."""
    fence = "```"
    while fence in context:
        fence += "`"
    return f"File: {path} (lines {start_line}-{end_line})\n{fence}{language}\n{context.rstrip()}\n{fence}"


def user_prompt(question: str, path: str, start_line: int, end_line: int, language: str, context: str) -> str:
    """The user turn: the question, then the code it refers to (when there is code)."""
    if not context.strip():
        return question.strip()
    return f"{question.strip()}\n\n{context_block(path, start_line, end_line, language, context)}"
