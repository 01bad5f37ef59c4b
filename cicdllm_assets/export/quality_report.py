"""The dataset card's quality section: question kinds, distinct-n, answer lengths (and plots)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb

from cicdllm_assets.quality.variety import QuestionVariety, question_variety

if TYPE_CHECKING:
    from cicdllm_assets.export.dataset import DatasetResult

VARIETY_BATCH_ROWS = 50_000


def exported_variety(con: duckdb.DuckDBPyConnection, table: str) -> tuple[QuestionVariety, list[int]]:
    """Question variety over the exported pairs in ``table`` and each answer's length in words."""
    questions: list[str] = []
    kinds: list[str] = []
    words: list[int] = []
    sql = f"SELECT question, question_kind, answer FROM {table} ORDER BY idx"  # noqa: S608 - a table name we own
    for batch in con.cursor().sql(sql).to_arrow_reader(VARIETY_BATCH_ROWS):
        questions.extend(str(q) for q in batch.column(0).to_pylist())
        kinds.extend(str(k or "") for k in batch.column(1).to_pylist())
        words.extend(len(str(a).split()) for a in batch.column(2).to_pylist())
    return question_variety(questions, kinds), words


def variety_markdown(result: DatasetResult) -> str:
    """Markdown: the mix of question kinds and distinct-2/-3 over the exported questions."""
    variety = result.variety
    if variety is None or not variety.questions:
        return "No exported questions.\n"
    lines = [
        f"Over the {variety.questions} exported questions: distinct-2 = {variety.distinct_2:.3f}, "
        f"distinct-3 = {variety.distinct_3:.3f} (distinct word n-grams / all word n-grams; 1.0 = no repeats).\n",
        "",
        "| question kind | pairs | share |",
        "|---|---|---|",
    ]
    for kind, count in variety.kinds.items():
        lines.append(f"| {kind} | {count} | {count / variety.questions:.0%} |")
    return "\n".join(lines) + "\n"
