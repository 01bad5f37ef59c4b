"""Filter one repository's answers into ``qa_pairs``: every row kept, each marked accepted or not.

Per pair: empty/short, refusal, truncated, chunk missing, not grounded (see
:mod:`cicdllm_assets.quality.filters`). Then, among the pairs still accepted, exact and
near-duplicates within the repository (the first in (path, start line, answer id)
order is kept). Cross-repository duplicates are removed later, in ``training_dataset``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import pyarrow as pa

from cicdllm_assets.quality.dedup import find_duplicates
from cicdllm_assets.quality.filters import DUPLICATE, NEAR_DUPLICATE, Rejection, check_pair
from cicdllm_assets.quality.grounding import DEFAULT_MIN_GROUNDED_RATIO
from cicdllm_assets.storage.contract import QA_EXTRA_FIELDS, AnswerRow

MISSING_CHUNK = "missing_chunk"


@dataclass(frozen=True)
class PairsResult:
    """The qa_pairs table and its rejection counts per reason."""

    table: pa.Table
    rejections: dict[str, int]

    @property
    def accepted(self) -> int:
        """Accepted pairs."""
        return self.table.num_rows - sum(self.rejections.values())


def filter_pairs(
    answers: pa.Table,
    code_chunks: pa.Table | None,
    near_duplicate_threshold: float,
    min_grounded_ratio: float = DEFAULT_MIN_GROUNDED_RATIO,
    progress: Callable[[int], None] | None = None,
) -> PairsResult:
    """Mark every answers row accepted or rejected (with reason and detail)."""
    for column in ("answer_id", "question", "answer", "chunk_key"):
        if column not in answers.column_names:
            raise ValueError(f"answers table lacks column {column!r}")
    chunks: dict[str, tuple[str, str]] = {}
    if code_chunks is not None and code_chunks.num_rows:
        imports = code_chunks.column("imports").to_pylist() if "imports" in code_chunks.column_names else None
        for i, (key, text) in enumerate(
            zip(code_chunks.column("chunk_key").to_pylist(), code_chunks.column("text").to_pylist(), strict=True)
        ):
            chunks[key] = (text, (imports[i] or "") if imports else "")
    rows = cast(list[AnswerRow], answers.to_pylist())
    verdicts: list[Rejection | None] = []
    for done, row in enumerate(rows, start=1):
        chunk = chunks.get(row["chunk_key"])
        if chunk is None:
            verdict: Rejection | None = Rejection(MISSING_CHUNK, "the chunk is no longer in code_chunks")
            verdict = check_pair(row, None) or verdict
        else:
            verdict = check_pair(row, chunk[0], chunk[1], min_grounded_ratio)
        verdicts.append(verdict)
        if progress is not None and (done % 200 == 0 or done == len(rows)):
            progress(done)

    order = sorted(
        (i for i, v in enumerate(verdicts) if v is None),
        key=lambda i: (
            rows[i].get("path") or "",
            rows[i].get("start_line") or 0,
            rows[i]["answer_id"],
        ),
    )
    duplicates = find_duplicates(
        [rows[i]["question"] for i in order],
        [rows[i]["answer"] for i in order],
        near_duplicate_threshold,
    )
    for dup in duplicates:
        kept_id = rows[order[dup.kept]]["answer_id"]
        reason = DUPLICATE if dup.kind == "duplicate" else NEAR_DUPLICATE
        verdicts[order[dup.index]] = Rejection(reason, f"duplicate of answer {kept_id}")

    counts = Counter(v.reason for v in verdicts if v is not None)
    context = [chunks.get(r["chunk_key"], ("", ""))[0] for r in rows]
    table = answers
    if "context" in table.column_names:
        table = table.drop_columns(["context"])
    for name in ("accepted", "reject_reason", "reject_detail"):
        if name in table.column_names:
            table = table.drop_columns([name])
    table = table.append_column(QA_EXTRA_FIELDS[0], pa.array(context, pa.string()))
    table = table.append_column(QA_EXTRA_FIELDS[1], pa.array([v is None for v in verdicts], pa.bool_()))
    table = table.append_column(QA_EXTRA_FIELDS[2], pa.array([v.reason if v else None for v in verdicts], pa.string()))
    table = table.append_column(QA_EXTRA_FIELDS[3], pa.array([v.detail if v else None for v in verdicts], pa.string()))
    return PairsResult(table, dict(sorted(counts.items())))
