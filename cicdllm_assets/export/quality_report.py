"""The dataset card's quality section: question kinds, distinct-n, answer lengths (and plots)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb

from cicdllm_assets.quality.variety import QuestionVariety, question_variety

if TYPE_CHECKING:
    from cicdllm_assets.export.dataset import DatasetResult

VARIETY_SAMPLE = 20_000
"""Distinct-n and answer lengths are computed over the first this many exported pairs (by id
order), so the card's memory stays bounded however large the dataset; the kind mix counts all."""
SAMPLE_BATCH = 2_000


def exported_variety(con: duckdb.DuckDBPyConnection, table: str) -> tuple[QuestionVariety, list[int]]:
    """Question variety over the exported pairs in ``table`` and answer lengths in words: the kind
    mix over every pair (a DuckDB aggregate), distinct-n and lengths over the first
    :data:`VARIETY_SAMPLE` pairs (a top-N by ``idx``: bounded memory)."""
    mix_sql = f"SELECT coalesce(nullif(question_kind, ''), 'unknown') AS k, count(*) FROM {table} GROUP BY k"  # noqa: S608 - a table name we own
    mix = {str(k): int(n) for k, n in con.cursor().sql(mix_sql).fetchall()}
    # the sample's last idx from a narrow top-N, then only the sample's rows are sorted (bounded memory)
    last_sql = f"SELECT max(idx) FROM (SELECT idx FROM {table} ORDER BY idx LIMIT {VARIETY_SAMPLE})"  # noqa: S608 - a table name we own
    (last,) = con.cursor().execute(last_sql).fetchone() or (None,)
    questions: list[str] = []
    words: list[int] = []
    if last is not None:
        sample_sql = f"SELECT question, answer FROM {table} WHERE idx <= ? ORDER BY idx"  # noqa: S608 - a table name we own
        for batch in con.cursor().sql(sample_sql, params=[int(last)]).to_arrow_reader(SAMPLE_BATCH):
            questions += [str(question) for question in batch.column(0).to_pylist()]
            words += [len(str(answer).split()) for answer in batch.column(1).to_pylist()]
    variety = question_variety(questions, [])
    return QuestionVariety(sum(mix.values()), dict(sorted(mix.items())), variety.distinct_2, variety.distinct_3), words


def variety_markdown(result: DatasetResult) -> str:
    """Markdown: the mix of question kinds and distinct-2/-3 over the exported questions."""
    variety = result.variety
    if variety is None or not variety.questions:
        return "No exported questions.\n"
    over = (
        f"the {variety.questions} exported questions"
        if variety.questions <= VARIETY_SAMPLE
        else f"the first {VARIETY_SAMPLE} of the {variety.questions} exported questions (by id)"
    )
    lines = [
        f"Over {over}: distinct-2 = {variety.distinct_2:.3f}, "
        f"distinct-3 = {variety.distinct_3:.3f} (distinct word n-grams / all word n-grams; 1.0 = no repeats).\n",
        "",
        "| question kind | pairs | share |",
        "|---|---|---|",
    ]
    for kind, count in variety.kinds.items():
        lines.append(f"| {kind} | {count} | {count / variety.questions:.0%} |")
    return "\n".join(lines) + "\n"
