"""The export record: one accepted question/answer pair with its provenance, flat columns only.

Every format is derived from these records: ``jsonl``/``csv``/``parquet`` hold them
as they are; the chat and completion formats render the prompt built here.

The user prompt carries the question and the code it is about, so a fine-tuned model
learns to answer from the code it is shown (alpaca keeps the code in ``input``).
"""

from __future__ import annotations

from cicdllm_assets.storage.contract import EXPORT_SCHEMA

SPLITS: tuple[str, ...] = ("train", "valid", "test")

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
